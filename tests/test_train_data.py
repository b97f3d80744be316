"""What a training run trains and validates on: the split by case, raw folders preprocessed
first, caches of another modality or intensity rule, cases taken out or added between runs,
and separate validation data; on a tiny model and tiny synthetic hearts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_common import make_cfg

from core.train import split_cases, train

# one thread, the tiny synthetic hearts and their cache: tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_thread")


def test_validation_is_split_by_case_without_leakage(hearts_cache, tmp_path):
    ids = [f"c{i}" for i in range(10)]
    tr, va = split_cases(ids, val_fraction=0.2, seed=0)
    assert len(va) == 2 and not set(tr) & set(va) and sorted(tr + va) == ids
    assert split_cases(ids, val_fraction=0.2, seed=0) == (tr, va)  # deterministic
    assert any(split_cases(ids, val_fraction=0.2, seed=s)[1] != va for s in range(1, 5))
    with pytest.raises(ValueError, match="at least 2 cases"):
        split_cases(["only"], val_fraction=0.2, seed=0)

    cfg = make_cfg(hearts_cache, tmp_path / "s", "training.epochs=1", "training.steps_per_epoch=1")
    train(cfg)
    summary = json.loads((tmp_path / "s" / "data_summary.json").read_text())
    assert summary["n_val_cases"] == 1 and summary["n_train_cases"] == 3
    assert not set(summary["train_cases"]) & set(summary["val_cases"])
    # another training.seed draws another split, unless data.split_seed pins it
    ids4 = sorted(summary["train_cases"] + summary["val_cases"])
    seed = next(s for s in range(1, 20) if split_cases(ids4, val_fraction=0.2, seed=s)[1]
                != summary["val_cases"])  # fmt: skip
    for name, pin in (("u", []), ("v", ["data.split_seed=0"])):
        train(make_cfg(hearts_cache, tmp_path / name, "training.epochs=1",
                       "training.steps_per_epoch=1", f"training.seed={seed}", *pin))  # fmt: skip
    val_of = {n: json.loads((tmp_path / n / "data_summary.json").read_text())["val_cases"]
              for n in "uv"}  # fmt: skip
    assert val_of["u"] != summary["val_cases"] and val_of["v"] == summary["val_cases"]
    # the same folder as separate validation data would leak: refused
    leaky = make_cfg(hearts_cache, tmp_path / "t", f"data.val_data={json.dumps(str(hearts_cache))}")
    with pytest.raises(ValueError, match="leak"):
        train(leaky)


def test_raw_dataset_folder_is_preprocessed_first(hearts_raw, tmp_path):
    with pytest.raises(ValueError, match="data.classes"):
        train(make_cfg(hearts_raw, tmp_path / "p0"))
    cfg = make_cfg(hearts_raw, tmp_path / "p", "data.classes=5", "data.spacing=6.0",
                   "training.epochs=1", "training.steps_per_epoch=1")  # fmt: skip
    result = train(cfg)
    cache = tmp_path / "p" / "cache"
    assert (cache / "manifest.json").is_file()
    assert len(list((cache / "cases").glob("*/meta.json"))) == 4
    assert result.epochs_done == 1 and Path(result.best_checkpoint).is_file()
    assert json.loads((tmp_path / "p" / "data_summary.json").read_text())["train_cache"] == str(
        cache
    )


def test_a_cache_of_another_modality_than_data_modality_is_refused(hearts_cache, tmp_path):
    """The run's data.modality is what its adapter records (and what front ends compare the
    user's choice with): a CT cache trained as MR would record a modality it never saw."""
    cfg = make_cfg(hearts_cache, tmp_path / "m", "data.modality=mr")
    with pytest.raises(ValueError, match=r"normalised as ct but data.modality is mr"):
        train(cfg)
    assert not (tmp_path / "m" / "last.pt").exists()


