"""NIfTI I/O: affines, canonical orientation, validation and clear errors."""

import gzip

import nibabel as nib
import numpy as np
import pytest
from conftest import oblique_affine, save_nifti, two_organs

from core.errors import InputError
from core.geometry import slice_pointmap, slice_voxel_index, take_slice, voxel_to_slice
from core.io import (
    LabelVolume,
    Volume,
    load_image,
    load_label,
    load_pair,
    save_image,
    save_label,
    spacing_of,
    voxel_to_world,
    voxel_volume_mm3,
    world_to_voxel,
)


def test_roundtrip_keeps_data_and_affine(tmp_path):
    img, lab = two_organs()
    aff = oblique_affine()
    save_image(Volume(img, aff), tmp_path / "img.nii.gz")
    save_label(LabelVolume(lab, aff), tmp_path / "lab.nii")
    v = load_image(tmp_path / "img.nii.gz", canonical=False)
    lv = load_label(tmp_path / "lab.nii", canonical=False)
    np.testing.assert_allclose(v.data, img, atol=1e-4)
    np.testing.assert_array_equal(lv.data, lab)
    np.testing.assert_allclose(v.affine, aff, atol=1e-5)
    assert lv.data.dtype == np.uint8
    assert not list(tmp_path.glob(".tmp-*")), "atomic writes left temporary files"


def test_canonical_reorientation_preserves_world_positions(tmp_path):
    img, lab = two_organs()
    # A LPS-like flipped affine with axes permuted: canonical RAS must reorder the array.
    aff = np.array([[0, 0, -3.0, 50], [-2.0, 0, 0, 30], [0, 2.5, 0, -20], [0, 0, 0, 1]])
    save_nifti(lab, aff, tmp_path / "lab.nii.gz")
    lv = load_label(tmp_path / "lab.nii.gz")
    assert np.all(np.diag(lv.affine[:3, :3]) > 0), "not RAS+ after canonical reorientation"
    # Every labelled voxel lands at the same world position before and after.
    ijk = np.argwhere(lab == 2)
    before = voxel_to_world(aff, ijk)
    after = voxel_to_world(lv.affine, np.argwhere(lv.data == 2))
    np.testing.assert_allclose(np.sort(before, axis=0), np.sort(after, axis=0), atol=1e-6)
    assert sorted(lv.spacing) == sorted(spacing_of(aff))


def test_voxel_volume_of_a_sheared_grid():
    # A gantry-tilted CT: the slice axis leans 25 degrees; its voxel is 2 x 2 x 3 x cos(25)
    tilt = np.deg2rad(25.0)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    aff[:3, 2] = 3.0 * np.array([0.0, np.sin(tilt), np.cos(tilt)])
    assert spacing_of(aff) == pytest.approx((2.0, 2.0, 3.0))
    assert voxel_volume_mm3(aff) == pytest.approx(12.0 * np.cos(tilt))
    assert voxel_volume_mm3(oblique_affine(spacing=(1.0, 2.0, 3.0))) == pytest.approx(6.0)


def test_world_voxel_inverse():
    aff = oblique_affine()
    p = np.random.default_rng(0).uniform(0, 20, (50, 3))
    np.testing.assert_allclose(world_to_voxel(aff, voxel_to_world(aff, p)), p, atol=1e-9)


def test_pointmap_equals_affine_of_voxel_index_on_oblique_anisotropic_volume():
    aff = oblique_affine(spacing=(0.8, 1.7, 3.2))
    shape = (9, 11, 13)
    valid = np.zeros((9, 13), bool)
    valid[2:6, 3:9] = True
    for axis in (0, 1, 2):
        idx = 4
        pm = slice_pointmap(aff, shape, axis, idx)
        rows, cols = pm.shape[:2]
        for r, c in [(0, 0), (rows - 1, cols - 1), (3, 5)]:
            ijk = slice_voxel_index(axis, idx, r, c)
            expected = aff @ np.append(ijk, 1.0)
            np.testing.assert_allclose(pm[r, c], expected[:3], rtol=1e-6, atol=1e-4)
            assert tuple(voxel_to_slice(axis, ijk)) == (idx, r, c)
    pm = slice_pointmap(aff, shape, 1, 4, valid=valid)
    assert np.isnan(pm[~valid]).all() and np.isfinite(pm[valid]).all()


