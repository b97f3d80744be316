"""Where the model looks: the cube's placement and scale around the prompts.

Cube policy (where the model looks). The model works in a 64^3 cube placed in the volume's
world frame (``core.cube``). The first prediction uses a cube centred on the prompt with
``default_spacing_mm`` per voxel (192 mm across at 3 mm). Then:

- zoom out: if the predicted organ touches a face of the cube where the volume continues
  beyond it, the cube is re-centred on the prediction and its spacing multiplied by 1.6, and
  the model runs again (at most ``max_zoom_out`` times). An organ is therefore never cut off
  silently: if it still touches after that, ``Result.touches_border`` says so.
- zoom in (off by default, ``CubePolicy(zoom_in=True)``; volume mode only): if the organ
  fills less than ``min_fill`` of the cube's width, the cube is re-centred on it with a
  spacing that makes it fill ``target_fill``, never finer than ``min_spacing_mm``, and the
  model runs once more. On validation cases (first click, without -> with zoom-in) it helped
  only hearts in volume mode and hurt elsewhere: with the shipped (stage 4) base on the 16
  held-out synthetic hearts, volume 0.667 -> 0.694, slice 0.614 -> 0.575, and 3 clicks
  0.721 -> 0.708 (volume); with the stage 3 base on held-out openkbp_train cases, 0.322 ->
  0.281 (volume) and 0.436 -> 0.315 (slice). Re-checked in session 14 (stage 10 base, the
  head-and-neck adapter, with the refinement pass of ``core.engine``; Dice after 1 / 5
  clicks): hearts volume 0.870 / 0.895 -> 0.892 / 0.922, but slice 0.652 -> 0.629 after 1
  click; held-out openkbp_train volume 0.557 / 0.708 -> 0.553 / 0.661 (the spinal cord and the
  oesophagus: the first mask is a short piece of the tube, the zoomed cube is too fine to
  follow it with the later clicks), slice 0.490 -> 0.471. So the default does not zoom in, and zoom-in
  never applies in slice mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.cube import Cube, axis_directions
from core.io import spacing_of, voxel_to_world, world_to_voxel
from core.modes import zoom_in_applies

__all__ = [
    "CubePolicy",
    "cube_around",
    "inside_cube",
    "extent_vox",
    "recentered",
    "touches_inside_volume",
]


@dataclass(frozen=True)
class CubePolicy:
    """Where the model looks; see the module docstring."""

    default_spacing_mm: float = 3.0
    min_spacing_mm: float = 1.0
    zoom_out_factor: float = 1.6
    max_zoom_out: int = 2
    min_fill: float = 0.3
    target_fill: float = 0.6
    zoom_in: bool = False
    refine_passes: int = 1

    def zooms_in(self, mode: str) -> bool:
        """Whether this policy zooms in in ``mode`` (``core.modes.zoom_in_applies``)."""
        return self.zoom_in and zoom_in_applies(mode)

    def __post_init__(self):
        if not 0 < self.min_fill < self.target_fill < 1:
            raise ValueError("need 0 < min_fill < target_fill < 1")
        if self.zoom_out_factor <= 1:
            raise ValueError("zoom_out_factor must be > 1")
        if self.refine_passes < 0:
            raise ValueError("refine_passes must be >= 0")
        if not (self.default_spacing_mm > 0 and self.min_spacing_mm > 0):
            raise ValueError("default_spacing_mm and min_spacing_mm must be > 0")
        if self.max_zoom_out < 0:
            raise ValueError("max_zoom_out must be >= 0")


def cube_around(mask, prompts, affine, spacing, pol: CubePolicy, cube_size: int) -> Cube:
    """A cube around the clicks and ``mask`` (voxels of ``affine``), at ``spacing`` or coarser
    so that they fill ``pol.target_fill`` of it (a corrective click outside the last cube)."""
    pts = [c.voxel() for c in prompts.clicks]
    if mask.any():
        idx = np.argwhere(mask)
        pts += [idx.min(0), idx.max(0)]
    pts = np.array(pts, dtype=float)
    center = voxel_to_world(affine, (pts.min(0) + pts.max(0)) / 2)
    ext = float(((pts.max(0) - pts.min(0) + 1) * spacing_of(affine)).max())
    sp = max(spacing, ext / (pol.target_fill * cube_size))
    return Cube(center, sp, axis_directions(affine), cube_size)


def inside_cube(cube: Cube, affine, voxel) -> bool:
    """Whether voxel ``voxel`` of ``affine`` lies in ``cube``."""
    p = world_to_voxel(cube.affine, voxel_to_world(affine, voxel))
    return bool(np.all(p >= 0) and np.all(p <= cube.size - 1))


def extent_vox(fg: np.ndarray) -> float:
    """The widest bounding-box side of a non-empty mask, in its voxels."""
    idx = np.argwhere(fg)
    return float((idx.max(0) - idx.min(0) + 1).max())


def recentered(cube: Cube, fg: np.ndarray) -> Cube:
    """``cube`` moved to the centre of the mask ``fg`` on its grid (unchanged if empty)."""
    if not fg.any():
        return cube
    idx = np.argwhere(fg)
    mid = (idx.min(0) + idx.max(0)) / 2.0
    return cube.with_center(voxel_to_world(cube.affine, mid))


def touches_inside_volume(fg, cube: Cube, affine, shape) -> bool:
    """True if the mask touches a cube face beyond which the volume still has voxels."""
    n = cube.size
    for ax in range(3):
        for side, sl in ((-1, 0), (1, n - 1)):
            face = np.take(fg, sl, axis=ax)
            if not face.any():
                continue
            # One cube voxel further out, at the touching voxels: still inside the volume?
            idx = np.argwhere(face)
            pts = np.insert(idx.astype(float), ax, sl + side, axis=1)
            vox = world_to_voxel(affine, voxel_to_world(cube.affine, pts))
            inside = np.all((vox >= -0.5) & (vox <= np.array(shape) - 0.5), axis=1)
            if inside.any():
                return True
    return False
