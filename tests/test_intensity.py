"""Intensity normalisation per modality, and the warning when values do not fit the modality.

The shipped base saw synthetic CT only. MR and ultrasound are scaled by percentiles into the
range body tissue has in CT, so the base still finds organs on them; an 8-bit or raw-valued
volume opened as CT is flagged rather than silently giving a poor mask.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import save_nifti, shared_dataset

from core.clicks import PromptSet, first_click
from core.intensity import (
    DEFAULT_CT_WINDOW,
    intensity_rule,
    intensity_warning,
    normalize_intensity,
)
from core.io import Volume
from core.metrics import dice
from core.synthetic import make_heart_phantom

LV, RV = 2, 4


@pytest.fixture(scope="module")
def base():
    from core.engine import Reconstructor

    return Reconstructor.from_pretrained()


def _eight_bit(hu: np.ndarray) -> np.ndarray:
    """A CT exported as 8-bit greys, as from a PNG stack or a screenshot tool."""
    lo, hi = np.percentile(hu, [0.5, 99.5])
    return (np.clip((hu - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def test_ct_clips_to_the_window_and_maps_to_unit_range():
    hu = np.array([-2000.0, -1000, 500, 2000, 5000]).reshape(1, 1, 5)
    np.testing.assert_allclose(normalize_intensity(hu, "ct").ravel(), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(
        normalize_intensity(hu, "ct", ct_window=(-100, 100)).ravel(), [0, 0, 1, 1, 1]
    )
    with pytest.raises(ValueError, match="high > low"):
        normalize_intensity(hu, "ct", ct_window=(100, -100))
    with pytest.raises(ValueError, match="unknown modality"):
        normalize_intensity(hu, "pet")


@pytest.mark.parametrize("modality", ["mr", "us"])
def test_mr_and_us_percentiles_land_in_ct_tissue_range(modality):
    rng = np.random.default_rng(0)
    x = rng.normal(400, 50, (20, 20, 20))
    out = normalize_intensity(x, modality)
    assert out.dtype == np.float32 and out.shape == x.shape
    lo, hi = np.percentile(x, [0.5, 99.5])
    expected = np.clip((x - lo) / (hi - lo) * 0.5, 0, 1)  # lo -> 0, hi -> 0.5
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert out.min() == 0 and 0.5 < out.max() <= 1
    # the median of the body sits where CT soft tissue does in the default window (about 0.35)
    assert 0.2 < float(np.median(out)) < 0.3
    # a constant volume neither divides by zero nor gives NaN
    assert np.isfinite(normalize_intensity(np.full((4, 4, 4), 7.0), modality)).all()


def test_the_rule_names_how_each_modality_is_normalised():
    assert intensity_rule("ct") == "ct: clip to [-1000, 2000] HU, map to [0, 1]"
    assert intensity_rule("ct", (-100, 300)) != intensity_rule("ct")
    assert "percentiles 0.5..99.5" in intensity_rule("mr") and "[0, 0.5]" in intensity_rule("us")
    with pytest.raises(ValueError, match="unknown modality"):
        intensity_rule("pet")


def test_eight_bit_or_raw_values_opened_as_ct_are_flagged():
    hu = make_heart_phantom(3)[0].data
    assert intensity_warning(hu, "ct") is None  # HU: air at -1024
    u8 = _eight_bit(hu)
    msg = intensity_warning(u8, "ct")
    assert msg and "values 0..255 do not look like CT in Hounsfield units" in msg
    assert "choose the MR or US modality" in msg and "\n" not in msg
    assert intensity_warning(u8, "mr") is None and intensity_warning(u8, "us") is None
    # a window fitted to the 8-bit values (what the warning's docs offer from Python) is quiet
    assert intensity_warning(u8, "ct", ct_window=(0, 255)) is None
    assert intensity_warning(u8, "ct", ct_window=(-160, 240)) is not None  # an HU window
    # raw 16-bit values with air below zero but most voxels above the window's top
    raw = (hu + 1024).astype(np.float32) * 4 - 200
    msg = intensity_warning(raw, "ct")
    assert msg and "lie above the CT window's top (2000 HU)" in msg
    assert intensity_warning(raw, "ct", ct_window=(-200, 8000)) is None
    # a CT crop with fat but no air is fine
    assert intensity_warning(np.clip(hu, -120, None), "ct") is None


def _soft_tissue_crop(seed: int = 0) -> np.ndarray:
    """A crop inside a CT's body in HU, with no air, fat or bone: muscle (50 HU) holding an
    organ (60), a cyst (10) and a contrast-filled vessel (180), with the scanner's noise."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    i, j, k = np.mgrid[:40, :44, :36]
    hu = np.full((40, 44, 36), 50.0)
    hu[(i - 20) ** 2 + (j - 24) ** 2 + (k - 18) ** 2 < 12**2] = 60.0
    hu[(i - 8) ** 2 + (j - 10) ** 2 + (k - 9) ** 2 < 5**2] = 10.0
    hu[(i - 30) ** 2 + (j - 34) ** 2 < 3**2] = 180.0
    hu = ndimage.gaussian_filter(hu, 0.7) + rng.normal(0, 15, hu.shape)
    return hu.astype(np.float32)