def test_take_slice_orientation_and_range():
    vol = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert take_slice(vol, 1, 2).shape == (2, 4)
    assert take_slice(vol, 1, 2)[1, 3] == vol[1, 2, 3]
    with pytest.raises(ValueError, match="outside axis 2"):
        take_slice(vol, 2, 4)


# ---------------------------------------------------------------------------------------------
# Bad input: one clear line naming the file and the problem


def _one_line(exc, path):
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


def test_missing_file(tmp_path):
    p = tmp_path / "nope.nii.gz"
    with pytest.raises(InputError) as exc:
        load_image(p)
    assert "not found" in _one_line(exc, p)


def test_corrupt_gzip(tmp_path):
    img, _ = two_organs()
    p = save_nifti(img, np.eye(4), tmp_path / "img.nii.gz")
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])  # truncated download
    with pytest.raises(InputError) as exc:
        load_image(p)
    assert "corrupt" in _one_line(exc, p) or "truncated" in _one_line(exc, p)
    p.write_bytes(b"\x1f\x8b" + b"garbage" * 20)
    with pytest.raises(InputError) as exc:
        load_image(p)
    _one_line(exc, p)


@pytest.mark.parametrize("name", ["img.nii.gz", "img.nii"])
def test_truncated_file_stored_in_another_orientation(tmp_path, name):
    # Loading reorients an LPS file to RAS+, which reads the voxels: a truncated file is
    # still reported as such, not as a reorientation problem.
    img, _ = two_organs()
    p = save_nifti(img, np.diag([-2.0, -2.0, 3.0, 1.0]), tmp_path / name)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    for load in (load_image, load_label):
        with pytest.raises(InputError) as exc:
            load(p)
        msg = _one_line(exc, p)
        assert "corrupt or truncated" in msg and "reorient" not in msg, msg


@pytest.mark.parametrize(
    "data",
    [
        np.zeros((6, 7, 8), np.complex64),
        np.zeros((6, 7, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]),  # RGB NIfTI
    ],
)
def test_voxels_that_are_not_one_number_are_a_one_line_error(tmp_path, data):
    p = save_nifti(data, np.eye(4), tmp_path / "x.nii.gz")
    for load in (load_image, load_label):
        with pytest.raises(InputError) as exc:
            load(p)
        assert "unsupported voxel type" in _one_line(exc, p)


def test_not_nifti(tmp_path):
    p = tmp_path / "notes.nii.gz"
    p.write_bytes(gzip.compress(b"this is a text file, not an image" * 20))
    with pytest.raises(InputError) as exc:
        load_image(p)
    _one_line(exc, p)
    q = tmp_path / "scan.png"
    q.write_bytes(b"\x89PNG....")
    with pytest.raises(InputError) as exc:
        load_image(q)
    assert "not a NIfTI" in _one_line(exc, q)


@pytest.mark.parametrize("shape", [(10, 12), (6, 7, 8, 3)])
def test_wrong_dimensions(tmp_path, shape):
    p = save_nifti(np.zeros(shape, np.float32), np.eye(4), tmp_path / "x.nii.gz")
    with pytest.raises(InputError) as exc:
        load_image(p)
    assert f"{len(shape)}D" in _one_line(exc, p)


def test_4d_with_single_volume_is_accepted(tmp_path):
    p = save_nifti(np.ones((6, 7, 8, 1), np.float32), np.eye(4), tmp_path / "x.nii.gz")
    assert load_image(p).shape == (6, 7, 8)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_voxels(tmp_path, bad):
    img, _ = two_organs()
    img[3, 4, 5] = bad
    img[1, 1, 1] = bad
    p = save_nifti(img, np.eye(4), tmp_path / "x.nii.gz")
    with pytest.raises(InputError) as exc:
        load_image(p)
    assert "2 NaN/Inf" in _one_line(exc, p)


def test_label_validation(tmp_path):
    _, lab = two_organs()
    p = save_nifti(lab, np.eye(4), tmp_path / "lab.nii.gz")
    with pytest.raises(InputError) as exc:
        load_label(p, max_label=1)
    assert "above the number of classes" in _one_line(exc, p)
    q = save_nifti(lab.astype(np.float32) + 0.5, np.eye(4), tmp_path / "frac.nii.gz")
    with pytest.raises(InputError) as exc:
        load_label(q)
    assert "non-integer" in _one_line(exc, q)
    r = save_nifti(lab.astype(np.int16) - 1, np.eye(4), tmp_path / "neg.nii.gz")
    with pytest.raises(InputError) as exc:
        load_label(r)
    assert "negative" in _one_line(exc, r)


