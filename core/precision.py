"""Where bf16 pays on a CPU: the one rule the engine's ``precision="auto"`` and training's
``training.amp=true`` on CPU both follow.

CPUs disagree, so where the flags cannot tell, the rule measures. Without native bf16
instructions (AVX512-BF16 or AMX) oneDNN would emulate bf16: fp32. With AMX (Intel Xeon since
Sapphire Rapids) bf16 autocast is the faster precision for this model. With AVX512-BF16
alone it depends on the CPU: on session 16's Intel VM a click's two forward passes took
173-197 ms in bf16 against 151-164 ms in fp32; on session 17's AMD EPYC (Zen 4) bf16 took
0.71-0.72 times fp32's time for the forward and 0.68-0.71 for a training step (BENCHMARKS,
"Session 17"). There the shipped architecture's forward is timed in both precisions (random weights,
batch 1, 5 alternating pairs after a warm-up, about a second) and bf16 is taken only if the
median pair is at least 10 % faster and at most one pair is not faster at all; otherwise
fp32, the exact one. The answer is kept for the process and in a small JSON file
(``cpu_precision.json`` in ``$SAM3D_CACHE_DIR``, else ``$XDG_CACHE_HOME/sam3d``, else
``~/.cache/sam3d``; delete it to measure again) keyed by the CPU's model, torch's version and
the thread count, so a machine measures once.

``SAM3D_CPU_BF16=1`` or ``=0`` in the environment decides without measuring.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

__all__ = [
    "fast_cpu_bf16",
    "env_choice",
    "cpu_bf16_timing",
    "measure_cpu_bf16",
    "CpuBf16Timing",
    "cache_file",
    "known_timing",
    "ENV_VAR",
    "MIN_GAIN",
]

ENV_VAR = "SAM3D_CPU_BF16"
# bf16 must beat fp32 by this fraction of fp32's time (median of the pairs) to be chosen.
MIN_GAIN = 0.10


@dataclass(frozen=True)
class CpuBf16Timing:
    """Paired timings of the forward: medians in ms and each pair's bf16 / fp32 ratio."""

    fp32_ms: float
    bf16_ms: float
    ratios: tuple[float, ...]

    @property
    def bf16_faster(self) -> bool:
        """At least :data:`MIN_GAIN` faster in the median pair, and slower in at most one."""
        r = self.ratios
        return statistics.median(r) < 1.0 - MIN_GAIN and sum(x >= 1.0 for x in r) <= 1


