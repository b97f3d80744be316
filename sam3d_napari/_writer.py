"""Writers: Labels -> NIfTI on the original grid; Surface -> .glb / .obj / .ply / .stl.

Both write atomically through ``core`` (a crash never leaves a half-written file). A Labels
layer that came from a NIfTI file goes back in that file's own orientation with its exact
affine, so reading the written file gives the same data and affine as reading the original.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sam3d_napari._layers import meta_affine

__all__ = ["write_labels", "write_surface", "labels_to_volume", "surface_to_mesh"]


def labels_to_volume(data, meta: dict, path=None):
    """A ``core.io.LabelVolume`` of a Labels layer's data and attributes, in the orientation
    of the file it came from when known.

    Raises
    ------
    ValueError
        Not 3D, negative or non-integer values.
    """
    from core.io import LabelVolume, to_file_orientation

    arr = np.asarray(data)
    if arr.ndim != 3:
        raise ValueError(f"{path or 'labels'}: only 3D label maps can be saved as NIfTI")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path or 'labels'}: label data must be integer, got {arr.dtype}")
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo < 0:
        raise ValueError(f"{path or 'labels'}: label map has negative values (min {lo})")
    dtype = np.uint8 if hi < 256 else np.uint16 if hi < 65536 else np.uint32
    arr = arr.astype(dtype, copy=False)
    affine = meta_affine(meta)
    source = (meta.get("metadata") or {}).get("source_affine")
    if source is not None:
        arr, affine = to_file_orientation(arr, affine, np.asarray(source, dtype=np.float64))
    return LabelVolume(np.ascontiguousarray(arr), affine, None if path is None else str(path))


def write_labels(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer for Labels -> ``.nii.gz`` / ``.nii``."""
    from core.io import save_label, strip_nifti_suffix

    p = Path(path)
    if strip_nifti_suffix(p.name) is None:
        p = p.with_name(p.name + ".nii.gz")
    save_label(labels_to_volume(data, meta, p), p)
    return [str(p)]


def surface_to_mesh(data, meta: dict):
    """A ``core.mesh.Mesh`` in world mm from a Surface layer's data and attributes."""
    from core.io import voxel_to_world
    from core.mesh import Mesh

    vertices, faces = np.asarray(data[0], dtype=np.float64), np.asarray(data[1])
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError("only 3D surfaces can be saved as meshes")
    world = voxel_to_world(meta_affine(meta), vertices)
    return Mesh(world, faces)


def write_surface(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer for Surface -> ``.glb``, ``.obj``, ``.ply`` or ``.stl``."""
    from core.mesh import MESH_FORMATS, save_mesh

    p = Path(path)
    if p.suffix.lower() not in MESH_FORMATS:
        p = p.with_name(p.name + ".glb")
    save_mesh(surface_to_mesh(data, meta), p)
    return [os.fspath(p)]
