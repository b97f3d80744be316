"""The model's cube: placement in world space, sampling into it and pasting back."""

import numpy as np
import pytest
from conftest import oblique_affine

from core.cube import Cube, cube_for_click, paste_from_cube, sample_into_cube, touching_faces
from core.io import voxel_to_world


def test_cube_affine_centre_and_spacing():
    aff = oblique_affine(spacing=(1.5, 2.0, 3.0))
    cube = cube_for_click(aff, (10, 12, 8), spacing=2.5, size=16)
    centre_vox = np.full(3, 8.0)
    np.testing.assert_allclose(
        voxel_to_world(cube.affine, centre_vox), voxel_to_world(aff, (10, 12, 8)), atol=1e-9
    )
    np.testing.assert_allclose(np.linalg.norm(cube.affine[:3, :3], axis=0), [2.5] * 3)
    # Same directions as the volume: a volume slice is a plane of the cube.
    d_vol = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0)
    np.testing.assert_allclose(cube.directions, d_vol, atol=1e-12)


def test_sample_then_paste_recovers_the_volume_inside_the_cube():
    aff = oblique_affine(spacing=(2.0, 2.0, 2.0))
    shape = (30, 32, 28)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = voxel_to_world(aff, grid)
    # A smooth field: linear interpolation reproduces it exactly.
    field = (world @ np.array([0.3, -0.2, 0.1])).astype(np.float32)
    cube = cube_for_click(aff, (15, 16, 14), spacing=2.0, size=16)
    c = sample_into_cube(field, aff, cube)
    cube_world = voxel_to_world(
        cube.affine, np.stack(np.meshgrid(*[np.arange(16)] * 3, indexing="ij"), -1)
    )
    np.testing.assert_allclose(c, cube_world @ np.array([0.3, -0.2, 0.1]), atol=1e-3)
    back = paste_from_cube(c, cube, shape, aff, fill=np.nan)
    inside = np.isfinite(back) & (back != 0)
    assert inside.sum() > 2000
    np.testing.assert_allclose(back[inside], field[inside], atol=1e-3)


def test_label_sampling_is_nearest_and_outside_is_background():
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[5:15, 5:15, 5:15] = 3
    cube = Cube(center=(9.5, 9.5, 9.5), spacing=1.0, directions=np.eye(3), size=32)
    out = sample_into_cube(lab, np.eye(4), cube, order=0)
    assert set(np.unique(out)) == {0, 3}
    assert (out == 3).sum() == 1000


def test_touching_faces():
    m = np.zeros((8, 8, 8), bool)
    assert touching_faces(m) == []
    m[0, 3, 3] = True
    m[4, 4, 7] = True
    assert touching_faces(m) == [(0, -1), (2, 1)]


def test_separable_resampling_equals_affine_transform_inside():
    from scipy import ndimage

    from core.cube import _resample

    rng = np.random.default_rng(0)
    x = rng.random((50, 60, 40)).astype(np.float32)
    mat, off = np.diag([0.7, 1.3, 0.9]), np.array([-3.2, 2.1, -0.4])
    coords = [mat[i, i] * np.arange(64) + off[i] for i in range(3)]
    inside = np.ix_(*[(c >= 0) & (c <= n - 1) for c, n in zip(coords, x.shape, strict=True)])
    a = _resample(x, mat, off, (64, 64, 64), 1, -1.0)
    b = ndimage.affine_transform(
        x,
        np.diag(mat),
        offset=off,
        output_shape=(64, 64, 64),
        order=1,
        mode="constant",
        cval=-1.0,
        prefilter=False,
    )
    np.testing.assert_allclose(a[inside], b[inside], atol=1e-5)
    # Nearest neighbour: the voxel whose centre is closest, floor(c + 0.5).
    near = _resample(x, mat, off, (64, 64, 64), 0, -1.0)
    idx = [np.floor(c + 0.5).astype(int) for c in coords]
    expected = x[np.ix_(*[np.clip(i, 0, n - 1) for i, n in zip(idx, x.shape, strict=True)])]
    np.testing.assert_array_equal(near[inside], expected[inside])
    # Within the half voxel beyond the edge centre, nearest keeps the edge voxel.
    assert (
        _resample(x, np.eye(3), np.array([-0.4, 0, 0]), (1, 1, 1), 0, -1.0)[0, 0, 0] == x[0, 0, 0]
    )


