#!/usr/bin/env bash
# Reproduce the shipped head-and-neck adapter (core/assets/adapters/headneck-ct) from
# ../shared/data/openkbp_train only, on top of the shipped base.
#
#   bash scripts/train_headneck.sh [overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
SAM3D=.venv/bin/sam3d
DATA=${OPENKBP_TRAIN:-../shared/data/openkbp_train}
$SAM3D preprocess --original_nifti_dir "$DATA" --out runs/cache/openkbp_train --classes 7 --workers 2
$SAM3D train --config configs/lora_headneck.yaml "$@"
rm -rf core/assets/adapters/headneck-ct.tmp
mkdir -p core/assets/adapters
cp -r runs/lora_headneck/adapter_best core/assets/adapters/headneck-ct.tmp
rm -rf core/assets/adapters/headneck-ct
mv core/assets/adapters/headneck-ct.tmp core/assets/adapters/headneck-ct
echo "shipped adapter written to core/assets/adapters/headneck-ct"
