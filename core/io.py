"""NIfTI input/output and orientation: the one module that owns the affine.

Volumes are kept in array order ``(i, j, k)`` with a ``(4, 4)`` affine mapping voxel indices to
world millimetres (RAS+ after :func:`load_image` / :func:`load_label` with ``canonical=True``).
Image and label volumes are distinct types so that an interpolation or a save can never treat a
label map as intensities.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from core.atomic import atomic_path
from core.errors import InputError

__all__ = [
    "Volume",
    "LabelVolume",
    "load_image",
    "load_label",
    "load_pair",
    "save_image",
    "save_label",
    "voxel_to_world",
    "world_to_voxel",
    "spacing_of",
    "voxel_volume_mm3",
    "check_same_grid",
    "to_file_orientation",
    "NIFTI_SUFFIXES",
    "strip_nifti_suffix",
    "fingerprint",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def strip_nifti_suffix(name: str) -> str | None:
    """Return ``name`` without its ``.nii``/``.nii.gz`` suffix (in any case: ``.NII.GZ`` too,
    as nibabel reads it), or ``None`` if it has neither."""
    for suf in NIFTI_SUFFIXES:
        if name.lower().endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return None


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis: the column norms of the affine's 3x3 block."""
    a = np.asarray(affine, dtype=np.float64)
    return tuple(float(x) for x in np.linalg.norm(a[:3, :3], axis=0))


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """Volume of one voxel in mm^3: ``|det|`` of the affine's 3x3 block, which is the product
    of :func:`spacing_of` only when the axes are orthogonal (not on a sheared, gantry-tilted
    grid)."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


def voxel_to_world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Map voxel indices to world millimetres.

    Parameters
    ----------
    affine : (4, 4) float array
    ijk : (..., 3) array of voxel indices (fractional allowed)

    Returns
    -------
    xyz : (..., 3) float64 array, mm
    """
    a = np.asarray(affine, dtype=np.float64)
    p = np.asarray(ijk, dtype=np.float64)
    return p @ a[:3, :3].T + a[:3, 3]


