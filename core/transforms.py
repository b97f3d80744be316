"""2D slice transforms applied consistently to image, masks and pointmap.

Letterboxing, small random affine augmentation (random parameters drawn by
:func:`sample_augment` apart from the deterministic :func:`augment_matrix` that applies them),
and NaN-safe pointmap resampling (:func:`resize_pointmap`).

Every transform is one ``(3, 3)`` matrix mapping an output pixel ``(row, col, 1)`` to an input
pixel ``(row, col)`` (pixel centres at integer coordinates); matrices compose by product and
:func:`warp` resamples any 2D array through one. A point outside the input's pixel area
(``-0.5 .. n - 0.5``) is padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "AugmentParams",
    "letterbox_matrix",
    "sample_augment",
    "augment_matrix",
    "warp",
    "resize_pointmap",
]


@dataclass(frozen=True)
class AugmentParams:
    """Parameters of one augmentation (drawn by :func:`sample_augment`; identity by default).

    ``shift`` is in output pixels (rows, cols); intensities become ``image * mul + add``.
    """

    rotate_deg: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    intensity_mul: float = 1.0
    intensity_add: float = 0.0


def letterbox_matrix(in_shape: tuple[int, int], out_shape: tuple[int, int]) -> np.ndarray:
    """(3, 3) matrix: output pixel -> input pixel, fitting the whole input, centred, padded."""
    (H, W), (h, w) = in_shape, out_shape
    s = max(H / h, W / w)  # input pixels per output pixel
    pad_r, pad_c = (h - H / s) / 2, (w - W / s) / 2
    # Pixel areas line up: output edge -0.5 + pad maps to input edge -0.5.
    return np.array(
        [[s, 0, (0.5 - pad_r) * s - 0.5], [0, s, (0.5 - pad_c) * s - 0.5], [0, 0, 1]],
        dtype=np.float64,
    )


def sample_augment(
    rng: np.random.Generator,
    *,
    out_shape: tuple[int, int],
    rotate_deg: float,
    scale: tuple[float, float],
    shift_frac: float,
    intensity_jitter: float,
) -> AugmentParams:
    """Draw augmentation parameters (kept apart from applying them).

    Parameters
    ----------
    rng : source of the draws
    out_shape : (h, w) output size, the unit of ``shift_frac``
    rotate_deg : rotation drawn in ``[-rotate_deg, rotate_deg]`` degrees
    scale : zoom drawn in ``[scale[0], scale[1]]``
    shift_frac : shift per axis drawn in ``[-shift_frac, shift_frac]`` of ``out_shape``
    intensity_jitter : ``j``: ``intensity_mul`` drawn in ``[1 - j, 1 + j]``, ``intensity_add``
        in ``[-j, j]``
    """
    h, w = out_shape
    j = intensity_jitter
    return AugmentParams(
        rotate_deg=float(rng.uniform(-rotate_deg, rotate_deg)),
        scale=float(rng.uniform(*scale)),
        shift=tuple(float(x) for x in rng.uniform(-shift_frac, shift_frac, 2) * (h, w)),
        intensity_mul=float(rng.uniform(1 - j, 1 + j)),
        intensity_add=float(rng.uniform(-j, j)),
    )


def augment_matrix(params: AugmentParams, out_shape: tuple[int, int]) -> np.ndarray:
    """(3, 3) matrix: augmented output pixel -> un-augmented output pixel.

    The content is rotated by ``rotate_deg`` and scaled by ``scale`` about the output centre,
    then shifted by ``shift``; this is the inverse of that motion, as resampling needs.
    """
    t = math.radians(params.rotate_deg)
    A = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]]) / params.scale
    c = (np.asarray(out_shape, dtype=np.float64) - 1) / 2
    M = np.eye(3)
    M[:2, :2] = A
    M[:2, 2] = c - A @ (c + np.asarray(params.shift, dtype=np.float64))
    return M


def warp(array: np.ndarray, matrix: np.ndarray, out_shape, *, order: int, cval=0.0) -> np.ndarray:
    """Resample a 2D array: ``out[o] = array[matrix @ (o, 1)]``, ``cval`` outside its area.

    Parameters
    ----------
    array : (H, W)
    matrix : (3, 3) output pixel -> input pixel
    out_shape : (h, w)
    order : 0 nearest neighbour (labels, masks) or 1 bilinear
    cval : value where the source point is outside ``[-0.5, H - 0.5] x [-0.5, W - 0.5]``

    Returns
    -------
    (h, w) array of ``array``'s dtype
    """
    M = np.asarray(matrix, dtype=np.float64)
    # 'nearest' extends the edge pixels over their outer half; beyond that is padding.
    kw = {"output_shape": tuple(out_shape), "order": order, "mode": "nearest", "prefilter": False}
    out = ndimage.affine_transform(array, M[:2, :2], offset=M[:2, 2], **kw)
    rr, cc = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in out_shape), indexing="ij")
    sr = M[0, 0] * rr + M[0, 1] * cc + M[0, 2]
    sc = M[1, 0] * rr + M[1, 1] * cc + M[1, 2]
    eps = 1e-9
    H, W = array.shape
    outside = (sr < -0.5 - eps) | (sr > H - 0.5 + eps) | (sc < -0.5 - eps) | (sc > W - 0.5 + eps)
    out[outside] = cval
    return out


def _stretch_matrix(in_shape, out_shape) -> np.ndarray:
    (H, W), (h, w) = in_shape, out_shape
    sr, sc = H / h, W / w
    return np.array([[sr, 0, 0.5 * sr - 0.5], [0, sc, 0.5 * sc - 0.5], [0, 0, 1]])


def resize_pointmap(
    pointmap: np.ndarray, out_shape, *, matrix: np.ndarray | None = None
) -> np.ndarray:
    """Resample a pointmap without ever interpolating a NaN.

    Parameters
    ----------
    pointmap : (H, W, 3) world mm per pixel, NaN where invalid
    out_shape : (h, w)
    matrix : (3, 3) output pixel -> input pixel; None stretches ``(H, W)`` onto ``out_shape``
        (pixel areas aligned, i.e. ``align_corners=False``).

    Returns
    -------
    (h, w, 3) float32, NaN where invalid.

    Notes
    -----
    An output pixel is valid when its nearest input pixel is: the very rule by which labels are
    resampled, so a warped pointmap is valid exactly on the warped foreground. Its value is the
    normalised convolution ``bilinear(pointmap * valid) / bilinear(valid)``: the bilinear value
    where all four neighbours are valid (exact for an affine pointmap), else an average of the
    valid neighbours only (off by less than a pixel at the foreground's edge).
    """
    pm = np.asarray(pointmap)
    if pm.ndim != 3 or pm.shape[2] != 3:
        raise ValueError(f"pointmap must be (H, W, 3), got shape {pm.shape}")
    out_shape = tuple(int(s) for s in out_shape)
    M = _stretch_matrix(pm.shape[:2], out_shape) if matrix is None else np.asarray(matrix)
    valid = np.all(np.isfinite(pm), axis=-1)
    keep = warp(valid.astype(np.uint8), M, out_shape, order=0) > 0
    weight = warp(valid.astype(np.float64), M, out_shape, order=1)
    keep &= weight > 1e-6
    out = np.full(out_shape + (3,), np.nan, dtype=np.float32)
    for k in range(3):
        num = warp(np.where(valid, pm[..., k], 0.0).astype(np.float64), M, out_shape, order=1)
        out[..., k][keep] = num[keep] / weight[keep]
    return out
