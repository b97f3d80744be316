"""3D prompts (clicks, a box, a painted mask) and the deterministic click-simulation protocol.

A :class:`Click` is a pixel ``(row, col)`` of the slice ``axis``/``slice_idx`` of a volume, with
the slice convention of :mod:`core.geometry` (rows = first remaining array axis, cols = second).
A :class:`PromptSet` gathers everything the user gave for one structure.

Evaluation and training simulate the user from the ground truth: :func:`first_click` clicks the
middle of the organ on the axial slice through its centroid, then :func:`next_click` clicks the
centre of the largest remaining error, as in the interactive-segmentation protocols of RITM and
SAM-Med3D. :func:`simulate_clicks` runs that loop against any ``predict_fn``. Everything here is
deterministic (no randomness, explicit tie-breaks), so runs are comparable.

Volumes are in canonical RAS+ array order after loading, so array axis 2 is the axial one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from core.errors import InputError
from core.geometry import mask_block, other_axes, slice_voxel_index, take_slice, voxel_to_slice
from core.prompts import interior_point

__all__ = [
    "AXIAL_AXIS",
    "Click",
    "Box",
    "PromptSet",
    "check_prompts_in_volume",
    "check_click_in_volume",
    "first_click",
    "next_click",
    "fix_clicked_error",
    "simulate_clicks",
]

#: Array axis of axial slices (superior) in canonical RAS+ volumes.
AXIAL_AXIS = 2

# Error components are 26-connected (full connectivity), the 3D analogue of the 8-connectivity
# core.prompts uses in 2D (skimage's default): a diagonal touch joins two error voxels.
_ERROR_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def _check_axis(axis) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    return int(axis)


def _check_index(value, name: str) -> int:
    if isinstance(value, bool) or not float(value).is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _round_half_up(x: float) -> int:
    # Python's round() rounds halves to even; clicks must not depend on the parity of a slice.
    return int(math.floor(float(x) + 0.5))


@dataclass(frozen=True)
class Click:
    """A click on a slice pixel.

    Attributes
    ----------
    axis : array axis normal to the slice (0, 1 or 2)
    slice_idx : index of the slice along ``axis``
    row, col : pixel of the slice (pixel ``(r, c)`` has its centre at ``(r, c)``)
    positive : True on the structure, False for a "not this" click

    Whether the click lies inside a given volume is checked by :func:`check_click_in_volume`.
    """

    axis: int
    slice_idx: int
    row: float
    col: float
    positive: bool = True

    def __post_init__(self):
        object.__setattr__(self, "axis", _check_axis(self.axis))
        object.__setattr__(self, "slice_idx", _check_index(self.slice_idx, "slice_idx"))
        row, col = float(self.row), float(self.col)
        if not (math.isfinite(row) and math.isfinite(col)):
            raise ValueError(f"click row and col must be finite, got ({self.row}, {self.col})")
        object.__setattr__(self, "row", row)
        object.__setattr__(self, "col", col)
        object.__setattr__(self, "positive", bool(self.positive))

    def voxel(self) -> np.ndarray:
        """The clicked voxel as a ``(3,)`` float array of (fractional) array indices."""
        return slice_voxel_index(self.axis, float(self.slice_idx), self.row, self.col).astype(
            np.float64
        )

    def voxel_index(self) -> tuple[int, int, int]:
        """The voxel the click falls in: :meth:`voxel` rounded to ints (halves up)."""
        return tuple(_round_half_up(v) for v in self.voxel())

    @classmethod
    def from_voxel(cls, ijk, axis: int, positive: bool = True) -> Click:
        """The click on the ``axis`` slice through voxel ``ijk`` ``(3,)``.

        The slice index is ``ijk[axis]`` rounded (halves up); row and col keep their fractions.
        """
        p = np.asarray(ijk, dtype=np.float64).reshape(-1)
        if p.shape != (3,):
            raise ValueError(f"ijk must have 3 coordinates, got shape {np.shape(ijk)}")
        s, r, c = voxel_to_slice(_check_axis(axis), p)
        return cls(axis, _round_half_up(s), float(r), float(c), positive)


def check_click_in_volume(click: Click, shape: Sequence[int], *, path=None) -> None:
    """Raise :class:`core.errors.InputError` (one line) when ``click`` is outside ``shape``.

    A click is inside when its slice exists and its pixel, rounded, is a pixel of the slice.
    ``path`` names the volume's file in the message, if any.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must be 3D, got {shape}")
    inside = all(0 <= i < n for i, n in zip(click.voxel_index(), shape, strict=True))
    if not inside:
        raise InputError(
            path,
            f"click ({click.row:g}, {click.col:g}) on axis {click.axis} slice {click.slice_idx} "
            f"is outside the volume of shape {shape}",
        )


