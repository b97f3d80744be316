"""Segmentation metrics against analytic cases and an independent SciPy reference."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy import ndimage

from core import metrics as M

SYMMETRIC = ("dice", "iou", "hd95", "assd", "surface_dice", "chamfer")


def ball(shape, radius_mm, spacing=(1.0, 1.0, 1.0), center_mm=None):
    """Voxels whose centre lies within ``radius_mm`` of ``center_mm`` (default: array centre)."""
    sp = np.asarray(spacing, dtype=float)
    c = (np.asarray(shape) - 1) * sp / 2 if center_mm is None else np.asarray(center_mm)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g * s - ci) ** 2 for g, s, ci in zip(grids, sp, c, strict=True)) <= radius_mm**2


def cube(shape, side, start):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(s, s + side) for s in start)] = True
    return m


def reference_metrics(pred, gt, spacing, tol):
    """Brute force on the full, uncropped arrays with SciPy's EDT (no MONAI, no cropping)."""
    ep = pred & ~ndimage.binary_erosion(pred, border_value=0)
    eg = gt & ~ndimage.binary_erosion(gt, border_value=0)
    d_pg = ndimage.distance_transform_edt(~eg, sampling=spacing)[ep]
    d_gp = ndimage.distance_transform_edt(~ep, sampling=spacing)[eg]
    both = np.concatenate([d_pg, d_gp])
    return {
        "dice": 2 * np.sum(pred & gt) / (pred.sum() + gt.sum()),
        "iou": np.sum(pred & gt) / np.sum(pred | gt),
        "hd95": max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)),
        "assd": both.mean(),
        "surface_dice": np.mean(both <= tol + 1e-6),
        "chamfer": (d_pg.mean() + d_gp.mean()) / 2,
    }


# --------------------------------------------------------------------------------------------
# Analytic cases


def test_concentric_spheres_match_analytic_values():
    # 0.5 mm voxels, radii 5 and 26 mm: the 21 mm gap is 42 voxels, so the ~0.3 voxel bias of
    # voxelised surfaces stays under 1%.
    sp, r1, r2 = (0.5, 0.5, 0.5), 5.0, 26.0
    shape = (108, 108, 108)
    inner, outer = ball(shape, r1, sp), ball(shape, r2, sp)
    m = M.binary_metrics(inner, outer, spacing=sp, tolerance_mm=1.0)
    gap = r2 - r1
    # Every point of either sphere is exactly `gap` from the other: all distances are the gap.
    assert m["hd95"] == pytest.approx(gap, rel=0.01)
    assert m["assd"] == pytest.approx(gap, rel=0.01)
    assert m["chamfer"] == pytest.approx(gap, rel=0.01)
    assert m["surface_dice"] == 0.0
    v1, v2 = 4 / 3 * math.pi * r1**3, 4 / 3 * math.pi * r2**3  # inner ball inside outer ball
    assert m["dice"] == pytest.approx(2 * v1 / (v1 + v2), rel=0.01)
    assert m["iou"] == pytest.approx(v1 / v2, rel=0.01)


@pytest.mark.parametrize("axis", [0, 2])
def test_shifted_cubes_exact_values(axis):
    side, shift = 20, 3
    spacing = (1.5, 1.0, 0.8)
    start = [5, 5, 5]
    a = cube((32, 32, 32), side, start)
    start[axis] += shift
    b = cube((32, 32, 32), side, start)
    m = M.binary_metrics(a, b, spacing=spacing)
    assert m["dice"] == pytest.approx(1 - shift / side, abs=1e-12)
    assert m["iou"] == pytest.approx((side - shift) / (side + shift), abs=1e-12)
    # The face leading the shift (1/6 of the surface) is exactly shift*spacing from the other
    # cube and no point is farther, so the 95th percentile is that distance, exactly.
    assert m["hd95"] == pytest.approx(shift * spacing[axis], abs=1e-5)
    assert 0 < m["assd"] < shift * spacing[axis]


def test_same_physical_shapes_at_different_spacings_give_same_mm():
    def spheres(sp):
        shape = tuple(int(round(50 / s)) for s in sp)
        return ball(shape, 8.0, sp), ball(shape, 20.0, sp)

    iso = M.binary_metrics(*spheres((1.0, 1.0, 1.0)), spacing=(1.0, 1.0, 1.0))
    sp = (0.6, 1.0, 1.4)
    aniso = M.binary_metrics(*spheres(sp), spacing=sp)
    for k, rel in (("hd95", 0.03), ("assd", 0.015), ("chamfer", 0.015), ("dice", 0.02)):
        assert aniso[k] == pytest.approx(iso[k], rel=rel), k
    assert aniso["assd"] == pytest.approx(12.0, rel=0.03)
    # The test can see spacing being ignored: voxel units give a very different HD95.
    wrong = M.hd95(*spheres(sp), spacing=(1.0, 1.0, 1.0))
    assert abs(wrong - iso["hd95"]) > 0.2 * iso["hd95"]


