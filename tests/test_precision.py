"""CPU precision: the engine's "auto" takes bf16 only where ``core.precision`` finds it the
faster, measured once per machine and kept on disk (split from test_engine.py)."""

import pytest
import torch
from test_engine import BallModel

from core.engine import Reconstructor


def _cpu_flags(monkeypatch, *, kernels: bool, amx: bool, avx512_bf16: bool) -> None:
    """Make this CPU look like another to core.precision: oneDNN's bf16 kernels, AMX,
    AVX512-BF16."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: kernels)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)


@pytest.mark.parametrize(("kernels", "amx", "avx512_bf16", "ratios", "expected"), [
    (True, True, True, None, "bf16"),  # AMX: bf16 without measuring
    (True, False, True, (0.7,) * 5, "bf16"),  # AVX512-BF16 alone, measured faster (AMD)
    (True, False, True, (0.95,) * 5, "fp32"),  # faster by less than 10 %: fp32, the exact one
    (True, False, True, (1.2,) * 5, "fp32"),  # measured slower (session 16's Intel)
    (True, False, True, (0.6, 0.6, 0.6, 1.1, 1.2), "fp32"),  # pairs disagree: fp32
    (True, False, True, (0.6, 0.6, 0.6, 0.6, 1.1), "bf16"),  # one slow pair is noise
    (True, False, False, None, "fp32"),  # AVX512 without bf16: emulated, never measured
    (False, False, False, None, "fp32"),  # no bf16 kernels: never, and nothing measured
])  # fmt: skip
def test_auto_precision_is_bf16_where_it_is_the_faster(
    monkeypatch, kernels, amx, avx512_bf16, ratios, expected
):
    """CPUs with AVX512-BF16 but no AMX disagree (bf16 20 % slower on one, 30 % faster on
    another: BENCHMARKS), so there "auto" measures; training's CPU AMP follows the same rule."""
    import core.precision
    from core.precision import CpuBf16Timing, fast_cpu_bf16

    monkeypatch.delenv("SAM3D_CPU_BF16", raising=False)
    calls = []

    def timing():
        calls.append(1)
        return CpuBf16Timing(100.0, 100.0 * sorted(ratios)[2], ratios)

    monkeypatch.setattr(core.precision, "cpu_bf16_timing", timing)
    _cpu_flags(monkeypatch, kernels=kernels, amx=amx, avx512_bf16=avx512_bf16)
    assert Reconstructor(BallModel(10.0)).precision == expected
    assert fast_cpu_bf16() == (expected == "bf16")  # training's CPU AMP rule
    assert len(calls) == (2 if ratios else 0)
    assert Reconstructor(BallModel(10.0), precision="bf16").precision == "bf16"  # as asked
    assert Reconstructor(BallModel(10.0), precision="fp32").precision == "fp32"
    assert len(calls) == (2 if ratios else 0)  # an explicit precision measures nothing


def test_the_environment_decides_cpu_bf16_without_measuring(monkeypatch):
    import core.precision
    from core.precision import fast_cpu_bf16

    monkeypatch.setattr(core.precision, "cpu_bf16_timing", lambda: pytest.fail("measured"))
    _cpu_flags(monkeypatch, kernels=True, amx=False, avx512_bf16=True)  # a CPU that measures
    for value, expected in (("1", "bf16"), ("0", "fp32"), (" 1 ", "bf16")):
        monkeypatch.setenv("SAM3D_CPU_BF16", value)
        assert Reconstructor(BallModel(10.0)).precision == expected
        assert fast_cpu_bf16() == (expected == "bf16")
    monkeypatch.setenv("SAM3D_CPU_BF16", "yes")
    with pytest.raises(ValueError, match="SAM3D_CPU_BF16 must be 0 or 1, got 'yes'"):
        fast_cpu_bf16()


def test_the_cpu_bf16_measurement_times_pairs_and_leaves_the_random_stream():
    from core.precision import measure_cpu_bf16

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    timing = measure_cpu_bf16(pairs=2)
    assert torch.equal(torch.rand(3), expected)
    assert 0 < timing.fp32_ms < 60_000 and 0 < timing.bf16_ms < 60_000
    assert len(timing.ratios) == 2 and all(r > 0 for r in timing.ratios)


