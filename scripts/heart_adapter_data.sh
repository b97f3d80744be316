#!/usr/bin/env bash
# The data of the cardiac adapter experiment (configs/lora_heart.yaml), after
# scripts/train_base.sh has written the synthetic hearts and trained the base: the base's own
# heart training cases and its validation hearts, linked apart (the base's split, so that no
# validation heart is trained on), both preprocessed. The test hearts are not touched.
#
#   bash scripts/heart_adapter_data.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
SAM3D=.venv/bin/sam3d
for part in train val; do
  $PY scripts/link_split.py --summary runs/base_synthetic_stage4/data_summary.json --part $part \
    --out "runs/data/heartlora/$part" --sources runs/data/heart_train --only-prefix heart_
done
for part in train val; do
  $SAM3D preprocess --original_nifti_dir "runs/data/heartlora/$part" --out "runs/cache/heartlora_$part" \
    --classes 5 --workers 2
done