@dataclass(frozen=True)
class Box:
    """A half-open box ``rows r0 .. r1 - 1``, ``cols c0 .. c1 - 1`` on one slice (as core.prompts)."""

    axis: int
    slice_idx: int
    r0: int
    c0: int
    r1: int
    c1: int

    def __post_init__(self):
        object.__setattr__(self, "axis", _check_axis(self.axis))
        for name in ("slice_idx", "r0", "c0", "r1", "c1"):
            object.__setattr__(self, name, _check_index(getattr(self, name), name))
        if self.r1 <= self.r0 or self.c1 <= self.c0:
            raise ValueError(f"box must have r1 > r0 and c1 > c0, got {self.rc}")

    @property
    def rc(self) -> tuple[int, int, int, int]:
        """``(r0, c0, r1, c1)``, the box of :mod:`core.prompts`."""
        return self.r0, self.c0, self.r1, self.c1


# eq=False: the mask is an array, so field-wise == and hashing would be ambiguous.
@dataclass(frozen=True, eq=False)
class PromptSet:
    """Everything the user gave for one structure; immutable (``add`` returns a new set).

    Attributes
    ----------
    clicks : tuple of :class:`Click`, in the order they were made
    box : :class:`Box` or None
    mask : ``(axis, slice_idx, (H, W) bool array)`` painted on one slice, or None; the array is
        stored as a read-only copy.
    """

    clicks: tuple[Click, ...] = ()
    box: Box | None = None
    mask: tuple[int, int, np.ndarray] | None = None

    def __post_init__(self):
        clicks = tuple(self.clicks)
        if not all(isinstance(c, Click) for c in clicks):
            raise ValueError("clicks must all be Click instances")
        object.__setattr__(self, "clicks", clicks)
        if self.box is not None and not isinstance(self.box, Box):
            raise ValueError(f"box must be a Box or None, got {type(self.box).__name__}")
        if self.mask is not None:
            if len(self.mask) != 3:
                raise ValueError("mask must be (axis, slice_idx, (H, W) bool array)")
            axis, s, m = self.mask
            m = np.array(m, dtype=bool)
            if m.ndim != 2:
                raise ValueError(f"prompt mask must be 2D, got shape {m.shape}")
            m.setflags(write=False)
            object.__setattr__(self, "mask", (_check_axis(axis), _check_index(s, "slice_idx"), m))

    def add(self, click: Click) -> PromptSet:
        """A new set with ``click`` appended."""
        return replace(self, clicks=self.clicks + (click,))

    @property
    def positives(self) -> tuple[Click, ...]:
        return tuple(c for c in self.clicks if c.positive)

    @property
    def negatives(self) -> tuple[Click, ...]:
        return tuple(c for c in self.clicks if not c.positive)

    @property
    def is_empty(self) -> bool:
        """True when there is no click, no box and no mask at all."""
        return not self.clicks and self.box is None and self.mask is None

    def _has_mask(self) -> bool:
        return self.mask is not None and bool(self.mask[2].any())

    def validate(self) -> PromptSet:
        """Return self if usable for prediction, else raise ValueError.

        Usable means at least one positive click, a box, or a non-empty mask: negative clicks
        alone say what the structure is not, never what it is.
        """
        if not (self.positives or self.box is not None or self._has_mask()):
            got = [f"{len(self.negatives)} negative click(s)"] if self.negatives else []
            got += ["an empty mask"] if self.mask is not None else []
            raise ValueError(
                "a prompt set needs at least one positive click, a box or a mask "
                f"(got {' and '.join(got) + ' only' if got else 'nothing'})"
            )
        return self

    def reference_slice(self) -> tuple[int, int]:
        """``(axis, slice_idx)`` of the first positive click, else of the box, else the mask."""
        self.validate()
        if self.positives:
            c = self.positives[0]
            return c.axis, c.slice_idx
        if self.box is not None:
            return self.box.axis, self.box.slice_idx
        return self.mask[0], self.mask[1]


