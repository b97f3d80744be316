"""scripts/link_split.py: an experiment's data keeps its base run's train/validation split."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "link_split.py"


def _module():
    spec = importlib.util.spec_from_file_location("link_split", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tree(tmp_path):
    for d, cases in {
        "hearts": ["heart_0", "heart_1", "heart_2"],
        "organs": ["organ_0"],
        "tubes": ["tube_0", "tube_1"],
    }.items():
        for c in cases:
            (tmp_path / "data" / d / c).mkdir(parents=True)
    (tmp_path / "data" / "tubes" / "dataset.json").write_text("{}")  # a file, not a case
    summary = tmp_path / "data_summary.json"
    summary.write_text(
        json.dumps({"train_cases": ["heart_0", "organ_0", "heart_2"], "val_cases": ["heart_1"]})
    )
    return summary, [tmp_path / "data" / "hearts", tmp_path / "data" / "organs"]


def test_links_the_runs_cases_and_keeps_val_apart(tmp_path):
    ls = _module()
    summary, sources = _tree(tmp_path)
    out = tmp_path / "data" / "exp" / "train"
    ids = ls.link_split(summary, "train", out, sources, add_all_from=tmp_path / "data" / "tubes")
    assert ids == ["heart_0", "organ_0", "heart_2", "tube_0", "tube_1"]
    assert sorted(p.name for p in out.iterdir()) == sorted(ids)
    assert (out / "heart_0").is_symlink() and not Path((out / "heart_0").readlink()).is_absolute()
    assert (out / "tube_1").resolve() == (tmp_path / "data" / "tubes" / "tube_1").resolve()
    assert "heart_1" not in ids  # the run's validation case never lands in training
    val = ls.link_split(summary, "val", tmp_path / "v", sources, only_prefix="heart_")
    assert val == ["heart_1"]
    only = ls.link_split(summary, "train", tmp_path / "h", sources, only_prefix="heart_")
    assert only == ["heart_0", "heart_2"]


def test_a_case_missing_from_the_sources_is_named(tmp_path):
    ls = _module()
    summary, sources = _tree(tmp_path)
    with pytest.raises(SystemExit, match="organ_0"):
        ls.link_split(summary, "train", tmp_path / "o", sources[:1])
