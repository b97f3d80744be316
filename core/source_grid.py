"""Masks handed back on the input file's own grid.

``core.io.load_image`` reorients every volume to canonical RAS+ (the engine and the clicks work
there). A user whose file is LPS or otherwise oriented expects the mask back on *that* file's
grid: same shape, same array order, same affine, so it lines up voxel by voxel with the input.
:class:`SourceGrid` remembers that grid and :func:`save_mask` undoes the reorientation (an
exact axis permutation and flip, no resampling). Used by ``sam3d predict`` and the web demo
(the napari writer keeps the file's affine in the layer's metadata instead).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.io import LabelVolume, save_label, to_file_orientation

__all__ = ["SourceGrid", "save_mask"]


@dataclass(frozen=True)
class SourceGrid:
    """The grid of the file a volume came from.

    Attributes
    ----------
    affine : (4, 4) the file's own affine
    shape : (3,) the file's own array shape (a trailing 4th axis of 1 dropped)
    """

    affine: np.ndarray
    shape: tuple[int, int, int]

    @classmethod
    def of_file(cls, path: str | os.PathLike) -> SourceGrid:
        """Read a NIfTI header (no voxel data)."""
        import nibabel as nib

        try:
            img = nib.load(os.fspath(path))
        except Exception as exc:  # the volume itself was loaded already: unlikely
            raise InputError(path, f"cannot read the header again ({exc})") from exc
        return cls(np.asarray(img.affine, dtype=np.float64), tuple(int(n) for n in img.shape[:3]))


def to_source_grid(data: np.ndarray, affine: np.ndarray, grid: SourceGrid) -> np.ndarray:
    """Reorient ``data`` on the canonical ``affine`` back to the array order of ``grid``.

    Raises
    ------
    ValueError
        The two grids are not the same voxels in another axis order (should not happen for a
        volume loaded from the grid's file).
    """
    out, new_affine = to_file_orientation(data, affine, grid.affine)
    if out.shape != tuple(grid.shape) or not np.allclose(new_affine, grid.affine, atol=1e-3):
        raise ValueError("the mask's grid does not map back onto the input file's grid")
    return out  # contiguous (to_file_orientation), in the input's memory order


def save_mask(
    mask: np.ndarray, affine: np.ndarray, path: str | os.PathLike, grid: SourceGrid | None = None
) -> Path:
    """Write a mask (bool, or int labels) as ``.nii.gz``; on ``grid`` if given, else as is.

    Parameters
    ----------
    mask : (I, J, K) on the canonical grid of ``affine``
    affine : (4, 4) the canonical volume's affine
    grid : the input file's grid; the written file then has exactly its affine and shape
    """
    data = np.asarray(mask)
    if data.dtype == np.bool_ or data.max(initial=0) < 256:
        data = data.astype(np.uint8, copy=False)  # keeps the memory order
    if grid is not None:
        data, affine = to_source_grid(data, affine, grid), grid.affine
    return save_label(LabelVolume(data, np.asarray(affine, dtype=np.float64)), path)
