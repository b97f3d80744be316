"""Resampling to an isotropic grid that keeps the volume's orientation.

The new grid has the same direction cosines and the same centre as the old one, only another
voxel size, so oblique volumes stay oblique and the affine stays exact. Images are interpolated
linearly, label maps by nearest neighbour (they are different types for this reason).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from core.io import LabelVolume, Volume, spacing_of

__all__ = ["isotropic_grid", "resample_image", "resample_label", "resample_pair"]


def isotropic_grid(
    shape: tuple[int, int, int], affine: np.ndarray, spacing: float
) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray, np.ndarray]:
    """The isotropic grid covering the same field of view.

    Returns
    -------
    new_shape : 3 ints
    new_affine : (4, 4) voxel -> world mm of the new grid
    matrix, offset : (3,) and (3,) such that ``old_index = matrix * new_index + offset``
    """
    if not spacing > 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    a = np.asarray(affine, dtype=np.float64)
    old_sp = np.array(spacing_of(a))
    old_shape = np.array(shape, dtype=np.float64)
    new_shape = np.maximum(1, np.round(old_shape * old_sp / spacing)).astype(int)
    scale = spacing / old_sp  # old voxels per new voxel
    # Align the grid centres so the field of view stays centred on the same world point.
    offset = (old_shape - 1) / 2 - scale * (new_shape - 1) / 2
    new_affine = np.eye(4)
    new_affine[:3, :3] = a[:3, :3] * scale[None, :]
    new_affine[:3, 3] = a[:3, :3] @ offset + a[:3, 3]
    return tuple(int(x) for x in new_shape), new_affine, scale, offset


def _needs_resampling(affine, spacing: float, tol: float = 1e-3) -> bool:
    return bool(np.any(np.abs(np.array(spacing_of(affine)) - spacing) > tol * spacing))


def resample_image(volume: Volume, spacing: float, *, order: int = 1) -> Volume:
    """Resample an image to isotropic ``spacing`` mm (linear by default; ``order=3`` cubic)."""
    if not _needs_resampling(volume.affine, spacing):
        return volume
    shape, affine, scale, offset = isotropic_grid(volume.shape, volume.affine, spacing)
    data = ndimage.affine_transform(
        volume.data, scale, offset=offset, output_shape=shape, order=order, mode="nearest"
    ).astype(np.float32, copy=False)
    return Volume(data, affine, volume.path)


def resample_label(label: LabelVolume, spacing: float) -> LabelVolume:
    """Resample a label map to isotropic ``spacing`` mm by nearest neighbour."""
    if not _needs_resampling(label.affine, spacing):
        return label
    shape, affine, scale, offset = isotropic_grid(label.shape, label.affine, spacing)
    data = ndimage.affine_transform(
        label.data, scale, offset=offset, output_shape=shape, order=0, mode="nearest"
    )
    return LabelVolume(data.astype(label.data.dtype, copy=False), affine, label.path)


def resample_pair(image: Volume, label: LabelVolume, spacing: float) -> tuple[Volume, LabelVolume]:
    """Resample an image and its label map onto the same isotropic grid."""
    return resample_image(image, spacing), resample_label(label, spacing)
