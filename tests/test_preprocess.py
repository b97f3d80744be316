"""Preprocessing: cache content, geometry, resumability, bad cases, parallel workers."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, oblique_affine, save_nifti, shared_dataset, two_organs, write_case

from core.cli import main
from core.errors import InputError
from core.geometry import slice_voxel_index
from core.io import LabelVolume, Volume, voxel_to_world
from core.preprocess import PreprocessConfig, preprocess_dataset, select_slices
from core.resample import resample_pair


def _run(src, out, *extra):
    return main(
        [
            "preprocess",
            "--original_nifti_dir",
            str(src),
            "--out",
            str(out),
            "--classes",
            "2",
            *extra,
        ]
    )


def test_cache_content_and_geometry(totalseg_dir, tmp_path):
    out = tmp_path / "cache"
    assert _run(totalseg_dir, out, "--spacing", "2.0", "--extract_mesh") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["spacing"] == 2.0
    assert set(manifest["cases"]) == {"case0", "case1", "case2"}
    assert {"numpy", "nibabel", "sam3d-napari"} <= set(manifest["versions"])
    meta = json.loads((out / "cases" / "case0" / "meta.json").read_text())
    assert meta["classes_present"] == [1, 2]
    np.testing.assert_allclose(meta["spacing"], [2.0, 2.0, 2.0])
    label = np.load(out / meta["label"])
    sdf = np.load(out / meta["sdf"])
    assert sdf.shape == (2,) + label.shape
    # The SDF is negative exactly inside each class.
    for k in (1, 2):
        np.testing.assert_array_equal(sdf[k - 1] < 0, label == k)
    assert (out / meta["meshes"]["1"]).is_file()
    assert len(meta["slices"]) > 0
    affine = np.array(meta["affine"])
    for rel in meta["slices"]:
        z = np.load(out / rel)
        assert set(z.files) >= {
            "image",
            "mask",
            "pointmap",
            "affine",
            "slice_idx",
            "axis",
            "gt_sdf_path",
            "label",
            "case_id",
        }
        axis, idx = int(z["axis"]), int(z["slice_idx"])
        assert z["mask"].any(), "sampled slices hold foreground"
        np.testing.assert_array_equal(z["label"], np.take(label, idx, axis=axis))
        pm = z["pointmap"]
        valid = z["mask"].astype(bool)
        assert np.isnan(pm[~valid]).all() and np.isfinite(pm[valid]).all()
        r, c = np.argwhere(valid)[0]
        np.testing.assert_allclose(
            pm[r, c], voxel_to_world(affine, slice_voxel_index(axis, idx, r, c)), atol=1e-3
        )
        assert str(z["gt_sdf_path"]) == meta["sdf"]
        assert str(z["case_id"]) == "case0"


def test_ct_window_takes_a_negative_low_bound_as_the_readme_writes_it(totalseg_dir, tmp_path):
    # README: `sam3d preprocess ... [--ct_window -1000,2000]`; argparse alone takes a value that
    # starts with "-" (and is not a plain number) for another option and exits 2.
    out = tmp_path / "cache"
    assert _run(totalseg_dir, out, "--ct_window", "-500,1500", "--max_cases", "1") == 0
    params = json.loads((out / "manifest.json").read_text())["params"]
    assert params["ct_window"] == [-500.0, 1500.0]
    assert _run(totalseg_dir, tmp_path / "c2", "--ct_window=-500,1500", "--max_cases", "1") == 0


def test_oblique_anisotropic_input_keeps_world_positions(tmp_path):
    aff = oblique_affine(spacing=(1.5, 2.0, 3.0))
    img, lab = two_organs(shape=(30, 26, 18))
    image, label = Volume(img, aff), LabelVolume(lab, aff)
    img2, lab2 = resample_pair(image, label, 1.5)
    np.testing.assert_allclose(img2.spacing, (1.5, 1.5, 1.5), rtol=1e-6)
    # Direction cosines are kept: the volume stays oblique.
    dirs = lambda a: a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0)  # noqa: E731
    np.testing.assert_allclose(dirs(img2.affine), dirs(aff), atol=1e-9)
    for k in (1, 2):
        before = voxel_to_world(aff, np.argwhere(lab == k)).mean(0)
        after = voxel_to_world(img2.affine, np.argwhere(lab2.data == k)).mean(0)
        assert np.linalg.norm(before - after) < 1.0  # mm, nearest-neighbour label resampling
        vol_before = (lab == k).sum() * 1.5 * 2 * 3
        vol_after = (lab2.data == k).sum() * 1.5**3
        assert abs(vol_after - vol_before) / vol_before < 0.08


def test_resume_skips_done_cases_and_redoes_unfinished(totalseg_dir, tmp_path):
    out = tmp_path / "cache"
    cfg = PreprocessConfig(str(totalseg_dir), str(out), classes=2)
    first = preprocess_dataset(cfg)
    assert sorted(first.processed) == ["case0", "case1", "case2"]
    mtime = (out / "cases" / "case0" / "image.npy").stat().st_mtime_ns
    # Simulate a kill in the middle of case1: meta.json missing, a stale temporary left.
    (out / "cases" / "case1" / "meta.json").unlink()
    (out / "cases" / "case1" / ".tmp-image.npy.xyz.npy").write_bytes(b"partial")
    second = preprocess_dataset(cfg)
    assert second.processed == ["case1"]
    assert sorted(second.skipped) == ["case0", "case2"]
    assert (out / "cases" / "case0" / "image.npy").stat().st_mtime_ns == mtime
    assert not list((out / "cases" / "case1").glob(".tmp-*"))


def test_changed_parameters_are_refused_unless_overwrite(totalseg_dir, tmp_path, capsys):
    out = tmp_path / "cache"
    assert _run(totalseg_dir, out) == 0
    assert _run(totalseg_dir, out, "--spacing", "1.5") == 1
    err = capsys.readouterr().err
    assert "other parameters" in err and "spacing: 3.0 -> 1.5" in err and str(out) in err
    assert _run(totalseg_dir, out, "--spacing", "1.5", "--overwrite") == 0
    assert json.loads((out / "manifest.json").read_text())["params"]["spacing"] == 1.5


def test_a_cache_made_under_another_intensity_rule_is_refused(totalseg_dir, tmp_path, capsys):
    """Caches record how intensities were normalised; one from before the rule was recorded
    (or under another rule) is not mixed with new cases."""
    out = tmp_path / "cache"
    assert _run(totalseg_dir, out, "--modality", "mr") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["intensity"].startswith("mr: percentiles 0.5..99.5")
    del manifest["params"]["intensity"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert _run(totalseg_dir, out, "--modality", "mr") == 1
    err = capsys.readouterr().err
    assert "other parameters" in err and "intensity: None -> 'mr: percentiles" in err


def test_a_ct_cache_from_before_the_rule_was_recorded_resumes(totalseg_dir, tmp_path, capsys):
    """CT's rule did not change when it began to be recorded: such a cache is not refused."""
    out = tmp_path / "cache"
    assert _run(totalseg_dir, out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    rule = manifest["params"].pop("intensity")
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert _run(totalseg_dir, out) == 0, capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["params"]["intensity"] == rule


def test_bad_cases_are_skipped_and_reported(tmp_path, capsys):
    root = tmp_path / "data"
    for cid in ("good", "corrupt", "toomany", "mismatch", "empty", "nan"):
        write_case(root / cid / f"{cid}-image.nii.gz", root / cid / f"{cid}-label.nii.gz")
    p = root / "corrupt" / "corrupt-image.nii.gz"
    p.write_bytes(p.read_bytes()[:200])
    img, lab = two_organs()
    save_nifti(lab * 2, np.diag([2.0, 2.0, 3.0, 1.0]), root / "toomany" / "toomany-label.nii.gz")
    save_nifti(
        lab[:, :-2], np.diag([2.0, 2.0, 3.0, 1.0]), root / "mismatch" / "mismatch-label.nii.gz"
    )
    save_nifti(0 * lab, np.diag([2.0, 2.0, 3.0, 1.0]), root / "empty" / "empty-label.nii.gz")
    img[0, 0, 0] = np.nan
    save_nifti(img, np.diag([2.0, 2.0, 3.0, 1.0]), root / "nan" / "nan-image.nii.gz")
    out = tmp_path / "cache"
    assert _run(root, out) == 0
    text = capsys.readouterr().out
    assert "1 processed" in text and "5 failed" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processed"] == ["good"]
    reasons = summary["failed"]
    assert "corrupt" in reasons["corrupt"] or "truncated" in reasons["corrupt"]
    assert "above the number of classes" in reasons["toomany"]
    assert "does not match" in reasons["mismatch"]
    assert "empty" in reasons["empty"]
    assert "NaN" in reasons["nan"]
    for cid, msg in reasons.items():
        assert "\n" not in msg and f"{cid}-" in msg, "one line naming the file"
        assert not (out / "cases" / cid).exists()


def test_nothing_processed_exits_nonzero(tmp_path, capsys):
    root = tmp_path / "data"
    write_case(root / "a" / "a-image.nii.gz", root / "a" / "a-label.nii.gz")
    (root / "a" / "a-image.nii.gz").write_bytes(b"not gzip")
    assert _run(root, tmp_path / "out") == 1
    assert _run(tmp_path / "missing", tmp_path / "out2") == 1
    assert "dataset folder not found" in capsys.readouterr().err


def test_parallel_workers_match_serial(totalseg_dir, tmp_path):
    a = preprocess_dataset(PreprocessConfig(str(totalseg_dir), str(tmp_path / "a"), classes=2))
    b = preprocess_dataset(
        PreprocessConfig(str(totalseg_dir), str(tmp_path / "b"), classes=2, workers=2)
    )
    assert sorted(a.processed) == sorted(b.processed) == ["case0", "case1", "case2"]
    for cid in a.processed:
        for name in ("image.npy", "label.npy", "sdf.npy"):
            np.testing.assert_array_equal(
                np.load(tmp_path / "a" / "cases" / cid / name),
                np.load(tmp_path / "b" / "cases" / cid / name),
            )


def test_should_stop_cancels_between_cases(totalseg_dir, tmp_path):
    calls = []
    summary = preprocess_dataset(
        PreprocessConfig(str(totalseg_dir), str(tmp_path / "c"), classes=2),
        progress=lambda d, t, m: calls.append((d, t)),
        should_stop=lambda: len(calls) >= 2,
    )
    assert summary.cancelled and len(summary.processed) == 1
    assert summary.exit_code() == 130
    assert calls[-1] == (1, 3)


@pytest.mark.slow
def test_kill_leaves_no_corrupt_file(tmp_path):
    """SIGKILL in the middle of a run: every file present loads, and a rerun completes."""
    root = tmp_path / "data"
    for i in range(12):
        cid = f"c{i:02d}"
        write_case(
            root / cid / f"{cid}-image.nii.gz",
            root / cid / f"{cid}-label.nii.gz",
            seed=i,
            shape=(48, 48, 40),
        )
    out = tmp_path / "cache"
    cmd = [
        sys.executable,
        "-m",
        "core",
        "preprocess",
        "--original_nifti_dir",
        str(root),
        "--out",
        str(out),
        "--classes",
        "2",
        "--slice_sampling",
        "all",
        "--spacing",
        "1.0",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("cases/*/meta.json"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.parent.name for p in out.glob("cases/*/meta.json")}
    assert 2 <= len(done) < 12, "the kill should land mid-run"
    for cid in done:
        meta = json.loads((out / "cases" / cid / "meta.json").read_text())
        for rel in [meta["image"], meta["label"], meta["sdf"], *meta["slices"]]:
            np.load(out / rel)  # raises on a truncated file
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"{12 - len(done)} processed, {len(done)} already done" in res.stdout


def test_select_slices_methods():
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[5:15, 8:12, 2:18] = 1
    all_ = select_slices(lab, (0, 1, 2), "all")
    assert len(all_) == 10 + 4 + 16
    uni = select_slices(lab, (0, 1, 2), "uniform", per_axis=3)
    assert len(uni) == 3 + 3 + 3 and set(uni) <= set(all_)
    cen = select_slices(lab, (0, 2), "central")
    assert cen == [(0, 10), (2, 10)] or cen == [(0, 9), (2, 9)] or len(cen) == 2
    r1 = select_slices(lab, (0, 1, 2), "random_axis", per_axis=2, seed=7)
    assert r1 == select_slices(lab, (0, 1, 2), "random_axis", per_axis=2, seed=7)
    assert len(r1) == 6 and set(r1) <= set(all_)


def test_config_validation():
    with pytest.raises(ValueError, match="axes"):
        PreprocessConfig("a", "b", classes=2, axes=(0, 3))
    with pytest.raises(ValueError, match="slice_sampling"):
        PreprocessConfig("a", "b", classes=2, slice_sampling="every")
    with pytest.raises(ValueError, match="classes"):
        PreprocessConfig("a", "b", classes=0)


def test_out_folder_that_is_not_a_cache_is_refused(totalseg_dir, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.docx").write_text("do not touch")
    with pytest.raises(InputError, match="not a sam3d cache"):
        preprocess_dataset(PreprocessConfig(str(totalseg_dir), str(out), classes=2))
    assert (out / "thesis.docx").read_text() == "do not touch"


@pytest.mark.realdata
def test_real_flat_totalseg_examples(tmp_path):
    root = shared_dataset("totalseg_examples")
    cfg = PreprocessConfig(
        str(root),
        str(tmp_path / "ts"),
        classes=255,
        spacing=6.0,
        slice_sampling="central",
        modality="ct",
    )
    summary = preprocess_dataset(cfg)
    # All three are readable; the MR case is normalised as CT here, which is allowed.
    assert sorted(summary.processed) == ["ts_ct_abdomen", "ts_ct_abdomen_small", "ts_mr_abdomen"]
    meta = json.loads((tmp_path / "ts" / "cases" / "ts_ct_abdomen" / "meta.json").read_text())
    assert meta["label_names"]["1"] == "spleen"


@pytest.mark.realdata
def test_real_openkbp_val_nnunet(tmp_path):
    root = shared_dataset("openkbp_val")
    cfg = PreprocessConfig(
        str(root),
        str(tmp_path / "kbp"),
        classes=7,
        spacing=6.0,
        slice_sampling="central",
        workers=2,
    )
    summary = preprocess_dataset(cfg, max_cases=3)
    assert len(summary.processed) == 3 and not summary.failed
    meta = json.loads((tmp_path / "kbp" / "cases" / summary.processed[0] / "meta.json").read_text())
    assert meta["label_names"]["1"] == "Brainstem"
    assert set(meta["classes_present"]) <= set(range(1, 8)) and len(meta["classes_present"]) >= 4