# --------------------------------------------------------------------------------------------
# Surface Dice


def test_surface_dice_identical_far_and_near():
    shape = (60, 60, 60)
    a = ball(shape, 15.0)
    assert M.surface_dice(a, a, tolerance_mm=0.0) == 1.0
    # Gap of 5 mm, tolerance 2 mm: no surface point is within tolerance.
    assert M.surface_dice(a, ball(shape, 20.0), tolerance_mm=2.0) == 0.0
    # Gap of 2 mm (at most ~2.24 mm between voxel centres), tolerance 3 mm: all within.
    assert M.surface_dice(a, ball(shape, 17.0), tolerance_mm=3.0) == 1.0
    # Partial: a looser tolerance can only admit more of the surface.
    b = ball(shape, 15.0, center_mm=(32.0, 29.5, 29.5))
    vals = [M.surface_dice(a, b, tolerance_mm=t) for t in (0.0, 1.0, 2.0, 3.0)]
    assert vals == sorted(vals) and 0 < vals[0] < 1 and vals[-1] == 1.0


def test_surface_dice_counts_distances_equal_to_tolerance():
    a = cube((20, 20, 20), 10, (5, 5, 5))
    b = cube((20, 20, 20), 10, (6, 5, 5))  # shifted one voxel of 0.3 mm (0.300000012 in float32)
    assert M.surface_dice(a, b, spacing=(0.3, 1, 1), tolerance_mm=0.3) == 1.0
    assert M.surface_dice(a, b, spacing=(0.3, 1, 1), tolerance_mm=0.29) < 1.0


# --------------------------------------------------------------------------------------------
# Empty masks, symmetry, validation


