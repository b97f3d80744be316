"""The model's working cube: a 64^3 grid placed in the volume's world frame.

The cube shares the volume's direction cosines (so a slice of the volume is a plane of the
cube), is centred on a world point (the click), and has its own isotropic spacing chosen so the
organ fits. Its affine maps cube voxels to world mm; sampling into the cube and pasting back
onto the volume's grid are both affine resamplings, so the pose is never learned: it is known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from core.geometry import mask_bbox
from core.io import spacing_of, voxel_to_world, world_to_voxel

__all__ = [
    "Cube",
    "axis_directions",
    "cube_for_click",
    "level_box",
    "sample_into_cube",
    "paste_block",
    "paste_from_cube",
    "touching_faces",
]


@dataclass(frozen=True, eq=False)
class Cube:
    """A cubic grid in world space.

    Attributes
    ----------
    center : (3,) float array, world mm of the cube's centre voxel (index ``size // 2``)
    spacing : float, mm per cube voxel
    directions : (3, 3) float array, unit direction cosines (columns), as the volume's
    size : voxels per side
    """

    center: np.ndarray
    spacing: float
    directions: np.ndarray
    size: int = 64

    def __post_init__(self):
        object.__setattr__(self, "center", np.asarray(self.center, dtype=np.float64).reshape(3))
        object.__setattr__(self, "directions", np.asarray(self.directions, dtype=np.float64))
        if not self.spacing > 0:
            raise ValueError(f"cube spacing must be positive, got {self.spacing}")
        if self.size < 4:
            raise ValueError(f"cube size must be at least 4, got {self.size}")

    @property
    def affine(self) -> np.ndarray:
        """(4, 4) cube voxel index -> world mm."""
        a = np.eye(4)
        a[:3, :3] = self.directions * self.spacing
        # The centre is voxel size // 2 (not the geometric middle), so that a cube centred on
        # a voxel with the volume's spacing shares the volume's grid exactly.
        a[:3, 3] = self.center - a[:3, :3] @ np.full(3, float(self.size // 2))
        return a

    @property
    def extent_mm(self) -> float:
        return self.spacing * self.size

    def with_spacing(self, spacing: float) -> Cube:
        return Cube(self.center, spacing, self.directions, self.size)

    def with_center(self, center) -> Cube:
        return Cube(center, self.spacing, self.directions, self.size)


def axis_directions(affine: np.ndarray) -> np.ndarray:
    """Unit world directions (columns) of the volume's array axes."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    return a / np.linalg.norm(a, axis=0, keepdims=True)


def cube_for_click(
    volume_affine: np.ndarray, click_voxel, *, spacing: float | None = None, size: int = 64
) -> Cube:
    """A cube centred on a voxel of the volume, aligned with the volume's axes.

    ``spacing`` defaults to the volume's largest voxel size (never finer than the data).
    """
    sp = float(max(spacing_of(volume_affine))) if spacing is None else float(spacing)
    center = voxel_to_world(volume_affine, np.asarray(click_voxel, dtype=np.float64))
    return Cube(center, sp, axis_directions(volume_affine), size)


def _cube_to_volume_matrix(cube: Cube, volume_affine: np.ndarray):
    """(3, 3) matrix and (3,) offset mapping cube voxel indices to volume voxel indices."""
    m = np.linalg.inv(np.asarray(volume_affine, dtype=np.float64)) @ cube.affine
    return m[:3, :3], m[:3, 3]


def _read_indices(coords: np.ndarray, n: int, order: int) -> np.ndarray:
    """The indices (sorted, clipped to ``0..n-1``) :func:`_resample_axis` reads at ``coords``."""
    if order == 0:
        return np.unique(np.clip(np.floor(coords + 0.5).astype(np.int64), 0, n - 1))
    i0 = np.floor(coords).astype(np.int64)
    return np.unique(np.clip(np.concatenate([i0, i0 + 1]), 0, n - 1))