def check_prompts_in_volume(prompts: PromptSet, shape: Sequence[int], *, path=None) -> None:
    """Raise :class:`core.errors.InputError` (one line) unless every prompt fits ``shape``.

    Clicks as :func:`check_click_in_volume`; a box must lie on an existing slice and overlap
    its pixels (the part past the slice's edges is ignored); a mask must be on an existing
    slice and have that slice's shape. ``path`` names the volume's file in the message.
    """
    shape = tuple(int(n) for n in shape)
    for c in prompts.clicks:
        check_click_in_volume(c, shape, path=path)
    placed = []
    if prompts.box is not None:
        placed.append(("box", prompts.box.axis, prompts.box.slice_idx))
    if prompts.mask is not None:
        placed.append(("mask", *prompts.mask[:2]))
    for what, axis, idx in placed:
        if not 0 <= idx < shape[axis]:
            raise InputError(
                path, f"{what} prompt slice {idx} is outside axis {axis} (size {shape[axis]})"
            )
    if prompts.box is not None:
        b = prompts.box
        h, w = (n for a, n in enumerate(shape) if a != b.axis)
        if b.r0 >= h or b.c0 >= w or b.r1 <= 0 or b.c1 <= 0:
            raise InputError(
                path,
                f"box (rows {b.r0}-{b.r1 - 1}, cols {b.c0}-{b.c1 - 1}) on axis {b.axis} slice "
                f"{b.slice_idx} is outside the slice's {h} x {w} pixels",
            )
    if prompts.mask is not None:
        axis, idx, m = prompts.mask
        want = tuple(n for a, n in enumerate(shape) if a != axis)
        if tuple(m.shape) != want:
            raise InputError(
                path,
                f"mask prompt has shape {tuple(m.shape)}, but the slice along axis {axis} "
                f"is {want[0]} x {want[1]} pixels",
            )


def _check_3d_bool(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 3:
        raise ValueError(f"{name} must be a 3D array, got shape {a.shape}")
    return a.astype(bool, copy=False)


def _check_spacing(spacing) -> np.ndarray:
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be 3 positive finite numbers (mm), got {spacing!r}")
    return sp


def first_click(gt, *, axis: int = AXIAL_AXIS) -> Click:
    """The first simulated click: the middle of the structure on the slice through its centroid.

    Parameters
    ----------
    gt : (I, J, K) bool-like ground truth of the structure
    axis : slice orientation (default axial)

    Returns
    -------
    Click
        Positive click on the ``axis`` slice through the 3D centroid (rounded, halves up), at
        :func:`core.prompts.interior_point` of that slice's mask: the pixel of its largest 2D
        component (8-connectivity) farthest from the boundary, ties to the one nearest the
        component's centroid, then raster order. If that slice is empty (a C-shaped structure),
        the nearest non-empty slice is used (the lower one on a tie).

    Raises
    ------
    ValueError
        Empty or non-3D ``gt``, bad axis.
    """
    g = _check_3d_bool(gt, "gt")
    axis = _check_axis(axis)
    counts = g.sum(axis=other_axes(axis))
    filled = np.flatnonzero(counts)
    if len(filled) == 0:
        raise ValueError("cannot click an empty ground truth")
    centroid = float(np.dot(np.arange(len(counts)), counts) / counts.sum())
    s = _round_half_up(centroid)
    if counts[s] == 0:
        s = int(filled[np.argmin(np.abs(filled - s))])  # argmin: first = lower slice on a tie
    r, c = interior_point(take_slice(g, axis, s))
    return Click(axis, s, r, c, True)


def _largest_error(pred: np.ndarray, gt: np.ndarray, vox_mm3: float):
    """(component bool crop, crop origin, is_false_negative) of the largest error, or None."""
    # Label only the errors' bounding box: the same components, numbered in the same raster
    # order (a translation keeps it), at a fraction of the cost when the errors are local.
    block = mask_block(pred ^ gt)
    if block is None:
        return None
    lo = np.array([b.start for b in block])
    pred, gt = pred[block], gt[block]
    best = None  # (size, prefer_fn, -label), compared lexicographically
    for is_fn, err in ((True, gt & ~pred), (False, pred & ~gt)):
        lab, n = ndimage.label(err, structure=_ERROR_CONNECTIVITY)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())[1:] * vox_mm3
        k = int(np.argmax(sizes))  # first label (raster order) among equal sizes
        # On equal size, a miss wins over a false positive: growing beats trimming.
        key = (float(sizes[k]), is_fn)
        if best is None or key > best[0]:
            best = (key, is_fn, lab, k + 1)
    if best is None:
        return None
    _, is_fn, lab, label = best
    sl = ndimage.find_objects(lab, max_label=label)[label - 1]
    return lab[sl] == label, np.array([s.start for s in sl]) + lo, is_fn