@pytest.fixture
def fresh_timing_cache(monkeypatch, tmp_path):
    """An empty cache folder, nothing known to this process, and a counted fake measurement."""
    import core.precision
    from core.precision import CpuBf16Timing

    monkeypatch.setenv("SAM3D_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def measure():
        calls.append(1)
        return CpuBf16Timing(80.0, 60.0, (0.75, 0.74, 0.76, 0.8, 0.7))

    monkeypatch.setattr(core.precision, "measure_cpu_bf16", measure)
    monkeypatch.setattr(core.precision, "_KNOWN", {})  # this process knows nothing yet
    return calls


def _new_process(monkeypatch):
    """What a new process on the same machine knows: only the cache file."""
    import core.precision

    monkeypatch.setattr(core.precision, "_KNOWN", {})


def test_a_machine_measures_once_and_keeps_the_answer_on_disk(fresh_timing_cache, monkeypatch):
    import json

    from core.precision import cache_file, cpu_bf16_timing

    calls = fresh_timing_cache
    first = cpu_bf16_timing()
    assert calls == [1] and first.bf16_faster
    (row,) = json.loads(cache_file().read_text()).values()
    assert row["bf16"] is True and row["fp32_ms"] == 80.0
    assert cpu_bf16_timing() == first and calls == [1]  # known to this process
    _new_process(monkeypatch)  # a new process on the same machine: read, not measured
    assert cpu_bf16_timing() == first and calls == [1]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads != 1 else 2)
        cpu_bf16_timing()  # another thread count is another answer
        assert calls == [1, 1] and len(json.loads(cache_file().read_text())) == 2
    finally:
        torch.set_num_threads(threads)


def test_a_broken_timing_cache_is_measured_around(fresh_timing_cache, monkeypatch):
    import json

    from core.precision import cache_file, cpu_bf16_timing

    calls = fresh_timing_cache
    cache_file().parent.mkdir(parents=True)
    cache_file().write_text("{not json")
    assert cpu_bf16_timing().bf16_faster and calls == [1]
    assert len(json.loads(cache_file().read_text())) == 1  # rewritten whole
    cache_file().unlink()
    cache_file().mkdir()  # cannot be written: still an answer, never an error
    _new_process(monkeypatch)
    assert cpu_bf16_timing().bf16_faster and calls == [1, 1]


@pytest.mark.parametrize("row", [
    {"fp32_ms": 80.0, "bf16_ms": 60.0, "ratios": []},  # a median of nothing would raise
    {"fp32_ms": 80.0, "bf16_ms": 60.0, "ratios": "07"},
    {"fp32_ms": 80.0, "bf16_ms": 60.0, "ratios": {"0.5": 1}},
    {"fp32_ms": 80.0, "bf16_ms": 60.0, "ratios": [0.5, -1.0]},
    {"fp32_ms": "NaN", "bf16_ms": 60.0, "ratios": [0.5]},
    {"fp32_ms": 80.0, "ratios": [0.5]},
    [1, 2],
    "bf16",
])  # fmt: skip
def test_a_malformed_cache_row_is_measured_again(fresh_timing_cache, row):
    import json

    from core.precision import _cpu_key, cache_file, cpu_bf16_timing

    cache_file().parent.mkdir(parents=True)
    cache_file().write_text(json.dumps({_cpu_key(): row}))
    assert cpu_bf16_timing().bf16_faster and fresh_timing_cache == [1]
    assert json.loads(cache_file().read_text())[_cpu_key()]["ratios"] == [
        0.75,
        0.74,
        0.76,
        0.8,
        0.7,
    ]


def test_a_cache_too_deep_to_parse_or_no_home_is_measured_around(fresh_timing_cache, monkeypatch):
    from pathlib import Path

    from core.precision import cache_file, cpu_bf16_timing

    cache_file().parent.mkdir(parents=True)
    cache_file().write_text("[" * 100_000 + "]" * 100_000)  # RecursionError in json
    assert cpu_bf16_timing().bf16_faster and fresh_timing_cache == [1]
    _new_process(monkeypatch)
    monkeypatch.delenv("SAM3D_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert cpu_bf16_timing().bf16_faster and fresh_timing_cache == [1, 1]


def test_a_failed_timing_falls_back_to_fp32_with_a_warning(monkeypatch):
    import core.precision
    from core.precision import fast_cpu_bf16

    def broken():
        raise RuntimeError("oneDNN: could not create a primitive")

    monkeypatch.delenv("SAM3D_CPU_BF16", raising=False)
    monkeypatch.setattr(core.precision, "cpu_bf16_timing", broken)
    _cpu_flags(monkeypatch, kernels=True, amx=False, avx512_bf16=True)
    with pytest.warns(UserWarning, match="could not time bf16 on this CPU, using fp32: oneDNN"):
        assert not fast_cpu_bf16()
    with pytest.warns(UserWarning):
        assert Reconstructor(BallModel(10.0)).precision == "fp32"
