"""Where bf16 pays on a CPU: the one rule the engine's ``precision="auto"`` and training's
``training.amp=true`` on CPU both follow.

CPUs disagree, so where the flags cannot tell, the rule measures. With AMX (Intel Xeon since
Sapphire Rapids) bf16 autocast is the faster precision for this model. With AVX512-BF16 alone
it depends on the CPU: on session 16's Intel VM it was 10-25 % slower than fp32 (a click's
forward passes 173-197 against 151-164 ms), on session 17's AMD EPYC (Zen 4) 30-35 % faster (a
forward 58-66 against 84-101 ms, a training step of 4 items 0.82 against 1.24 s; BENCHMARKS).
There, the first call times the shipped architecture's forward in both precisions (random
weights, batch 1, about a second, once per process) and takes bf16 only if it is at least
10 % faster. Without bf16 kernels it would be emulated: never.

``SAM3D_CPU_BF16=1`` or ``=0`` in the environment decides without measuring.
"""

from __future__ import annotations

import functools
import os
import statistics
import time

import torch

__all__ = ["fast_cpu_bf16", "measure_cpu_bf16", "ENV_VAR", "MIN_GAIN"]

ENV_VAR = "SAM3D_CPU_BF16"
# bf16 must beat fp32 by this fraction of fp32's time to be chosen (fp32 is exact; a tie or
# the measurement's noise keeps it).
MIN_GAIN = 0.10


def fast_cpu_bf16() -> bool:
    """Whether bf16 autocast runs this project's model faster than fp32 on this CPU.

    ``SAM3D_CPU_BF16`` (``1``/``0``) decides if set; else no oneDNN bf16 kernels -> False,
    AMX -> True, and otherwise :func:`measure_cpu_bf16` (cached for the process)."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env in ("0", "1"):
        return env == "1"
    if env:
        raise ValueError(f"{ENV_VAR} must be 0 or 1, got {env!r}")
    try:
        kernels = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        amx = bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False
    if not kernels:
        return False
    if amx:
        return True
    fp32_ms, bf16_ms = measure_cpu_bf16()
    return bf16_ms < (1.0 - MIN_GAIN) * fp32_ms


@functools.cache
def measure_cpu_bf16(repeats: int = 3) -> tuple[float, float]:
    """Median ms of the shipped architecture's CPU forward (batch 1, random weights and
    inputs, torch's current thread count) in fp32 and in bf16 autocast, alternating after one
    warm-up each. Cached: the first call costs about a second."""
    from core.model import ModelConfig, Sam3DMed, random_batch

    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream alone
        torch.manual_seed(0)
        model = Sam3DMed(ModelConfig()).eval()
    batch = random_batch(model.cfg, generator=torch.Generator().manual_seed(0))

    def once(bf16: bool) -> float:
        t = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            model(batch)
        return (time.perf_counter() - t) * 1000.0

    once(False), once(True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for bf16 in (False, True):
            times[bf16].append(once(bf16))
    return statistics.median(times[False]), statistics.median(times[True])