def test_empty_mask_policy_is_finite_and_documented():
    shape, sp = (10, 20, 30), (2.0, 1.0, 0.5)
    empty = np.zeros(shape, dtype=bool)
    full = cube(shape, 5, (2, 2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MONAI warns on empty masks; we must not reach it
        both = M.binary_metrics(empty, empty, spacing=sp)
        one = M.binary_metrics(full, empty, spacing=sp)
        other = M.binary_metrics(empty, full, spacing=sp)
    assert both == {"dice": 1, "iou": 1, "hd95": 0, "assd": 0, "surface_dice": 1, "chamfer": 0}
    diag = math.sqrt(20**2 + 20**2 + 15**2)
    assert M.volume_diagonal_mm(shape, sp) == pytest.approx(diag)
    for m in (one, other):
        assert m["dice"] == m["iou"] == m["surface_dice"] == 0.0
        assert m["hd95"] == m["assd"] == m["chamfer"] == pytest.approx(diag)
    assert M.hd95(full, empty, spacing=sp) == pytest.approx(diag)
    assert M.dice(empty, empty) == 1.0 and M.iou(full, empty) == 0.0


def test_metrics_are_symmetric():
    shape = (48, 48, 48)
    a = ball(shape, 12.0)
    b = ball(shape, 9.0, center_mm=(26.0, 20.0, 24.0)) | cube(shape, 6, (30, 30, 30))
    sp = (0.9, 1.1, 1.3)
    ab = M.binary_metrics(a, b, spacing=sp, tolerance_mm=1.5)
    ba = M.binary_metrics(b, a, spacing=sp, tolerance_mm=1.5)
    for k in SYMMETRIC:
        assert ab[k] == pytest.approx(ba[k], rel=1e-9), k
    assert M.hd95(a, b, spacing=sp) == ab["hd95"] and M.assd(b, a, spacing=sp) == ab["assd"]
    assert M.chamfer(a, b, spacing=sp) == ab["chamfer"]


def test_matches_uncropped_reference_including_border_touching_masks():
    rng = np.random.default_rng(0)
    shape, sp = (40, 36, 30), (0.8, 1.0, 2.5)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 3)
    pred = noise > 0.05  # irregular blobs, some cut by the array border
    gt = np.roll(noise, 2, axis=1) > 0.0
    assert pred[0].any() and gt[:, :, -1].any()
    got = M.binary_metrics(pred, gt, spacing=sp, tolerance_mm=2.0)
    ref = reference_metrics(pred, gt, sp, 2.0)
    for k in SYMMETRIC:
        assert got[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-6), k
    # A small object far from the border: cropping to its box must not change anything.
    small_p, small_g = np.zeros(shape, bool), np.zeros(shape, bool)
    small_p[18:24, 10:15, 12:16] = True
    small_g[19:26, 11:15, 13:18] = True
    got = M.binary_metrics(small_p, small_g, spacing=sp, tolerance_mm=1.0)
    ref = reference_metrics(small_p, small_g, sp, 1.0)
    for k in SYMMETRIC:
        assert got[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-6), k


def test_2d_masks():
    a = np.zeros((30, 30), bool)
    a[5:25, 5:25] = True
    b = np.roll(a, 4, axis=1)
    m = M.binary_metrics(a, b, spacing=(1.0, 0.5))
    assert m["dice"] == pytest.approx(0.8) and m["hd95"] == pytest.approx(2.0)


def test_invalid_inputs_raise_clear_errors():
    a = np.zeros((4, 5, 6), bool)
    with pytest.raises(ValueError, match=r"\(4, 5, 6\).*\(4, 5, 7\)"):
        M.dice(a, np.zeros((4, 5, 7), bool))
    with pytest.raises(ValueError, match="2D or 3D"):
        M.hd95(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="3D"):
        M.assd(a, a, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        M.binary_metrics(a, a, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="tolerance"):
        M.surface_dice(a, a, tolerance_mm=-1)
    with pytest.raises(ValueError, match="integer labels"):
        M.evaluate_labels(a.astype(float) + 0.5, a.astype(float))


# --------------------------------------------------------------------------------------------
# Label maps


def test_evaluate_labels_per_class_and_mean():
    shape = (40, 40, 40)
    gt = np.zeros(shape, np.uint8)
    gt[cube(shape, 10, (2, 2, 2))] = 1
    gt[cube(shape, 20, (15, 15, 15))] = 2
    pred = np.zeros_like(gt)
    pred[cube(shape, 10, (2, 2, 2))] = 1  # perfect
    pred[cube(shape, 20, (19, 15, 15))] = 2  # shifted 4 voxels along axis 0
    pred[0:2, 30:35, 30:35] = 3  # a class the ground truth does not have
    sp = (2.0, 1.0, 1.0)
    per = M.evaluate_labels(pred, gt, spacing=sp)
    assert list(per) == [1, 2]
    assert per[1]["dice"] == 1.0 and per[1]["hd95"] == 0.0
    assert per[2]["dice"] == pytest.approx(1 - 4 / 20)
    assert per[2]["hd95"] == pytest.approx(8.0)
    mean = M.mean_metrics(per)
    assert mean["dice"] == pytest.approx((1.0 + 0.8) / 2)
    assert mean["hd95"] == pytest.approx(4.0)
    with_fp = M.evaluate_labels(pred, gt, spacing=sp, classes=[3, 1])
    assert list(with_fp) == [1, 3] and with_fp[3]["dice"] == 0.0
    assert with_fp[3]["hd95"] == pytest.approx(M.volume_diagonal_mm(shape, sp))
    assert M.mean_metrics({}) == {}


def test_importing_metrics_does_not_import_monai():
    code = (
        "import sys, core.metrics; assert 'monai' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_first_binary_metrics_call_does_not_import_monai_or_torch():
    # The distances are computed with SciPy: the interactive first call must not pay for MONAI.
    code = (
        "import sys, numpy as np; from core.metrics import binary_metrics\n"
        "a = np.zeros((24, 24, 24), bool); a[4:16, 4:16, 4:16] = True\n"
        "m = binary_metrics(a, np.roll(a, 2, 0), spacing=(3, 3, 3))\n"
        "assert m['hd95'] == 6.0, m\n"
        "assert 'monai' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------------------------
# Cross-checks: boundary extraction against SciPy, distances against MONAI (the reference)


@pytest.mark.parametrize("shape", [(31, 27), (23, 19, 17)])
def test_edges_match_scipy_erosion(shape):
    rng = np.random.default_rng(len(shape))
    m = ndimage.gaussian_filter(rng.standard_normal(shape), 2) > 0  # touches the border
    assert m[0].any() and m[-1].any()
    want = m & ~ndimage.binary_erosion(m, border_value=0)  # face connectivity, outside = 0
    np.testing.assert_array_equal(M._edges(m), want)
    full = np.ones(shape, bool)  # exactly the voxels on the array border are boundary
    interior = np.zeros(shape, bool)
    interior[(slice(1, -1),) * len(shape)] = True
    np.testing.assert_array_equal(M._edges(full), ~interior)


def _lattice_distance_gap(spacing, tol):
    """Smallest |distance - tol| over all voxel-centre offsets (how far tol is from a tie)."""
    ranges = [np.arange(int(tol / s) + 2) * s for s in spacing]
    d = np.sqrt(sum(r**2 for r in np.meshgrid(*ranges, indexing="ij")))
    return float(np.abs(d - tol).min())


def _blob_pair(shape, seed):
    """Two irregular, overlapping, different blobs (smoothed noise thresholded), some on the border."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 3)
    other = ndimage.gaussian_filter(rng.standard_normal(shape), 3)
    pred = noise > 0.02
    gt = (noise + 0.6 * other) > 0.0
    return pred, gt


MONAI_CASES = [
    ((40, 36, 30), 0, (0.8, 1.0, 2.5), 1.5),
    ((48, 32, 40), 1, (1.2, 0.7, 0.9), 2.2),
    ((36, 44, 28), 2, (0.5, 0.5, 3.0), 1.1),
    ((64, 56), 3, (0.9, 1.7), 2.3),  # 2D
]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning:monai.*")  # MONAI's own deprecations
@pytest.mark.parametrize(("shape", "seed", "spacing", "tol"), MONAI_CASES)
def test_distances_match_monai(shape, seed, spacing, tol):
    """hd95, assd, surface_dice (and chamfer, dice, iou) agree with MONAI on irregular blobs.

    Same conventions on both sides, so the very quantities are compared:
    - MONAI's ``compute_hausdorff_distance(percentile=95)`` (``directed=False``) takes the
      percentile of each directed distance set, then the max of the two (not the percentile of
      the pooled distances), exactly our ``hd95``;
    - ``compute_average_surface_distance(symmetric=True)`` is the mean of the concatenated
      directed distances, our ``assd``; with ``symmetric=False`` it is one directed mean, so the
      average of both directions is our ``chamfer``;
    - ``compute_surface_dice`` (no sub-voxels) counts boundary voxels within the tolerance.
      MONAI compares float32 distances to the tolerance without an epsilon, so the tolerances
      here are chosen away from any voxel-centre distance (no ties to break differently).
    MONAI returns float32, hence the 1e-4 relative tolerance.
    """
    pytest.importorskip("monai", reason="MONAI (the dev extra) is the reference for distances")
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
        compute_surface_dice,
    )

    assert _lattice_distance_gap(spacing, tol) > 1e-3
    pred, gt = _blob_pair(shape, seed)
    assert pred.any() and gt.any() and (pred != gt).any()
    assert pred[0].any() or pred[-1].any()  # the border convention is exercised

    def onehot(m):  # [batch, channel, *spatial], one foreground channel
        return torch.from_numpy(m[None, None].astype(np.float32))

    yp, yt = onehot(pred), onehot(gt)
    sp = list(spacing)
    kw = {"include_background": True, "spacing": sp}
    ref = {
        "dice": compute_dice(yp, yt, include_background=True),
        "iou": compute_iou(yp, yt, include_background=True),
        "hd95": compute_hausdorff_distance(yp, yt, percentile=95, **kw),
        "assd": compute_average_surface_distance(yp, yt, symmetric=True, **kw),
        "surface_dice": compute_surface_dice(yp, yt, [tol], **kw),
        "chamfer": (
            compute_average_surface_distance(yp, yt, symmetric=False, **kw)
            + compute_average_surface_distance(yt, yp, symmetric=False, **kw)
        )
        / 2,
    }
    ref = {k: float(v.reshape(-1)[0]) for k, v in ref.items()}
    got = M.binary_metrics(pred, gt, spacing=spacing, tolerance_mm=tol)
    assert 0 < got["surface_dice"] < 1 and got["hd95"] > 0
    for k in SYMMETRIC:
        assert got[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-6), k


@pytest.mark.parametrize("seed", range(6))
def test_metrics_on_the_union_box_equal_the_whole_volumes(seed):
    """binary_metrics(..., volume_shape=) on the union of two masks' bounding boxes grown by a
    voxel (what the web page and napari's Compare compute on a clinical-size CT) gives the
    whole volume's numbers bitwise, masks touching the volume's border and an empty
    prediction (the whole volume's diagonal) included."""
    from core.geometry import mask_block
    from core.labelmap import grow_box, union_box

    rng = np.random.default_rng(seed)
    shape, spacing = (40, 36, 30), (0.7, 0.8, 1.5)
    g = np.zeros(shape, bool)
    p = np.zeros(shape, bool)
    g[5:20, 0:14, 8:25] = rng.random((15, 14, 17)) > 0.3
    p[10:30, 3:20, 20:30] = rng.random((20, 17, 10)) > 0.4
    for pred in (p, np.zeros(shape, bool)):
        box = grow_box(union_box(mask_block(pred), mask_block(g)), shape)
        whole = M.binary_metrics(pred, g, spacing=spacing, tolerance_mm=1.0)
        cut = M.binary_metrics(
            pred[box], g[box], spacing=spacing, tolerance_mm=1.0, volume_shape=shape
        )
        assert cut == whole
    with pytest.raises(ValueError, match="does not fit"):
        M.binary_metrics(p, g, volume_shape=(10, 10, 10))
