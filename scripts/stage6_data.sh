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
S5=runs/base_synthetic_stage5/data_summary.json
SRC="runs/data/heart_train runs/data/organs_train"
$PY scripts/link_split.py --summary $S5 --part train --out runs/data/pretrain6/train --sources $SRC \
  --add-all-from runs/data/tubes_train
$PY scripts/link_split.py --summary $S5 --part val --out runs/data/pretrain6/val --sources $SRC
for part in train val; do
  $SAM3D preprocess --original_nifti_dir "runs/data/pretrain6/$part" --out "runs/cache/pretrain6_$part" \
    --classes 5 --workers 2
done