def world_to_voxel(affine: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Inverse of :func:`voxel_to_world`: world mm ``(..., 3)`` to fractional voxel indices."""
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    p = np.asarray(xyz, dtype=np.float64)
    return p @ inv[:3, :3].T + inv[:3, 3]


@dataclass(frozen=True, eq=False)
class Volume:
    """An intensity volume with its voxel-to-world affine.

    Attributes
    ----------
    data : (I, J, K) float32 array
    affine : (4, 4) float64 array, voxel index -> world mm
    path : source file, if any (for messages)
    """

    data: np.ndarray
    affine: np.ndarray
    path: str | None = None

    def __post_init__(self):
        _check_array_and_affine(self.data, self.affine, self.path)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return spacing_of(self.affine)


def fingerprint(volume: Volume) -> str:
    """The scan's identity, whatever its file name, folder, dataset layout, compression or
    on-disk axis order: a digest of the voxels as :func:`load_image` returns them (canonical
    orientation, float32) and of their shape. Training records it for every case it sees, so
    that evaluation recognises a training scan that was copied or renamed."""
    digest = hashlib.sha256(repr(tuple(volume.shape)).encode())
    digest.update(np.ascontiguousarray(volume.data, dtype=np.float32).data)
    return digest.hexdigest()[:32]


@dataclass(frozen=True, eq=False)
class LabelVolume:
    """An integer label map (0 = background) with its voxel-to-world affine.

    Attributes
    ----------
    data : (I, J, K) integer array (uint8 when labels fit)
    affine : (4, 4) float64 array, voxel index -> world mm
    path : source file, if any (for messages)
    """

    data: np.ndarray
    affine: np.ndarray
    path: str | None = None

    def __post_init__(self):
        _check_array_and_affine(self.data, self.affine, self.path)
        if not np.issubdtype(self.data.dtype, np.integer):
            raise InputError(self.path, f"label data must be integer, got {self.data.dtype}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return spacing_of(self.affine)

    def present_labels(self) -> list[int]:
        """Sorted non-zero label values present in the map."""
        vals = np.unique(self.data)
        return [int(v) for v in vals if v != 0]


def _check_array_and_affine(data, affine, path):
    if not isinstance(data, np.ndarray):
        raise InputError(path, f"data must be a numpy array, got {type(data).__name__}")
    if data.ndim != 3:
        raise InputError(path, f"expected a 3D volume, got shape {data.shape}")
    if min(data.shape) < 1:
        raise InputError(path, f"empty volume with shape {data.shape}")
    if data.dtype.kind not in _SCALAR_KINDS:
        raise InputError(path, _unsupported_type(data.dtype))
    a = np.asarray(affine)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise InputError(path, "affine must be a finite 4x4 matrix")
    if abs(np.linalg.det(a[:3, :3])) < 1e-9:
        raise InputError(path, "affine is singular (zero voxel size?)")


# bool, signed and unsigned integers, floats: not complex, RGB (structured) or objects
_SCALAR_KINDS = "biuf"


def _unsupported_type(dtype) -> str:
    return f"unsupported voxel type {dtype} (expected one number per voxel: integers or floats)"


# Errors of reading a file's voxels: truncated or corrupt gzip, a short uncompressed file.
_DATA_ERRORS = (gzip.BadGzipFile, zlib.error, EOFError, OSError, ValueError)


# --------------------------------------------------------------------------------------------
# Loading


def _nib_load(p: Path):
    """nibabel's image of ``p``. nibabel goes by the suffix and misreads some in capitals
    (``.NII``, ``.Nii.Gz``), so such a file is read from its bytes (gzip by its magic)."""
    if p.name.endswith(NIFTI_SUFFIXES):
        return nib.load(str(p))
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    for klass in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            return klass.from_bytes(raw)
        except Exception:  # noqa: BLE001 - the other NIfTI version, or not NIfTI at all
            continue
    raise nib.filebasedimages.ImageFileError(f"{p}: unrecognised header")


def _read_nifti(path: str | os.PathLike, *, canonical: bool):
    """Read a NIfTI file fully; return (data float array or raw, affine) with clear errors."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "file not found")
    if p.is_dir():
        raise InputError(p, "is a folder, expected a NIfTI file (.nii or .nii.gz)")
    if not os.access(p, os.R_OK):
        raise InputError(p, "file is not readable (permission denied)")
    if strip_nifti_suffix(p.name) is None:
        raise InputError(p, "not a NIfTI file (expected a .nii or .nii.gz name)")
    try:
        img = _nib_load(p)
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise InputError(p, f"corrupt or truncated gzip data ({exc})") from exc
    except nib.filebasedimages.ImageFileError as exc:
        raise InputError(p, "not a valid NIfTI file (unrecognised header)") from exc
    except Exception as exc:  # nibabel raises a zoo of errors on garbage headers
        raise InputError(p, f"cannot read as NIfTI ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(p, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        try:
            img = img.slicer[..., 0]
        except _DATA_ERRORS as exc:
            raise InputError(p, f"corrupt or truncated image data ({exc})") from exc
    elif len(shape) != 3:
        raise InputError(p, f"expected a 3D volume, got {len(shape)}D with shape {tuple(shape)}")
    if min(img.shape) < 1:
        raise InputError(p, f"empty volume with shape {tuple(img.shape)}")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(p, "invalid affine in header (non-finite or zero voxel size)")
    if canonical:
        try:  # reads the voxels (unless the file is RAS+ already)
            img = nib.as_closest_canonical(img)
        except _DATA_ERRORS as exc:
            raise InputError(p, f"corrupt or truncated image data ({exc})") from exc
        except Exception as exc:
            raise InputError(p, f"cannot reorient to canonical RAS ({exc})") from exc
    try:
        data = np.asanyarray(img.dataobj)
    except _DATA_ERRORS as exc:
        raise InputError(p, f"corrupt or truncated image data ({exc})") from exc
    if data.dtype.kind not in _SCALAR_KINDS:
        raise InputError(p, _unsupported_type(data.dtype))
    return np.asarray(data), np.asarray(img.affine, dtype=np.float64)


def load_image(path: str | os.PathLike, *, canonical: bool = True) -> Volume:
    """Load an intensity volume.

    Parameters
    ----------
    path : .nii or .nii.gz file
    canonical : reorient to the closest canonical (RAS+) orientation; the affine stays exact.

    Returns
    -------
    Volume with float32 data.

    Raises
    ------
    InputError
        Missing, unreadable, corrupt or non-NIfTI file; not 3D; NaN or Inf voxels.
    """
    raw, affine = _read_nifti(path, canonical=canonical)
    data = _c_order(raw, np.float32)
    # integers stay finite as float32; min and max propagate NaN and hold any Inf (a float64
    # beyond float32's range became one), without a volume-sized mask
    finite = raw.dtype.kind in "biu" or (np.isfinite(data.min()) and np.isfinite(data.max()))
    if not finite:
        raise InputError(path, f"contains {int(np.sum(~np.isfinite(data)))} NaN/Inf voxels")
    return Volume(data, affine, os.fspath(path))


def _c_order(data: np.ndarray, dtype) -> np.ndarray:
    """``np.ascontiguousarray(data.astype(dtype))``, without a copy when it is that already.

    NIfTI stores the first axis fastest, so nibabel gives Fortran-ordered arrays; numpy's
    reordering copy of a 512 x 512 x 300 one took 1.3-1.9 s here as float32 and 0.9-1.2 s as
    a uint8 label map. Copying a few slices of the last axis at a time (each a block that fits
    in the cache) gives the same values in 0.3-0.4 s and 0.25-0.3 s."""
    if data.flags.c_contiguous or data.ndim != 3:
        return np.ascontiguousarray(data.astype(dtype, copy=False))
    out = np.empty(data.shape, dtype)
    with np.errstate(over="ignore"):  # beyond float32 becomes Inf: load_image names it
        for k in range(0, data.shape[2], 8):
            out[:, :, k : k + 8] = data[:, :, k : k + 8]
    return out


def load_label(
    path: str | os.PathLike, *, canonical: bool = True, max_label: int | None = None
) -> LabelVolume:
    """Load an integer label map.

    Parameters
    ----------
    path : .nii or .nii.gz file
    canonical : reorient to RAS+ (must match the image's setting).
    max_label : if given, any value above it is an error (e.g. ``--classes``).

    Raises
    ------
    InputError
        As :func:`load_image`, plus non-integer, negative, or too-large label values.
    """
    data, affine = _read_nifti(path, canonical=canonical)
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            raise InputError(path, "label map contains NaN/Inf values")
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise InputError(path, "label map has non-integer values (is this an image?)")
        data = rounded
    elif not np.issubdtype(data.dtype, np.integer) and data.dtype != np.bool_:
        raise InputError(path, f"unsupported label data type {data.dtype}")
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    if lo < 0:
        raise InputError(path, f"label map has negative values (min {lo})")
    if max_label is not None and hi > max_label:
        raise InputError(path, f"label value {hi} is above the number of classes ({max_label})")
    dtype = np.uint8 if hi < 256 else np.uint16 if hi < 65536 else np.int32
    return LabelVolume(_c_order(data, dtype), affine, os.fspath(path))


def to_file_orientation(
    data: np.ndarray, affine: np.ndarray, file_affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Undo the canonical (RAS+) reorientation of :func:`load_image` / :func:`load_label`.

    ``data`` on the canonical ``affine`` goes back to the axis order and flips of the file
    whose affine is ``file_affine`` (an exact permutation and flip, no resampling). Returns
    the array and its affine, which is ``file_affine`` itself when they agree (the file's own
    bits, not a recomputed approximation).
    """
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    a = np.asarray(data)
    affine = np.asarray(affine, dtype=np.float64)
    file_affine = np.asarray(file_affine, dtype=np.float64)
    t = ornt_transform(io_orientation(affine), io_orientation(file_affine))
    if np.array_equal(t, [[0, 1], [1, 1], [2, 1]]):
        out, new_affine = a, affine
    else:
        out = apply_orientation(a, t)
        new_affine = affine @ inv_ornt_aff(t, a.shape)
    if np.allclose(new_affine, file_affine, atol=1e-4, rtol=0):
        new_affine = file_affine
    # contiguous in the input's own memory order: a Fortran-ordered map (NIfTI's order, which
    # the writer then copies as it is) is not reordered, which costs more than the write
    if a.flags.f_contiguous and not a.flags.c_contiguous:
        return np.asfortranarray(out), new_affine
    return np.ascontiguousarray(out), new_affine


def check_same_grid(a, b, *, atol: float = 1e-3) -> None:
    """Raise :class:`InputError` (naming ``b``'s file) unless ``a`` and ``b`` share shape and affine.

    ``atol`` is in mm (translations) and unit-less for the 3x3 block; headers written by
    different tools differ by float rounding, never by more.
    """
    if a.shape != b.shape:
        raise InputError(b.path, f"shape {b.shape} does not match the image's {a.shape} ({a.path})")
    diff = float(np.max(np.abs(np.asarray(a.affine) - np.asarray(b.affine))))
    if diff > atol:
        raise InputError(
            b.path,
            f"affine differs from the image's ({a.path}) by up to {diff:.4g} "
            f"(tolerance {atol:g}): image and label are not on the same grid",
        )


def load_pair(
    image_path: str | os.PathLike,
    label_path: str | os.PathLike,
    *,
    canonical: bool = True,
    max_label: int | None = None,
    atol: float = 1e-3,
    allow_empty: bool = False,
) -> tuple[Volume, LabelVolume]:
    """Load an image and its label map and check they belong together.

    Raises
    ------
    InputError
        Any problem of either file, a shape or affine mismatch, or (unless ``allow_empty``)
        a label map with no foreground.
    """
    image = load_image(image_path, canonical=canonical)
    label = load_label(label_path, canonical=canonical, max_label=max_label)
    check_same_grid(image, label, atol=atol)
    if not allow_empty and not np.any(label.data):
        raise InputError(label_path, "label map is empty (no foreground voxels)")
    return image, label


# --------------------------------------------------------------------------------------------
# Saving


def _save(data: np.ndarray, affine: np.ndarray, path: str | os.PathLike, *, is_label: bool):
    p = Path(path)
    if strip_nifti_suffix(p.name) is None:
        raise InputError(p, "output name must end with .nii or .nii.gz")
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    if is_label:
        img.header.set_intent("label")
    suffix = ".nii.gz" if p.name.lower().endswith(".nii.gz") else ".nii"
    with atomic_path(p, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return p


def save_image(volume: Volume, path: str | os.PathLike) -> Path:
    """Write an image volume to NIfTI atomically (a kill never leaves a partial file)."""
    return _save(np.asarray(volume.data, dtype=np.float32), volume.affine, path, is_label=False)


def save_label(label: LabelVolume, path: str | os.PathLike) -> Path:
    """Write a label map to NIfTI atomically, keeping its integer type."""
    return _save(np.asarray(label.data), label.affine, path, is_label=True)