def _resample_axis(
    x: np.ndarray, axis: int, coords: np.ndarray, order: int, cval, n=None, rows=None
) -> np.ndarray:
    """Resample ``x`` along one axis at fractional indices ``coords`` (constant padding).

    ``rows``: ``x`` holds only these indices (sorted, :func:`_read_indices`) of an axis of
    ``n``; ``coords`` are indices of the whole axis."""
    n = x.shape[axis] if n is None else n
    if rows is None:
        rows = np.arange(n)
    pos = np.zeros(n, np.int64)
    pos[rows] = np.arange(len(rows))  # axis index -> its place in x
    if order == 0:
        idx = np.floor(coords + 0.5).astype(np.int64)
        ok = (idx >= 0) & (idx < n)
        out = np.take(x, pos[np.clip(idx, 0, n - 1)], axis=axis)
        if not ok.all():
            shape = [1] * x.ndim
            shape[axis] = len(coords)
            out = np.where(ok.reshape(shape), out, cval)
        return out
    i0 = np.floor(coords).astype(np.int64)
    w = (coords - i0).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = len(coords)
    cval = np.float32(cval)

    def taken(i):
        v = np.take(x, pos[np.clip(i, 0, n - 1)], axis=axis).astype(np.float32, copy=False)
        ok = (i >= 0) & (i < n)
        return v if ok.all() else np.where(ok.reshape(shape), v, cval)

    a = taken(i0)
    if not w.any():  # on the grid (a cube at the volume's own spacing): no blending
        return a
    wr = w.reshape(shape)
    return a * (1 - wr) + taken(i0 + 1) * wr


def _axis_aligned(mat: np.ndarray) -> bool:
    return bool(np.allclose(mat, np.diag(np.diag(mat)), atol=1e-9))


def _nearest_fill(dtype, cval):
    """``cval`` as a value of ``dtype``: nearest-neighbour resampling keeps the data's dtype,
    so a fill it cannot hold exactly (-1 in uint8 data, 0.5 in integers) is a one-line
    ValueError rather than a wrapped (255) or truncated value."""
    dtype = np.dtype(dtype)
    if dtype.kind in "fc":
        return dtype.type(cval)
    with np.errstate(all="ignore"):
        fill = np.asarray(cval).astype(dtype)
    if fill.item() != cval:
        raise ValueError(
            f"fill value {cval:g} does not fit {dtype} data (nearest-neighbour resampling "
            "keeps the data's dtype): use a fill the dtype holds, or convert the data first"
        )
    return fill[()]


def _resample(data, mat, off, out_shape, order, cval, *, gather: bool = True):
    """``out[p] = data[mat @ p + off]`` (order 0 nearest or 1 linear, constant padding).

    Axis-aligned maps (the cube shares the volume's directions, the usual case) run as three
    separable 1D passes, several times faster than ``ndimage.affine_transform`` and equal to it;
    other maps use ``affine_transform``. ``gather=False`` reads the whole block the cube spans
    instead of the voxels next to its coordinates (the same result; for tests).

    Order 0 keeps the data's dtype, order 1 gives float32; a fill that order 0's dtype cannot
    hold is a ValueError.
    """
    if order == 0:
        cval = _nearest_fill(np.asarray(data[:0, :0, :0]).dtype, cval)
    if _axis_aligned(mat) and order in (0, 1):
        # Read only the block of ``data`` the coordinates reach (with the next voxel for the
        # linear weights): a memory-mapped cache volume is never loaded whole, and the first
        # pass runs on the block instead of the full volume. Indices outside the block are
        # outside ``data`` too, so the constant padding is unchanged.
        coords, block = [], []
        for ax in range(3):
            c = mat[ax, ax] * np.arange(out_shape[ax]) + off[ax]
            n = data.shape[ax]
            lo = int(np.clip(np.floor(c.min()), 0, n))
            hi = int(np.clip(np.floor(c.max()) + 2, 0, n))
            if hi <= lo:  # the cube misses the data entirely
                return np.full(tuple(out_shape), cval, dtype=np.float32 if order else cval.dtype)
            coords.append(c - lo)
            block.append(slice(lo, hi))
        # Of the block, only the rows, columns and slices next to the coordinates are read
        # (a 3 mm cube in a 0.8 x 0.8 x 0.5 mm CT: 2 M of its 22 M voxels); each pass reads
        # the same values as from the whole block, so the result is the same.
        n = [b.stop - b.start for b in block]
        rows = [_read_indices(c, m, order) for c, m in zip(coords, n, strict=True)]
        if not gather or all(len(r) == m for r, m in zip(rows, n, strict=True)):
            rows = [np.arange(m) for m in n]
            x = np.asarray(data[tuple(block)])
        else:
            x = np.asarray(data[np.ix_(*(r + b.start for r, b in zip(rows, block, strict=True)))])
        for ax in range(3):
            x = _resample_axis(x, ax, coords[ax], order, cval, n[ax], rows[ax])
        return x
    return ndimage.affine_transform(
        data,
        mat,
        offset=off,
        output_shape=tuple(out_shape),
        order=order,
        mode="constant",
        cval=cval,
        prefilter=False,
    )


