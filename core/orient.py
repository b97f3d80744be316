"""The engine's canonical frame: a volume stored in any axis order and flips seen as RAS+.

The model was trained on volumes in the closest canonical (RAS+) orientation, which is how
``core.io.load_image`` reads every file, so the clicked slice's views and the cube's axes
always point the same anatomical way. A ``Volume`` built through the API (or a napari layer
from another reader) may keep its file's order, e.g. LPS or slices first; the same organ then
looked different to the model (a permuted, flipped heart: left ventricle Dice 0.82-0.84
instead of 0.92). :class:`CanonicalFrame` maps such a volume and its prompts onto the RAS+
grid (an exact permutation and flip, no resampling) and maps the results back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from core.clicks import Box, Click, PromptSet
from core.geometry import other_axes

__all__ = ["CanonicalFrame"]


@dataclass(frozen=True)
class CanonicalFrame:
    """How a volume's voxel axes map onto the RAS+ grid.

    Attributes
    ----------
    ornt : (3, 2) nibabel orientation transform, voxel axes -> canonical axes
        (``ornt[i] = (new axis of axis i, +1 or -1 for a flip)``)
    shape : the volume's own shape
    """

    ornt: np.ndarray
    shape: tuple[int, int, int]

    @classmethod
    def of(cls, affine, shape) -> CanonicalFrame | None:
        """The frame of a volume, or None when it is canonical already."""
        from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

        t = ornt_transform(io_orientation(np.asarray(affine)), axcodes2ornt("RAS"))
        if np.array_equal(t, [[0, 1], [1, 1], [2, 1]]):
            return None
        return cls(t.astype(int), tuple(int(n) for n in shape))

    # ------------------------------------------------------------------------------------
    # arrays

    def array(self, data: np.ndarray) -> np.ndarray:
        """A (I, J, K) array of the volume on the canonical grid."""
        from nibabel.orientations import apply_orientation

        return np.ascontiguousarray(apply_orientation(data, self.ornt))

    def array_back(self, data: np.ndarray) -> np.ndarray:
        """A canonical-grid array back on the volume's own grid."""
        from nibabel.orientations import apply_orientation

        return np.ascontiguousarray(apply_orientation(data, self._inverse()))

    def affine(self, affine) -> np.ndarray:
        """The canonical grid's affine (the same world positions)."""
        from nibabel.orientations import inv_ornt_aff

        return np.asarray(affine, dtype=np.float64) @ inv_ornt_aff(self.ornt, self.shape)

    def _inverse(self) -> np.ndarray:
        inv = np.zeros_like(self.ornt)
        for i, (j, flip) in enumerate(self.ornt):
            inv[j] = (i, flip)
        return inv

    def inverse(self) -> CanonicalFrame:
        """The frame from the canonical grid back to the volume's (e.g. to express prompts
        given on the RAS+ grid in the volume's own indices)."""
        canon_shape = [0, 0, 0]
        for i, (j, _) in enumerate(self.ornt):
            canon_shape[j] = self.shape[i]
        return CanonicalFrame(self._inverse(), tuple(canon_shape))

    # ------------------------------------------------------------------------------------
    # voxels, slices and prompts

    def voxel(self, ijk) -> np.ndarray:
        """Voxel coordinates (3,) of the volume -> canonical voxel coordinates."""
        out = np.empty(3)
        for i, (j, flip) in enumerate(self.ornt):
            out[j] = self.shape[i] - 1 - ijk[i] if flip < 0 else ijk[i]
        return out

    def axis(self, axis: int) -> int:
        return int(self.ornt[axis, 0])

    def slice_2d(self, plane: np.ndarray, axis: int) -> np.ndarray:
        """A 2D array on slice ``axis`` of the volume -> on the canonical slice."""
        return np.take(self.array(np.expand_dims(plane, axis)), 0, axis=self.axis(axis))

    def slice_2d_back(self, plane: np.ndarray, axis: int) -> np.ndarray:
        """A 2D array on the canonical image of slice ``axis`` -> on the volume's slice."""
        return np.take(self.array_back(np.expand_dims(plane, self.axis(axis))), 0, axis=axis)

    def click(self, c: Click) -> Click:
        """The click on the canonical grid, in the same voxel: clicks round halves up, so a
        half on a flipped axis moves down by one ulp (row -0.5, voxel 0, must not become
        n - 0.5, rounded to n, outside). Other coordinates map exactly (a round trip gives
        the same bits, so the same result)."""
        v = self.voxel(c.voxel())
        for j, flip in self.ornt:
            if flip < 0 and v[j] % 1 == 0.5:
                v[j] = np.nextafter(v[j], -np.inf)
        return Click.from_voxel(v, self.axis(c.axis), c.positive)

    def box(self, b: Box) -> Box:
        r_ax, c_ax = other_axes(b.axis)
        lo, hi = np.zeros(3), np.zeros(3)
        lo[b.axis] = hi[b.axis] = b.slice_idx
        lo[r_ax], lo[c_ax], hi[r_ax], hi[c_ax] = b.r0, b.c0, b.r1 - 1, b.c1 - 1
        p, q = self.voxel(lo), self.voxel(hi)
        axis = self.axis(b.axis)
        r, c = other_axes(axis)
        a, z = np.minimum(p, q).astype(int), np.maximum(p, q).astype(int)
        return Box(axis, int(p[axis]), a[r], a[c], z[r] + 1, z[c] + 1)

    def prompts(self, p: PromptSet) -> PromptSet:
        """The prompts on the canonical grid."""
        mask = None
        if p.mask is not None:
            axis, idx, m = p.mask
            mask = (self.axis(axis), int(self.voxel(_on_axis(axis, idx))[self.axis(axis)]))
            mask = (*mask, self.slice_2d(m, axis))
        return PromptSet(
            tuple(self.click(c) for c in p.clicks),
            None if p.box is None else self.box(p.box),
            mask,
        )

    def previous(self, result):
        """A Result of the volume's own grid (refined by the next call) on the canonical
        grid: only its mask is on the grid (the cube and its probabilities are in world mm)."""
        return replace(result, mask=self.array(result.mask), affine=self.affine(result.affine))

    def result_back(self, result, *, volume, prompts):
        """A Result computed on the canonical grid, back on the volume's own grid, with the
        caller's own prompts."""
        axis, idx = prompts.reference_slice()
        return replace(
            result,
            mask=self.array_back(result.mask),
            affine=np.asarray(volume.affine),
            slice_mask=self.slice_2d_back(result.slice_mask, axis),
            reference_slice=(axis, idx),
            prompts=prompts,
        )


def _on_axis(axis: int, idx: int) -> np.ndarray:
    v = np.zeros(3)
    v[axis] = idx
    return v
