"""Honest evaluation: ``sam3d eval`` names the cases the weights saw in training.

Training records a fingerprint of every case's scan (``core.io.fingerprint``: the voxels as
loaded, whatever the file's name, folder, layout, compression or axis order on disk), so that
evaluation recognises a training or validation scan copied under another name; runs that did
not record fingerprints fall back on the source file and, with their cache gone, the case id.
"""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from train_common import make_cfg

from core import lora
from core.cli import main
from core.io import fingerprint, load_image
from core.synthetic import write_heart_dataset
from core.weights import load_model


@pytest.fixture(scope="module")
def hearts(tmp_path_factory):
    root = tmp_path_factory.mktemp("hearts")
    write_heart_dataset(root, 3, seed=5, shape=(40, 40, 40), spacing=4.0)
    return root


def _image(hearts, cid):
    return hearts / cid / f"{cid}-image.nii.gz"


def _adapter(weights, folder, data):
    base = load_model(weights)
    digest = lora.base_hash(base)
    peft = lora.apply_lora(base, rank=2, alpha=4, targets=("to_qkv",), modules_to_save=())
    return lora.save_adapter(peft, folder, base_hash=digest, metadata={"data": data})


def _eval_args(weights, adapter, root):
    return ["eval", "--checkpoint", str(weights), "--adapter", str(adapter), "--data_root",
            str(root), "--clicks", "1", "--classes", "2", "--no_baselines"]  # fmt: skip


def test_a_scan_keeps_its_fingerprint_under_any_name_format_or_axis_order(hearts, tmp_path):
    src = nib.load(_image(hearts, "heart_000"))
    data, affine = np.round(np.asarray(src.dataobj)).astype(np.int16), src.affine
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "scan.nii.gz")  # a CT as stored: int16
    ref = fingerprint(load_image(tmp_path / "scan.nii.gz"))
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = data.shape[0] - 1  # the same world grid, stored right-to-left
    copies = {
        "renamed_float.nii": (data.astype(np.float32), affine),
        "flipped.nii.gz": (data[::-1].copy(), affine @ flip),
    }
    for name, (arr, aff) in copies.items():
        nib.save(nib.Nifti1Image(arr, aff), tmp_path / name)
        assert fingerprint(load_image(tmp_path / name)) == ref, name
    changed = data.copy()
    changed[3, 4, 5] += 1
    nib.save(nib.Nifti1Image(changed, affine), tmp_path / "changed.nii.gz")
    others = {
        fingerprint(load_image(p))
        for p in (tmp_path / "changed.nii.gz", _image(hearts, "heart_001"))
    }
    assert len(others | {ref}) == 3


def test_training_records_the_fingerprint_of_every_case(hearts_cache, hearts_raw, tmp_path):
    from core.train import train

    for cid in ("heart_000", "heart_003"):
        meta = json.loads((hearts_cache / "cases" / cid / "meta.json").read_text())
        assert meta["source_fingerprint"] == fingerprint(load_image(_image(hearts_raw, cid)))
    train(make_cfg(hearts_cache, tmp_path / "run", "training.epochs=1", "data.val_fraction=0.25"))
    summary = json.loads((tmp_path / "run" / "data_summary.json").read_text())
    for role in ("train", "val"):
        assert summary[f"{role}_cases"]
        assert summary[f"{role}_fingerprints"] == {
            cid: fingerprint(load_image(_image(hearts_raw, cid)))
            for cid in summary[f"{role}_cases"]
        }


def test_eval_names_training_and_validation_scans_under_other_names(
    tiny_weights, hearts, tmp_path, capsys
):
    """A flat-layout copy of the run's training case (renamed) and of its validation case are
    named, with the run's case id; another scan that shares a training case's id is not."""
    prints = {
        cid: fingerprint(load_image(_image(hearts, cid))) for cid in ("heart_000", "heart_001")
    }
    data = {"train_cache": str(tmp_path / "gone"), "val_cache": str(tmp_path / "gone"),
            "train_cases": ["heart_000"], "val_cases": ["heart_001"],
            "train_fingerprints": {"heart_000": prints["heart_000"]},
            "val_fingerprints": {"heart_001": prints["heart_001"]}}  # fmt: skip
    adapter = _adapter(tiny_weights, tmp_path / "ad", data)
    flat = tmp_path / "flat"
    for sub in ("volumes", "labels"):
        (flat / sub).mkdir(parents=True)
    for cid, name in (("heart_000", "scan_a"), ("heart_001", "scan_b"), ("heart_002", "heart_000")):
        for sub, kind in (("volumes", "image"), ("labels", "label")):
            shutil.copy(hearts / cid / f"{cid}-{kind}.nii.gz", flat / sub / f"{name}.nii.gz")
    assert (
        main([*_eval_args(tiny_weights, adapter, flat), "--output_dir", str(tmp_path / "e")]) == 0
    )
    err = capsys.readouterr().err
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["seen_in_training"] == {"scan_a": "train", "scan_b": "val"}
    assert sorted(m["warnings"]) == ["scan_a", "scan_b"]
    assert "was trained on this image, as its case heart_000" in m["warnings"]["scan_a"][0]
    assert "chose its best epoch on this image" in m["warnings"]["scan_b"][0]
    assert "as its case heart_001" in m["warnings"]["scan_b"][0]
    assert "saw 2 of the 3 case(s) in training (1 trained on, 1 validation)" in err


