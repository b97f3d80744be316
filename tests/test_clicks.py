"""Tests of core.clicks: 3D prompts and the deterministic click-simulation protocol."""

from __future__ import annotations

import numpy as np
import pytest

from core.clicks import (
    AXIAL_AXIS,
    Box,
    Click,
    PromptSet,
    check_click_in_volume,
    first_click,
    fix_clicked_error,
    next_click,
    simulate_clicks,
)
from core.errors import InputError
from core.geometry import take_slice
from core.metrics import dice

SHAPE = (30, 34, 26)


def ball(shape=SHAPE, centre=(15, 17, 13), radius=6.0, spacing=(1.0, 1.0, 1.0)):
    grid = np.indices(shape, dtype=np.float64)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing, strict=True))
    return d2 <= radius**2


def box_mask(shape=SHAPE, lo=(5, 8, 4), hi=(16, 21, 19)):
    m = np.zeros(shape, dtype=bool)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return m


# --------------------------------------------------------------------------------------------
# Click, Box, PromptSet


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_click_voxel_round_trip(axis):
    ijk = np.array([4.0, 7.0, 11.0])
    c = Click.from_voxel(ijk, axis)
    assert c.axis == axis and c.slice_idx == int(ijk[axis]) and c.positive
    np.testing.assert_array_equal(c.voxel(), ijk)
    assert c.voxel().shape == (3,) and c.voxel().dtype == np.float64
    assert c.voxel_index() == (4, 7, 11)
    # The click's pixel is the voxel's pixel on the slice.
    vol = np.zeros(SHAPE, dtype=bool)
    vol[4, 7, 11] = True
    assert take_slice(vol, axis, c.slice_idx)[int(c.row), int(c.col)]
    assert Click.from_voxel(ijk, axis, positive=False).positive is False


def test_click_validation():
    with pytest.raises(ValueError, match="axis"):
        Click(3, 0, 1, 1)
    with pytest.raises(ValueError, match="axis"):
        Click(True, 0, 1, 1)
    with pytest.raises(ValueError, match="slice_idx"):
        Click(0, 2.5, 1, 1)
    with pytest.raises(ValueError, match="finite"):
        Click(0, 2, np.nan, 1)
    c = Click(np.int64(1), np.int64(3), 2, 5)
    assert type(c.axis) is int and type(c.slice_idx) is int and type(c.row) is float
    assert c == Click(1, 3, 2.0, 5.0) and hash(c) == hash(Click(1, 3, 2.0, 5.0))


def test_click_outside_volume_is_a_one_line_error_naming_the_shape():
    check_click_in_volume(Click(2, 25, 29, 33), SHAPE)  # last voxel: fine
    for bad in (Click(2, 26, 3, 3), Click(2, 3, 30, 3), Click(0, 3, 3, -1), Click(1, -1, 3, 3)):
        with pytest.raises(InputError) as err:
            check_click_in_volume(bad, SHAPE, path="ct.nii.gz")
        msg = str(err.value)
        assert "\n" not in msg and "(30, 34, 26)" in msg and msg.startswith("ct.nii.gz: click")
        assert f"axis {bad.axis} slice {bad.slice_idx}" in msg


def test_box_validation():
    b = Box(2, 4, 1, 2, 5, 7)
    assert b.rc == (1, 2, 5, 7)
    with pytest.raises(ValueError, match="r1 > r0"):
        Box(2, 4, 5, 2, 5, 7)
    with pytest.raises(ValueError, match="axis"):
        Box(-1, 4, 1, 2, 5, 7)


def test_prompt_set_helpers():
    p = PromptSet()
    assert p.is_empty
    with pytest.raises(
        ValueError, match=r"at least one positive click, a box or a mask \(got nothing\)"
    ):
        p.validate()
    neg = Click(2, 5, 1, 1, positive=False)
    p1 = p.add(neg)
    assert p.clicks == () and p1.clicks == (neg,) and not p1.is_empty
    with pytest.raises(
        ValueError, match=r"at least one positive click.*\(got 1 negative click\(s\) only\)"
    ):
        p1.reference_slice()
    blank = PromptSet((neg,), mask=(2, 5, np.zeros((4, 4), bool)))  # a mask with nothing painted
    with pytest.raises(ValueError, match=r"\(got 1 negative click\(s\) and an empty mask only\)"):
        blank.validate()
    pos = Click(0, 9, 2, 3)
    p2 = p1.add(pos).add(Click(1, 4, 2, 2))
    assert p2.positives == (pos, Click(1, 4, 2, 2)) and p2.negatives == (neg,)
    assert p2.validate() is p2 and p2.reference_slice() == (0, 9)
    assert PromptSet(box=Box(1, 6, 0, 0, 2, 2)).reference_slice() == (1, 6)
    m = np.zeros((4, 5), dtype=int)
    m[1, 1] = 1
    pm = PromptSet(mask=(2, 3, m), box=None)
    assert pm.reference_slice() == (2, 3) and pm.mask[2].dtype == bool
    assert not pm.mask[2].flags.writeable
    with pytest.raises(ValueError, match="at least one positive click"):
        PromptSet(mask=(2, 3, np.zeros((4, 5)))).validate()  # an empty mask says nothing
    with pytest.raises(ValueError, match="2D"):
        PromptSet(mask=(2, 3, np.zeros((4, 5, 1))))
    with pytest.raises(ValueError, match="Click"):
        PromptSet(clicks=((2, 3, 1, 1),))


