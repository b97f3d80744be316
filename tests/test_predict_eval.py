"""`sam3d predict` and `sam3d eval` end to end with a tiny (untrained) model.

These check the plumbing a user relies on (files, grids, metrics.json structure, baselines,
bad input); accuracy is measured by the benchmarks with the shipped weights.
"""

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import save_nifti, tiny_model_config, write_case

from core.cli import main
from core.evaluate import EvalConfig, evaluate
from core.io import load_image
from core.synthetic import write_heart_dataset

TINY = tiny_model_config(32)


@pytest.fixture(scope="module")
def hearts(tmp_path_factory):
    root = tmp_path_factory.mktemp("hearts")
    write_heart_dataset(root, 2, seed=5, shape=(40, 40, 40), spacing=4.0)
    return root


def test_predict_writes_mask_on_the_input_grid(tiny_weights, hearts, tmp_path, capsys):
    vol = hearts / "heart_000" / "heart_000-image.nii.gz"
    out = tmp_path / "pred"
    rc = main(
        [
            "predict",
            "--volume",
            str(vol),
            "--axis",
            "2",
            "--slice",
            "20",
            "--point",
            "20,20",
            "--negative",
            "5,5",
            "--checkpoint",
            str(tiny_weights),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    mask = nib.load(str(out / "mask.nii.gz"))
    image = load_image(vol)
    assert mask.shape == image.shape
    np.testing.assert_allclose(mask.affine, image.affine, atol=1e-5)
    assert (out / "preview.png").stat().st_size > 1000
    t = json.loads((out / "timings.json").read_text())
    assert t["timings_ms"]["total"] > 0 and t["mode"] == "volume"
    assert "mask" in capsys.readouterr().out


def test_predict_mask_lines_up_with_a_non_ras_input_voxel_by_voxel(hearts, tmp_path):
    """The clicks are on the canonical RAS+ grid (as documented); mask.nii.gz comes back in
    the file's own axis order, flips and affine, so it lines up with the input voxel by voxel.
    The same heart stored as RAS and as a permuted, flipped file gives the same voxels."""
    ras = hearts / "heart_000" / "heart_000-image.nii.gz"
    img = nib.load(str(ras))
    # axes permuted and two of them flipped: the canonical grid is the RAS file's own grid
    other = img.as_reoriented(np.array([[2, -1], [0, 1], [1, -1]]))
    assert not np.allclose(other.affine, img.affine)
    odd = tmp_path / "odd.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(other.dataobj), other.affine), str(odd))
    args = ["--axis", "2", "--slice", "20", "--point", "20,20", "--mode", "slice"]
    for name, vol in (("ras", ras), ("odd", odd)):
        assert main(["predict", "--volume", str(vol), *args, "--out", str(tmp_path / name)]) == 0
    m_ras = nib.load(str(tmp_path / "ras" / "mask.nii.gz"))
    m_odd = nib.load(str(tmp_path / "odd" / "mask.nii.gz"))
    assert m_odd.shape == other.shape
    np.testing.assert_array_equal(m_odd.affine, other.affine)  # the file's own bits
    expected = img.__class__(np.asarray(m_ras.dataobj), m_ras.affine).as_reoriented(
        np.array([[2, -1], [0, 1], [1, -1]])
    )
    assert np.asarray(m_ras.dataobj).any()
    np.testing.assert_array_equal(np.asarray(m_odd.dataobj), np.asarray(expected.dataobj))


def test_predict_takes_clicks_in_the_files_own_indices(hearts, tmp_path, capsys):
    """--indices file: axis, slice and ROW,COL of the file's own array (what 3D Slicer or
    ITK-SNAP show) give the same result as the same voxel in RAS+ indices."""
    from core.clicks import Click
    from core.orient import CanonicalFrame

    ras = hearts / "heart_000" / "heart_000-image.nii.gz"
    img = nib.load(str(ras))
    other = img.as_reoriented(np.array([[2, -1], [0, 1], [1, -1]]))
    odd = tmp_path / "odd.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(other.dataobj), other.affine), str(odd))
    back = CanonicalFrame.of(other.affine, other.shape).inverse()
    c = back.click(Click(2, 20, 20.0, 18.0))  # the RAS click, in the file's own indices
    assert (c.axis, c.slice_idx, c.row, c.col) != (2, 20, 20.0, 18.0)
    common = ["predict", "--volume", str(odd), "--mode", "slice"]
    assert main([*common, "--axis", "2", "--slice", "20", "--point", "20,18",
                 "--out", str(tmp_path / "ras")]) == 0  # fmt: skip
    file_args = [
        "--axis",
        str(c.axis),
        "--slice",
        str(c.slice_idx),
        "--point",
        f"{c.row:g},{c.col:g}",
    ]
    assert main([*common, *file_args, "--indices", "file", "--out", str(tmp_path / "file")]) == 0
    m_ras = np.asarray(nib.load(str(tmp_path / "ras" / "mask.nii.gz")).dataobj)
    m_file = np.asarray(nib.load(str(tmp_path / "file" / "mask.nii.gz")).dataobj)
    assert m_ras.any()
    np.testing.assert_array_equal(m_file, m_ras)
    assert json.loads((tmp_path / "file" / "timings.json").read_text())["indices"] == "file"
    # the RAS indices given as file indices name another voxel: another result
    assert main([*common, "--axis", "2", "--slice", "20", "--point", "20,18", "--indices",
                 "file", "--out", str(tmp_path / "wrong")]) == 0  # fmt: skip
    assert not np.array_equal(
        np.asarray(nib.load(str(tmp_path / "wrong" / "mask.nii.gz")).dataobj), m_ras
    )
    capsys.readouterr()
    # a click outside the file's array: one line in the indices the user gave
    rc = main([*common, "--axis", "0", "--slice", "40", "--point", "3,4", "--indices", "file",
               "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert "odd.nii.gz" in err and "click (3, 4) on axis 0 slice 40 is outside" in err


def test_predict_bad_input_is_one_clear_line(tiny_weights, hearts, tmp_path, capsys):
    vol = hearts / "heart_000" / "heart_000-image.nii.gz"
    rc = main(
        [
            "predict",
            "--volume",
            str(vol),
            "--slice",
            "20",
            "--point",
            "500,3",
            "--checkpoint",
            str(tiny_weights),
            "--out",
            str(tmp_path / "x"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "outside the volume" in err and str(vol) in err
    rc = main(
        [
            "predict",
            "--volume",
            str(tmp_path / "none.nii.gz"),
            "--slice",
            "2",
            "--point",
            "1,1",
            "--checkpoint",
            str(tiny_weights),
            "--out",
            str(tmp_path / "y"),
        ]
    )
    assert rc == 1 and "file not found" in capsys.readouterr().err
    rc = main(
        [
            "predict",
            "--volume",
            str(vol),
            "--slice",
            "20",
            "--point",
            "1;2",
            "--checkpoint",
            str(tiny_weights),
            "--out",
            str(tmp_path / "z"),
        ]
    )
    assert rc == 1 and "ROW,COL" in capsys.readouterr().err


def test_eval_protocol_and_metrics_json(tiny_weights, hearts, tmp_path):
    out = tmp_path / "eval"
    rc = main(
        [
            "eval",
            "--checkpoint",
            str(tiny_weights),
            "--data_root",
            str(hearts),
            "--output_dir",
            str(out),
            "--clicks",
            "2",
            "--classes",
            "2,4",
            "--save_viz",
        ]
    )
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["cases"]) == {"heart_000", "heart_001"}
    per = m["cases"]["heart_000"]["2"]
    assert set(per) == {"1", "2"}
    assert set(per["1"]) == {"dice", "iou", "hd95", "assd", "surface_dice", "chamfer"}
    agg = m["aggregate"]
    dice2 = [m["cases"][c][k]["2"]["dice"] for c in m["cases"] for k in ("2", "4")]
    assert agg["dice"] == pytest.approx(np.mean(dice2))
    assert agg["n_structures"] == 4
    assert set(m["baselines"]) == {"region_growing", "extrusion"}
    # Region growing on a phantom's contrast-filled chamber is a real, non-trivial baseline.
    assert m["baselines"]["region_growing"]["aggregate"]["dice"] > 0.3
    assert (out / "viz" / "heart_000_class2_grid.png").is_file()
    # Deterministic: a second run gives the same numbers.
    main(
        [
            "eval",
            "--checkpoint",
            str(tiny_weights),
            "--data_root",
            str(hearts),
            "--output_dir",
            str(tmp_path / "eval2"),
            "--clicks",
            "2",
            "--classes",
            "2,4",
        ]
    )
    m2 = json.loads((tmp_path / "eval2" / "metrics.json").read_text())
    assert m2["cases"] == m["cases"]


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"{path}: not strict JSON ({constant})")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_eval_that_evaluates_nothing_lists_why_and_fails_in_one_line(
    tiny_weights, hearts, tmp_path, capsys
):
    """Every case failed, or none holds the asked classes: the failures, then one error line
    (no traceback), exit 1, and a metrics.json that is strict JSON (null, never NaN)."""
    bad = tmp_path / "bad"
    save_nifti(np.zeros((8, 8), np.float32), np.eye(4), bad / "flat" / "flat-image.nii.gz")
    save_nifti(np.zeros((8, 8), np.uint8), np.eye(4), bad / "flat" / "flat-label.nii.gz")
    base = ["eval", "--checkpoint", str(tiny_weights), "--clicks", "1", "--no_baselines"]
    assert main([*base, "--data_root", str(bad), "--output_dir", str(tmp_path / "e1")]) == 1
    out, err = capsys.readouterr()
    assert "failed: flat:" in out and "expected a 3D volume" in out
    assert err.strip().splitlines()[-1] == (
        f"sam3d eval: error: {bad}: nothing could be evaluated (all 1 case(s) failed)"
    )
    m = _strict_json(tmp_path / "e1" / "metrics.json")
    assert m["aggregate"]["dice"] is None and m["aggregate"]["n_structures"] == 0
    assert set(m["failed_cases"]) == {"flat"}
    calls = []  # the progress bar moves past a failed case too
    cfg = EvalConfig(str(bad), str(tmp_path / "e3"), checkpoint=str(tiny_weights), clicks=1)
    evaluate(cfg, progress=lambda *a: calls.append(a))
    assert calls == [(1, 1, "flat: failed")]

    args = ["--data_root", str(hearts), "--output_dir", str(tmp_path / "e2"), "--classes", "9"]
    assert main([*base, *args]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"sam3d eval: error: {hearts}: nothing could be evaluated "
        "(no labelled structure of class 9 in the 2 case(s) read)"
    )
    assert _strict_json(tmp_path / "e2" / "metrics.json")["aggregate"]["dice"] is None


def test_eval_reports_what_the_dataset_discovery_could_not_use(tiny_weights, tmp_path, capsys):
    """An image without a label is a failed case (as `sam3d preprocess` reports it), a label
    without an image a dataset problem: both in metrics.json and on the console."""
    root = tmp_path / "ds"
    write_case(root / "a" / "a-image.nii.gz", root / "a" / "a-label.nii.gz")
    write_case(root / "b" / "b-image.nii.gz", tmp_path / "elsewhere.nii.gz")
    write_case(tmp_path / "elsewhere.nii.gz", root / "c" / "c-label.nii.gz")
    args = ["eval", "--checkpoint", str(tiny_weights), "--data_root", str(root), "--clicks", "1"]
    out_dir = tmp_path / "ev"
    assert main([*args, "--output_dir", str(out_dir), "--classes", "1", "--no_baselines"]) == 0
    m = json.loads((out_dir / "metrics.json").read_text())
    assert set(m["cases"]) == {"a"} and m["n_cases"] == 2
    assert m["failed_cases"] == {
        "b": f"{root / 'b' / 'b-image.nii.gz'}: image without label (b-label.nii.gz missing)"
    }
    assert m["dataset_problems"] == [
        f"{root / 'c' / 'c-label.nii.gz'}: label without image (c-image.nii.gz missing)"
    ]
    out = capsys.readouterr().out
    assert f"  failed: b: {m['failed_cases']['b']}" in out.splitlines()
    assert f"  dataset: {m['dataset_problems'][0]}" in out.splitlines()


@pytest.mark.parametrize("command", ["eval", "predict", "preprocess", "synth", "demo"])
def test_an_output_folder_that_is_a_plain_file_is_one_error_line(
    command, tiny_weights, hearts, tmp_path, capsys
):
    taken = tmp_path / "some_file.txt"
    taken.write_text("keep me")
    vol = hearts / "heart_000" / "heart_000-image.nii.gz"
    args = {
        "eval": ["--checkpoint", str(tiny_weights), "--data_root", str(hearts), "--output_dir"],
        "predict": ["--volume", str(vol), "--slice", "20", "--point", "20,20", "--out"],
        "preprocess": ["--original_nifti_dir", str(hearts), "--classes", "5", "--out"],
        "synth": ["--cases", "1", "--out"],
        "demo": ["--out"],
    }[command]
    assert main([command, *args, str(taken)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"sam3d {command}: error: {taken}: exists and is not a folder"
    )
    assert taken.read_text() == "keep me"


def test_demo_with_the_shipped_weights(tmp_path, capsys):
    """The README's main job: one click on a heart the model never saw gives the LV in 3D."""
    from core.weights import read_weights_info, shipped_base_path

    info = read_weights_info(shipped_base_path())
    assert "synthetic" in info["trained_on"] and "train_base.sh" in info["recipe"]
    assert shipped_base_path().stat().st_size < 30 * 2**20
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    t = json.loads((tmp_path / "timings.json").read_text())
    # A floor well under the benchmarked Dice: catches broken weights, geometry or paste-back.
    assert t["dice"] > 0.4, out
    for name in ("mask.nii.gz", "mesh.glb", "mesh.ply", "preview.png"):
        assert (tmp_path / name).is_file()
    mask = nib.load(str(tmp_path / "mask.nii.gz"))
    image = nib.load(str(tmp_path / "heart-image.nii.gz"))
    np.testing.assert_allclose(mask.affine, image.affine)
    assert "Dice against the ground truth" in out


def test_eval_of_values_that_are_not_hu_as_ct_warns_per_case(tiny_weights, tmp_path, capsys):
    """An MR or 8-bit dataset evaluated with the default CT modality: the console and
    metrics.json say so for each such case, as `sam3d predict` does; with MR, nothing."""
    root = tmp_path / "ds"
    img, _, _ = write_case(root / "a" / "a-image.nii.gz", root / "a" / "a-label.nii.gz")
    b, _, affine = write_case(root / "b" / "b-image.nii.gz", root / "b" / "b-label.nii.gz", seed=1)
    img[0] = -1000.0  # a with air: HU
    save_nifti(img, affine, root / "a" / "a-image.nii.gz")
    save_nifti(b + 400.0, affine, root / "b" / "b-image.nii.gz")  # b: no air, no fat
    args = ["eval", "--checkpoint", str(tiny_weights), "--data_root", str(root), "--clicks", "2",
            "--classes", "1,2", "--no_baselines"]  # fmt: skip
    assert main([*args, "--output_dir", str(tmp_path / "ct")]) == 0
    err = capsys.readouterr().err
    m = json.loads((tmp_path / "ct" / "metrics.json").read_text())
    assert list(m["warnings"]) == ["b"] and len(m["warnings"]["b"]) == 1
    assert "do not look like CT" in m["warnings"]["b"][0]
    assert f"sam3d eval: warning: b: {m['warnings']['b'][0]}" in err and "warning: a:" not in err
    assert main([*args, "--output_dir", str(tmp_path / "mr"), "--modality", "mr"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert json.loads((tmp_path / "mr" / "metrics.json").read_text())["warnings"] == {}


def test_eval_and_predict_take_the_modality_a_dataset_declares(tiny_weights, tmp_path, capsys):
    """An nnU-Net MR dataset (dataset.json channel_names {"0": "MRI"}) runs as MR when no
    --modality is given: no not-HU warning, metrics.json and timings.json record "mr". Asked
    for CT, it runs as CT and says that the dataset declares MR."""
    root = tmp_path / "mr"
    for i in range(2):
        img, _, affine = write_case(
            root / "imagesTr" / f"m_{i}_0000.nii.gz", root / "labelsTr" / f"m_{i}.nii.gz", seed=i
        )
        save_nifti(img + 400.0, affine, root / "imagesTr" / f"m_{i}_0000.nii.gz")  # not HU
    (root / "dataset.json").write_text('{"channel_names": {"0": "MRI"}, "labels": {"A": 1}}')
    args = ["eval", "--checkpoint", str(tiny_weights), "--data_root", str(root), "--clicks", "1",
            "--classes", "1", "--no_baselines"]  # fmt: skip
    assert main([*args, "--output_dir", str(tmp_path / "auto")]) == 0
    assert "warning" not in capsys.readouterr().err
    m = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert m["config"]["modality"] == "mr" and m["warnings"] == {} and m["dataset_problems"] == []
    assert main([*args, "--output_dir", str(tmp_path / "ct"), "--modality", "ct"]) == 0
    out = capsys.readouterr()
    m = json.loads((tmp_path / "ct" / "metrics.json").read_text())
    assert m["config"]["modality"] == "ct" and set(m["warnings"]) == {"m_0", "m_1"}
    assert any("declares its images MR" in p for p in m["dataset_problems"])
    assert "declares its images MR (dataset.json) but CT was chosen" in out.out
    # predict on one of its volumes: the same
    vol = root / "imagesTr" / "m_0_0000.nii.gz"
    pred = ["predict", "--volume", str(vol), "--axis", "2", "--slice", "10", "--point", "12,14",
            "--checkpoint", str(tiny_weights)]  # fmt: skip
    assert main([*pred, "--out", str(tmp_path / "p_auto")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert json.loads((tmp_path / "p_auto" / "timings.json").read_text())["modality"] == "mr"
    assert main([*pred, "--out", str(tmp_path / "p_ct"), "--modality", "ct"]) == 0
    err = capsys.readouterr().err
    assert json.loads((tmp_path / "p_ct" / "timings.json").read_text())["modality"] == "ct"
    assert "declares its images MR (dataset.json) but CT was chosen" in err
    assert "do not look like CT" in err


def test_zoom_in_option_of_predict_and_eval(tiny_weights, hearts, tmp_path):
    """--zoom_in reaches the engine: the shipped base zooms in on a heart chamber (a second
    pass at a finer cube, then the refinement pass); eval records the policy it ran."""
    from core.clicks import first_click
    from core.io import save_image
    from core.synthetic import make_heart_phantom

    image, label = make_heart_phantom(7)
    vol = save_image(image, tmp_path / "heart.nii.gz")
    c = first_click(label.data == 1)  # LA, about 40 mm across: fills under 30 % of 192 mm
    args = ["predict", "--volume", str(vol), "--axis", "2", "--slice", str(c.slice_idx)]
    args += ["--point", f"{c.row:.0f},{c.col:.0f}"]
    runs = {}
    for flag in ([], ["--zoom_in"]):
        out = tmp_path / ("zoom" if flag else "plain")
        assert main(args + ["--out", str(out)] + flag) == 0
        runs[bool(flag)] = json.loads((out / "timings.json").read_text())
    assert runs[False]["cube_policy"]["zoom_in"] is False
    assert runs[False]["passes"] == 2 and runs[False]["cube_spacing_mm"] == 3.0
    assert runs[True]["cube_policy"]["zoom_in"] is True
    assert runs[True]["passes"] == 3 and runs[True]["cube_spacing_mm"] < 2.0

    out = tmp_path / "eval_zoom"
    args = ["eval", "--checkpoint", str(tiny_weights), "--data_root", str(hearts)]
    args += ["--output_dir", str(out), "--clicks", "1", "--classes", "2", "--max_cases", "1"]
    assert main(args + ["--no_baselines", "--zoom_in"]) == 0
    assert json.loads((out / "metrics.json").read_text())["cube_policy"]["zoom_in"] is True


def _report(baselines: dict, clicks: int = 2) -> dict:
    cls = {"dice@1": 0.5, "dice@2": 0.75, "hd95@2": 3.25, "hd95@1": 4.5}
    return {
        "config": {"clicks": clicks},
        "label_names": {"2": "LV"},
        "aggregate": {"per_class": {"2": cls}, "overall": cls},
        "baselines": baselines,
    }


def test_summary_table_shows_only_the_baselines_that_ran():
    from core.evaluate import summary_table

    bare = summary_table(_report({}))
    assert "region growing" not in bare and "extrusion" not in bare and "nan" not in bare
    assert "| LV | 0.500 | 0.750 | 3.2 |" in bare and "| **mean** | 0.500 | 0.750 | 3.2 |" in bare

    rg = {"aggregate": {"per_class": {"2": {"dice@2": 0.25}}, "overall": {"dice@2": 0.25}}}
    ex = {"aggregate": {"per_class": {"2": {"dice@2": 0.125}}, "overall": {"dice@2": 0.125}}}
    both = summary_table(_report({"extrusion": ex, "region_growing": rg})).splitlines()
    assert both[0] == (
        "| structure | model Dice@1 | model Dice@2 | model HD95@2 (mm) "
        "| region growing Dice@2 | extrusion Dice@2 |"
    )
    assert both[2] == "| LV | 0.500 | 0.750 | 3.2 | 0.250 | 0.125 |"
    assert all(line.count("|") == both[0].count("|") for line in both)


def test_summary_table_with_one_click_shows_dice_at_1_once():
    from core.evaluate import summary_table

    rg = {"aggregate": {"per_class": {"2": {"dice@1": 0.25}}, "overall": {"dice@1": 0.25}}}
    table = summary_table(_report({"region_growing": rg}, clicks=1)).splitlines()
    assert table[0] == "| structure | model Dice@1 | model HD95@1 (mm) | region growing Dice@1 |"
    assert table[2] == "| LV | 0.500 | 4.5 | 0.250 |"
    assert all(line.count("|") == table[0].count("|") for line in table)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"clicks": 0}, "clicks must be at least 1"),
        ({"mode": "3d"}, "mode must be one of volume, slice"),
        ({"modality": "pet"}, "modality must be one of ct, mr, us, got 'pet'"),
    ],
)
def test_eval_config_refuses_bad_settings_when_made(kw, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig("data", "out", **kw)


def test_eval_interrupted_keeps_the_cases_it_finished(tiny_weights, hearts, tmp_path):
    """Ctrl-C in the second case: metrics.json holds the first case, marked incomplete (the
    CLI says "finished work is kept"); a run that tried every case is complete."""
    seen = []

    def ctrl_c_in_second_case(done, total, message):
        seen.append(message)
        if len(seen) == 1:
            raise KeyboardInterrupt

    out = tmp_path / "e"
    cfg = EvalConfig(str(hearts), str(out), checkpoint=str(tiny_weights), clicks=1,
                     classes=(2,), baselines=False)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, progress=ctrl_c_in_second_case)
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["cases"]) == {"heart_000"} and m["complete"] is False
    assert m["aggregate"]["dice"] == m["cases"]["heart_000"]["2"]["1"]["dice"]
    assert evaluate(cfg)["complete"] is True
    assert json.loads((out / "metrics.json").read_text())["complete"] is True
