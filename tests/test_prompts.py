"""Tests of core.prompts: simulated clicks, boxes and their rendering."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from core.prompts import (
    PROMPT_CHANNELS,
    PROMPT_KINDS,
    Prompt,
    box_from_mask,
    interior_point,
    make_prompt,
    render_prompt,
)


def disk(shape=(41, 53), centre=(20, 30), radius=9.0):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def l_shape():
    m = np.zeros((40, 40), dtype=bool)
    m[5:35, 5:12] = True
    m[28:35, 5:35] = True
    return m


def annulus():
    return disk((41, 41), (20, 20), 15) & ~disk((41, 41), (20, 20), 8)


def edt_max(mask):
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1].max()


# --------------------------------------------------------------------------------------------
# interior_point


def test_point_of_disk_is_its_centre():
    assert interior_point(disk()) == (20, 30)


@pytest.mark.parametrize("make", [l_shape, annulus, disk])
def test_point_inside_and_at_distance_maximum(make):
    m = make()
    r, c = interior_point(m)
    assert m[r, c]
    dist = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    assert dist[r, c] == pytest.approx(dist.max())


def test_point_on_largest_component():
    m = disk((60, 60), (15, 15), 5) | disk((60, 60), (40, 40), 10)
    r, c = interior_point(m)
    assert (r, c) == (40, 40)
    for seed in range(20):
        r, c = interior_point(m, rng=seed, jitter=1.0)
        assert (r - 40) ** 2 + (c - 40) ** 2 <= 100


def test_point_tie_break_is_deterministic_and_central():
    m = np.zeros((10, 30), dtype=bool)
    m[3:6, 2:28] = True  # a bar: the whole middle row ties at the maximum
    assert interior_point(m) == (4, 14)  # centroid column 14.5 -> first of 14, 15
    assert interior_point(m) == interior_point(m.copy())


def test_point_border_counts_as_boundary():
    m = np.zeros((20, 20), dtype=bool)
    m[:, :10] = True  # a half-plane cut by the image border
    r, c = interior_point(m)
    assert 0 < c < 9 and 0 < r < 19


def test_single_pixel_mask():
    m = np.zeros((5, 5), dtype=bool)
    m[0, 4] = True
    assert interior_point(m) == (0, 4)
    assert interior_point(m, rng=1, jitter=1.0) == (0, 4)


@pytest.mark.parametrize("make", [l_shape, annulus, disk])
@pytest.mark.parametrize("jitter", [0.2, 0.5, 1.0])
def test_jitter_stays_inside(make, jitter):
    m = make()
    dist = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    seen = set()
    for seed in range(50):
        r, c = interior_point(m, rng=np.random.default_rng(seed), jitter=jitter)
        assert m[r, c]
        assert dist[r, c] >= (1 - jitter) * dist.max() - 1e-9
        seen.add((r, c))
    assert len(seen) > 1  # the jitter does move the point


def test_jitter_deterministic_for_seed():
    m = l_shape()
    a = [interior_point(m, rng=np.random.default_rng(7), jitter=0.5) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    assert interior_point(m, rng=7, jitter=0.5) == a[0]


def test_bad_inputs():
    with pytest.raises(ValueError, match="empty mask"):
        interior_point(np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="2D"):
        interior_point(np.ones((2, 2, 2), bool))
    with pytest.raises(ValueError, match="jitter"):
        interior_point(disk(), jitter=1.5)
    with pytest.raises(ValueError, match="empty mask"):
        box_from_mask(np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="jitter_px"):
        box_from_mask(disk(), jitter_px=-1)


# --------------------------------------------------------------------------------------------
# box_from_mask


def test_box_is_tight_half_open():
    m = np.zeros((20, 30), dtype=bool)
    m[3:7, 10:21] = True
    m[12, 5] = True  # a second component counts too
    assert box_from_mask(m) == (3, 5, 13, 21)
    r0, c0, r1, c1 = box_from_mask(m)
    assert m[r0:r1, c0:c1].sum() == m.sum()


@pytest.mark.parametrize("jitter_px", [3, (1, 6), 50])
def test_box_jitter_within_image_and_never_empty(jitter_px):
    m = np.zeros((20, 30), dtype=bool)
    m[0:4, 26:30] = True  # touches the border: enlarging must clip
    boxes = set()
    for seed in range(100):
        r0, c0, r1, c1 = box_from_mask(m, rng=seed, jitter_px=jitter_px)
        assert 0 <= r0 < r1 <= 20 and 0 <= c0 < c1 <= 30
        # It keeps at least one row and column of the tight box.
        assert m[r0:r1, c0:c1].any()
        boxes.add((r0, c0, r1, c1))
    assert len(boxes) > 1
    assert box_from_mask(m, rng=4, jitter_px=3) == box_from_mask(m, rng=4, jitter_px=3)


def test_box_of_one_pixel_with_jitter():
    m = np.zeros((5, 5), dtype=bool)
    m[2, 2] = True
    for seed in range(20):
        r0, c0, r1, c1 = box_from_mask(m, rng=seed, jitter_px=2)
        assert r0 <= 2 < r1 and c0 <= 2 < c1


# --------------------------------------------------------------------------------------------
# make_prompt and Prompt


@pytest.mark.parametrize("kind", PROMPT_KINDS)
def test_make_prompt_all_kinds(kind):
    m = l_shape()
    p = make_prompt(m, kind, rng=0, jitter=0.3)
    assert p.kind == kind
    if kind in ("point", "mask+point"):
        assert p.points.shape == (1, 2) and p.point_labels.tolist() == [1]
        r, c = p.points[0].astype(int)
        assert m[r, c]
    else:
        assert p.points.shape == (0, 2)
    if kind == "box":
        r0, c0, r1, c1 = p.box
        assert 0 <= r0 < r1 <= 40 and 0 <= c0 < c1 <= 40
    else:
        assert p.box is None
    if "mask" in kind:
        assert np.array_equal(p.mask, m)
        assert not p.mask.flags.writeable
    else:
        assert p.mask is None
    q = make_prompt(m, kind, rng=0, jitter=0.3)
    assert np.array_equal(p.points, q.points) and p.box == q.box


def test_make_prompt_without_jitter_is_exact():
    m = disk()
    assert make_prompt(m, "point").points.tolist() == [[20.0, 30.0]]
    assert make_prompt(m, "box").box == box_from_mask(m)


def test_make_prompt_rejects():
    with pytest.raises(ValueError, match="empty mask"):
        make_prompt(np.zeros((8, 8)), "point")
    with pytest.raises(ValueError, match="empty mask"):
        make_prompt(np.zeros((8, 8)), "mask")
    with pytest.raises(ValueError, match="kind"):
        make_prompt(disk(), "scribble")


def test_prompt_validation():
    with pytest.raises(ValueError, match="positive point"):
        Prompt("point", points=[[1, 2]], point_labels=[0])
    with pytest.raises(ValueError, match="point labels"):
        Prompt("point", points=[[1, 2]], point_labels=[1, 1])
    with pytest.raises(ValueError, match="needs a box"):
        Prompt("box")
    with pytest.raises(ValueError, match="r1 > r0"):
        Prompt("box", box=(3, 3, 3, 5))
    with pytest.raises(ValueError, match="non-empty mask"):
        Prompt("mask", mask=np.zeros((3, 3)))
    p = Prompt("point", points=[[1, 2], [3, 4]], point_labels=[1, 0])
    assert p.points.dtype == np.float64 and not p.points.flags.writeable


# --------------------------------------------------------------------------------------------
# render_prompt


def test_render_heatmap_peaks_at_points():
    p = Prompt("point", points=[[5, 7], [20, 3]], point_labels=[1, 0])
    ch = render_prompt(p, (30, 25), sigma=2.0)
    assert ch.shape == (len(PROMPT_CHANNELS), 30, 25) and ch.dtype == np.float32
    pos, neg = ch[PROMPT_CHANNELS.index("pos")], ch[PROMPT_CHANNELS.index("neg")]
    assert np.unravel_index(pos.argmax(), pos.shape) == (5, 7) and pos.max() == 1.0
    assert np.unravel_index(neg.argmax(), neg.shape) == (20, 3) and neg.max() == 1.0
    assert pos[5, 9] == pytest.approx(np.exp(-4 / 8), rel=1e-6)
    assert ch[2].sum() == 0 and ch[3].sum() == 0


def test_render_box_covers_exactly():
    p = Prompt("box", box=(2, 3, 9, 11))
    ch = render_prompt(p, (12, 15))
    box = ch[PROMPT_CHANNELS.index("box")]
    expected = np.zeros((12, 15), np.float32)
    expected[2:9, 3:11] = 1
    assert np.array_equal(box, expected)
    assert ch[[0, 1, 3]].sum() == 0


def test_render_mask_and_point():
    m = disk()
    ch = render_prompt(make_prompt(m, "mask+point"), m.shape)
    assert np.array_equal(ch[PROMPT_CHANNELS.index("mask")], m.astype(np.float32))
    assert ch[0, 20, 30] == 1.0
    with pytest.raises(ValueError, match="shape"):
        render_prompt(make_prompt(m, "mask"), (10, 10))
    with pytest.raises(ValueError, match="sigma"):
        render_prompt(make_prompt(m, "point"), m.shape, sigma=0)