def env_choice() -> bool | None:
    """``SAM3D_CPU_BF16``: True for 1, False for 0, None when unset. Anything else raises
    ``ValueError`` (so every process of a run fails alike, not one of them)."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env in ("0", "1"):
        return env == "1"
    if env:
        raise ValueError(f"{ENV_VAR} must be 0 or 1, got {env!r}")
    return None


def fast_cpu_bf16() -> bool:
    """Whether bf16 autocast runs this project's model faster than fp32 on this CPU.

    ``SAM3D_CPU_BF16`` decides if set; else no native bf16 (oneDNN's kernels and AVX512-BF16
    or AMX) -> False, AMX -> True, otherwise :func:`cpu_bf16_timing` (measured once per
    machine)."""
    choice = env_choice()
    if choice is not None:
        return choice
    try:
        kernels = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        amx = bool(torch.cpu._is_amx_tile_supported())
        avx512_bf16 = bool(torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
    if not kernels or not (amx or avx512_bf16):
        return False
    if amx:
        return True
    try:
        return cpu_bf16_timing().bf16_faster
    except Exception as e:  # the timing itself failed: fp32 always works
        warnings.warn(f"could not time bf16 on this CPU, using fp32: {e}", stacklevel=2)
        return False


def cache_file() -> Path:
    """Where measured answers are kept (delete it to measure again)."""
    root = os.environ.get("SAM3D_CACHE_DIR")
    if root:
        return Path(root) / "cpu_precision.json"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "sam3d" / "cpu_precision.json"


def _cpu_key() -> str:
    """The CPU (model name, family, model, stepping), torch's version and thread count."""
    fields = {"model name": platform.processor() or platform.machine()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            name = name.strip()
            if name in ("model name", "cpu family", "model", "stepping"):
                fields[name] = value.strip()
            elif not name and len(fields) > 1:  # the first processor's block ends
                break
    except OSError:
        pass
    cpu = fields.pop("model name")
    if fields:
        cpu += " (" + ", ".join(f"{k} {v}" for k, v in fields.items()) + ")"
    return f"{cpu} | torch {torch.__version__} | {torch.get_num_threads()} threads"


# Answers known to this process, by _cpu_key().
_KNOWN: dict[str, CpuBf16Timing] = {}


def known_timing() -> CpuBf16Timing | None:
    """The answer this process has already measured or read for this CPU key, if any."""
    return _KNOWN.get(_cpu_key())


def _row_timing(row) -> CpuBf16Timing | None:
    """A cache row as a timing, or None when it is not a well-formed one."""
    try:
        fp32, bf16 = float(row["fp32_ms"]), float(row["bf16_ms"])
        ratios = row["ratios"]
        if not isinstance(ratios, list) or not ratios:
            return None
        ratios = tuple(float(r) for r in ratios)
        values = (fp32, bf16, *ratios)
        if not all(math.isfinite(v) and v > 0 for v in values):
            return None
        return CpuBf16Timing(fp32, bf16, ratios)
    except (KeyError, TypeError, ValueError):
        return None


def cpu_bf16_timing() -> CpuBf16Timing:
    """This machine's :func:`measure_cpu_bf16`: known to this process, or read from the
    cache file when it holds this CPU key, or measured and written there (atomically). A
    cache that cannot be found, read or written, or a malformed row, is measured around,
    never an error."""
    from core.atomic import write_json

    key = _cpu_key()
    if key in _KNOWN:
        return _KNOWN[key]
    try:
        path = cache_file()
    except Exception:  # no home directory: nowhere to keep it, measured for the process
        path = None
    try:
        table = json.loads(path.read_text()) if path is not None else {}
    except Exception:  # no file, not JSON, nested too deep: measure
        table = {}
    if not isinstance(table, dict):
        table = {}
    timing = _row_timing(table.get(key))
    if timing is None:
        timing = measure_cpu_bf16()
        table[key] = {**asdict(timing), "bf16": timing.bf16_faster, "measured": time.ctime()}
        try:
            if path is not None:
                write_json(path, table)
        except Exception:  # read-only or not a folder: the answer still holds for the process
            pass
    _KNOWN[key] = timing
    return timing


def measure_cpu_bf16(pairs: int = 5) -> CpuBf16Timing:
    """Time the shipped architecture's CPU forward (batch 1, random weights and inputs,
    torch's current thread count) in fp32 and in bf16 autocast: one warm-up each, then
    ``pairs`` alternating pairs. About a second; not cached (see :func:`cpu_bf16_timing`)."""
    from core.model import ModelConfig, Sam3DMed, random_batch

    with torch.random.fork_rng(devices=[]):  # the caller's CPU random stream is left alone
        torch.default_generator.manual_seed(0)  # (and no other device's is touched)
        model = Sam3DMed(ModelConfig()).eval()
    batch = random_batch(model.cfg, generator=torch.Generator().manual_seed(0))

    def once(bf16: bool) -> float:
        t = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            model(batch)
        return (time.perf_counter() - t) * 1000.0

    once(False), once(True)
    fp32, bf16 = [], []
    for _ in range(pairs):
        fp32.append(once(False))
        bf16.append(once(True))
    return CpuBf16Timing(
        statistics.median(fp32),
        statistics.median(bf16),
        tuple(round(b / f, 4) for f, b in zip(fp32, bf16, strict=True)),
    )
