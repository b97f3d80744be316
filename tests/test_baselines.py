"""Tests of core.baselines: region growing and slice-mask extrusion on synthetic volumes."""

from __future__ import annotations

import numpy as np
import pytest

from core.baselines import extrude_slice_mask, region_growing
from core.clicks import Box, Click, PromptSet, first_click
from core.errors import InputError
from core.geometry import take_slice
from core.metrics import dice

SHAPE = (40, 44, 36)
SPACING = (1.0, 1.0, 1.0)


def ellipsoid(shape=SHAPE, centre=(20, 22, 18), semi=(12, 14, 10), spacing=(1, 1, 1)):
    grid = np.indices(shape, dtype=np.float64)
    q = sum(((g - c) * s / a) ** 2 for g, c, a, s in zip(grid, centre, semi, spacing, strict=True))
    return q <= 1.0


def noisy(mask_values, *, sigma=0.1, seed=0):
    """Background 0 plus ``value`` on each mask, plus Gaussian noise."""
    img = np.zeros(SHAPE, dtype=np.float32)
    for m, v in mask_values:
        img[m] = v
    return img + np.random.default_rng(seed).normal(0, sigma, SHAPE).astype(np.float32)


def clicks_at(*voxels, positive=True, axis=2):
    return PromptSet(clicks=tuple(Click.from_voxel(v, axis, positive) for v in voxels))


# --------------------------------------------------------------------------------------------
# region_growing


def test_region_growing_recovers_a_bright_ellipsoid():
    gt = ellipsoid()
    img = noisy([(gt, 1.0)])
    prompts = PromptSet(clicks=(first_click(gt),))
    out = region_growing(img, prompts, spacing=SPACING)
    assert out.dtype == bool and out.shape == SHAPE
    assert dice(out, gt) > 0.9
    # Same result on raw "HU"-like intensities (scale and offset do not matter).
    out_hu = region_growing(img * 400.0 - 100.0, prompts, spacing=SPACING)
    assert dice(out_hu, gt) > 0.9
    # Deterministic.
    np.testing.assert_array_equal(out, region_growing(img, prompts, spacing=SPACING))


def test_touching_objects_of_different_intensity_stay_separate():
    a = ellipsoid(centre=(20, 14, 18), semi=(10, 9, 9))
    b = ellipsoid(centre=(20, 31, 18), semi=(10, 9, 9)) & ~a
    assert (a[:, 1:] & b[:, :-1]).any() or (a[:, :-1] & b[:, 1:]).any()  # they touch
    img = noisy([(a, 1.0), (b, 0.6)], sigma=0.05)
    out_a = region_growing(img, PromptSet(clicks=(first_click(a),)), spacing=SPACING)
    out_b = region_growing(img, PromptSet(clicks=(first_click(b),)), spacing=SPACING)
    assert dice(out_a, a) > 0.9 and dice(out_b, b) > 0.9
    assert (out_a & b).sum() < 0.02 * b.sum() and (out_b & a).sum() < 0.02 * a.sum()


def test_negative_click_removes_a_wrongly_included_blob():
    organ = ellipsoid(semi=(10, 11, 9))
    blob = ellipsoid(centre=(20, 39, 18), semi=(4, 4, 4))
    bridge = np.zeros(SHAPE, bool)
    bridge[19:22, 30:37, 17:20] = True  # a 3-voxel-thick neck: survives the 1-voxel opening
    img = noisy([(organ | blob | bridge, 1.0)], sigma=0.05)
    pos = first_click(organ)
    grown = region_growing(img, PromptSet(clicks=(pos,)), spacing=SPACING)
    assert grown[blob].mean() > 0.9  # the leak happens
    neg = Click.from_voxel((20, 39, 18), 2, positive=False)
    cut = region_growing(img, PromptSet(clicks=(pos, neg)), spacing=SPACING)
    assert cut[blob].mean() < 0.05
    assert dice(cut, organ) > 0.9 and dice(cut, organ) > dice(grown, organ)
    # A negative click outside the region changes nothing.
    far = Click.from_voxel((2, 2, 2), 2, positive=False)
    np.testing.assert_array_equal(
        grown, region_growing(img, PromptSet(clicks=(pos, far)), spacing=SPACING)
    )