def test_a_soft_tissue_crop_in_hu_is_not_flagged_but_other_units_are():
    """A CT cropped inside the body (no air, fat or bone) was flagged as "not Hounsfield
    units" for having nothing below -100 HU. Its values (noise under water's 0 HU, tissue
    above 30, nothing near bone) now count as HU; an MR in any scale, an 8-bit image or a
    z-score is still flagged."""
    hu = _soft_tissue_crop()
    lo, hi = float(hu.min()), float(hu.max())
    assert -100 < lo <= -20 and 30 <= hi <= 400  # what such a crop holds
    assert intensity_warning(hu, "ct") is None
    assert intensity_warning(np.round(hu).astype(np.int16), "ct") is None
    unit = (hu - lo) / (hi - lo)
    for what, data in [
        ("MR 0..1000", unit * 1000),
        ("MR 0..1", unit),
        ("8-bit", (unit * 255).astype(np.uint8)),
        ("MR -47..833 (resampled: below zero at its edges)", unit * 880 - 47),
        ("8-bit resampled with overshoot", unit * 270 - 8),
        ("z-score", (hu - hu.mean()) / hu.std()),
        ("raw scanner values", hu + 1024),
    ]:
        assert intensity_warning(data, "ct") is not None, what


@pytest.mark.realdata
def test_real_soft_tissue_crops_are_not_flagged_and_the_real_mr_is():
    """Crops inside organs and muscles of the abdominal CT example (no fat or bone in them),
    against the abdominal MR example, whole and cropped the same way."""
    from scipy import ndimage

    from core.io import load_pair

    root = shared_dataset("totalseg_examples")
    names = json.loads((root / "label_names.json").read_text())

    def crops(case, wanted):
        img, lab = load_pair(root / f"volumes/{case}.nii.gz", root / f"labels/{case}.nii.gz")
        ids = {v: int(k) for k, v in names[case].items()}
        for name in wanted:
            organ = lab.data == ids[name]
            depth = ndimage.distance_transform_edt(organ)
            c, r = np.unravel_index(depth.argmax(), organ.shape), int(depth.max() * 0.6)
            yield name, img.data[tuple(slice(max(x - r, 0), x + r + 1) for x in c)]
        yield "whole", img.data

    ct = ["urinary_bladder", "gluteus_maximus_right", "iliopsoas_left", "autochthon_left"]
    for name, crop in crops("ts_ct_abdomen", ct):
        if name != "whole":
            assert crop.min() > -100 and crop.max() < 400, name  # inside soft tissue
        assert intensity_warning(crop, "ct") is None, name
    mr = ["liver", "spleen", "kidney_left", "kidney_right", "stomach"]
    for name, crop in crops("ts_mr_abdomen", mr):
        assert intensity_warning(crop, "ct") is not None, name