def test_an_mr_cache_made_before_the_intensity_rule_was_recorded_is_refused(hearts_cache, tmp_path):
    """An MR cache from before percentiles to [0, 0.5] holds z-scores: an adapter trained on it
    would see other intensities at inference. A CT cache of that time (same rule) still trains."""
    import shutil

    from core.train_data import _as_cache

    old = tmp_path / "old_mr"
    shutil.copytree(hearts_cache, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["params"]["intensity"]
    manifest["params"]["modality"] = "mr"
    (old / "manifest.json").write_text(json.dumps(manifest))
    cfg = make_cfg(old, tmp_path / "m", "data.modality=mr")
    with pytest.raises(
        ValueError, match=r"old_mr: cache intensities were normalised under an earlier rule"
    ):
        train(cfg)
    assert not (tmp_path / "m" / "last.pt").exists()
    manifest["params"]["modality"] = "ct"
    (old / "manifest.json").write_text(json.dumps(manifest))
    cfg = make_cfg(old, tmp_path / "c")
    assert _as_cache(str(old), tmp_path / "x", cfg, None, print, None, None, {}) == old


def test_a_case_taken_out_of_a_raw_folder_is_not_trained_on(hearts_raw, tmp_path):
    """The run folder's cache keeps what an earlier attempt preprocessed: a case the user
    has since taken out of the raw folder (a bad or a test case) must not be trained on."""
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(hearts_raw, raw)
    extra = ("data.classes=5", "data.spacing=6.0", "training.epochs=1")
    steps = []
    stopped = train(
        make_cfg(raw, tmp_path / "r", *extra),
        progress=lambda d, t, m: steps.append(m),
        should_stop=lambda: any(not m.startswith("preprocess") for m in steps),
    )
    assert stopped.stopped and stopped.epochs_done == 0  # no last.pt: a new run may start
    taken = sorted(p.name for p in raw.iterdir() if p.is_dir())[0]
    shutil.rmtree(raw / taken)
    train(make_cfg(raw, tmp_path / "r", *extra))
    summary = json.loads((tmp_path / "r" / "data_summary.json").read_text())
    assert taken not in summary["train_cases"] + summary["val_cases"]
    assert summary["n_train_cases"] + summary["n_val_cases"] == 3


def test_resume_refuses_data_whose_cases_changed(hearts_raw, tmp_path):
    """Cases added to a raw folder between a run and its --resume would redraw the split:
    cases trained on in epoch 1 could become validation cases. The resume is refused."""
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(hearts_raw, raw)
    moved = sorted(p for p in raw.iterdir() if p.is_dir())[-1]
    shutil.move(moved, tmp_path / moved.name)  # the run starts with 3 of the 4 cases
    extra = ("data.classes=5", "data.spacing=6.0", "data.val_fraction=0.5")
    train(make_cfg(raw, tmp_path / "r", "training.epochs=1", *extra))
    before = json.loads((tmp_path / "r" / "data_summary.json").read_text())
    shutil.move(tmp_path / moved.name, raw / moved.name)
    with pytest.raises(ValueError, match="data changed since it started"):
        train(make_cfg(raw, tmp_path / "r", *extra), resume=True)
    after = json.loads((tmp_path / "r" / "data_summary.json").read_text())
    assert after == before  # nothing of the run was rewritten
    # the same cases again: it resumes, without the case its cache now also holds
    shutil.move(raw / moved.name, tmp_path / moved.name)
    assert train(make_cfg(raw, tmp_path / "r", *extra), resume=True).epochs_done == 2
    after = json.loads((tmp_path / "r" / "data_summary.json").read_text())
    assert (after["train_cases"], after["val_cases"]) == (
        before["train_cases"],
        before["val_cases"],
    )
    assert (tmp_path / "r" / "cache" / "cases" / moved.name / "meta.json").is_file()


def test_separate_validation_data_is_refused_only_when_it_holds_training_scans(
    hearts_raw, tmp_path
):
    """`sam3d synth` hearts of another seed share their ids with the training hearts
    (heart_000, ...) but are other scans: refused as "leaking" before. A copy of training
    cases in another folder still is."""
    import shutil

    from core.synthetic import write_heart_dataset

    other = tmp_path / "other_seed"
    write_heart_dataset(other, 2, seed=1000, shape=(32, 32, 32), spacing=6.0)
    extra = ("data.classes=5", "data.spacing=6.0", "training.epochs=1")
    val = f"data.val_data={json.dumps(str(other))}"
    result = train(make_cfg(hearts_raw, tmp_path / "a", *extra, val))
    summary = json.loads((tmp_path / "a" / "data_summary.json").read_text())
    assert result.epochs_done == 1 and set(summary["val_cases"]) & set(summary["train_cases"])

    copy = tmp_path / "copy"
    shutil.copytree(hearts_raw / "heart_001", copy / "heart_001")
    val = f"data.val_data={json.dumps(str(copy))}"
    with pytest.raises(ValueError, match="leak"):
        train(make_cfg(hearts_raw, tmp_path / "b", *extra, val))


def test_a_one_case_raw_folder_is_refused_before_it_is_preprocessed(hearts_raw, tmp_path):
    """A validation split of a raw folder holding one labelled case (a second image without
    its label) failed only after preprocessing the whole folder; it is now said at once."""
    import shutil

    raw = tmp_path / "raw"
    for cid in ("heart_000", "heart_001"):
        shutil.copytree(hearts_raw / cid, raw / cid)
    (raw / "heart_001" / "heart_001-label.nii.gz").unlink()
    cfg = make_cfg(raw, tmp_path / "run", "data.classes=5", "data.spacing=6.0")
    with pytest.raises(ValueError, match=r"raw: a validation split needs at least 2 cases, "
                       r"the folder has 1 with a label; set data.val_fraction=0"):  # fmt: skip
        train(cfg)
    assert not (tmp_path / "run" / "cache").exists()
