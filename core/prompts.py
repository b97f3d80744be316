"""Prompts on a 2D slice: what a user's click (or box, or painted mask) tells the model.

In training and evaluation the prompt is simulated from the ground-truth mask of the target
structure on the slice; in the apps it comes from the user. Either way the model sees it
rendered as image channels by :func:`render_prompt`, in the order of :data:`PROMPT_CHANNELS`.

Conventions
-----------
- Pixel coordinates are ``(row, col)`` of the slice array; pixel ``(r, c)`` has its centre at
  ``(r, c)``.
- A box is ``(r0, c0, r1, c1)`` with **half-open** ranges: it covers rows ``r0 .. r1 - 1`` and
  columns ``c0 .. c1 - 1`` (so ``mask[r0:r1, c0:c1]`` is the box), and is never empty.
- Point labels: 1 = positive (on the structure), 0 = negative (not on it).

This module is numpy/scipy only so that the UIs can use it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = [
    "PROMPT_KINDS",
    "PROMPT_CHANNELS",
    "Prompt",
    "interior_point",
    "box_from_mask",
    "make_prompt",
    "render_prompt",
]

PROMPT_KINDS = ("point", "box", "mask", "mask+point")
#: Channel order of :func:`render_prompt`'s output.
PROMPT_CHANNELS = ("pos", "neg", "box", "mask")

# 8-connectivity: a diagonal touch joins two pixels, as in skimage's default for 2D labels.
_CONNECTIVITY = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True, eq=False)
class Prompt:
    """A prompt on one slice; its arrays are read-only.

    Attributes
    ----------
    kind : one of :data:`PROMPT_KINDS`
    points : (N, 2) float64 array of ``(row, col)`` slice pixels (N may be 0)
    point_labels : (N,) int64 array, 1 positive, 0 negative
    box : ``(r0, c0, r1, c1)`` half-open pixel box, or None
    mask : (H, W) bool array, or None

    Raises
    ------
    ValueError
        Unknown kind, badly shaped fields, or a prompt missing what its kind needs (``point`` and
        ``mask+point`` need a positive point, ``box`` a box, ``mask`` and ``mask+point`` a
        non-empty mask).
    """

    kind: str
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    box: tuple[int, int, int, int] | None = None
    mask: np.ndarray | None = None

    def __post_init__(self):
        if self.kind not in PROMPT_KINDS:
            raise ValueError(f"prompt kind must be one of {PROMPT_KINDS}, got {self.kind!r}")
        pts = np.array(self.points, dtype=np.float64).reshape(-1, 2)
        lab = np.array(self.point_labels, dtype=np.int64).reshape(-1)
        if len(lab) != len(pts):
            raise ValueError(f"{len(pts)} points but {len(lab)} point labels")
        if not np.all(np.isin(lab, (0, 1))):
            raise ValueError("point labels must be 1 (positive) or 0 (negative)")
        if not np.all(np.isfinite(pts)):
            raise ValueError("prompt points must be finite")
        pts.setflags(write=False)
        lab.setflags(write=False)
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "point_labels", lab)
        if self.box is not None:
            box = tuple(int(v) for v in self.box)
            if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(f"box must be (r0, c0, r1, c1) with r1 > r0, c1 > c0: {box}")
            object.__setattr__(self, "box", box)
        if self.mask is not None:
            m = np.array(self.mask, dtype=bool)
            if m.ndim != 2:
                raise ValueError(f"prompt mask must be 2D, got shape {m.shape}")
            m.setflags(write=False)
            object.__setattr__(self, "mask", m)
        needs_point = self.kind in ("point", "mask+point")
        if needs_point and not np.any(lab == 1):
            raise ValueError(f"a {self.kind!r} prompt needs at least one positive point")
        if self.kind == "box" and self.box is None:
            raise ValueError("a 'box' prompt needs a box")
        if self.kind in ("mask", "mask+point") and (self.mask is None or not self.mask.any()):
            raise ValueError(f"a {self.kind!r} prompt needs a non-empty mask")


def _as_mask(mask) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D (H, W), got shape {m.shape}")
    m = m.astype(bool, copy=False)
    if not m.any():
        raise ValueError("empty mask: cannot derive a prompt from a mask with no pixels")
    return m


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask, structure=_CONNECTIVITY)
    if n == 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    # argmax takes the first (lowest label = first in raster order) among equal sizes.
    return lab == (int(np.argmax(sizes)) + 1)


def _check_jitter(jitter: float) -> float:
    jitter = float(jitter)
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be in [0, 1], got {jitter}")
    return jitter


def interior_point(mask, *, rng=None, jitter: float = 0.0) -> tuple[int, int]:
    """The pixel of the mask farthest from its boundary: where a user would click.

    Parameters
    ----------
    mask : (H, W) bool-like array
    rng : numpy Generator, int seed or None; used only when ``jitter > 0``.
    jitter : in [0, 1]. 0 gives the distance-transform maximum of the largest connected
        component (8-connectivity). Otherwise a uniformly random pixel of that component whose
        distance to the boundary is at least ``(1 - jitter)`` times the maximum (1 = any pixel
        of the component).

    Returns
    -------
    (row, col) : ints, always a pixel of ``mask``.

    Notes
    -----
    The image border counts as boundary (the mask is padded with background), so a structure cut
    by the border is clicked away from it. Ties at the maximum go to the pixel nearest the
    component's centroid, then the first in raster order, so the result is deterministic.

    Raises
    ------
    ValueError
        Empty or non-2D mask, jitter outside [0, 1].
    """
    m = _as_mask(mask)
    jitter = _check_jitter(jitter)
    comp = _largest_component(m)
    dist = ndimage.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1]
    dmax = float(dist.max())
    if jitter > 0:
        # comp & ...: with jitter 1 the threshold is 0, which every pixel would pass.
        rows, cols = np.nonzero(comp & (dist >= (1.0 - jitter) * dmax - 1e-9))
        k = int(np.random.default_rng(rng).integers(len(rows)))
        return int(rows[k]), int(cols[k])
    rows, cols = np.nonzero(dist >= dmax - 1e-9)
    if len(rows) == 1:
        return int(rows[0]), int(cols[0])
    centroid = np.mean(np.nonzero(comp), axis=1)
    d2 = (rows - centroid[0]) ** 2 + (cols - centroid[1]) ** 2
    k = int(np.argmin(d2))  # first minimum = first in raster order among equals
    return int(rows[k]), int(cols[k])


def box_from_mask(mask, *, rng=None, jitter_px=0) -> tuple[int, int, int, int]:
    """The bounding box of a mask, optionally with each side moved at random.

    Parameters
    ----------
    mask : (H, W) bool-like array (all its components count)
    rng : numpy Generator, int seed or None; used only when ``jitter_px`` is non-zero.
    jitter_px : int or (rows, cols) ints >= 0. Each side moves independently by a uniform
        integer in ``[-jitter_px, jitter_px]`` (outwards or inwards). A side moves inwards by at
        most ``(extent - 1) // 2`` so the box keeps at least one row and column of the tight box.

    Returns
    -------
    (r0, c0, r1, c1) : half-open box, within the image and never empty.

    Raises
    ------
    ValueError
        Empty or non-2D mask, negative jitter.
    """
    m = _as_mask(mask)
    jr, jc = np.broadcast_to(np.asarray(jitter_px, dtype=np.int64), (2,))
    if jr < 0 or jc < 0:
        raise ValueError(f"jitter_px must be >= 0, got {jitter_px}")
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if jr == 0 and jc == 0:
        return r0, c0, r1, c1
    g = np.random.default_rng(rng)
    dr0, dc0, dr1, dc1 = g.integers([-jr, -jc, -jr, -jc], [jr + 1, jc + 1, jr + 1, jc + 1])
    sr, sc = (r1 - r0 - 1) // 2, (c1 - c0 - 1) // 2  # largest inward move per side
    H, W = m.shape
    r0n = int(np.clip(r0 + dr0, 0, r0 + sr))
    c0n = int(np.clip(c0 + dc0, 0, c0 + sc))
    r1n = int(np.clip(r1 + dr1, r1 - sr, H))
    c1n = int(np.clip(c1 + dc1, c1 - sc, W))
    return r0n, c0n, r1n, c1n


def make_prompt(mask, kind: str, *, rng=None, jitter: float = 0.0) -> Prompt:
    """Simulate a user's prompt from a ground-truth mask.

    Parameters
    ----------
    mask : (H, W) bool-like ground truth of the target structure on the slice
    kind : ``"point"`` (one positive point at :func:`interior_point`), ``"box"``
        (:func:`box_from_mask`), ``"mask"`` (the mask itself) or ``"mask+point"`` (both).
    rng : numpy Generator, int seed or None
    jitter : in [0, 1]: the point jitter of :func:`interior_point`; boxes move each side by up to
        ``round(jitter / 2 * extent)`` pixels along that axis (0.2 -> 10 %, as SAM's box noise).

    Returns
    -------
    Prompt

    Raises
    ------
    ValueError
        Empty mask (a prompt is never empty), unknown kind, jitter outside [0, 1].
    """
    if kind not in PROMPT_KINDS:
        raise ValueError(f"prompt kind must be one of {PROMPT_KINDS}, got {kind!r}")
    m = _as_mask(mask)
    jitter = _check_jitter(jitter)
    rng = np.random.default_rng(rng) if jitter > 0 else rng
    if kind == "box":
        r0, c0, r1, c1 = box_from_mask(m)
        jpx = (round(jitter / 2 * (r1 - r0)), round(jitter / 2 * (c1 - c0)))
        return Prompt("box", box=box_from_mask(m, rng=rng, jitter_px=jpx))
    if kind == "mask":
        return Prompt("mask", mask=m)
    point = np.array([interior_point(m, rng=rng, jitter=jitter)], dtype=np.float64)
    labels = np.ones(1, dtype=np.int64)
    if kind == "point":
        return Prompt("point", points=point, point_labels=labels)
    return Prompt("mask+point", points=point, point_labels=labels, mask=m)


def _heatmap(points: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float32)
    rr = np.arange(shape[0], dtype=np.float64)
    cc = np.arange(shape[1], dtype=np.float64)
    for r, c in points:
        # Separable Gaussian; max (not sum) over points keeps the channel in [0, 1].
        g = np.outer(
            np.exp(-((rr - r) ** 2) / (2 * sigma**2)), np.exp(-((cc - c) ** 2) / (2 * sigma**2))
        )
        np.maximum(out, g.astype(np.float32), out=out)
    return out


def render_prompt(prompt: Prompt, shape: tuple[int, int], *, sigma: float = 2.0) -> np.ndarray:
    """Render a prompt as image channels for a model.

    Parameters
    ----------
    prompt : Prompt
    shape : (H, W) of the slice the prompt is on
    sigma : Gaussian width of the point heatmaps, in pixels

    Returns
    -------
    channels : (4, H, W) float32 in [0, 1], in the order of :data:`PROMPT_CHANNELS`:
        ``pos`` Gaussian heatmap of positive points (1 at each point's pixel), ``neg`` the same
        for negative points, ``box`` 1 inside the box (clipped to the image), ``mask`` the
        prompt mask. A channel the prompt has nothing for is all zeros.

    Raises
    ------
    ValueError
        Non-positive sigma, or a prompt mask whose shape is not ``shape``.
    """
    H, W = (int(s) for s in shape)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    out = np.zeros((len(PROMPT_CHANNELS), H, W), dtype=np.float32)
    pts, lab = prompt.points, prompt.point_labels
    out[0] = _heatmap(pts[lab == 1], (H, W), sigma)
    out[1] = _heatmap(pts[lab == 0], (H, W), sigma)
    if prompt.box is not None:
        r0, c0, r1, c1 = prompt.box
        out[2, max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = 1.0
    if prompt.mask is not None:
        if prompt.mask.shape != (H, W):
            raise ValueError(f"prompt mask shape {prompt.mask.shape} is not the slice's {(H, W)}")
        out[3] = prompt.mask
    return out
