"""Model inputs and targets: geometry of the views, prompts, modes."""

import numpy as np
import pytest
from scipy import ndimage

from core.clicks import Box, Click, PromptSet, first_click
from core.cube import Cube, cube_for_click, sample_into_cube
from core.intensity import normalize_intensity
from core.io import voxel_to_world
from core.model import CUBE_CHANNELS, ModelConfig
from core.samples import body_mask_2d, build_inputs, build_targets
from core.sdf import class_sdfs
from core.synthetic import make_heart_phantom


@pytest.fixture(scope="module")
def heart():
    img, lab = make_heart_phantom(5)
    return normalize_intensity(img.data, "ct"), lab.data, img.affine


def test_views_and_channels(heart):
    image, label, aff = heart
    gt = label == 2
    click = first_click(gt)
    cube = cube_for_click(aff, click.voxel(), spacing=3.0)  # same grid as the volume
    cfg = ModelConfig()
    inp = build_inputs(image, aff, PromptSet((click,)), cube, cfg, mode="volume")
    assert inp["cube"].shape == (len(CUBE_CHANNELS), 64, 64, 64)
    axis, p = inp["plane"]
    assert axis == click.axis and 0 <= p < 64
    # The crop view is the cube's plane through the clicked slice.
    # The cube shares the volume's grid here: away from the volume's edge they are equal.
    inside = sample_into_cube(np.ones(image.shape, np.uint8), aff, cube, order=0, cval=0)
    inside = np.take(ndimage.binary_erosion(inside, iterations=1), p, axis=axis)
    assert inside.sum() > 1000
    plane = np.take(inp["cube"][0], p, axis=axis)
    np.testing.assert_allclose(plane[inside], inp["crop_view"][0][inside], atol=1e-5)
    np.testing.assert_allclose(
        np.take(inp["cube"][5], p, axis=axis), inp["crop_view"][0], atol=1e-6
    )
    assert np.take(inp["cube"][6], p, axis=axis).all() and inp["cube"][6].sum() == 64 * 64
    # The positive click is at the cube centre in 3D and in the crop view.
    peak = np.unravel_index(inp["cube"][2].argmax(), (64,) * 3)
    assert peak == (32, 32, 32)
    assert inp["crop_view"][1].max() > 0.9 and inp["cube"][3].max() == 0
    # Pointmap pixels are world mm of the crop-view pixel; the click's pixel holds the click.
    r, c = np.unravel_index(inp["crop_view"][1].argmax(), (64, 64))
    pm = inp["crop_pointmap"][:, r, c]
    np.testing.assert_allclose(pm, voxel_to_world(aff, click.voxel()), atol=3.0)
    np.testing.assert_allclose(inp["center"], voxel_to_world(aff, click.voxel()), atol=1e-3)


def test_slice_mode_hides_the_volume(heart):
    image, label, aff = heart
    click = first_click(label == 1)
    cube = cube_for_click(aff, click.voxel(), spacing=2.0)
    inp = build_inputs(image, aff, PromptSet((click,)), cube, ModelConfig(), mode="slice")
    assert inp["cube"][0].max() == 0 and inp["cube"][1].max() == 0
    # Only one plane of the cube carries image content.
    nz = np.argwhere(inp["cube"][5] != 0)
    assert len(np.unique(nz[:, click.axis])) == 1


