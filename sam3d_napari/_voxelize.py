"""A closed surface mesh (world mm) -> a voxel mask on a volume's grid.

Used by Compare when the prediction is a Surface layer. Rays run along the grid's third
axis through every voxel column; a voxel centre is inside when an odd number of surface
crossings lie below it (even-odd rule). Rays are shifted by a ten-thousandth of a voxel so
that they never run exactly through a mesh edge or vertex (marching-cubes vertices sit on
grid lines), which would count a crossing twice or not at all.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mesh_to_mask"]

_RAY_SHIFT = np.array([1.234e-4, 2.718e-4])
_CHUNK = 2_000_000  # candidate (triangle, column) pairs per batch: bounds memory


def mesh_to_mask(vertices, faces, shape, affine) -> np.ndarray:
    """Voxels of the grid ``(shape, affine)`` whose centres lie inside a closed mesh.

    Parameters
    ----------
    vertices : (V, 3) float array, world mm
    faces : (F, 3) int array
    shape : (I, J, K) the target grid
    affine : (4, 4) voxel index -> world mm of the target grid

    Returns
    -------
    (I, J, K) bool array
    """
    from core.io import world_to_voxel

    shape = tuple(int(n) for n in shape)
    out = np.zeros(shape, dtype=bool)
    faces = np.asarray(faces, dtype=np.int64)
    if len(faces) == 0:
        return out
    v = world_to_voxel(affine, np.asarray(vertices, dtype=np.float64))
    tri = v[faces]  # (F, 3 corners, 3 coords)
    lo = np.floor(tri.min(axis=(0, 1))).astype(int)
    hi = np.ceil(tri.max(axis=(0, 1))).astype(int)
    lo, hi = np.maximum(lo, 0), np.minimum(hi, np.array(shape) - 1)
    if np.any(hi < lo):
        return out  # the mesh lies outside the grid
    sub_shape = tuple(int(n) for n in hi - lo + 1)
    tri = tri - lo  # work in the mesh's bounding box of the grid
    # parity toggles: a crossing at height z flips every voxel centre above it
    toggles = np.zeros((sub_shape[0], sub_shape[1], sub_shape[2] + 1), dtype=np.uint8)
    ij = tri[:, :, :2] - _RAY_SHIFT
    i0 = np.maximum(np.ceil(ij[:, :, 0].min(axis=1)), 0).astype(np.int64)
    i1 = np.minimum(np.floor(ij[:, :, 0].max(axis=1)), sub_shape[0] - 1).astype(np.int64)
    j0 = np.maximum(np.ceil(ij[:, :, 1].min(axis=1)), 0).astype(np.int64)
    j1 = np.minimum(np.floor(ij[:, :, 1].max(axis=1)), sub_shape[1] - 1).astype(np.int64)
    ni, nj = np.maximum(i1 - i0 + 1, 0), np.maximum(j1 - j0 + 1, 0)
    counts = ni * nj
    keep = np.flatnonzero(counts)
    # batches of triangles whose candidate columns fit in _CHUNK
    csum = np.cumsum(counts[keep])
    start = 0
    while start < len(keep):
        base = csum[start - 1] if start else 0
        stop = int(np.searchsorted(csum, base + _CHUNK, side="right"))
        stop = max(stop, start + 1)
        _cast(tri, ij, keep[start:stop], i0, j0, ni, nj, counts, toggles, sub_shape)
        start = stop
    inside = (np.cumsum(toggles[:, :, :-1], axis=2, dtype=np.uint8) & 1).astype(bool)
    out[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = inside
    return out


def _cast(tri, ij, idx, i0, j0, ni, nj, counts, toggles, sub_shape) -> None:
    """Crossings of the triangles ``idx`` with the rays through their candidate columns."""
    n = counts[idx]
    t = np.repeat(idx, n)  # triangle of each candidate
    first = np.repeat(np.cumsum(n) - n, n)
    local = np.arange(len(t)) - first  # 0 .. counts-1 within each triangle
    ci = i0[t] + local // nj[t]
    cj = j0[t] + local % nj[t]
    a, b, c = ij[t, 0], ij[t, 1], ij[t, 2]
    p = np.stack([ci, cj], axis=1).astype(np.float64)

    def cross(u, w):
        return u[:, 0] * w[:, 1] - u[:, 1] * w[:, 0]

    d = cross(b - a, c - a)
    ok = np.abs(d) > 1e-12  # triangles seen edge-on never cross a ray
    d = np.where(ok, d, 1.0)
    w0 = cross(b - p, c - p) / d
    w1 = cross(c - p, a - p) / d
    w2 = 1.0 - w0 - w1
    hit = ok & (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
    if not hit.any():
        return
    z = w0 * tri[t, 0, 2] + w1 * tri[t, 1, 2] + w2 * tri[t, 2, 2]
    zi = np.clip(np.floor(z[hit]).astype(np.int64) + 1, 0, sub_shape[2])
    np.add.at(toggles, (ci[hit], cj[hit], zi), 1)
