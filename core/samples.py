"""Model inputs from a volume, prompts and a cube: the one place that builds them.

Training (``core.cubes``) and inference (``core.engine``) call the same :func:`build_inputs`, so
what the model sees at inference is exactly what it was trained on.

Views. The *crop view* is the cube's plane through the reference slice (the slice of the first
positive click, else of the box or mask), sampled from that slice alone, at the cube's spacing.
The *full view* is the whole slice letterboxed to ``view_size``. Both carry the image, the
prompt channels (``core.prompts.PROMPT_CHANNELS``) and a pointmap: world mm of each pixel,
NaN outside the volume or outside the body (the body mask below). In "slice" mode the cube's
image channel is zero and ``volume_on`` is 0: the only image the model sees is the slice.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from core.clicks import PromptSet
from core.cube import Cube, axis_directions, sample_into_cube
from core.geometry import other_axes, slice_pointmap, slice_voxel_index, take_slice
from core.io import spacing_of, voxel_to_world, world_to_voxel
from core.model import CUBE_CHANNELS, ModelConfig
from core.modes import MODES
from core.transforms import letterbox_matrix, resize_pointmap, warp

__all__ = [
    "MODES",
    "body_mask_2d",
    "build_inputs",
    "build_targets",
    "first_pass_cube",
    "plane_index",
    "prompt_center",
]

CLICK_SIGMA_VOXELS = 1.5
CLICK_RADIUS_VOXELS = int(np.ceil(3 * CLICK_SIGMA_VOXELS))  # a cube click's heatmap is cut here
VIEW_CLICK_SIGMA = 2.0


def body_mask_2d(slice_image: np.ndarray) -> np.ndarray:
    """Pixels that are not background (air, padding) on a normalised slice.

    The threshold sits 10 % of the way from the slice's minimum to its 99th percentile, which
    separates air from tissue on CT (-1000 HU vs >= -200 HU) and the dark surround on MR/US.
    """
    lo = float(slice_image.min())
    hi = float(np.percentile(slice_image, 99))
    if hi - lo < 1e-6:
        return np.ones(slice_image.shape, bool)
    return slice_image > lo + 0.1 * (hi - lo)


def plane_index(cube: Cube, affine: np.ndarray, axis: int, slice_idx: int) -> float:
    """Fractional cube index, along ``axis``, of the plane of a volume slice."""
    shape_mid = np.zeros(3)
    shape_mid[axis] = slice_idx
    return float(world_to_voxel(cube.affine, voxel_to_world(affine, shape_mid))[axis])


def _plane_to_slice_matrix(cube: Cube, affine: np.ndarray, axis: int, p: int) -> np.ndarray:
    """(3, 3) matrix: crop-view pixel (u, v, 1) -> slice pixel (row, col) of the volume."""
    r_ax, c_ax = other_axes(axis)
    m = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ cube.affine  # cube -> volume
    out = np.eye(3)
    for i, ax in enumerate((r_ax, c_ax)):
        out[i, 0] = m[ax, r_ax]
        out[i, 1] = m[ax, c_ax]
        out[i, 2] = m[ax, axis] * p + m[ax, 3]
    return out


def prompt_center(prompts: PromptSet, affine: np.ndarray) -> np.ndarray:
    """World mm of the prompt's centre: first positive click, else box centre, else mask
    centroid."""
    pos = prompts.positives
    if pos:
        return voxel_to_world(affine, pos[0].voxel())
    if prompts.box is not None:
        b = prompts.box
        r, c = (b.r0 + b.r1 - 1) / 2, (b.c0 + b.c1 - 1) / 2
        return voxel_to_world(affine, slice_voxel_index(b.axis, b.slice_idx, r, c))
    axis, idx, m = prompts.mask
    rc = np.argwhere(m).mean(0)
    return voxel_to_world(affine, slice_voxel_index(axis, idx, rc[0], rc[1]))


def first_pass_cube(
    prompts: PromptSet, affine: np.ndarray, default_spacing_mm: float, size: int
) -> Cube:
    """The engine's first cube for a prompt: centred on it, aligned with the volume's axes, at
    ``default_spacing_mm`` (never finer than the volume's voxels). Training draws the same
    cube (``core.cubes.training_cube``), knowing nothing of the organ either."""
    spacing = max(float(default_spacing_mm), min(spacing_of(affine)))
    return Cube(prompt_center(prompts, affine), spacing, axis_directions(affine), size)


def _view_prompt(prompts: PromptSet, axis: int, idx: int, M: np.ndarray, shape) -> np.ndarray:
    """Prompt channels (pos, neg, box, mask) of the prompts lying on slice (axis, idx), drawn
    in a view whose pixel (u, v) maps to slice pixel ``M @ (u, v, 1)``."""
    out = np.zeros((4,) + tuple(shape), np.float32)
    inv = np.linalg.inv(M)
    uu, vv = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    scale = float(np.sqrt(abs(np.linalg.det(M[:2, :2]))))  # slice px per view px
    sigma = max(VIEW_CLICK_SIGMA, CLICK_SIGMA_VOXELS / max(scale, 1e-6))
    for c in prompts.clicks:
        if c.axis != axis or int(round(c.slice_idx)) != idx:
            continue
        u, v, _ = inv @ np.array([c.row, c.col, 1.0])
        g = np.exp(-((uu - u) ** 2 + (vv - v) ** 2) / (2 * sigma**2)).astype(np.float32)
        ch = 0 if c.positive else 1
        np.maximum(out[ch], g, out=out[ch])
    b = prompts.box
    if b is not None and b.axis == axis and b.slice_idx == idx:
        pts = M @ np.stack([uu.ravel(), vv.ravel(), np.ones(uu.size)])
        r, c_ = pts[0].reshape(shape), pts[1].reshape(shape)
        out[2] = (r >= b.r0 - 0.5) & (r < b.r1 - 0.5) & (c_ >= b.c0 - 0.5) & (c_ < b.c1 - 0.5)
    if prompts.mask is not None:
        m_axis, m_idx, m = prompts.mask
        if m_axis == axis and m_idx == idx:
            out[3] = warp(m.astype(np.float32), M, shape, order=0)
    return out


def _view(sl, pm, M, shape):
    """Image and pointmap of one slice ``sl`` (its pointmap ``pm``: :func:`_slice_and_pointmap`)
    seen through view matrix ``M``."""
    img = warp(sl, M, shape, order=1, cval=float(sl.min()))
    pm_view = resize_pointmap(pm, shape, matrix=M)
    return img.astype(np.float32), np.moveaxis(pm_view, -1, 0).astype(np.float32)


def _slice_and_pointmap(image, affine, axis, idx):
    """The slice and its pointmap (NaN off the body), which both views resample: made once (on
    a 512 x 512 slice, about 15 ms)."""
    sl = take_slice(image, axis, idx)
    return sl, slice_pointmap(affine, image.shape, axis, idx, valid=body_mask_2d(sl))


def _cube_clicks(prompts: PromptSet, affine, cube: Cube) -> np.ndarray:
    """(2, C, C, C) Gaussian heatmaps of positive and negative clicks in the cube."""
    n = cube.size
    out = np.zeros((2, n, n, n), np.float32)
    r = CLICK_RADIUS_VOXELS
    for c in prompts.clicks:
        p = world_to_voxel(cube.affine, voxel_to_world(affine, c.voxel()))
        if np.any(p < -r) or np.any(p > n - 1 + r):
            continue  # a click outside the cube says nothing about this cube
        lo = np.maximum(np.floor(p).astype(int) - r, 0)
        hi = np.minimum(np.floor(p).astype(int) + r + 2, n)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
        d2 = sum((g - pc) ** 2 for g, pc in zip(grids, p, strict=True))
        g = np.exp(-d2 / (2 * CLICK_SIGMA_VOXELS**2)).astype(np.float32)
        ch = out[0 if c.positive else 1]
        region = ch[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        np.maximum(region, g, out=region)
    return out


def build_inputs(
    image: np.ndarray,
    affine: np.ndarray,
    prompts: PromptSet,
    cube: Cube,
    cfg: ModelConfig,
    *,
    mode: str = "volume",
    previous: np.ndarray | None = None,
    intensity: tuple[float, float] | None = None,
    background: float | None = None,
) -> dict:
    """Model inputs for one example (no batch axis), as numpy arrays.

    Parameters
    ----------
    image : (I, J, K) float32, normalised intensities (``core.intensity``)
    affine : (4, 4) voxel -> world mm of ``image``
    prompts : clicks (any slice, any axis), box, mask
    cube : where the model looks (``core.cube``)
    cfg : model configuration (view size)
    mode : "volume" (the cube's image is given) or "slice" (only the reference slice)
    previous : (C, C, C) float in [0, 1], the previous prediction in this cube (refinement)
    intensity : (scale > 0, shift): the inputs of ``image * scale + shift`` (training's
        intensity jitter) without computing it over the whole volume. Every use of the image
        here (linear interpolation, padding with the minimum, the body mask's threshold
        relative to the slice's range) commutes with such a map, so it is applied to the
        sampled views and cube instead.
    background : ``image.min()`` when the caller knows it (the cube's padding value)

    Returns
    -------
    dict with the keys of ``core.model.INPUTS`` plus ``plane`` (axis, index in the cube) and
    ``crop_matrix`` / ``full_matrix`` ((3, 3) view pixel -> slice pixel).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    prompts.validate()
    n, s = cube.size, cfg.view_size
    axis, idx = prompts.reference_slice()
    p = int(round(plane_index(cube, affine, axis, idx)))
    in_cube = 0 <= p < n
    p_c = int(np.clip(p, 0, n - 1))

    # Crop view: the cube's plane, from the reference slice only.
    M_crop = _plane_to_slice_matrix(cube, affine, axis, p_c)
    if s != n:
        M_crop = M_crop @ np.diag([n / s, n / s, 1.0])
    if intensity is not None:
        scale, shift = (np.float32(v) for v in intensity)
        if not scale > 0:
            raise ValueError(f"intensity scale must be > 0, got {scale}")

    def jitter(x):  # the engine passes no intensity: no work on its path
        return x if intensity is None else x * scale + shift

    sl, pm = _slice_and_pointmap(image, affine, axis, idx)
    crop_img, crop_pm = _view(sl, pm, M_crop, (s, s))
    crop_img = jitter(crop_img)
    crop_prompt = _view_prompt(prompts, axis, idx, M_crop, (s, s))

    M_full = letterbox_matrix(sl.shape, (s, s))
    full_img, full_pm = _view(sl, pm, M_full, (s, s))
    full_img = jitter(full_img)
    full_prompt = _view_prompt(prompts, axis, idx, M_full, (s, s))

    cube_in = np.zeros((len(CUBE_CHANNELS), n, n, n), np.float32)
    bg = float(image.min()) if background is None else float(background)
    if mode == "volume":
        cube_in[0] = jitter(sample_into_cube(image, affine, cube, order=1, cval=bg))
        cube_in[1] = 1.0
    cube_in[2:4] = _cube_clicks(prompts, affine, cube)
    if previous is not None:
        cube_in[4] = np.asarray(previous, dtype=np.float32)
    if in_cube:
        plane_img = crop_img if s == n else ndimage.zoom(crop_img, n / s, order=1)
        sel = [slice(None)] * 3
        sel[axis] = p_c
        cube_in[5][tuple(sel)] = plane_img
        cube_in[6][tuple(sel)] = 1.0
    return {
        "cube": cube_in,
        "crop_view": np.concatenate([crop_img[None], crop_prompt]),
        "crop_pointmap": crop_pm,
        "full_view": np.concatenate([full_img[None], full_prompt]),
        "full_pointmap": full_pm,
        "center": prompt_center(prompts, affine).astype(np.float32),
        "plane": np.array([axis, p_c if in_cube else -1], np.int64),
        "crop_matrix": M_crop,
        "full_matrix": M_full,
    }


def build_targets(
    label: np.ndarray,
    sdf: np.ndarray | None,
    affine: np.ndarray,
    class_id: int,
    cube: Cube,
    inputs: dict,
    cfg: ModelConfig,
    *,
    axis: int,
    slice_idx: int,
) -> dict:
    """Training targets in the cube for one class.

    Returns
    -------
    dict: ``occupancy`` (1, C, C, C) float {0, 1}; ``sdf`` (1, C, C, C) in [-1, 1] (units of
    ``cfg.sdf_trunc_mm``; zeros and ``sdf_valid`` False when ``sdf`` is None);
    ``slice_mask`` (1, S, S) float {0, 1} on the crop view.
    """
    # Nearest-neighbour sampling of the label map, then the class: the same as sampling the
    # class mask, without a pass over the whole volume (which may be memory-mapped).
    occ = (sample_into_cube(label, affine, cube, order=0, cval=0) == class_id).astype(np.float32)
    out = {"occupancy": occ[None]}
    if sdf is not None:
        far = cfg.sdf_trunc_mm
        t = sample_into_cube(sdf, affine, cube, order=1, cval=far)
        out["sdf"] = np.clip(t / cfg.sdf_trunc_mm, -1, 1)[None].astype(np.float32)
        out["sdf_valid"] = np.array(True)
    else:
        out["sdf"] = np.zeros_like(occ)[None]
        out["sdf_valid"] = np.array(False)
    s = cfg.view_size
    sl = take_slice(label, axis, slice_idx) == class_id
    out["slice_mask"] = warp(sl.astype(np.float32), inputs["crop_matrix"], (s, s), order=0)[
        None
    ].astype(np.float32)
    return out
