"""A dataset's declared modality (dataset.json, as nnU-Net writes it) is used when the user
chooses none: by discovery, preprocessing, training, evaluation and prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_case

from core.config import load_config
from core.datasets import (
    declared_modality,
    discover,
    modality_from_channel_name,
    resolve_modality,
)
from core.preprocess import PreprocessConfig, cache_params, preprocess_case, preprocess_dataset
from core.train import Dist
from core.train_data import _as_cache


def mr_dataset(root: Path, channels: dict | None = None, key: str = "channel_names") -> Path:
    """A small nnU-Net dataset of MR-like values (no air, no HU) declaring ``channels``."""
    for i in range(2):
        img, lab, affine = write_case(
            root / "imagesTr" / f"mr_{i}_0000.nii.gz", root / "labelsTr" / f"mr_{i}.nii.gz", seed=i
        )
    if channels is not None:
        (root / "dataset.json").write_text(
            json.dumps({key: channels, "labels": {"background": 0, "A": 1, "B": 2}})
        )
    return root


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CT", "ct"), (" ct ", "ct"), ("MRI", "mr"), ("MR", "mr"), ("T2", "mr"), ("t1ce", "mr"),
        ("FLAIR", "mr"), ("ADC", "mr"), ("MR_T1", "mr"), ("US", "us"), ("Ultrasound", "us"),
        ("PET", None), ("noNorm", None), ("", None), (None, None), (0, None), ("MRCT", None),
    ],
)  # fmt: skip
def test_channel_names_map_to_modalities(name, expected):
    assert modality_from_channel_name(name) == expected


def test_discovery_reads_the_declared_modality_of_nnunet_v1_and_v2(tmp_path):
    v2 = discover(mr_dataset(tmp_path / "v2", {"0": "MRI"}))
    assert (v2.modality, v2.declared_channel, v2.problems) == ("mr", "MRI", ())
    v1 = discover(mr_dataset(tmp_path / "v1", {"0": "T2", "1": "ADC"}, key="modality"))
    assert (v1.modality, v1.declared_channel) == ("mr", "T2")
    assert discover(mr_dataset(tmp_path / "none")).modality is None
    pet = discover(mr_dataset(tmp_path / "pet", {"0": "PET"}))
    assert pet.modality is None and pet.declared_channel == "PET"
    assert (
        len(pet.problems) == 1 and "channel 0 is 'PET', not a CT, MR or US name" in pet.problems[0]
    )
    (tmp_path / "v2" / "dataset.json").write_text("{not json")  # unreadable: declares nothing
    bad = discover(tmp_path / "v2")
    assert bad.modality is None and len(bad.problems) == 1 and "unreadable JSON" in bad.problems[0]
    assert declared_modality(tmp_path / "v1" / "imagesTr" / "mr_0_0000.nii.gz") == "mr"
    assert declared_modality(tmp_path / "elsewhere" / "x.nii.gz") is None


def test_resolve_modality_prefers_the_users_choice_and_says_when_it_overrides():
    assert resolve_modality(None, "mr") == ("mr", None)
    assert resolve_modality(None, None) == ("ct", None)
    assert resolve_modality("mr", "mr") == ("mr", None)
    assert resolve_modality("us", None) == ("us", None)
    modality, note = resolve_modality("ct", "mr", source="/data/prostate")
    assert modality == "ct"
    assert note == (
        "/data/prostate declares its images MR (dataset.json) but CT was chosen: running as CT"
    )


def test_preprocessing_without_a_modality_uses_the_declared_one(tmp_path):
    root = mr_dataset(tmp_path / "ds", {"0": "MRI"})
    s = preprocess_dataset(PreprocessConfig(str(root), str(tmp_path / "auto"), classes=2))
    assert s.n_done == 2 and s.problems == []
    params = cache_params(tmp_path / "auto")
    assert params["modality"] == "mr" and params["intensity"].startswith("mr: percentiles")
    # asked for CT: done as CT, with a note that the dataset says otherwise
    s = preprocess_dataset(
        PreprocessConfig(str(root), str(tmp_path / "ct"), classes=2, modality="ct")
    )
    assert cache_params(tmp_path / "ct")["modality"] == "ct"
    assert any("declares its images MR" in p for p in s.problems)
    assert "declares its images MR" in s.report()
    # one case on its own resolves the same way (the same intensities as the dataset run)
    case = discover(root).cases[0]
    res = preprocess_case(case, PreprocessConfig(str(root), str(tmp_path / "one"), classes=2))
    assert res.status == "done", res.message
    a = np.load(next((tmp_path / "one").rglob("image.npy")))
    b = np.load(next((tmp_path / "auto").rglob(f"{case.case_id}/image.npy")))
    np.testing.assert_array_equal(a, b)
    # no declaration: CT, as before
    s = preprocess_dataset(
        PreprocessConfig(str(mr_dataset(tmp_path / "plain")), str(tmp_path / "p"), classes=2)
    )
    assert cache_params(tmp_path / "p")["modality"] == "ct"


def _train_cfg(data, out, *extra):
    from test_train import FAST, TINY

    paths = [
        f"data.train_data={json.dumps(str(data))}",
        f"training.output_dir={json.dumps(str(out))}",
    ]
    return load_config(None, [*TINY, *FAST, *paths, "data.classes=2", *extra])


def test_training_settles_an_unset_modality_from_the_dataset_or_the_cache(tmp_path):
    root = mr_dataset(tmp_path / "ds", {"0": "MRI"})
    d = Dist(0, 1, torch.device("cpu"), False)
    logged: list[str] = []
    cfg = _train_cfg(root, tmp_path / "run")
    assert cfg.data.modality is None
    cache = _as_cache(str(root), tmp_path / "cache", cfg, d, logged.append, None, None,
                      {"failed": {}, "dataset_problems": []})  # fmt: skip
    assert cfg.data.modality == "mr" and cache_params(cache)["modality"] == "mr"
    assert any("data.modality=mr: declared by" in line for line in logged)
    # a cache: its own modality, without being told
    cfg = _train_cfg(cache, tmp_path / "run2")
    assert _as_cache(str(cache), tmp_path / "x", cfg, d, print, None, None, {}) == cache
    assert cfg.data.modality == "mr"
    # told otherwise: the cache is still refused (as before)
    cfg = _train_cfg(cache, tmp_path / "run3", "data.modality=ct")
    with pytest.raises(ValueError, match="normalised as mr but data.modality is ct"):
        _as_cache(str(cache), tmp_path / "x", cfg, d, print, None, None, {})