# --------------------------------------------------------------------------------------------
# first_click


def test_first_click_is_the_box_centre_on_the_centroid_slice():
    gt = box_mask()  # rows 5..15, cols 8..20, slices 4..18: centre (10, 14, 11)
    c = first_click(gt)
    assert c.axis == AXIAL_AXIS and c.positive
    assert c.voxel_index() == (10, 14, 11)
    assert gt[c.voxel_index()]


def test_first_click_picks_the_largest_component_of_the_centroid_slice():
    gt = np.zeros(SHAPE, dtype=bool)
    gt[3:9, 3:9, 10:16] = True  # small blob
    gt[14:26, 12:30, 10:16] = True  # large blob, same slices
    centroid_k = int(np.floor(np.argwhere(gt).mean(axis=0)[2] + 0.5))
    c = first_click(gt)
    assert c.slice_idx == centroid_k
    i, j, k = c.voxel_index()
    assert 14 <= i < 26 and 12 <= j < 30 and gt[i, j, k]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_first_click_on_other_axes_is_inside(axis):
    gt = ball(radius=7, centre=(14, 16, 12))
    c = first_click(gt, axis=axis)
    assert c.axis == axis and c.voxel_index() == (14, 16, 12)


def test_first_click_moves_to_nearest_filled_slice_when_centroid_slice_is_empty():
    gt = np.zeros(SHAPE, dtype=bool)
    gt[5:12, 5:12, 2:6] = True
    gt[5:12, 5:12, 15:24] = True  # centroid slice (about 13.8 -> 14) is empty
    c = first_click(gt)
    assert c.slice_idx == 15 and gt[c.voxel_index()]


def test_first_click_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        first_click(np.zeros(SHAPE, bool))
    with pytest.raises(ValueError, match="3D"):
        first_click(np.ones((4, 4), bool))


# --------------------------------------------------------------------------------------------
# next_click


def test_next_click_none_when_perfect():
    gt = ball()
    assert next_click(gt.copy(), gt) is None
    assert next_click(np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)) is None


def test_next_click_positive_in_a_miss_and_negative_in_a_false_positive():
    gt = ball(radius=5) | box_mask(lo=(2, 2, 2), hi=(9, 9, 9))
    pred = ball(radius=5)  # misses the box
    c = next_click(pred, gt)
    assert c.positive and c.axis == AXIAL_AXIS
    assert gt[c.voxel_index()] and not pred[c.voxel_index()]
    assert c.voxel_index() == (5, 5, 5)  # centre of the 7x7x7 box
    # An even box has 8 equally central voxels: the first in raster order wins.
    c = next_click(pred, ball(radius=5) | box_mask(lo=(2, 2, 2), hi=(8, 8, 8)))
    assert c.voxel_index() == (4, 4, 4)

    pred2 = gt | box_mask(lo=(20, 24, 2), hi=(28, 32, 10))  # extra blob
    c2 = next_click(pred2, gt)
    assert not c2.positive and pred2[c2.voxel_index()] and not gt[c2.voxel_index()]


def test_next_click_picks_the_largest_error():
    gt = ball(radius=5)
    small_fn = box_mask(lo=(2, 2, 2), hi=(5, 5, 5))  # 27 voxels missed
    big_fp = box_mask(lo=(20, 24, 2), hi=(27, 31, 9))  # 343 voxels too many
    c = next_click(gt | big_fp, gt | small_fn)
    assert not c.positive and big_fp[c.voxel_index()]
    # Sizes in mm^3: every voxel weighs the same, so anisotropy does not change the ranking.
    c = next_click(gt | big_fp, gt | small_fn, spacing=(1, 1, 5))
    assert big_fp[c.voxel_index()]


def test_next_click_centre_uses_spacing():
    gt = np.zeros(SHAPE, dtype=bool)
    pred = np.zeros(SHAPE, dtype=bool)
    gt[2:27, 10:13, 5:8] = True  # long thin miss along i
    c = next_click(pred, gt, spacing=(1.0, 1.0, 1.0))
    assert c.voxel_index() == (14, 11, 6)
    c = next_click(pred, gt, spacing=(0.5, 3.0, 3.0))
    assert gt[c.voxel_index()] and c.voxel_index()[1:] == (11, 6)


def test_next_click_is_deterministic():
    rng = np.random.default_rng(0)
    gt = ball(radius=8)
    pred = gt ^ (rng.random(SHAPE) < 0.02)
    clicks = {next_click(pred, gt) for _ in range(3)}
    assert len(clicks) == 1


# --------------------------------------------------------------------------------------------
# simulate_clicks