def sample_into_cube(
    data: np.ndarray, volume_affine: np.ndarray, cube: Cube, *, order: int = 1, cval: float = 0.0
) -> np.ndarray:
    """Resample a volume (or a label map with ``order=0``) onto the cube grid.

    Voxels of the cube outside the volume get ``cval`` (with ``order=0`` a value the data's
    dtype holds: -1 for uint8 data is a ValueError).

    Returns
    -------
    (size, size, size) array, float32 for ``order > 0`` else the input dtype
    """
    mat, off = _cube_to_volume_matrix(cube, volume_affine)
    out = _resample(data, mat, off, (cube.size,) * 3, order, cval)
    return out if order == 0 else out.astype(np.float32, copy=False)


def paste_from_cube(
    cube_values: np.ndarray,
    cube: Cube,
    volume_shape: tuple[int, int, int],
    volume_affine: np.ndarray,
    *,
    order: int = 1,
    fill: float = 0.0,
) -> np.ndarray:
    """Resample cube values (e.g. probabilities) back onto the volume's grid.

    Only the volume voxels inside the cube's bounding box are computed; the rest get ``fill``.

    Returns
    -------
    (I, J, K) float32 array on the volume grid
    """
    out = np.full(volume_shape, fill, dtype=np.float32)
    box = _volume_box(cube, volume_affine, volume_shape, 0, cube.size - 1)
    if box is not None:
        lo, hi = box
        out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = paste_block(
            cube_values, cube, volume_affine, lo, hi, order=order, fill=fill
        )
    return out


def _volume_box(cube: Cube, volume_affine, volume_shape, c_lo, c_hi):
    """(lo, hi) volume voxel box (hi exclusive) holding every voxel whose cube coordinates
    fall in the cube-index box ``[c_lo, c_hi]`` (per axis), clipped to the volume; None when
    empty."""
    c_lo, c_hi = np.broadcast_to(c_lo, 3), np.broadcast_to(c_hi, 3)
    corners = np.array(np.meshgrid(*zip(c_lo, c_hi, strict=True), indexing="ij"))
    vox = world_to_voxel(volume_affine, voxel_to_world(cube.affine, corners.reshape(3, -1).T))
    lo = np.maximum(np.floor(vox.min(0)).astype(int), 0)
    hi = np.minimum(np.ceil(vox.max(0)).astype(int) + 1, volume_shape)
    return None if np.any(hi <= lo) else (lo, hi)


def paste_block(cube_values, cube: Cube, volume_affine, lo, hi, *, order: int = 1, fill=0.0):
    """Cube values resampled onto the volume voxels ``lo <= index < hi`` (a block of the grid
    :func:`paste_from_cube` fills)."""
    m = np.linalg.inv(cube.affine) @ np.asarray(volume_affine, dtype=np.float64)
    mat, off = m[:3, :3], m[:3, 3] + m[:3, :3] @ np.asarray(lo)
    shape = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    return _resample(np.asarray(cube_values, dtype=np.float32), mat, off, shape, order, fill)


def level_box(cube_values, cube: Cube, volume_affine, volume_shape, level: float = 0.5):
    """The volume voxel box (lo, hi exclusive) outside which cube values linearly resampled
    onto the volume cannot exceed ``level``; None when no cube value does.

    A linearly interpolated value is a weighted mean of its 8 neighbours, so it exceeds
    ``level`` only where a neighbour does: within one cube voxel of those values' box.
    """
    above = mask_bbox(np.asarray(cube_values) > level)
    if above is None:
        return None
    return _volume_box(cube, volume_affine, volume_shape, above[0] - 1, above[1] + 1)


def touching_faces(mask: np.ndarray, *, margin: int = 1) -> list[tuple[int, int]]:
    """Faces of a cube-shaped mask that foreground touches: ``(axis, -1 | +1)`` pairs."""
    faces = []
    m = np.asarray(mask, dtype=bool)
    for ax in range(3):
        lo = np.take(m, range(margin), axis=ax)
        hi = np.take(m, range(m.shape[ax] - margin, m.shape[ax]), axis=ax)
        if lo.any():
            faces.append((ax, -1))
        if hi.any():
            faces.append((ax, +1))
    return faces