def test_pair_mismatch_and_empty(tmp_path):
    img, lab = two_organs()
    ip = save_nifti(img, np.eye(4), tmp_path / "img.nii.gz")
    lp = save_nifti(lab[:-1], np.eye(4), tmp_path / "lab.nii.gz")
    with pytest.raises(InputError) as exc:
        load_pair(ip, lp)
    assert "shape" in _one_line(exc, lp)
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    lp2 = save_nifti(lab, shifted, tmp_path / "lab2.nii.gz")
    with pytest.raises(InputError) as exc:
        load_pair(ip, lp2)
    assert "affine" in _one_line(exc, lp2)
    lp3 = save_nifti(np.zeros_like(lab), np.eye(4), tmp_path / "empty.nii.gz")
    with pytest.raises(InputError) as exc:
        load_pair(ip, lp3)
    assert "empty" in _one_line(exc, lp3)
    # Float rounding between tools is tolerated.
    tiny = np.eye(4)
    tiny[1, 3] = 1e-5
    lp4 = save_nifti(lab, tiny, tmp_path / "lab4.nii.gz")
    image, label = load_pair(ip, lp4)
    assert label.present_labels() == [1, 2]


def test_folder_given_as_file(tmp_path):
    d = tmp_path / "dir.nii.gz"
    d.mkdir()
    with pytest.raises(InputError) as exc:
        load_image(d)
    assert "folder" in _one_line(exc, d)


def test_volume_rejects_arrays_it_cannot_use():
    class Tensor:  # not a numpy array, although 3D (a torch tensor, say)
        shape = (4, 4, 4)

    with pytest.raises(InputError, match="numpy array, got Tensor"):
        Volume(Tensor(), np.eye(4), "t.nii.gz")
    with pytest.raises(InputError, match=r"empty volume with shape \(0, 5, 5\)"):
        Volume(np.zeros((0, 5, 5), np.float32), np.eye(4))
    with pytest.raises(InputError, match="unsupported voxel type complex64"):
        Volume(np.zeros((2, 2, 2), np.complex64), np.eye(4))
    with pytest.raises(InputError, match=r"expected a 3D volume, got shape \(2, 2\)"):
        Volume(np.zeros((2, 2), np.float32), np.eye(4))


def test_label_volume_rejects_float_data():
    with pytest.raises(InputError):
        LabelVolume(np.zeros((2, 2, 2), np.float32), np.eye(4))
    assert nib  # nibabel is the reader


def test_to_file_orientation_undoes_the_canonical_reorientation(tmp_path):
    """A label map computed on the canonical volume goes back onto an LPS file's own grid."""
    import nibabel as nib

    from core.io import load_label, to_file_orientation

    rng = np.random.default_rng(0)
    data = rng.integers(0, 4, (5, 6, 7)).astype(np.uint8)
    lps = np.diag([-2.0, -1.5, 3.0, 1.0])
    lps[:3, 3] = (10.0, -4.0, 2.5)
    path = tmp_path / "lps.nii.gz"
    nib.save(nib.Nifti1Image(data, lps), str(path))
    canon = load_label(path)  # RAS+: axes flipped
    assert not np.array_equal(canon.data, data)
    back, affine = to_file_orientation(canon.data, canon.affine, lps)
    assert np.array_equal(back, data) and np.array_equal(affine, lps)
    # already in the file's orientation: unchanged
    same, aff2 = to_file_orientation(canon.data, canon.affine, canon.affine)
    assert np.array_equal(same, canon.data) and np.array_equal(aff2, canon.affine)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("flip", [False, True])
