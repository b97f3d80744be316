"""Slice geometry: which voxel a slice pixel is, and the world coordinates of a slice.

A slice of a volume on ``axis`` at ``slice_idx`` is ``np.take(volume, slice_idx, axis=axis)``:
its rows run along the first remaining array axis and its columns along the second.
"""

from __future__ import annotations

import numpy as np

from core.io import voxel_to_world

__all__ = [
    "mask_bbox",
    "mask_block",
    "other_axes",
    "take_slice",
    "slice_voxel_index",
    "slice_pointmap",
    "voxel_to_slice",
]


def other_axes(axis: int) -> tuple[int, int]:
    """The array axes of a slice's rows and columns, in that order."""
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    return tuple(a for a in (0, 1, 2) if a != axis)


def take_slice(volume: np.ndarray, axis: int, slice_idx: int) -> np.ndarray:
    """The 2D slice ``(rows, cols)`` of a 3D array; raises ValueError when out of range."""
    other_axes(axis)
    n = volume.shape[axis]
    if not 0 <= slice_idx < n:
        raise ValueError(f"slice {slice_idx} is outside axis {axis} (0..{n - 1})")
    return np.take(volume, slice_idx, axis=axis)


def slice_voxel_index(axis: int, slice_idx, rows, cols) -> np.ndarray:
    """Voxel indices ``(..., 3)`` of slice pixels ``(rows, cols)`` (broadcast together)."""
    r_ax, c_ax = other_axes(axis)
    rows, cols = np.broadcast_arrays(np.asarray(rows), np.asarray(cols))
    out = np.empty(rows.shape + (3,), dtype=np.result_type(rows, cols, np.int64))
    out[..., axis] = slice_idx
    out[..., r_ax] = rows
    out[..., c_ax] = cols
    return out


def voxel_to_slice(axis: int, ijk) -> tuple:
    """Inverse of :func:`slice_voxel_index`: ``(slice_idx, row, col)`` of voxel ``ijk``."""
    r_ax, c_ax = other_axes(axis)
    ijk = np.asarray(ijk)
    return ijk[..., axis], ijk[..., r_ax], ijk[..., c_ax]


def slice_pointmap(
    affine: np.ndarray,
    shape: tuple[int, int, int],
    axis: int,
    slice_idx: int,
    *,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """World coordinates (mm) of every pixel of a slice.

    Parameters
    ----------
    affine : (4, 4) voxel -> world mm
    shape : the volume's shape
    axis, slice_idx : the slice
    valid : (H, W) bool, optional; pixels where it is False become NaN.

    Returns
    -------
    pointmap : (H, W, 3) float32 array, mm
    """
    r_ax, c_ax = other_axes(axis)
    rows, cols = np.meshgrid(np.arange(shape[r_ax]), np.arange(shape[c_ax]), indexing="ij")
    pm = voxel_to_world(affine, slice_voxel_index(axis, slice_idx, rows, cols)).astype(np.float32)
    if valid is not None:
        pm[~np.asarray(valid, dtype=bool)] = np.nan
    return pm


def mask_bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(first, last) voxel index of a mask's bounding box, inclusive; None when empty. Three
    reductions instead of listing every voxel."""
    m = np.asarray(mask, dtype=bool)
    lo, hi = [], []
    for ax in range(m.ndim):
        hit = np.flatnonzero(m.any(axis=tuple(a for a in range(m.ndim) if a != ax)))
        if len(hit) == 0:
            return None
        lo.append(hit[0])
        hi.append(hit[-1])
    return np.array(lo), np.array(hi)


def mask_block(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The slices of a mask's bounding box (:func:`mask_bbox`); None when empty."""
    box = mask_bbox(mask)
    return None if box is None else tuple(slice(a, b + 1) for a, b in zip(*box, strict=True))
