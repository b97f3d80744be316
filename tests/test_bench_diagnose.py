"""bench/diagnose.py: the intensity-trimming rule it reports on, and one run end to end."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from core.clicks import Click, PromptSet

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def diagnose():
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("diagnose", REPO / "bench" / "diagnose.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ball(shape, r):
    g = np.indices(shape) - (np.array(shape)[:, None, None, None] - 1) / 2
    return (g**2).sum(0) <= r**2


def test_trimming_drops_a_wall_of_another_intensity(diagnose):
    shape = (33, 33, 33)
    cavity, heart = _ball(shape, 7), _ball(shape, 11)
    img = np.where(cavity, 400.0, np.where(heart, 100.0, -100.0)).astype(np.float32)
    img += np.random.default_rng(0).normal(0, 10, shape).astype(np.float32)
    prompts = PromptSet((Click(2, 16, 16, 16),))
    trimmed = diagnose.trim_by_intensity(img, heart, cavity[:, :, 16], img[:, :, 16], prompts, 2.0)
    assert diagnose.dice(trimmed, cavity) > 0.95 > diagnose.dice(heart, cavity)
    # equal intensities inside and around: nothing to separate, the mask stays
    flat = np.zeros(shape, np.float32)
    kept = diagnose.trim_by_intensity(flat, heart, cavity[:, :, 16], flat[:, :, 16], prompts, 2.0)
    assert (kept == heart).all()


@pytest.mark.slow
def test_diagnose_runs_on_a_runs_validation_hearts(diagnose, tmp_path, capsys):
    from core.synthetic import write_heart_dataset

    data = tmp_path / "pretrain"
    write_heart_dataset(data, 2, seed=5)
    run = tmp_path / "run"
    run.mkdir()
    val = sorted(p.name for p in data.iterdir() if p.is_dir())[:1]
    (run / "data_summary.json").write_text(json.dumps({"val_cases": val}))
    assert (
        diagnose.main(["--run", str(run), "--data", str(data), "--out", str(tmp_path / "o")]) == 0
    )
    out = capsys.readouterr().out
    assert "5 structures, first click" in out
    rows = [r for r in out.splitlines() if r.startswith("| all |")]
    cells = rows[0].strip("|").split("|")[1:]
    numbers = [float(c) for c in cells if ":" not in c]  # all but the FP-per-label cell
    assert len(numbers) == len(cells) - 1 == 14
    assert all(0.0 <= v <= 1.0 for v in numbers[:1] + numbers[2:4] + numbers[5:])  # Dice, shares
    assert numbers[1] > 0  # the volume ratio
    assert numbers[3] > 0.9  # a heart's chamber lies in the cube...
    assert numbers[4] >= 1.0  # ...after one model pass or more
