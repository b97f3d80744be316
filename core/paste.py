"""The model's output back on the input's grids: the cube's probabilities on the volume (the
components the prompts point at) and the 2D head's mask on the clicked slice."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from core.clicks import PromptSet
from core.cube import Cube, level_box, paste_block
from core.transforms import warp

__all__ = ["mask_on_volume", "keep_prompted_components", "slice_mask_back"]


def mask_on_volume(prob, cube: Cube, affine, shape, prompts: PromptSet, level: float = 0.5):
    """The cube's probabilities above ``level`` on the volume's grid (``shape``, ``affine``),
    keeping the components that hold a positive click (else the largest).

    Only the block where the probability can exceed ``level`` is resampled and searched for
    components (a 128^3 volume: 50 -> a few ms for a small organ); the rest is empty."""
    mask = np.zeros(shape, bool)
    box = level_box(prob, cube, affine, shape, level)
    if box is not None:
        lo, hi = box
        block = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        sub = paste_block(prob, cube, affine, lo, hi, order=1) > level
        mask[block] = keep_prompted_components(sub, prompts, origin=lo)
    return mask


def keep_prompted_components(mask: np.ndarray, prompts: PromptSet, origin=(0, 0, 0)):
    """The components of ``mask`` (a block of the volume starting at voxel ``origin``) that
    hold a positive click, else the largest."""
    if not mask.any():
        return mask
    lab, n = ndimage.label(mask)
    if n == 1:
        return mask
    keep = set()
    for c in prompts.positives:
        v = tuple(int(a) - int(o) for a, o in zip(c.voxel_index(), origin, strict=True))
        if all(0 <= a < s for a, s in zip(v, mask.shape, strict=True)) and lab[v]:
            keep.add(int(lab[v]))
    if not keep:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        keep.add(int(sizes.argmax()))
    return np.isin(lab, list(keep))


def slice_mask_back(slice_prob, crop_matrix, sl_shape) -> np.ndarray:
    """The 2D head's crop-view mask on the input slice's pixel grid."""
    inv = np.linalg.inv(crop_matrix)
    return warp(slice_prob.astype(np.float32), inv, sl_shape, order=1) > 0.5