def _trilinear_reference(x, mat, off, out_shape, order, cval):
    """out[p] = x at mat @ p + off, corner by corner: any index outside x counts as cval."""
    coords = [mat[i, i] * np.arange(out_shape[i]) + off[i] for i in range(3)]
    pad = np.pad(x.astype(np.float64), 1, constant_values=cval)

    def at(idx):  # index into the padded array; anything outside x lands on the padding
        return [np.clip(i, -1, n) + 1 for i, n in zip(idx, x.shape, strict=True)]

    if order == 0:
        return pad[np.ix_(*at([np.floor(c + 0.5).astype(int) for c in coords]))]
    i0 = [np.floor(c).astype(int) for c in coords]
    w = [c - i for c, i in zip(coords, i0, strict=True)]
    out = np.zeros(out_shape)
    for corner in np.ndindex(2, 2, 2):
        idx = [i + k for i, k in zip(i0, corner, strict=True)]
        wt = np.ix_(*[wi if k else 1 - wi for wi, k in zip(w, corner, strict=True)])
        out += wt[0] * wt[1] * wt[2] * pad[np.ix_(*at(idx))]
    return out


@pytest.mark.parametrize("order", [0, 1])
def test_resampling_of_a_cube_partly_or_wholly_outside_equals_the_reference(order):
    from core.cube import _resample

    rng = np.random.default_rng(3)
    x = rng.random((20, 26, 17)).astype(np.float32)
    for off, scale in [
        ((-30.0, 5.3, 2.0), (1.0, 0.6, 1.7)),  # sticks out on one side, off the grid
        ((12.5, -8.2, 10.4), (0.9, 1.1, -1.3)),  # a flipped axis, out on both sides
        ((3.0, 4.0, 5.0), (1.0, 1.0, 1.0)),  # on the grid: plain copies, no blending
        ((-50.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # misses the data entirely
        ((19.7, 25.6, 16.8), (1.0, 1.0, 1.0)),  # only the last half voxel
    ]:
        mat, off = np.diag(scale), np.array(off)
        got = _resample(x, mat, off, (14, 30, 12), order, -1.0)
        assert got.dtype == np.float32 and got.shape == (14, 30, 12)
        want = _trilinear_reference(x, mat, off, (14, 30, 12), order, -1.0)
        np.testing.assert_allclose(got, want, atol=1e-5)


class _CountingVolume:
    """A volume that records which block is read (a memory-mapped cache volume stands in)."""

    def __init__(self, x):
        self.x, self.shape, self.reads = x, x.shape, []

    def __getitem__(self, key):
        block = self.x[key]
        self.reads.append(block.size)
        return block


def test_resampling_reads_only_the_block_the_cube_covers():
    from core.cube import _resample

    x = np.random.default_rng(0).random((120, 120, 120)).astype(np.float32)
    vol = _CountingVolume(x)
    mat, off = np.diag([0.5, 0.5, 0.5]), np.array([10.2, 40.0, 70.7])
    got = _resample(vol, mat, off, (32, 32, 32), 1, 0.0)
    assert vol.reads and max(vol.reads) <= 18**3  # 16 voxels spanned (+1 for blending), not 120^3
    np.testing.assert_array_equal(got, _resample(x, mat, off, (32, 32, 32), 1, 0.0))


@pytest.mark.parametrize("order", [0, 1])
def test_reading_only_the_voxels_next_to_the_cube_gives_the_whole_block_result(order):
    from core.cube import _resample

    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.int16) if order else (np.float32, np.uint8, bool):
        x = (rng.random((90, 70, 120)) * 300).astype(dtype)
        for _ in range(25):  # coarser and finer than the data, flipped, partly outside
            scale = rng.uniform(0.3, 4.5, 3) * rng.choice([-1, 1], 3)
            mat, off = np.diag(scale), rng.uniform(-40, 130, 3)
            shape = tuple(rng.integers(8, 40, 3))
            cval = -1.0 if order or dtype is np.float32 else 0  # unsigned: no -1
            got = _resample(x, mat, off, shape, order, cval)
            want = _resample(x, mat, off, shape, order, cval, gather=False)
            assert got.dtype == want.dtype and np.array_equal(got, want), (scale, off)


def test_a_coarse_cube_reads_only_the_voxels_next_to_its_coordinates():
    from core.cube import _resample

    x = np.random.default_rng(0).random((200, 200, 300)).astype(np.float32)
    vol = _CountingVolume(x)  # a 3 mm cube on 0.8 x 0.8 x 0.5 mm voxels
    mat, off = np.diag([3.75, 3.75, 6.0]), np.array([-20.3, 10.6, 30.2])
    got = _resample(vol, mat, off, (64, 64, 64), 1, 0.0)
    assert max(vol.reads) <= 128**3  # two neighbours per coordinate; the block is 8x that
    np.testing.assert_array_equal(got, _resample(x, mat, off, (64, 64, 64), 1, 0.0, gather=False))


@pytest.mark.parametrize("oblique", [False, True])
def test_level_box_holds_every_voxel_above_the_level_and_the_block_is_the_paste(oblique):
    from core.cube import level_box, paste_block

    aff = oblique_affine(spacing=(1.2, 1.5, 2.5)) if oblique else np.diag([1.2, 1.5, 2.5, 1.0])
    shape = (60, 50, 40)
    cube = cube_for_click(aff, (30, 25, 20), spacing=1.7, size=32)
    rng = np.random.default_rng(2)
    for _ in range(5):
        prob = np.zeros((32, 32, 32), np.float32)
        lo_c = rng.integers(0, 27, 3)
        blob = rng.random(tuple(rng.integers(1, 5, 3))).astype(np.float32)
        prob[tuple(slice(a, a + n) for a, n in zip(lo_c, blob.shape, strict=True))] = blob
        prob[tuple(slice(a, a + 3) for a in lo_c)] = 0.9  # surely above at some volume voxel
        full = paste_from_cube(prob, cube, shape, aff, order=1)
        lo, hi = level_box(prob, cube, aff, shape, 0.5)
        block = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        outside = np.ones(shape, bool)
        outside[block] = False
        assert (full > 0.5).any() and not (full[outside] > 0.5).any()
        assert outside.sum() > 0.5 * outside.size  # the block is small, not the whole grid
        np.testing.assert_allclose(paste_block(prob, cube, aff, lo, hi), full[block], atol=1e-6)
    assert level_box(np.full((32,) * 3, 0.4, np.float32), cube, aff, shape, 0.5) is None


@pytest.mark.parametrize(
    "mat, off",
    [
        (np.eye(3), np.array([-2.0, 0.0, 0.0])),  # axis-aligned, partly outside
        (np.eye(3), np.array([100.0, 0.0, 0.0])),  # misses the data entirely
        (np.array([[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), np.array([-2.0, 0, 0])),
    ],
    ids=["partly-outside", "outside", "oblique"],
)
def test_nearest_resampling_refuses_a_fill_its_dtype_cannot_hold(mat, off):
    """Order 0 keeps the data's dtype, so a fill of -1 on uint8 data wrapped to 255 (a cube
    that missed the data), raised numpy's OverflowError (one partly outside) or became 0
    (an oblique map); now each path says in one line what does not fit."""
    from core.cube import _resample

    x = (np.arange(8**3).reshape(8, 8, 8) % 5).astype(np.uint8)
    for dtype, cval in [(np.uint8, -1), (np.uint8, -1.0), (np.uint16, 70000), (np.int16, 0.5)]:
        with pytest.raises(
            ValueError, match=f"fill value {cval:g} does not fit .*{np.dtype(dtype)}"
        ):
            _resample(x.astype(dtype), mat, off, (8, 8, 8), 0, cval)
    with pytest.raises(ValueError, match="fill value -1 does not fit bool"):
        _resample(x > 2, mat, off, (8, 8, 8), 0, -1)
    # a fill the dtype holds is used as it is, and the dtype is kept
    for dtype, cval in [(np.uint8, 7), (np.int16, -1), (np.float32, np.nan), (bool, 0)]:
        got = _resample(x.astype(dtype), mat, off, (8, 8, 8), 0, cval)
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got[0, 0, 0], np.asarray(cval).astype(dtype))
