"""bench/engine_val.py validates on a training run's held-out cases only, linked not copied."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine_val():
    spec = importlib.util.spec_from_file_location("engine_val", REPO / "bench" / "engine_val.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(tmp_path, val):
    run = tmp_path / "run"
    run.mkdir()
    (run / "data_summary.json").write_text(json.dumps({"val_cases": val, "train_cases": ["x"]}))
    return run


def test_heart_validation_cases_are_the_runs_held_out_hearts(engine_val, tmp_path):
    data = tmp_path / "pretrain"
    for c in ("heart_001", "heart_002", "organ_003"):
        (data / c).mkdir(parents=True)
    root = engine_val.heart_cases(
        _run(tmp_path, ["heart_002", "organ_003"]), data, tmp_path / "out"
    )
    assert sorted(p.name for p in root.iterdir()) == ["heart_002"]
    assert (root / "heart_002").is_symlink()


def test_headneck_validation_cases_are_linked_in_nnunet_layout(engine_val, tmp_path):
    data = tmp_path / "openkbp_train"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    (data / "dataset.json").write_text("{}")
    for c in ("pt_1", "pt_2"):
        (data / "imagesTr" / f"{c}_0000.nii.gz").write_bytes(b"")
        (data / "labelsTr" / f"{c}.nii.gz").write_bytes(b"")
    root = engine_val.headneck_cases(_run(tmp_path, ["pt_2"]), data, tmp_path / "out")
    assert [p.name for p in (root / "imagesTr").iterdir()] == ["pt_2_0000.nii.gz"]
    assert [p.name for p in (root / "labelsTr").iterdir()] == ["pt_2.nii.gz"]
    assert all(p.is_symlink() for p in (root / "imagesTr").iterdir())
