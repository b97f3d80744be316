#!/usr/bin/env bash
# The base's synthetic training data, written by code (no download): 240 cardiac phantoms and
# 300 organ-shape volumes (seed 0), linked into one dataset folder and preprocessed once into
# runs/cache/pretrain. Used by scripts/train_base.sh (CPU) and scripts/train_base_gpu.sh.
#
#   PY=.venv/bin/python WORKERS=2 bash scripts/pretrain_data.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORKERS=${WORKERS:-2}
mkdir -p runs/data/pretrain
$PY -m core.cli synth --out runs/data/heart_train --cases 240 --seed 0 &
hearts=$!
$PY -m core.cli synth --kind organs --out runs/data/organs_train --cases 300 --seed 0 &
organs=$!
wait $hearts
wait $organs
# One dataset folder with both kinds of cases (links), preprocessed once.
for d in runs/data/heart_train/heart_* runs/data/organs_train/organ_*; do
  ln -sfn "../$(basename "$(dirname "$d")")/$(basename "$d")" "runs/data/pretrain/$(basename "$d")"
done
$PY -m core.cli preprocess --original_nifti_dir runs/data/pretrain --out runs/cache/pretrain \
  --classes 5 --workers "$WORKERS"
