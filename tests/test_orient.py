"""The engine sees every volume as RAS+: a volume stored in another axis order or with flips
gives the same voxels as the RAS+ one (core.orient.CanonicalFrame)."""

import nibabel as nib
import numpy as np
import pytest

from core.clicks import Box, Click, PromptSet
from core.engine import Reconstructor
from core.io import Volume
from core.orient import CanonicalFrame
from core.synthetic import make_heart_phantom

# slices first, then two flipped axes: the array order an LPS-like file could have
ORNT = np.array([[2, -1], [0, 1], [1, -1]])


@pytest.fixture(scope="module")
def rec():
    return Reconstructor.from_pretrained()


@pytest.fixture(scope="module")
def pair():
    """The same heart as RAS+ and as a permuted, flipped array with its own affine."""
    image, label = make_heart_phantom(7, shape=(40, 44, 36), spacing=3.5)
    other = nib.Nifti1Image(image.data, image.affine).as_reoriented(ORNT)
    odd = Volume(np.ascontiguousarray(other.dataobj, dtype=np.float32), other.affine, "odd")
    lv = label.data == 2
    return image, odd, lv


def _to_odd(a: np.ndarray) -> np.ndarray:
    return np.asarray(nib.Nifti1Image(a.astype(np.uint8), np.eye(4)).as_reoriented(ORNT).dataobj)


def test_the_frame_maps_voxels_clicks_boxes_and_masks_exactly(pair):
    ras, odd, _ = pair
    frame = CanonicalFrame.of(odd.affine, odd.shape)
    assert CanonicalFrame.of(ras.affine, ras.shape) is None
    np.testing.assert_array_equal(frame.array(odd.data), ras.data)
    np.testing.assert_allclose(frame.affine(odd.affine), ras.affine, atol=1e-9)
    np.testing.assert_array_equal(frame.array_back(ras.data), odd.data)
    inv = frame.inverse()
    assert inv.shape == ras.shape
    np.testing.assert_array_equal(inv.array(ras.data), odd.data)
    rng = np.random.default_rng(0)
    for _ in range(20):
        ijk = np.array([rng.integers(n) for n in odd.shape])
        assert odd.data[tuple(ijk)] == ras.data[tuple(frame.voxel(ijk).astype(int))]
    for axis in range(3):
        c = Click(axis, 5, 7.25, 9.5, positive=False)
        mapped = frame.click(c)
        np.testing.assert_allclose(mapped.voxel(), frame.voxel(c.voxel()))
        assert not mapped.positive
        plane = rng.random([n for a, n in enumerate(odd.shape) if a != axis]) > 0.5
        vol = np.zeros(odd.shape, bool)
        np.moveaxis(vol, axis, 0)[5] = plane  # the plane on slice 5 of ``axis``
        p = frame.prompts(PromptSet(mask=(axis, 5, plane)))
        canon = np.zeros(ras.shape, bool)
        np.moveaxis(canon, p.mask[0], 0)[p.mask[1]] = p.mask[2]
        np.testing.assert_array_equal(canon, frame.array(vol))
        np.testing.assert_array_equal(frame.slice_2d_back(p.mask[2], axis), plane)
        b = Box(axis, 5, 2, 3, 8, 11)
        box = np.zeros(odd.shape, bool)
        np.moveaxis(box, axis, 0)[5][2:8, 3:11] = True
        q = frame.box(b)
        mapped_box = np.zeros(ras.shape, bool)
        np.moveaxis(mapped_box, q.axis, 0)[q.slice_idx][q.r0 : q.r1, q.c0 : q.c1] = True
        np.testing.assert_array_equal(mapped_box, frame.array(box))


@pytest.mark.parametrize("mode", ["volume", "slice"])
@pytest.mark.parametrize("kind", ["clicks", "box", "mask"])
def test_a_permuted_flipped_volume_gives_the_ras_volumes_voxels(rec, pair, mode, kind):
    ras, odd, lv = pair
    from core.clicks import first_click

    c = first_click(lv)
    prompts = {
        "clicks": PromptSet((c, Click(1, int(np.argwhere(lv)[:, 1].mean()), 5, 5, False))),
        "box": PromptSet(box=Box(2, c.slice_idx, 10, 10, 30, 34)),
        "mask": PromptSet(mask=(2, c.slice_idx, lv[:, :, c.slice_idx])),
    }[kind]
    frame = CanonicalFrame.of(odd.affine, odd.shape)
    odd_prompts = frame.inverse().prompts(prompts)
    a = rec.predict(ras, prompts, mode=mode)
    b = rec.predict(odd, odd_prompts, mode=mode)
    assert a.mask.any()
    np.testing.assert_array_equal(b.mask, _to_odd(a.mask))
    np.testing.assert_array_equal(b.affine, odd.affine)
    assert b.prompts is odd_prompts and b.reference_slice == odd_prompts.reference_slice()
    axis, idx = b.reference_slice
    assert b.slice_mask.shape == np.take(odd.data, idx, axis=axis).shape
    np.testing.assert_allclose(b.mesh.vertices, a.mesh.vertices)  # world mm either way

    # a corrective click refines the odd volume's result as it does the RAS one's
    extra = Click.from_voxel(np.argwhere(lv & ~a.mask)[0], 0) if (lv & ~a.mask).any() else c
    a2 = rec.predict(ras, prompts.add(extra), mode=mode, previous=a)
    b2 = rec.predict(odd, odd_prompts.add(frame.inverse().click(extra)), mode=mode, previous=b)
    np.testing.assert_array_equal(b2.mask, _to_odd(a2.mask))


def test_a_click_on_the_edge_of_a_flipped_axis_stays_in_its_voxel(rec):
    """Clicks round halves up: row -0.5 is voxel 0. On a flipped axis it must map to the last
    voxel, not to n - 0.5 (rounded to n, outside the volume); x.5 keeps its voxel too."""
    data = np.zeros((40, 44, 36), np.float32)
    flipped = Volume(data, np.diag([-2.0, 2.0, 2.0, 1.0]), "las.nii.gz")
    frame = CanonicalFrame.of(flipped.affine, flipped.shape)
    for row in (-0.5, 7.5, 39.49, 12.25, 30.0):
        c = Click(2, 18, row, 20.0)
        assert frame.click(c).voxel_index()[0] == 39 - c.voxel_index()[0]
    back = frame.inverse()
    for row in (12.25, 30.0, 3.0):  # no half: the round trip gives the click's own bits
        c = Click(2, 18, row, 20.0)
        assert back.click(frame.click(c)) == c
    assert rec.predict(flipped, PromptSet((Click(2, 18, -0.5, 20.0),)), mesh=False).mask.shape
