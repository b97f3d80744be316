"""Classical baselines that take the same prompts as the model, for the evaluation harness.

- :func:`region_growing`: 3D intensity region growing from the positive clicks.
- :func:`extrude_slice_mask`: a 2D mask on the clicked slice, extruded along the slice normal
  over a thickness equal to its width (with the true slice mask it is an upper bound of any
  "segment one slice, guess the 3D" method).

Both are deterministic, numpy/scipy only (scikit-image's watershed is imported lazily, only when a
negative click has to cut a region), and return a bool ``(I, J, K)`` mask.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from core.clicks import Click, PromptSet, check_click_in_volume
from core.geometry import other_axes, take_slice

__all__ = ["K_STD", "FLOOR_FRACTION", "region_growing", "extrude_slice_mask"]

#: Half-width of the intensity band in seed standard deviations (a classic 2.5 sigma).
K_STD = 2.5
#: Smallest half-width, as a fraction of the image's robust intensity range (0.5-99.5 %): a
#: seed in a flat (denoised, synthetic) region has std ~ 0, and a zero-width band grows nothing.
FLOOR_FRACTION = 0.02


def _check_image(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3:
        raise ValueError(f"image must be a 3D array, got shape {img.shape}")
    return img if np.issubdtype(img.dtype, np.floating) else img.astype(np.float32)


def _check_spacing(spacing) -> np.ndarray:
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be 3 positive finite numbers (mm), got {spacing!r}")
    return sp


def _intensity_floor(img: np.ndarray) -> float:
    flat = img.reshape(-1)
    flat = flat[:: max(1, flat.size // 1_000_000)]  # a strided sample is plenty for percentiles
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0
    lo, hi = np.percentile(flat, [0.5, 99.5])
    return FLOOR_FRACTION * float(hi - lo)


def _voxels(clicks, shape) -> list[tuple[int, int, int]]:
    out = []
    for c in clicks:
        check_click_in_volume(c, shape)
        out.append(c.voxel_index())
    return out


def _band(img: np.ndarray, seed, tolerance: float | None, floor: float) -> tuple[float, float]:
    """The intensity band ``(lo, hi)`` of a seed: its 3x3x3 neighbourhood's mean +- tolerance."""
    nb = img[tuple(slice(max(i - 1, 0), i + 2) for i in seed)].astype(np.float64)
    mean = float(nb.mean())
    tol = float(tolerance) if tolerance is not None else max(K_STD * float(nb.std()), floor)
    return mean - tol, mean + tol


def _grow(img: np.ndarray, seeds, bands, neg, spacing, allowed=None) -> np.ndarray:
    """Grow face-connected regions of ``img`` (2D or 3D) from ``seeds`` within their ``bands``.

    Each seed grows its own component, so seeds on differently bright parts each keep their own
    statistics. The band is first opened by one voxel (face-connected element) so that one-voxel
    bridges into a neighbour of similar intensity (the classic leak) are cut; a seed the opening
    removes grows in the unopened band. Holes (noise voxels outside the band inside the region)
    are then filled. Negative seeds inside the region cut it: see :func:`_cut_negatives`.
    """
    face = ndimage.generate_binary_structure(img.ndim, 1)
    region = np.zeros(img.shape, dtype=bool)
    for seed, (lo, hi) in zip(seeds, bands, strict=True):
        band = (img >= lo) & (img <= hi)
        if allowed is not None:
            band &= allowed
        band[seed] = True  # the clicked voxel is always part of its region
        opened = ndimage.binary_opening(band, face)
        lab, _ = ndimage.label(opened if opened[seed] else band, face)
        region |= lab == lab[seed]
    region = ndimage.binary_fill_holes(region)
    return _cut_negatives(region, seeds, neg, spacing)