def test_the_engine_reports_the_warning_and_mr_scaling_recovers_an_eight_bit_ct(base):
    """Before percentiles into the CT range, MR on an 8-bit heart gave Dice 0.25-0.45 (a
    z-score the base never saw) and CT gave 0.51-0.75 with no word of why."""
    image, label = make_heart_phantom(90002)
    gt = label.data == LV
    prompts = PromptSet((first_click(gt),))
    u8 = Volume(_eight_bit(image.data), image.affine, "heart8.nii.gz")
    hu = base.predict(image, prompts, mesh=False)
    as_ct = base.predict(u8, prompts, mesh=False)
    as_mr = base.predict(u8, prompts, modality="mr", mesh=False)
    d_hu, d_ct, d_mr = (dice(r.mask, gt) for r in (hu, as_ct, as_mr))
    print(f"\nLV Dice: HU as CT {d_hu:.3f}, 8-bit as CT {d_ct:.3f}, 8-bit as MR {d_mr:.3f}")
    assert hu.warnings == () and as_mr.warnings == ()
    (msg,) = as_ct.warnings
    assert "do not look like CT" in msg
    assert d_mr > d_ct + 0.1 and d_mr > d_hu - 0.1


def test_predict_cli_prints_the_warning_and_keeps_it_in_timings(tmp_path, capsys):
    from core.cli import main

    image, label = make_heart_phantom(90002)
    path = save_nifti(_eight_bit(image.data), image.affine, tmp_path / "heart8.nii.gz")
    c = first_click(label.data == LV)
    args = ["predict", "--volume", str(path), "--axis", "2", "--slice", str(c.slice_idx)]
    args += ["--point", f"{c.row},{c.col}", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"sam3d predict: warning: {path}: values 0..255 do not look like CT" in err
    info = json.loads((tmp_path / "o" / "timings.json").read_text())
    assert len(info["warnings"]) == 1 and "Hounsfield" in info["warnings"][0]
    assert info["modality"] == "ct"
    assert main([*args[:-1], str(tmp_path / "o2"), "--modality", "mr"]) == 0
    assert "warning" not in capsys.readouterr().err
    info = json.loads((tmp_path / "o2" / "timings.json").read_text())
    assert info["warnings"] == [] and info["modality"] == "mr"


@pytest.mark.slow
def test_the_base_finds_organs_on_real_mr(base):
    """The abdominal MR example: the base's first click on its six largest organs. A z-score
    (the MR rule before) gave empty masks on all of them (mean Dice 0.00)."""
    from core.io import load_pair

    root = shared_dataset("totalseg_examples")
    img, lab = load_pair(
        root / "volumes/ts_mr_abdomen.nii.gz", root / "labels/ts_mr_abdomen.nii.gz"
    )
    assert intensity_warning(img.data, "mr") is None
    ids, counts = np.unique(lab.data[lab.data > 0], return_counts=True)
    dices = []
    for k in ids[np.argsort(counts)[::-1][:6]]:
        gt = lab.data == k
        r = base.predict(img, PromptSet((first_click(gt),)), modality="mr", mesh=False)
        dices.append(dice(r.mask, gt))
    print(f"\nreal MR, six largest organs: Dice {np.round(dices, 3).tolist()}")
    assert sum(d > 0.02 for d in dices) >= 4 and np.mean(dices) > 0.05


def test_default_window_is_the_documented_one():
    assert DEFAULT_CT_WINDOW == (-1000.0, 2000.0)


def _head_in_air():
    """A head CT as OpenKBP's: most voxels are padding air at -1024 HU."""
    vol = np.full((64, 64, 64), -1024.0, np.float32)
    r = np.linalg.norm(np.indices(vol.shape) - 31.5, axis=0)
    vol[r < 10] = 1000.0  # skull
    vol[r < 9] = 40.0  # soft tissue: with the skull, 1.6 % of the voxels
    return vol, r


def test_the_display_window_draws_a_small_body_in_a_field_of_air_with_contrast():
    """Soft tissue grey, between air and bone: with the air counted in the high end, the
    window ended in soft tissue and the whole head was drawn white."""
    from core.intensity import display_window

    vol, r = _head_in_air()
    lo, hi = display_window(vol)
    grey = (np.array([-1024.0, 40.0, 1000.0]) - lo) / (hi - lo)
    assert grey[0] <= 0.0 and 0.3 < grey[1] < 0.7 and grey[2] >= 0.95
    # MR's zero background alike; a volume of two values keeps both apart; a constant one
    # gets a window that is not empty
    mr = np.where(r < 9, 300.0 + r, 0.0).astype(np.float32)
    assert display_window(mr)[1] > 300.0
    assert display_window((r < 9).astype(np.float32)) == (0.0, 1.0)
    lo, hi = display_window(np.full((8, 8, 8), 5.0))
    assert lo == 5.0 and hi > lo