def test_region_growing_volume_cap_and_tolerance():
    gt = ellipsoid()
    img = noisy([(gt, 1.0)])
    prompts = PromptSet(clicks=(first_click(gt),))
    capped = region_growing(img, prompts, spacing=(2.0, 2.0, 2.0), max_volume_ml=8.0)
    assert 0 < capped.sum() <= 1000 and capped[first_click(gt).voxel_index()]  # 8 ml / 8 mm^3
    # A tolerance wide enough to take the background grows into (almost) everything.
    wide = region_growing(img, prompts, spacing=SPACING, tolerance=5.0)
    assert wide.mean() > 0.99
    with pytest.raises(ValueError, match="tolerance"):
        region_growing(img, prompts, spacing=SPACING, tolerance=-1)
    with pytest.raises(ValueError, match="max_volume_ml"):
        region_growing(img, prompts, spacing=SPACING, max_volume_ml=0)


def test_region_growing_rejects_prompts_without_positive_clicks():
    img = noisy([(ellipsoid(), 1.0)])
    for prompts in (
        PromptSet(),
        clicks_at((20, 22, 18), positive=False),
        PromptSet(box=Box(2, 18, 10, 10, 30, 30)),
    ):
        with pytest.raises(ValueError, match="positive click"):
            region_growing(img, prompts, spacing=SPACING)
    with pytest.raises(InputError, match="outside the volume"):
        region_growing(img, clicks_at((20, 22, 40)), spacing=SPACING)
    with pytest.raises(ValueError, match="3D"):
        region_growing(img[0], clicks_at((20, 22, 18)), spacing=SPACING)


# --------------------------------------------------------------------------------------------
# extrude_slice_mask


def test_extruding_the_true_slice_of_a_cylinder_matches_it():
    radius, k0 = 9, 18
    disk = take_slice(ellipsoid(semi=(radius, radius, 100)), 2, k0)
    cyl = np.zeros(SHAPE, bool)
    cyl[:, :, k0 - radius : k0 + radius + 1] = disk[:, :, None]  # as tall as it is wide
    img = noisy([(cyl, 1.0)])
    prompts = PromptSet(clicks=(first_click(cyl),))
    assert prompts.reference_slice() == (2, k0)
    out = extrude_slice_mask(img, prompts, spacing=SPACING, slice_mask=disk)
    assert out.dtype == bool and out.shape == SHAPE
    assert dice(out, cyl) > 0.9
    np.testing.assert_array_equal(take_slice(out, 2, k0), disk)


def test_extruding_the_true_slice_of_a_sphere_is_plausible():
    sphere = ellipsoid(semi=(10, 10, 10))
    prompts = PromptSet(clicks=(first_click(sphere),))
    _, k0 = prompts.reference_slice()
    img = noisy([(sphere, 1.0)])
    out = extrude_slice_mask(img, prompts, spacing=SPACING, slice_mask=take_slice(sphere, 2, k0))
    assert 0.6 < dice(out, sphere) < 0.9  # a cylinder around a sphere: 0.8 in the continuum


def test_extrusion_thickness_is_in_mm():
    sphere = ellipsoid(semi=(10, 10, 10))
    prompts = PromptSet(clicks=(first_click(sphere),))
    _, k0 = prompts.reference_slice()
    disk = take_slice(sphere, 2, k0)
    img = noisy([(sphere, 1.0)])
    # Slices 2.5 mm apart: the slices within d / 2 mm of the reference one, d = 2 sqrt(A / pi).
    out = extrude_slice_mask(img, prompts, spacing=(1.0, 1.0, 2.5), slice_mask=disk)
    half = int(np.sqrt(disk.sum() / np.pi) / 2.5)
    assert half == 4  # 317 pixels: radius 10.05 mm -> 4 slices of 2.5 mm each side
    assert np.flatnonzero(out.any(axis=(0, 1))).tolist() == list(range(k0 - half, k0 + half + 1))
    # Clipped to the volume when the reference slice is near the edge.
    edge = extrude_slice_mask(img, clicks_at((20, 22, 1)), spacing=SPACING, slice_mask=disk)
    assert np.flatnonzero(edge.any(axis=(0, 1))).tolist() == list(range(0, 12))


