#!/usr/bin/env bash
# Stages 7-10 of the shipped base, on a CUDA GPU: continue stage 4 (scripts/train_base.sh) on
# the same synthetic data at a batch of 32. About 23 minutes on one H100 with 16 cores for
# the data workers (about 190 samples/s; the cube sampling on the CPU is the limit); the
# 214,000 samples would take about a day on 2 CPU cores. Each stage restarts the cosine
# schedule at a lower peak from the previous stage's last epoch. Stage 10 adds refinement
# rounds on the model's own predictions (sampling.p_self_refine, core.self_refine), which
# brought back the volume-mode refinement stages 7-9 had lost; the shipped base is stage 10's
# last epoch (BENCHMARKS.md). Writes the synthetic data first if runs/cache/pretrain is
# missing.
#
#   PY=python3 bash scripts/train_base_gpu.sh [section.key=value ...]   (applied to every stage)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -f runs/cache/pretrain/manifest.json ] || PY=$PY WORKERS=$(nproc) bash scripts/pretrain_data.sh
C=configs/base_synthetic_stage7.yaml
stage() {  # stage N, then the overrides of that stage
  local n=$1
  shift
  $PY -m core.cli train --config $C training.output_dir=runs/base_synthetic_stage$n "$@"
  $PY scripts/export_base.py runs/base_synthetic_stage$n/last.pt \
    runs/base_synthetic_stage$n/last.safetensors \
    --recipe "bash scripts/train_base.sh, then bash scripts/train_base_gpu.sh (stage $n)"
}
stage 7 "$@"
stage 8 training.init_checkpoint=runs/base_synthetic_stage7/last.safetensors training.seed=3 \
  training.epochs=9 training.steps_per_epoch=200 training.learning_rate=4e-4 \
  training.warmup_steps=100 "$@"
stage 9 training.init_checkpoint=runs/base_synthetic_stage8/last.safetensors training.seed=4 \
  training.epochs=10 training.steps_per_epoch=250 training.learning_rate=3e-4 \
  training.warmup_steps=100 "$@"
stage 10 training.init_checkpoint=runs/base_synthetic_stage9/last.safetensors training.seed=5 \
  training.epochs=7 training.steps_per_epoch=250 training.learning_rate=2e-4 \
  training.warmup_steps=100 sampling.p_self_refine=0.5 sampling.max_self_rounds=3 "$@"