def test_eval_without_fingerprints_compares_source_files_then_ids(
    tiny_weights, hearts, tmp_path, capsys
):
    """Weights whose run recorded no fingerprints (made before they were): a case is named
    when its cache says it was this very file (training or validation), not when another
    dataset's case shares the id; with the cache gone, the id is all there is to go by."""
    cache = tmp_path / "cache"
    sources = {"heart_000": _image(hearts, "heart_000"),
               "heart_001": tmp_path / "other" / "heart_001-image.nii.gz",
               "heart_002": _image(hearts, "heart_002")}  # fmt: skip
    for cid, src in sources.items():
        (cache / "cases" / cid).mkdir(parents=True)
        (cache / "cases" / cid / "meta.json").write_text(json.dumps({"source_image": str(src)}))
    data = {"train_cache": str(cache), "val_cache": str(cache),
            "train_cases": ["heart_000", "heart_001"], "val_cases": ["heart_002"]}  # fmt: skip
    adapter = _adapter(tiny_weights, tmp_path / "ad", data)
    args = _eval_args(tiny_weights, adapter, hearts)
    assert main([*args, "--output_dir", str(tmp_path / "e1")]) == 0
    err = capsys.readouterr().err
    assert "heart_000: adapter" in err and "was trained on this image" in err
    assert "warning: heart_001" not in err
    m = json.loads((tmp_path / "e1" / "metrics.json").read_text())
    assert m["seen_in_training"] == {"heart_000": "train", "heart_002": "val"}

    shutil.rmtree(cache)  # nothing left to compare the files with: the ids say it
    assert main([*args, "--output_dir", str(tmp_path / "e2")]) == 0
    m = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert sorted(m["warnings"]) == ["heart_000", "heart_001", "heart_002"]
    assert "a case with this id" in m["warnings"]["heart_001"][0]


def test_fingerprints_added_to_an_older_adapter_let_eval_see_a_renamed_copy(
    tiny_weights, hearts, tmp_path, capsys
):
    """scripts/fingerprint_adapter.py fills in an older adapter's fingerprints (its cache
    gone, its cases found by id in the dataset); eval then names a renamed copy, and no
    longer names another scan that shares a training case's id."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "fingerprint_adapter.py"
    spec = importlib.util.spec_from_file_location("fingerprint_adapter", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    data = {"train_cache": str(tmp_path / "gone"), "train_cases": ["heart_000", "heart_001"],
            "val_cases": []}  # fmt: skip
    adapter = _adapter(tiny_weights, tmp_path / "ad", data)
    assert mod.main([str(adapter), "--data_root", str(hearts)]) == 0
    info = json.loads((adapter / "sam3d_adapter.json").read_text())
    assert set(info["data"]["train_fingerprints"]) == {"heart_000", "heart_001"}
    assert mod.main([str(adapter), "--data_root", str(tmp_path / "ad")]) == 1  # not a dataset
    assert "no dataset layout recognised" in capsys.readouterr().err
    info["data"]["train_fingerprints"].pop("heart_001")
    (adapter / "sam3d_adapter.json").write_text(json.dumps(info))
    third = tmp_path / "third"
    shutil.copytree(hearts / "heart_002", third / "heart_002")
    assert mod.main([str(adapter), "--data_root", str(third)]) == 1  # heart_001 not found
    assert "not found, not recorded (1): heart_001" in capsys.readouterr().err
    kept = json.loads((adapter / "sam3d_adapter.json").read_text())["data"]["train_fingerprints"]
    assert kept == {"heart_000": info["data"]["train_fingerprints"]["heart_000"]}
    assert mod.main([str(adapter), "--data_root", str(hearts)]) == 0
    other = tmp_path / "other"
    for cid, name in (("heart_000", "copy"), ("heart_002", "heart_001")):
        (other / name).mkdir(parents=True)
        for kind in ("image", "label"):
            shutil.copy(
                hearts / cid / f"{cid}-{kind}.nii.gz", other / name / f"{name}-{kind}.nii.gz"
            )
    assert (
        main([*_eval_args(tiny_weights, adapter, other), "--output_dir", str(tmp_path / "e")]) == 0
    )
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["seen_in_training"] == {"copy": "train"}
