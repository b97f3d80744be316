"""NIfTI reader: ``.nii`` / ``.nii.gz`` -> an Image or a Labels layer placed in world mm.

Volumes are loaded by ``core.io`` (canonical RAS+, the affine kept exactly) and placed with
the full affine (scale, translation, rotation, shear; see ``_layers.layer_transform``). An
integer volume with few distinct values opens as Labels, anything else as an Image. The
layer's metadata keeps the canonical ``affine`` and the file's own orientation
(``source_affine``), so the Labels writer can save a mask exactly on the original grid, and,
for a label file of a dataset that names its classes, the names (``label_names``, id -> name;
``core.datasets.label_names_for``). An image of a dataset whose ``dataset.json`` declares its
modality (nnU-Net's ``channel_names``, e.g. "MRI") keeps it (``modality``), so Reconstruct and
Fine-tune start on it instead of CT (``core.datasets.declared_modality``).

Bad files (corrupt, not NIfTI, 2D/4D, NaN voxels, ...) give one notification naming the file
and the problem; napari gets the "read, nothing to add" sentinel instead of a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sam3d_napari._layers import layer_transform

__all__ = ["napari_get_reader", "read_nifti", "volume_layer_data", "label_layer_data"]

#: At most this many distinct values for an integer volume to open as labels (more with a
#: label-like file name, e.g. TotalSegmentator's 117 classes fit either way).
MAX_LABEL_VALUES = 256
#: In a file's name, these mark a label map even when it is stored as floats holding integers.
_LABEL_HINTS = ("label", "seg", "mask", "gt")
#: So do these folder names (whole names, any case: a project folder named "segmentation
#: study" holds images too), e.g. nnU-Net's ``labelsTr/`` and TotalSegmentator's outputs.
_LABEL_FOLDERS = frozenset(
    "labels label labelstr labelsts labelsva labelsval segmentations segmentation segs seg "
    "masks mask gt ground_truth groundtruth".split()
)
#: A label map is made of regions: most of its foreground voxels hold the value of their
#: neighbour (about 0.85 on TotalSegmentator's maps), and many do along a second axis too
#: (0.45 and more on OpenKBP's thin organs; a map drawn on every few slices is regions
#: within each slice only, 0 across them). An 8-bit image has as few distinct values, but its
#: grey values vary from voxel to voxel (under 0.2 on 8-bit MR and CT, up to 0.5 where a
#: narrow window saturates bone), along every axis but one at most (slices repeated to fill
#: a coarse axis: about 0.7 along it).
MIN_SAME_AS_NEXT = 0.5
MIN_SAME_AS_NEXT_SECOND = 0.35


def napari_get_reader(path):
    """The reader for NIfTI paths (a path or a list of paths), or None for anything else."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(_is_nifti_name(p) for p in paths):
        return None
    return read_nifti


def _is_nifti_name(p) -> bool:
    name = os.fspath(p).lower()
    return name.endswith((".nii", ".nii.gz"))


def read_nifti(path) -> list[tuple]:
    """Read one or more NIfTI files into napari layer data tuples.

    A file that cannot be used is reported as a one-line error notification (naming the
    file) and skipped.
    """
    from core.errors import InputError

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    out = []
    for p in paths:
        try:
            out.append(_read_one(p))
        except InputError as exc:
            _notify_error(str(exc))
        except MemoryError:
            _notify_error(f"{p}: not enough memory to load this volume")
    return out or [(None,)]


def _notify_error(message: str) -> None:
    try:
        from napari.utils.notifications import show_error
    except ImportError:  # pragma: no cover - reader used without napari
        raise RuntimeError(message) from None
    show_error(message)


def _read_one(path) -> tuple:
    from core.datasets import declared_modality, label_names_for
    from core.io import LabelVolume, load_image

    volume = load_image(path)  # canonical RAS+, float32, with clear errors for bad files
    source_affine = _source_affine(path, volume.affine)
    if _looks_like_labels(volume.data, Path(path), _disk_dtype(path)):
        data = volume.data
        hi = int(data.max()) if data.size else 0
        dtype = np.uint8 if hi < 256 else np.uint16 if hi < 65536 else np.uint32
        label = LabelVolume(data.astype(dtype), volume.affine, volume.path)
        names = label_names_for(path)  # the dataset's organ names, for Compare's table
        extra = {"metadata": {"label_names": names}} if names else {}
        return label_layer_data(label, source_affine=source_affine, **extra)
    modality = declared_modality(path)  # e.g. an nnU-Net MR dataset's imagesTr/ file
    extra = {"metadata": {"modality": modality}} if modality else {}
    return volume_layer_data(volume, source_affine=source_affine, **extra)


