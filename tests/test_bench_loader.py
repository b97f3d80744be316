"""bench/loader.py runs the training data loader the way ``core.train`` does and reports it."""

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_loader_bench_times_every_epoch_of_the_run(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("loader", REPO / "bench" / "loader.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        out = tmp_path / "loader.json"
        args = ["--epochs", "2", "--steps", "1", "--batch", "2", "--workers", "1"]
        assert mod.main([*args, "--repeats", "1", "--json", str(out)]) == 0
    finally:
        sys.path.remove(str(REPO / "bench"))
    (row,) = json.loads(out.read_text())
    (run,) = row["runs"]
    assert len(run["epochs"]) == 2 and all(t > 0 for t in run["epochs"])
    assert run["steps"] == 1 and set(run["val_items"]) == {"volume", "slice"}
    assert f"| {REPO} |" in capsys.readouterr().out
