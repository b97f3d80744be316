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
    root = engine_val.headneck_cases(["pt_2"], data, tmp_path / "out")
    assert [p.name for p in (root / "imagesTr").iterdir()] == ["pt_2_0000.nii.gz"]
    assert [p.name for p in (root / "labelsTr").iterdir()] == ["pt_2.nii.gz"]
    assert all(p.is_symlink() for p in (root / "imagesTr").iterdir())


def test_shipped_adapters_held_out_cases_come_from_its_metadata(engine_val):
    """Without a run folder the val cases are the ones the shipped adapter was validated on:
    disjoint from its training cases, and never an openkbp_val case."""
    import json

    from core.weights import resolve_adapter

    info = json.loads((resolve_adapter("headneck-ct") / "sam3d_adapter.json").read_text())
    val = engine_val.adapter_val_cases("headneck-ct")
    assert val == info["data"]["val_cases"] and len(val) == 12
    assert not set(val) & set(info["data"]["train_cases"])
    assert info["data"]["val_cache"].endswith("openkbp_train")


# The shipped base's split (data.split_seed 0 over pretrain_data.sh's 540 cases): the 16
# hearts every heart validation number in BENCHMARKS.md was measured on.
SHIPPED_VAL_HEARTS = [12, 18, 36, 49, 63, 68, 98, 99, 119, 126, 127, 140, 155, 161, 227, 235]


def test_shipped_base_held_out_cases_are_recomputed_from_its_recipe(engine_val):
    val = engine_val.shipped_base_val_cases()
    assert len(val) == 20
    hearts = [int(c.split("_")[1]) for c in val if c.startswith("heart_")]
    assert hearts == SHIPPED_VAL_HEARTS


def test_held_out_hearts_are_written_as_in_the_training_data(engine_val, tmp_path, monkeypatch):
    import numpy as np

    from core.io import load_image
    from core.synthetic import write_heart_dataset

    monkeypatch.setattr(engine_val, "shipped_base_val_cases", lambda: ["heart_001", "organ_000"])
    root = engine_val.write_heart_val_cases(tmp_path / "out")
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["heart_001"]
    write_heart_dataset(tmp_path / "train", 2, seed=0)  # what pretrain_data.sh writes first
    for name in ("heart_001-image.nii.gz", "heart_001-label.nii.gz"):
        a = load_image(root / "heart_001" / name)
        b = load_image(tmp_path / "train" / "heart_001" / name)
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.affine, b.affine)


def test_unknown_cube_policy_is_refused_before_any_work(engine_val, capsys):
    with pytest.raises(SystemExit):
        engine_val.main(["--policies", "no_zoom_in,zoom_out", "--out", "/nonexistent/x"])
    assert "unknown zoom_out" in capsys.readouterr().err
    from core.engine import CubePolicy

    for kwargs in engine_val.POLICIES.values():  # every named policy is a valid CubePolicy
        CubePolicy(**kwargs)


def test_the_class_table_gives_the_mean_of_the_class_means(engine_val, capsys):
    """bench/mirror.py's and bench/follow_tubes.py's table: classes in order, then the mean
    of the class means (as sam3d eval aggregates), not of the structures."""
    per_class = {2: [[0.3, 0.4], [0.5, 0.6]], 1: [[0.7, 0.5]]}
    engine_val.print_class_table(per_class, ("plain Dice@1", "followed"), "hearts, volume")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [
        "| class | plain Dice@1 | followed | (hearts, volume) |",
        "| --- | --- | --- | --- |",
        "| 1 | 0.700 | 0.500 | |",
        "| 2 | 0.400 | 0.500 | |",
        "| **mean** | **0.550** | **0.500** | |",
    ]