def toy_predict(radius=3.0):
    """Union of balls around the positive clicks minus balls around the negative ones."""

    def predict(prompts: PromptSet) -> np.ndarray:
        out = np.zeros(SHAPE, dtype=bool)
        for c in prompts.positives:
            out |= ball(centre=c.voxel(), radius=radius)
        for c in prompts.negatives:
            out &= ~ball(centre=c.voxel(), radius=radius)
        return out

    return predict


def test_simulate_clicks_improves_and_has_n_entries():
    # An elongated organ that one ball of radius 3 cannot cover: each click adds a ball.
    gt = box_mask(lo=(10, 4, 10), hi=(17, 30, 17))
    hist = simulate_clicks(toy_predict(), gt, n_clicks=6, spacing=(1, 1, 1))
    assert len(hist) == 6
    scores = [dice(pred, gt) for _, pred in hist]
    assert all(b >= a - 1e-12 for a, b in zip(scores, scores[1:], strict=False))
    assert scores[-1] > scores[0] + 0.2
    for i, (prompts, pred) in enumerate(hist):
        assert len(prompts.clicks) == i + 1 and pred.dtype == bool and pred.shape == SHAPE
    assert hist[0][0].clicks[0] == first_click(gt)
    # Deterministic.
    hist2 = simulate_clicks(toy_predict(), gt, n_clicks=6, spacing=(1, 1, 1))
    assert [p.clicks for p, _ in hist] == [p.clicks for p, _ in hist2]


def test_simulate_clicks_stops_when_perfect_and_repeats():
    gt = ball(radius=5)
    calls = []

    def perfect(prompts):
        calls.append(prompts)
        return gt

    hist = simulate_clicks(perfect, gt, n_clicks=4, spacing=(1, 1, 1))
    assert len(hist) == 4 and len(calls) == 1
    assert all(p is hist[0][0] and len(p.clicks) == 1 for p, _ in hist)


def test_simulate_clicks_negative_click_on_false_positive():
    gt = ball(radius=4)

    def overshoot(prompts):
        out = ball(radius=4) | box_mask(lo=(22, 24, 2), hi=(29, 32, 10))
        for c in prompts.negatives:
            out &= ~ball(centre=c.voxel(), radius=7)
        return out

    hist = simulate_clicks(overshoot, gt, n_clicks=3, spacing=(1, 1, 1))
    second = hist[1][0].clicks[1]
    assert not second.positive
    assert dice(hist[1][1], gt) > dice(hist[0][1], gt)


def test_simulate_clicks_validation():
    gt = ball()
    with pytest.raises(ValueError, match="n_clicks"):
        simulate_clicks(toy_predict(), gt, n_clicks=0, spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="shape"):
        simulate_clicks(lambda p: np.zeros((3, 3, 3)), gt, n_clicks=2, spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        simulate_clicks(toy_predict(), gt, n_clicks=2, spacing=(1, 0, 1))


def test_fixing_a_clicked_error_fixes_its_own_kind_26_connected_only():
    """A click answers the error next_click chose it from: a positive click fixes the miss it
    lands in (with every miss voxel 26-connected to it), not a false positive touching it."""
    gt = np.zeros((12, 12, 12), bool)
    gt[2:6, 2:6, 2:6] = True
    pred = gt.copy()
    pred[2:6, 2:6, 4:6] = False  # a miss ...
    pred[2:6, 2:6, 6:7] = True  # ... sharing a face with a false positive
    pred[6, 6, 7] = True  # a false positive touching the first only at a corner (26-connected)
    gt[8, 8, 8] = True  # a miss touching nothing
    click = next_click(pred, gt)
    assert click.positive  # the larger error: the 4x4x2 miss (32 voxels against 17)
    fixed = fix_clicked_error(pred, gt, click.voxel(), click.positive)
    assert fixed[2:6, 2:6, 4:6].all()  # the miss is filled
    assert fixed[2:6, 2:6, 6:7].all() and fixed[6, 6, 7]  # the false positives stay
    assert not fixed[8, 8, 8]  # another miss, not connected: left for a later click
    assert not np.array_equal(fixed, pred) and pred[2:6, 2:6, 4:6].sum() == 0  # a copy
    # a negative click into the false positive clears it with its corner neighbour
    fixed2 = fix_clicked_error(fixed, gt, (3, 3, 6), False)
    assert not fixed2[2:6, 2:6, 6:7].any() and not fixed2[6, 6, 7]
    # a voxel holding no error of the click's kind (or outside) changes nothing
    assert np.array_equal(fix_clicked_error(fixed2, gt, (3, 3, 3), True), fixed2)
    assert np.array_equal(fix_clicked_error(fixed2, gt, (30, 3, 3), False), fixed2)
    # repeated next_click + fix converges to the ground truth, one error component per click
    clicks = 0
    while (c := next_click(fixed2, gt)) is not None:
        fixed2 = fix_clicked_error(fixed2, gt, c.voxel(), c.positive)
        clicks += 1
    assert clicks == 1 and np.array_equal(fixed2, gt)
