"""Signed distance fields in millimetres."""

from __future__ import annotations

import edt
import numpy as np

__all__ = ["signed_distance", "class_sdfs"]


def signed_distance(mask: np.ndarray, spacing) -> np.ndarray:
    """Signed distance (mm) to the surface of a binary mask: negative inside, positive outside.

    The surface is taken halfway between inside and outside voxel centres, so the zero level
    matches marching cubes of the mask at 0.5 along the grid axes. Distances come from the
    ``edt`` package (exact Euclidean transform, same values as scipy's, several times faster).
    The inside transform runs on the mask's bounding box plus one voxel: the nearest outside
    voxel of any inside voxel always lies in that box, so no value changes.

    Parameters
    ----------
    mask : (I, J, K) bool array (must hold at least one True voxel)
    spacing : 3 floats, mm

    Returns
    -------
    (I, J, K) float32 array, mm
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("signed_distance needs a non-empty mask")
    sp = np.asarray(spacing, dtype=np.float64)
    half = 0.5 * float(sp.min())
    sdf = edt.edt((~mask).view(np.uint8), anisotropy=tuple(sp), black_border=False, parallel=1)
    sdf = sdf.astype(np.float32, copy=False)
    sdf -= half
    box = tuple(
        slice(max(int(idx.min()) - 1, 0), min(int(idx.max()) + 2, n))
        for idx, n in zip(np.nonzero(mask), mask.shape, strict=True)
    )
    sub = np.ascontiguousarray(mask[box])
    d_in = edt.edt(sub.view(np.uint8), anisotropy=tuple(sp), black_border=False, parallel=1)
    region = sdf[box]
    region[sub] = half - d_in[sub]
    return sdf


def class_sdfs(label: np.ndarray, n_classes: int, spacing, *, dtype=np.float16) -> np.ndarray:
    """Per-class signed distance fields for classes 1..K.

    A class absent from the label map gets the volume's diagonal (mm) everywhere: "far outside".

    Returns
    -------
    (K, I, J, K) array of ``dtype``, mm
    """
    sp = np.asarray(spacing, dtype=np.float64)
    far = float(np.linalg.norm(np.array(label.shape) * sp))
    out = np.empty((n_classes,) + label.shape, dtype=dtype)
    for k in range(1, n_classes + 1):
        m = label == k
        out[k - 1] = signed_distance(m, sp) if m.any() else far
    return out