def test_extrusion_from_clicks_grows_the_slice_mask():
    gt = ellipsoid()
    img = noisy([(gt, 1.0)])
    prompts = PromptSet(clicks=(first_click(gt),))
    out = extrude_slice_mask(img, prompts, spacing=SPACING)
    _, k0 = prompts.reference_slice()
    assert dice(take_slice(out, 2, k0), take_slice(gt, 2, k0)) > 0.9
    assert dice(out, gt) > 0.6
    np.testing.assert_array_equal(out, extrude_slice_mask(img, prompts, spacing=SPACING))
    # A painted mask on the reference slice is used as is.
    painted = np.zeros(SHAPE[:2], bool)
    painted[15:25, 17:27] = True
    pm = PromptSet(mask=(2, k0, painted))
    out_m = extrude_slice_mask(img, pm, spacing=SPACING)
    np.testing.assert_array_equal(take_slice(out_m, 2, k0), painted)
    assert out_m.sum() == painted.sum() * len(range(k0 - 5, k0 + 6))  # d = 11.3 mm


def test_extrusion_box_and_negative_click_limit_the_2d_growing():
    gt = ellipsoid()
    img = noisy([(gt, 1.0)])
    c = first_click(gt)
    i, j, k = c.voxel_index()
    boxed = extrude_slice_mask(
        img, PromptSet(clicks=(c,), box=Box(2, k, i - 4, j - 4, i + 5, j + 5)), spacing=SPACING
    )
    assert 0 < take_slice(boxed, 2, k).sum() <= 81
    # A blob joined to the organ by a neck on the slice: a negative click on it cuts it off.
    organ = ellipsoid(semi=(10, 11, 9))
    blob = ellipsoid(centre=(20, 39, 18), semi=(4, 4, 4))
    bridge = np.zeros(SHAPE, bool)
    bridge[19:22, 30:37, 17:20] = True
    img = noisy([(organ | blob | bridge, 1.0)], sigma=0.05)
    pos = first_click(organ)
    assert pos.slice_idx == 18
    leaky = extrude_slice_mask(img, PromptSet(clicks=(pos,)), spacing=SPACING)
    neg = Click.from_voxel((20, 39, 18), 2, positive=False)
    cut = extrude_slice_mask(img, PromptSet(clicks=(pos, neg)), spacing=SPACING)
    blob2d = take_slice(blob, 2, 18)
    assert take_slice(leaky, 2, 18)[blob2d].mean() > 0.9
    assert take_slice(cut, 2, 18)[blob2d].mean() < 0.05
    assert dice(take_slice(cut, 2, 18), take_slice(organ, 2, 18)) > 0.9


def test_extrusion_rejects_bad_prompts_and_masks():
    img = noisy([(ellipsoid(), 1.0)])
    with pytest.raises(ValueError, match="positive click"):
        extrude_slice_mask(img, PromptSet(), spacing=SPACING)
    with pytest.raises(ValueError, match="positive click"):
        extrude_slice_mask(img, clicks_at((20, 22, 18), positive=False), spacing=SPACING)
    with pytest.raises(ValueError, match="positive click"):  # a box alone: nothing to grow from
        extrude_slice_mask(img, PromptSet(box=Box(2, 18, 10, 10, 30, 30)), spacing=SPACING)
    prompts = clicks_at((20, 22, 18))
    with pytest.raises(ValueError, match="empty"):
        extrude_slice_mask(img, prompts, spacing=SPACING, slice_mask=np.zeros(SHAPE[:2]))
    with pytest.raises(ValueError, match="shape"):
        extrude_slice_mask(img, prompts, spacing=SPACING, slice_mask=np.ones((3, 3)))