def _crop(region: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    sl = ndimage.find_objects(region.astype(np.uint8))[0]
    sl = tuple(
        slice(max(s.start - 1, 0), min(s.stop + 1, n))
        for s, n in zip(sl, region.shape, strict=True)
    )
    return sl, np.array([s.start for s in sl])


def _cut_negatives(region: np.ndarray, pos, neg, spacing) -> np.ndarray:
    """Remove what negative clicks inside ``region`` point at.

    A watershed of the region's inverted distance map, flooded from the positive seeds (label 1)
    and the negative ones (label 2), splits the region along its narrowest necks, which is where a
    leak joins the organ; the negative basins are dropped. A seed both positive and negative
    stays positive.
    """
    inside = [q for q in neg if region[q]]
    if not inside:
        return region
    from skimage.segmentation import watershed  # lazy: only needed here, and heavy to import

    sl, origin = _crop(region)
    crop = region[sl]
    # Padding makes the array border count as boundary, as everywhere else in core.
    inner = (slice(1, -1),) * crop.ndim
    dist = ndimage.distance_transform_edt(np.pad(crop, 1), sampling=spacing)[inner]
    markers = np.zeros(crop.shape, dtype=np.int32)
    for label, seeds in ((2, inside), (1, pos)):
        for q in seeds:
            markers[tuple(np.array(q) - origin)] = label
    ws = watershed(-dist, markers, mask=crop, connectivity=1)
    out = region.copy()
    out[sl] = ws == 1
    return out


def _cap_volume(region: np.ndarray, seeds, spacing, max_voxels: int) -> np.ndarray:
    """Keep the ``max_voxels`` region voxels nearest (Euclidean, mm) a seed, then the seeded
    face-connected components."""
    if int(region.sum()) <= max_voxels:
        return region
    sl, origin = _crop(region)
    crop = region[sl]
    not_seed = np.ones(crop.shape, dtype=bool)
    for q in seeds:
        not_seed[tuple(np.array(q) - origin)] = False
    dist = ndimage.distance_transform_edt(not_seed, sampling=spacing)
    flat = np.flatnonzero(crop)
    order = np.argsort(dist.reshape(-1)[flat], kind="stable")  # stable: deterministic ties
    kept = np.zeros(crop.size, dtype=bool)
    kept[flat[order[: max(max_voxels, len(seeds))]]] = True
    kept = kept.reshape(crop.shape)
    lab, _ = ndimage.label(kept, ndimage.generate_binary_structure(crop.ndim, 1))
    ids = {int(lab[tuple(np.array(q) - origin)]) for q in seeds} - {0}
    out = np.zeros_like(region)
    out[sl] = np.isin(lab, sorted(ids))
    return out


def _positives_or_raise(prompts: PromptSet, what: str) -> tuple[Click, ...]:
    prompts.validate()
    if not prompts.positives:
        raise ValueError(f"{what} needs at least one positive click (a box or mask gives no seed)")
    return prompts.positives


def region_growing(
    image,
    prompts: PromptSet,
    *,
    spacing,
    tolerance: float | None = None,
    max_volume_ml: float | None = None,
) -> np.ndarray:
    """Classical 3D region growing from the positive clicks.

    Parameters
    ----------
    image : (I, J, K) float intensities (raw HU or normalised)
    prompts : PromptSet; its positive clicks are the seeds, its negative clicks cut the region.
        Box and mask are not used.
    spacing : (3,) voxel size in mm
    tolerance : half-width of the intensity band, in image units. Default: per seed,
        ``max(K_STD * std, FLOOR_FRACTION * robust range)`` with the mean and std of the seed's
        3x3x3 neighbourhood.
    max_volume_ml : optional cap; a larger region keeps its voxels nearest (Euclidean, mm) a
        positive seed, up to the cap.

    Returns
    -------
    mask : (I, J, K) bool

    Notes
    -----
    Each seed keeps the 6-connected component containing it of the voxels in its band
    ``mean +- tolerance``, after a one-voxel opening of the band (cuts thin leaks); the union is
    hole-filled. A negative click inside the result removes the part it lies in, split off at the
    narrowest neck by a watershed (a small leak through a neck is the usual failure).

    Raises
    ------
    ValueError
        No positive click, bad image or spacing, negative tolerance or cap.
    core.errors.InputError
        A click outside the volume.
    """
    pos = _positives_or_raise(prompts, "region growing")
    img, sp = _check_image(image), _check_spacing(spacing)
    if tolerance is not None and not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if max_volume_ml is not None and not max_volume_ml > 0:
        raise ValueError(f"max_volume_ml must be > 0, got {max_volume_ml}")
    seeds = _voxels(pos, img.shape)
    neg = _voxels(prompts.negatives, img.shape)
    floor = _intensity_floor(img)
    bands = [_band(img, q, tolerance, floor) for q in seeds]
    region = _grow(img, seeds, bands, neg, sp)
    if max_volume_ml is not None:
        max_voxels = int(max_volume_ml * 1000.0 / float(np.prod(sp)))  # 1 ml = 1000 mm^3
        region = _cap_volume(region, seeds, sp, max_voxels)
    return region


def _slice_mask_by_growing(img, prompts: PromptSet, axis: int, s: int, sp) -> np.ndarray:
    """2D region growing on slice ``s`` from the clicks on it (bands from 3D neighbourhoods)."""
    on_slice = [c for c in prompts.clicks if c.axis == axis and c.slice_idx == s]
    pos = [c for c in on_slice if c.positive]
    if not pos:
        raise ValueError(f"no positive click on the reference slice (axis {axis}, slice {s})")
    r_ax, c_ax = other_axes(axis)
    seeds3 = _voxels(pos, img.shape)
    floor = _intensity_floor(img)
    # Statistics from 3x3x3 rather than 3x3 neighbourhoods: three times the samples.
    bands = [_band(img, q, None, floor) for q in seeds3]
    allowed = None
    box = prompts.box
    if box is not None and box.axis == axis and box.slice_idx == s:
        allowed = np.zeros((img.shape[r_ax], img.shape[c_ax]), dtype=bool)
        allowed[max(box.r0, 0) : max(box.r1, 0), max(box.c0, 0) : max(box.c1, 0)] = True

    def to2d(clicks):
        return [(q[r_ax], q[c_ax]) for q in _voxels(clicks, img.shape)]

    neg = to2d([c for c in on_slice if not c.positive])
    return _grow(take_slice(img, axis, s), to2d(pos), bands, neg, sp[[r_ax, c_ax]], allowed)


def extrude_slice_mask(image, prompts: PromptSet, *, spacing, slice_mask=None) -> np.ndarray:
    """Extrude a 2D mask of the reference slice along the slice normal.

    Parameters
    ----------
    image : (I, J, K) float intensities
    prompts : PromptSet; its :meth:`~core.clicks.PromptSet.reference_slice` is the slice
    spacing : (3,) voxel size in mm
    slice_mask : (H, W) bool-like mask on the reference slice, optional (the ground-truth slice
        for an upper bound, or a 2D model's output). Default: the prompt's painted mask if it is
        on that slice, else a 2D region growing (as :func:`region_growing`, 4-connected, limited
        to the prompt's box when the box is on that slice) from the clicks on that slice.

    Returns
    -------
    mask : (I, J, K) bool: the 2D mask copied onto every slice ``k`` with
        ``|k - slice_idx| * spacing[axis] <= d / 2``, where ``d = 2 sqrt(area / pi)`` is the mask's
        equivalent diameter in mm: the structure is assumed about as thick as it is wide.
        Clipped to the volume; always includes the reference slice.

    Raises
    ------
    ValueError
        A prompt set without positive click, box or mask; no slice mask and no positive click on
        the reference slice; an empty or wrongly shaped slice mask; bad image or spacing.
    """
    prompts.validate()
    img, sp = _check_image(image), _check_spacing(spacing)
    axis, s = prompts.reference_slice()
    r_ax, c_ax = other_axes(axis)
    hw = (img.shape[r_ax], img.shape[c_ax])
    if not 0 <= s < img.shape[axis]:
        raise ValueError(f"reference slice {s} is outside axis {axis} (0..{img.shape[axis] - 1})")
    if slice_mask is not None:
        m2 = np.asarray(slice_mask).astype(bool, copy=False)
    elif prompts.mask is not None and prompts.mask[:2] == (axis, s) and prompts.mask[2].any():
        m2 = prompts.mask[2]
    else:
        m2 = _slice_mask_by_growing(img, prompts, axis, s, sp)
    if m2.shape != hw:
        raise ValueError(f"slice mask shape {m2.shape} is not the slice's {hw}")
    if not m2.any():
        raise ValueError("the slice mask is empty: nothing to extrude")
    area_mm2 = float(m2.sum()) * sp[r_ax] * sp[c_ax]
    half_slices = int(math.floor(math.sqrt(area_mm2 / math.pi) / sp[axis] + 1e-9))
    lo, hi = max(s - half_slices, 0), min(s + half_slices + 1, img.shape[axis])
    out = np.zeros(img.shape, dtype=bool)
    index = [slice(None)] * 3
    index[axis] = slice(lo, hi)
    out[tuple(index)] = np.expand_dims(m2, axis)
    return out
