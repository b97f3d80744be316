"""Where bf16 pays on a CPU: the one rule the engine's ``precision="auto"`` and training's
``training.amp=true`` on CPU both follow."""

from __future__ import annotations

import torch

__all__ = ["fast_cpu_bf16"]


def fast_cpu_bf16() -> bool:
    """Whether bf16 autocast runs this project's model faster than fp32 on this CPU: only with
    AMX (Intel Xeon since Sapphire Rapids).

    With AVX512-BF16 alone (Cooper Lake, AMD Zen 4) oneDNN has bf16 kernels but runs the model
    slower than in fp32 (BENCHMARKS, session 16, 2 threads: a click's forward passes 173-197
    against 151-164 ms, a training step of 4 items 1.15 against 0.95 s), so fp32 is the
    choice there; the VM of the earlier sessions ran bf16 faster (a training step 0.98 against
    1.19 s). Without bf16 kernels at all it would be emulated.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and bool(
            torch.cpu._is_amx_tile_supported()
        )
    except (AttributeError, RuntimeError):
        return False