def test_negative_clicks_box_and_mask(heart):
    image, label, aff = heart
    gt = label == 2
    click = first_click(gt)
    neg = Click(click.axis, click.slice_idx, click.row + 6, click.col, positive=False)
    m2 = np.take(gt, click.slice_idx, axis=click.axis)
    rows, cols = np.nonzero(m2)
    box = Box(click.axis, click.slice_idx, rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
    ps = PromptSet((click, neg), box=box, mask=(click.axis, click.slice_idx, m2))
    cube = cube_for_click(aff, click.voxel(), spacing=3.0)
    inp = build_inputs(image, aff, ps, cube, ModelConfig())
    v = inp["crop_view"]
    assert v[2].max() > 0.99 and inp["cube"][3].max() > 0.99  # negative click, 2D and 3D
    axis, p = inp["plane"]
    plane_gt = np.take(gt, click.slice_idx, axis=axis)
    # With the cube on the volume grid, the mask channel is the slice mask, shifted.
    assert v[4].sum() == plane_gt.sum()
    assert v[3].sum() >= v[4].sum()  # the box covers the mask


def test_targets_match_the_label(heart):
    image, label, aff = heart
    gt = label == 4
    click = first_click(gt)
    cube = cube_for_click(aff, click.voxel(), spacing=3.0)
    cfg = ModelConfig()
    inp = build_inputs(image, aff, PromptSet((click,)), cube, cfg)
    sdf = class_sdfs(label, 5, (3.0, 3.0, 3.0))[3]
    t = build_targets(
        label, sdf, aff, 4, cube, inp, cfg, axis=click.axis, slice_idx=click.slice_idx
    )
    assert t["occupancy"].sum() == gt.sum()  # the whole heart volume fits the 192 mm cube
    agree = (t["sdf"][0] < 0) == (t["occupancy"][0] > 0.5)
    assert agree.mean() > 0.995
    axis, p = inp["plane"]
    np.testing.assert_array_equal(t["slice_mask"][0], np.take(t["occupancy"][0], p, axis=axis))


def test_body_mask_separates_air():
    sl = np.zeros((20, 20), np.float32)
    sl[5:15, 5:15] = 0.35  # soft tissue on the [0, 1] CT scale; air is 0
    assert body_mask_2d(sl).sum() == 100


def test_invalid_prompts_are_refused(heart):
    image, _, aff = heart
    cube = Cube((0, 0, 0), 3.0, np.eye(3))
    with pytest.raises(ValueError, match="positive click"):
        build_inputs(image, aff, PromptSet((Click(2, 30, 10, 10, False),)), cube, ModelConfig())
    with pytest.raises(ValueError, match="mode"):
        build_inputs(image, aff, PromptSet((Click(2, 30, 10, 10),)), cube, ModelConfig(), mode="x")


def test_intensity_jitter_given_to_build_inputs_equals_jittering_the_volume(heart):
    """Training jitters intensities without a pass over the whole volume: the inputs must be
    those of the jittered volume (padding, body mask and pointmap included)."""
    image, label, aff = heart
    click = first_click(label == 3)
    cube = Cube(voxel_to_world(aff, click.voxel()) + 40.0, 2.2, np.eye(3), 64)  # sticks out
    cfg = ModelConfig()
    prompts = PromptSet((click,))
    scale, shift = 1.04, -0.02
    want = build_inputs(image * scale + shift, aff, prompts, cube, cfg, mode="volume")
    got = build_inputs(
        image, aff, prompts, cube, cfg, mode="volume", intensity=(scale, shift),
        background=float(image.min()),
    )  # fmt: skip
    for key in ("cube", "crop_view", "full_view", "crop_pointmap", "full_pointmap"):
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)
    assert (got["cube"][0] < image.min() * scale + shift + 1e-5).any()  # padding is in there
    with pytest.raises(ValueError, match="scale must be > 0"):
        build_inputs(image, aff, prompts, cube, cfg, intensity=(0.0, 0.0))


def test_both_views_resample_one_pointmap_of_the_slice_made_once(heart, monkeypatch):
    """The slice's pointmap (NaN off the body) is made once per call and both views are that
    pointmap resampled through their own matrix."""
    import core.samples
    from core.geometry import slice_pointmap, take_slice
    from core.transforms import resize_pointmap, warp

    image, label, aff = heart
    click = first_click(label == 4)
    cube = cube_for_click(aff, click.voxel(), spacing=2.2)
    calls = []

    def counted(*args, **kwargs):
        calls.append(args)
        return slice_pointmap(*args, **kwargs)

    monkeypatch.setattr(core.samples, "slice_pointmap", counted)
    inp = build_inputs(image, aff, PromptSet((click,)), cube, ModelConfig(), mode="volume")
    assert len(calls) == 1
    sl = take_slice(image, click.axis, click.slice_idx)
    pm = slice_pointmap(aff, image.shape, click.axis, click.slice_idx, valid=body_mask_2d(sl))
    for view in ("crop", "full"):
        m, s = inp[f"{view}_matrix"], inp[f"{view}_view"].shape[1:]
        want = np.moveaxis(resize_pointmap(pm, s, matrix=m), -1, 0)
        np.testing.assert_array_equal(inp[f"{view}_pointmap"], want)
        img = warp(sl, m, s, order=1, cval=float(sl.min())).astype(np.float32)
        np.testing.assert_array_equal(inp[f"{view}_view"][0], img)
