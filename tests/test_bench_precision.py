"""bench/precision.py times both precisions of the forward and of a training step and says
what core.precision decides."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("env", ["0", "1"])
def test_precision_bench_reports_both_precisions_and_the_decision(monkeypatch, capsys, env):
    monkeypatch.setenv("SAM3D_CPU_BF16", env)  # decide without the second's measurement
    spec = importlib.util.spec_from_file_location("precision", REPO / "bench" / "precision.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = ["--threads", "1", "--repeats", "1", "--train_repeats", "1", "--batch", "1"]
    assert mod.main(args) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| forward") or "step" in line]
    assert len(rows) == 2 and all(line.count("|") == 5 for line in rows)
    decided = "True" if env == "1" else "False"
    assert f"fast_cpu_bf16(): {decided} (SAM3D_CPU_BF16={env};" in out