def test_loaded_voxels_are_the_files_as_c_ordered_float32(tmp_path, dtype, flip):
    """load_image reorders nibabel's Fortran-ordered voxels a few slices at a time: the
    values must be those of numpy's own reordering copy, for every stored type, a scaled
    file, a file reoriented on loading and a last axis that is not a multiple of the chunk."""
    rng = np.random.default_rng(1)
    data = (rng.random((33, 20, 21)) * 250).astype(dtype)
    affine = np.diag([-0.7, -0.7, 1.5, 1.0]) if flip else np.diag([0.7, 0.7, 1.5, 1.0])
    img = nib.Nifti1Image(data, affine)
    if dtype is np.int16:
        img.header.set_slope_inter(0.37, -1024.0)  # a scanner's rescale: nibabel's float64
    p = tmp_path / "ct.nii.gz"
    nib.save(img, str(p))
    want = np.asanyarray(nib.as_closest_canonical(nib.load(str(p))).dataobj)
    want = np.ascontiguousarray(want.astype(np.float32, copy=False))
    got = load_image(p).data
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, want) and np.array_equal(load_image(p).data, got)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.float32])
@pytest.mark.parametrize("flip", [False, True])
def test_loaded_label_maps_are_the_files_as_c_ordered_integers(tmp_path, dtype, flip):
    """load_label reorders the Fortran-ordered label map a few slices at a time as well (a
    512 x 512 x 300 map took 0.9-1.2 s in numpy's reordering copy): the same values, C order,
    the smallest unsigned type, for integer and float files and a flipped one."""
    rng = np.random.default_rng(2)
    data = rng.integers(0, 300 if dtype is np.uint16 else 7, (31, 18, 21)).astype(dtype)
    affine = np.diag([-0.7, 0.7, -1.5, 1.0]) if flip else np.diag([0.7, 0.7, 1.5, 1.0])
    p = tmp_path / "lab.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(p))
    want = np.asanyarray(nib.as_closest_canonical(nib.load(str(p))).dataobj)
    got = load_label(p).data
    assert got.flags.c_contiguous
    assert got.dtype == (np.uint16 if dtype is np.uint16 else np.uint8)
    assert np.array_equal(got, want)


def test_values_beyond_float32_are_a_one_line_error(tmp_path):
    img, _ = two_organs()
    data = img.astype(np.float64)
    data[2, 3, 4] = 1e300  # inf once float32
    p = save_nifti(data, np.eye(4), tmp_path / "x.nii.gz")
    with pytest.raises(InputError) as exc:
        load_image(p)
    assert "1 NaN/Inf" in _one_line(exc, p)


@pytest.mark.parametrize(
    "file_affine",
    [
        np.diag([2.0, 1.5, 3.0, 1.0]),  # RAS: nothing to undo
        np.diag([-2.0, -1.5, 3.0, 1.0]),  # LPS
        np.array([[0, 0, 3.0, 0], [-2.0, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 0, 1]]),  # permuted
    ],
)
def test_a_fortran_ordered_map_goes_back_to_the_files_grid_in_fortran_order(tmp_path, file_affine):
    """NIfTI stores voxels in Fortran order: a label map made in that order (the web demo's
    download) stays in it on the way back to the file's grid, so the writer copies it as it
    is instead of reordering 80 M voxels (a C-ordered copy cost more than the whole write).
    Values, affine and the written file are those of the C-ordered map."""
    from core.io import load_label, to_file_orientation
    from core.source_grid import SourceGrid, save_mask

    rng = np.random.default_rng(2)
    data = rng.integers(0, 4, (5, 6, 7)).astype(np.uint8)
    path = tmp_path / "file.nii.gz"
    nib.save(nib.Nifti1Image(data, file_affine), str(path))
    canon = load_label(path)
    c_map = np.ascontiguousarray(canon.data)
    f_map = np.asfortranarray(canon.data)
    back_c, aff_c = to_file_orientation(c_map, canon.affine, file_affine)
    back_f, aff_f = to_file_orientation(f_map, canon.affine, file_affine)
    assert back_c.flags.c_contiguous and back_f.flags.f_contiguous
    assert np.array_equal(back_f, data) and np.array_equal(back_c, data)
    assert np.array_equal(aff_f, aff_c)
    grid = SourceGrid.of_file(path)
    for name, m in (("c", c_map), ("f", f_map), ("bool", f_map.astype(bool))):
        out = save_mask(m, canon.affine, tmp_path / f"{name}.nii.gz", grid)
        img = nib.load(str(out))
        want = data if name != "bool" else (data > 0).astype(np.uint8)
        assert np.array_equal(np.asarray(img.dataobj), want)
        assert np.allclose(img.affine, file_affine)