def _disk_dtype(path) -> np.dtype | None:
    try:
        import nibabel as nib

        return np.dtype(nib.load(os.fspath(path)).get_data_dtype())
    except Exception:  # the volume itself already loaded; the header dtype is only a hint
        return None


def _source_affine(path, fallback) -> np.ndarray:
    try:
        import nibabel as nib

        return np.asarray(nib.load(os.fspath(path)).affine, dtype=np.float64)
    except Exception:
        return np.asarray(fallback, dtype=np.float64)


def _looks_like_labels(data: np.ndarray, path: Path, disk_dtype) -> bool:
    """An integer volume (on disk, or float holding integers under a label-like file or
    folder name) with few distinct non-negative values, made of regions unless the name says
    it is a label map (an 8-bit image export opens as an Image)."""
    hinted = path.parent.name.lower() in _LABEL_FOLDERS or any(
        h in path.name.lower() for h in _LABEL_HINTS
    )
    is_int = disk_dtype is not None and (
        np.issubdtype(disk_dtype, np.integer) or disk_dtype == np.bool_
    )
    if not (is_int or hinted) or data.size == 0:
        return False
    limit = MAX_LABEL_VALUES * (4 if hinted else 1)
    coarse = data[::4, ::4, ::4]  # cheap rejection of CT images stored as int16
    if coarse.min() < 0 or np.unique(coarse).size > limit:
        return False
    if not hinted and not _made_of_regions(data):
        return False
    if data.min() < 0 or data.max() >= 2**31 or not np.array_equal(data, np.rint(data)):
        return False
    return int(np.count_nonzero(np.bincount(data.astype(np.int64).ravel()))) <= limit


def _made_of_regions(data: np.ndarray) -> bool:
    """Whether the foreground is made of regions of one value: along one axis at least
    :data:`MIN_SAME_AS_NEXT` of its voxels equal their next, and along another at least
    :data:`MIN_SAME_AS_NEXT_SECOND`. Not the last axis alone: a map drawn on every few axial
    slices (one voxel thick along it) opened as an image, and an 8-bit image with its slices
    repeated along it, or of one slice, as labels."""
    shares = sorted(_same_as_next(data), reverse=True)
    if not shares:  # no foreground pairs to judge by
        return True
    second = shares[1] if len(shares) > 1 else shares[0]
    return shares[0] >= MIN_SAME_AS_NEXT and second >= MIN_SAME_AS_NEXT_SECOND


def _same_as_next(data: np.ndarray) -> list[float]:
    """Per axis with foreground pairs, the share of foreground voxels (of every fourth row
    along it) equal to the next voxel along it."""
    shares = []
    for axis in range(3):
        rows = np.moveaxis(data, axis, -1)[::4, ::4, :]
        a, b = rows[..., :-1], rows[..., 1:]
        fg = (a != 0) | (b != 0)
        n = np.count_nonzero(fg)
        if n:
            shares.append(np.count_nonzero((a == b) & fg) / n)
    return shares


def _metadata(vol, kind: str, source_affine, extra: dict) -> dict:
    """Layer metadata: the affine (world mm), where the data came from, and the file's own
    affine (for writing back on its grid); pops ``extra["metadata"]`` into it."""
    return {
        "affine": np.asarray(vol.affine, dtype=np.float64),
        "source_path": vol.path,
        "source_affine": None if source_affine is None else np.asarray(source_affine),
        "sam3d_kind": kind,
        **extra.pop("metadata", {}),
    }


def volume_layer_data(volume, *, name: str | None = None, source_affine=None, **extra) -> tuple:
    """An Image layer data tuple for a ``core.io.Volume``, placed in world mm."""
    from core.intensity import display_window

    name = name or _stem(volume.path) or "volume"
    meta = _metadata(volume, "image", source_affine, extra)
    kwargs = {
        "name": name,
        "colormap": "gray",
        "contrast_limits": list(display_window(volume.data)),
        "metadata": meta,
        **layer_transform(volume.affine),
        **extra,
    }
    return (volume.data, kwargs, "image")


def label_layer_data(label, *, name: str | None = None, source_affine=None, **extra) -> tuple:
    """A Labels layer data tuple for a ``core.io.LabelVolume``, placed in world mm."""
    name = name or _stem(label.path) or "labels"
    meta = _metadata(label, "labels", source_affine, extra)
    kwargs = {"name": name, "metadata": meta, **layer_transform(label.affine), **extra}
    return (label.data, kwargs, "labels")


def _stem(path) -> str | None:
    if not path:
        return None
    from core.io import strip_nifti_suffix

    name = Path(path).name
    return strip_nifti_suffix(name) or name
