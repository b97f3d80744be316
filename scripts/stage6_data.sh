#!/usr/bin/env bash
# The data of base stage 6 (configs/base_synthetic_stage6.yaml), after stage 5 has run:
# 200 samples with a thin tube through the whole field of view, linked beside stage 1-5's
# training cases; stage 1-5's 20 validation cases linked apart (the same split: a split over
# the enlarged case list would move some of them into training); both preprocessed.
#
#   bash scripts/stage6_data.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
SAM3D=.venv/bin/sam3d
$SAM3D synth --kind tubes --out runs/data/tubes_train --cases 200 --seed 0
$PY - <<'PY'
import json
from pathlib import Path

summary = json.loads(Path("runs/base_synthetic_stage5/data_summary.json").read_text())
data = Path("runs/data")
where = {c.name: c for d in ("heart_train", "organs_train", "tubes_train")
         for c in (data / d).iterdir() if c.is_dir()}
tubes = sorted(k for k in where if k.startswith("tube_"))
for part, ids in (("train", summary["train_cases"] + tubes), ("val", summary["val_cases"])):
    out = data / "pretrain6" / part
    out.mkdir(parents=True, exist_ok=True)
    for case in ids:
        link = out / case
        if not link.is_symlink():
            link.symlink_to(Path("../..", where[case].parent.name, case))
    print(f"runs/data/pretrain6/{part}: {len(ids)} cases")
PY
for part in train val; do
  $SAM3D preprocess --original_nifti_dir "runs/data/pretrain6/$part" --out "runs/cache/pretrain6_$part" \
    --classes 5 --workers 2
done
