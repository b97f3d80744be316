#!/usr/bin/env bash
# Reproduce the shipped base weights (core/assets/base.safetensors) from nothing:
# synthetic data only (no download), CPU is enough (about four hours on 2 cores).
# Stage 1 trains from random weights (configs/base_synthetic.yaml); stage 2 continues it with
# a warm restart and harder refinement examples (configs/base_synthetic_stage2.yaml); stage 3
# continues with training cubes placed as the engine places them (configs/base_synthetic_stage3.yaml);
# stage 4 continues stage 3 on fresh samples at a lower learning rate (configs/base_synthetic_stage4.yaml).
#
#   bash scripts/train_base.sh [overrides...]     e.g. training.epochs=2 for a quick look
#                                                 (the overrides apply to every stage)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
SAM3D=.venv/bin/sam3d
mkdir -p runs/data/pretrain
$SAM3D synth --out runs/data/heart_train --cases 240 --seed 0
$SAM3D synth --kind organs --out runs/data/organs_train --cases 300 --seed 0
# One dataset folder with both kinds of cases (links), preprocessed once.
for d in runs/data/heart_train/heart_* runs/data/organs_train/organ_*; do
  ln -sfn "../$(basename "$(dirname "$d")")/$(basename "$d")" "runs/data/pretrain/$(basename "$d")"
done
$SAM3D preprocess --original_nifti_dir runs/data/pretrain --out runs/cache/pretrain --classes 5 --workers 2
$SAM3D train --config configs/base_synthetic.yaml "$@"
$SAM3D train --config configs/base_synthetic_stage2.yaml "$@"
$SAM3D train --config configs/base_synthetic_stage3.yaml "$@"
$SAM3D train --config configs/base_synthetic_stage4.yaml "$@"
$PY - <<'PY'
from core.checkpoint import load_weights
from core.model import Sam3DMed
from core.weights import save_weights, shipped_base_path
state, cfg = load_weights("runs/base_synthetic_stage4/last.pt")  # the last epoch: see the stage 4 config
model = Sam3DMed(cfg)
model.load_state_dict(state)
path = save_weights(model, shipped_base_path(), metadata={
    "trained_on": "synthetic only: 240 cardiac CT phantoms + 300 organ-shape volumes (core.synthetic, seed 0)",
    "recipe": "bash scripts/train_base.sh (configs/base_synthetic.yaml, then _stage2.yaml, _stage3.yaml and _stage4.yaml)",
})
print("shipped base written to", path)
PY
