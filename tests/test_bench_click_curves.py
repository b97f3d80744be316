"""bench/click_curves.py: per-click Dice from metrics.json files into one picture."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cc():
    spec = importlib.util.spec_from_file_location(
        "click_curves", REPO / "bench" / "click_curves.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def metrics(tmp_path, name, dice):
    overall = {f"dice@{k + 1}": d for k, d in enumerate(dice)}
    overall.update({f"hd95@{k + 1}": 10.0 - k for k in range(len(dice))})
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"aggregate": {"overall": overall}}))
    return path


def test_per_click_reads_every_click_in_order(cc, tmp_path):
    m = json.loads(metrics(tmp_path, "a", [0.5, 0.6, 0.55]).read_text())
    assert cc.per_click(m) == [0.5, 0.6, 0.55]
    assert cc.per_click(m, "hd95") == [10.0, 9.0, 8.0]
    with pytest.raises(ValueError, match="surface_dice@1"):
        cc.per_click(m, "surface_dice")


def test_writes_one_png_with_a_panel_per_setting(cc, tmp_path, capsys):
    from PIL import Image

    a, b = metrics(tmp_path, "a", [0.5, 0.6]), metrics(tmp_path, "b", [0.7, 0.8, 0.9])
    out = tmp_path / "curves.png"
    args = ["--out", str(out), "--panel", "one", f"old={a}", f"new={b}", "--panel", "two", f"b={b}"]
    assert cc.main(args) == 0
    w, h = Image.open(out).size
    assert w > 1.5 * h  # two panels side by side
    printed = capsys.readouterr().out
    assert "one | new: 0.700, 0.800, 0.900" in printed and "two | b:" in printed


def test_bad_arguments_name_the_problem(cc, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cc.main(["--out", str(tmp_path / "x.png"), "--panel", "t", "no-equals-sign"])
    assert "expected LABEL=METRICS_JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cc.main(
            ["--out", str(tmp_path / "x.png"), "--panel", "t", f"a={tmp_path / 'missing.json'}"]
        )
    assert "missing.json" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
