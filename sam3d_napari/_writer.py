"""Writers: Labels -> NIfTI on the original grid, or one surface mesh per class; Surface ->
.glb / .obj / .ply / .stl.

Both write atomically through ``core`` (a crash never leaves a half-written file). A Labels
layer that came from a NIfTI file goes back in that file's own orientation with its exact
affine, so reading the written file gives the same data and affine as reading the original.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from sam3d_napari._layers import label_names_of, meta_affine

__all__ = [
    "SaveError",
    "write_labels",
    "write_labels_meshes",
    "write_surface",
    "labels_to_volume",
    "surface_to_mesh",
]


class SaveError(OSError):
    """A layer that cannot be saved as asked, with the reason in one line. napari takes a
    writer's ValueError for "this writer does not apply" and shows only "not a valid writer";
    this error reaches the user with its message."""


def _one_line_errors(writer):
    """The writer's ValueErrors (bad data for the format) become :class:`SaveError`."""

    @functools.wraps(writer)
    def write(path, *args):
        try:
            return writer(path, *args)
        except ValueError as exc:
            raise SaveError(str(exc)) from exc

    return write


def labels_to_volume(data, meta: dict, path=None):
    """A ``core.io.LabelVolume`` of a Labels layer's data and attributes, in the orientation
    of the file it came from when known.

    Raises
    ------
    ValueError
        Not 3D, negative or non-integer values.
    """
    from core.io import LabelVolume, to_file_orientation

    arr = _label_array(data, path or "labels", "NIfTI")
    hi = int(arr.max()) if arr.size else 0
    dtype = np.uint8 if hi < 256 else np.uint16 if hi < 65536 else np.uint32
    arr = arr.astype(dtype, copy=False)
    affine = meta_affine(meta)
    source = (meta.get("metadata") or {}).get("source_affine")
    if source is not None:
        arr, affine = to_file_orientation(arr, affine, np.asarray(source, dtype=np.float64))
    return LabelVolume(np.ascontiguousarray(arr), affine, None if path is None else str(path))


def _label_array(data, path, what: str) -> np.ndarray:
    """A Labels layer's data as a 3D non-negative integer array (a bool map viewed as uint8,
    not copied: a CT-sized map is large); ValueError naming ``path`` otherwise."""
    arr = np.asarray(data)
    if arr.ndim != 3:
        raise ValueError(f"{path}: only 3D label maps can be saved as {what}")
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path}: label data must be integer, got {arr.dtype}")
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise ValueError(f"{path}: label map has negative values (min {int(arr.min())})")
    return arr


@_one_line_errors
def write_labels(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer for Labels -> ``.nii.gz`` / ``.nii``."""
    from core.io import save_label, strip_nifti_suffix

    p = Path(path)
    if strip_nifti_suffix(p.name) is None:
        p = p.with_name(p.name + ".nii.gz")
    save_label(labels_to_volume(data, meta, p), p)
    return [str(p)]


@_one_line_errors
def write_labels_meshes(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer for Labels -> one surface per class, in world mm.

    ``.glb``: one scene, a node per class (``class_<k>`` or ``<k>_<name>`` with the dataset's
    organ names) in the layer's colours. ``.obj`` / ``.ply`` / ``.stl`` hold one mesh each:
    ``<stem>_<k>[_<name>]<suffix>`` per class, next to ``path``.

    Raises
    ------
    SaveError
        Not 3D, not integer, negative values, or nothing labelled.
    """
    from core.atomic import safe_name
    from core.mesh import MESH_FORMATS, label_meshes, save_mesh, save_scene

    p = Path(path)
    if p.suffix.lower() not in MESH_FORMATS:
        p = p.with_name(p.name + ".glb")
    arr = _label_array(data, p, "meshes")
    meshes = label_meshes(arr, meta_affine(meta))
    if not meshes:
        raise ValueError(f"{p}: the label map is empty: nothing to save as meshes")
    names = label_names_of(meta.get("metadata"))
    colormap = meta.get("colormap")

    def tag(c: int) -> str:
        name = safe_name(names.get(c, ""))
        return f"{c}_{name}" if name else f"class_{c}"

    if p.suffix.lower() == ".glb":
        colours = [_colour(colormap, c) for c, _ in meshes]
        parts = [(tag(c), m, rgb) for (c, m), rgb in zip(meshes, colours, strict=True)]
        return [os.fspath(save_scene(parts, p))]
    stem = p.name[: -len(p.suffix)]
    return [
        os.fspath(save_mesh(m, p.with_name(f"{stem}_{tag(c).removeprefix('class_')}{p.suffix}")))
        for c, m in meshes
    ]


def _colour(colormap, c: int):
    """The (r, g, b) 0-255 napari draws class ``c`` in (None if unknown)."""
    try:
        rgba = np.asarray(colormap.map(np.array([c])), dtype=float).reshape(-1)[:3]
    except Exception:  # no colormap in the attributes, or another kind
        return None
    return tuple(int(round(v * 255)) for v in np.clip(rgba, 0.0, 1.0))


def surface_to_mesh(data, meta: dict):
    """A ``core.mesh.Mesh`` in world mm from a Surface layer's data and attributes."""
    from core.io import voxel_to_world
    from core.mesh import Mesh

    vertices, faces = np.asarray(data[0], dtype=np.float64), np.asarray(data[1])
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(
            f"{meta.get('name') or 'surface'}: only 3D surfaces can be saved as meshes"
        )
    world = voxel_to_world(meta_affine(meta), vertices)
    return Mesh(world, faces)


@_one_line_errors
def write_surface(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer for Surface -> ``.glb``, ``.obj``, ``.ply`` or ``.stl``."""
    from core.mesh import MESH_FORMATS, save_mesh

    p = Path(path)
    if p.suffix.lower() not in MESH_FORMATS:
        p = p.with_name(p.name + ".glb")
    save_mesh(surface_to_mesh(data, meta), p)
    return [os.fspath(p)]