def next_click(pred, gt, *, spacing=(1.0, 1.0, 1.0), axis: int = AXIAL_AXIS) -> Click | None:
    """The next simulated click: the centre of the largest remaining error.

    Parameters
    ----------
    pred, gt : (I, J, K) bool-like prediction and ground truth
    spacing : (3,) voxel size in mm, for the component sizes (mm^3) and distances
    axis : orientation of the slice the click is made on (default axial)

    Returns
    -------
    Click or None
        None when ``pred == gt``. Otherwise errors are split into false negatives
        (``gt & ~pred``) and false positives (``pred & ~gt``), each into 26-connected
        components; the largest component (mm^3; ties: false negatives first, then raster order
        of the component's first voxel) is clicked at its voxel farthest from its boundary (3D
        Euclidean distance in mm, the array border counting as boundary; ties to the voxel
        nearest the component's centroid in mm, then raster order), on the ``axis`` slice
        through that voxel. The click is positive for a miss and negative for a false positive.

    Raises
    ------
    ValueError
        Shapes differ or are not 3D, bad spacing.
    """
    p, g = _check_3d_bool(pred, "pred"), _check_3d_bool(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    sp = _check_spacing(spacing)
    axis = _check_axis(axis)
    found = _largest_error(p, g, float(np.prod(sp)))
    if found is None:
        return None
    comp, origin, is_fn = found
    dist = ndimage.distance_transform_edt(np.pad(comp, 1), sampling=sp)[1:-1, 1:-1, 1:-1]
    idx = np.argwhere(dist >= dist.max() - 1e-9)  # raster order
    if len(idx) > 1:
        centroid = np.argwhere(comp).mean(axis=0)
        k = int(np.argmin((((idx - centroid) * sp) ** 2).sum(axis=1)))
        idx = idx[k : k + 1]
    return Click.from_voxel(idx[0] + origin, axis, positive=is_fn)


def fix_clicked_error(pred: np.ndarray, gt: np.ndarray, voxel, positive: bool) -> np.ndarray:
    """``pred`` with the error a click lands in fixed: what a perfect answer to the click does.

    The error is the one :func:`next_click` chose the click from: the 26-connected component,
    holding ``voxel``, of the misses (``gt & ~pred``) for a positive click or of the false
    positives (``pred & ~gt``) for a negative one. Training uses it to move a run of simulated
    corrective clicks on to the next error. Returns a copy; ``pred`` unchanged when the voxel
    holds no error of that kind.
    """
    out = np.array(pred, dtype=bool, copy=True)
    g = np.asarray(gt, dtype=bool)
    err = (g & ~out) if positive else (out & ~g)
    v = tuple(int(round(float(x))) for x in voxel)
    if not all(0 <= a < n for a, n in zip(v, err.shape, strict=True)) or not err[v]:
        return out
    block = mask_block(err)  # label the errors' bounding box only: the same components
    lab, _ = ndimage.label(err[block], structure=_ERROR_CONNECTIVITY)
    comp = lab == lab[tuple(a - b.start for a, b in zip(v, block, strict=True))]
    out[block][comp] = positive
    return out


def simulate_clicks(
    predict_fn: Callable[[PromptSet], np.ndarray],
    gt,
    *,
    n_clicks: int,
    spacing=(1.0, 1.0, 1.0),
    first_axis: int = AXIAL_AXIS,
    refine_axis: int = AXIAL_AXIS,
) -> list[tuple[PromptSet, np.ndarray]]:
    """Run the click protocol: :func:`first_click`, then :func:`next_click` refinements.

    Parameters
    ----------
    predict_fn : callable ``PromptSet -> (I, J, K) bool-like``, the method under test
    gt : (I, J, K) bool-like ground truth
    n_clicks : total number of clicks (>= 1)
    spacing : (3,) voxel size in mm, for :func:`next_click`
    first_axis : orientation of the first click
    refine_axis : orientation of the refinement clicks (default axial, as next_click's)

    Returns
    -------
    list of ``(PromptSet, (I, J, K) bool prediction)``, exactly ``n_clicks`` entries: entry ``i``
    holds the prompts after ``i + 1`` clicks and the prediction from them. Once a prediction
    is perfect no more clicks are made and it is repeated for the remaining entries, so
    per-click-count metrics can be averaged over cases.

    Raises
    ------
    ValueError
        ``n_clicks < 1``, empty ``gt``, a prediction of the wrong shape.
    """
    n_clicks = _check_index(n_clicks, "n_clicks")
    if n_clicks < 1:
        raise ValueError(f"n_clicks must be >= 1, got {n_clicks}")
    g = _check_3d_bool(gt, "gt")
    sp = _check_spacing(spacing)

    def predict(prompts: PromptSet) -> np.ndarray:
        out = np.asarray(predict_fn(prompts))
        if out.shape != g.shape:
            raise ValueError(f"predict_fn returned shape {out.shape}, expected {g.shape}")
        return out.astype(bool, copy=False)

    prompts = PromptSet(clicks=(first_click(g, axis=first_axis),))
    pred = predict(prompts)
    history = [(prompts, pred)]
    while len(history) < n_clicks:
        click = next_click(pred, g, spacing=sp, axis=refine_axis)
        if click is None:
            history.extend([(prompts, pred)] * (n_clicks - len(history)))
            break
        prompts = prompts.add(click)
        pred = predict(prompts)
        history.append((prompts, pred))
    return history
