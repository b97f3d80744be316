#!/usr/bin/env bash
# Reproduce the shipped base weights (core/assets/base.safetensors) from nothing:
# synthetic data only (no download). Stages 1-4 take about four hours on 2 CPU cores; stages
# 7-10 (scripts/train_base_gpu.sh) about 23 minutes on one H100 GPU, a day on 2 cores.
# Stage 1 trains from random weights (configs/base_synthetic.yaml); stage 2 continues it with
# a warm restart and harder refinement examples (configs/base_synthetic_stage2.yaml); stage 3
# continues with training cubes placed as the engine places them (configs/base_synthetic_stage3.yaml);
# stage 4 continues stage 3 on fresh samples at a lower learning rate (configs/base_synthetic_stage4.yaml);
# stages 7-10 continue stage 4 at a batch of 32 with four warm restarts (configs/base_synthetic_stage7.yaml),
# the last with refinement rounds on the model's own predictions.
# Stages 5 and 6 were experiments that were not kept (their configs say why).
#
#   bash scripts/train_base.sh [overrides...]     e.g. training.epochs=2 for a quick look
#                                                 (the overrides apply to every stage)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
SAM3D=.venv/bin/sam3d
PY=$PY WORKERS=2 bash scripts/pretrain_data.sh
$SAM3D train --config configs/base_synthetic.yaml "$@"
$SAM3D train --config configs/base_synthetic_stage2.yaml "$@"
$SAM3D train --config configs/base_synthetic_stage3.yaml "$@"
$SAM3D train --config configs/base_synthetic_stage4.yaml "$@"
PY=$PY bash scripts/train_base_gpu.sh "$@"
# The shipped base is stage 10's last epoch (BENCHMARKS.md).
$PY scripts/export_base.py runs/base_synthetic_stage10/last.safetensors core/assets/base.safetensors \
  --recipe "bash scripts/train_base.sh (configs/base_synthetic.yaml, _stage2.yaml, _stage3.yaml and _stage4.yaml on the CPU, then scripts/train_base_gpu.sh: configs/base_synthetic_stage7.yaml and stages 8-10 on a GPU)"
