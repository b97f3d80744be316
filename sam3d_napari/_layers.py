"""Where a volume sits in napari's world: NIfTI affines <-> layer transforms, and back.

A napari layer maps its data indices to world coordinates with
``affine @ (translate . rotate . shear . scale)``; a NIfTI volume maps voxel indices to world
millimetres with one ``(4, 4)`` affine. Both put voxel centres at integer indices, so the
affine can be handed over exactly: :func:`layer_transform` splits it into napari's scale,
translate, rotation and shear (a QR decomposition, as napari does), and :func:`layer_affine`
composes them back. World axes are then the affine's world axes (RAS+ mm after
``core.io``'s canonical loading), data axes the array axes.

This module needs NumPy only, so it is testable without a display.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "label_names_of",
    "layer_transform",
    "affine_from_transform",
    "layer_affine",
    "meta_affine",
    "same_grid",
    "slice_axis",
]


def layer_transform(affine) -> dict:
    """napari layer keyword arguments that place data with this voxel -> world affine.

    Parameters
    ----------
    affine : (4, 4) float array, voxel index -> world mm (any non-singular affine)

    Returns
    -------
    dict with ``scale`` (3,), ``translate`` (3,), ``rotate`` (3, 3) proper rotation and
    ``shear`` (3, 3) unit upper-triangular, such that
    ``translate + rotate @ shear @ diag(scale) @ ijk`` is ``affine @ ijk``. A left-handed
    affine gets a negative scale on its first axis (napari rotations are proper).
    """
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ValueError("affine must be a finite, non-singular (4, 4) matrix")
    q, r = np.linalg.qr(a[:3, :3])
    d = np.sign(np.diag(r))
    d[d == 0] = 1.0
    q, r = q * d, d[:, None] * r  # q @ r unchanged, diag(r) > 0
    if np.linalg.det(q) < 0:  # a reflection: move it into the scale of the first axis
        flip = np.array([-1.0, 1.0, 1.0])
        q, r = q * flip, flip[:, None] * r
    scale = np.diag(r).copy()
    shear = r / scale[None, :]
    return {
        "scale": scale,
        "translate": a[:3, 3].copy(),
        "rotate": q,
        "shear": shear,
    }


def affine_from_transform(*, scale, translate, rotate, shear=None, extra=None) -> np.ndarray:
    """The (4, 4) voxel -> world matrix of napari's transform parameters.

    ``rotate`` is a (3, 3) matrix; ``shear`` a (3, 3) matrix or napari's 3 upper-triangular
    values; ``extra`` napari's additional ``affine`` (4, 4) applied last.
    """
    sh = np.eye(3) if shear is None else np.asarray(shear, dtype=np.float64)
    if sh.shape == (3,):
        m = np.eye(3)
        m[0, 1], m[0, 2], m[1, 2] = sh
        sh = m
    out = np.eye(4)
    out[:3, :3] = np.asarray(rotate, np.float64) @ sh @ np.diag(np.asarray(scale, np.float64))
    out[:3, 3] = np.asarray(translate, dtype=np.float64)
    if extra is not None:
        out = np.asarray(extra, dtype=np.float64) @ out
    return out


def move_layer(layer, affine, *, atol: float = 1e-6) -> bool:
    """Place an existing layer's data with this voxel -> world affine (what
    :func:`layer_transform` gives a new layer), e.g. to follow an image the user moved.
    Nothing happens when it sits there already; returns whether it moved."""
    if np.allclose(meta_affine(layer), affine, atol=atol, rtol=0):
        return False
    layer.affine = np.eye(4)  # the whole placement goes into the four parts
    for name, value in layer_transform(affine).items():
        setattr(layer, name, value)
    return True


def layer_affine(layer) -> np.ndarray:
    """The (4, 4) data index -> world matrix of a 3D napari layer (from its public transform
    attributes: ``scale``, ``translate``, ``rotate``, ``shear`` and ``affine``)."""
    if layer.ndim != 3:
        raise ValueError(f"layer {layer.name!r} is {layer.ndim}D; a 3D volume is needed")
    return affine_from_transform(
        scale=layer.scale,
        translate=layer.translate,
        rotate=layer.rotate,
        shear=layer.shear,
        extra=layer.affine.affine_matrix,
    )


def meta_affine(layer_or_meta, *, atol: float = 1e-4) -> np.ndarray:
    """The voxel -> world affine of a layer (or of a writer's ``meta`` dict).

    The exact float64 affine kept in ``metadata["affine"]`` by the reader wins when the layer
    still sits there (napari stores transforms with less care for the last bits); if the layer
    was moved since, its current transform is the truth.
    """
    if isinstance(layer_or_meta, dict):
        m = layer_or_meta
        current = affine_from_transform(
            scale=m.get("scale", (1, 1, 1)),
            translate=m.get("translate", (0, 0, 0)),
            rotate=m.get("rotate", np.eye(3)),
            shear=m.get("shear"),
            extra=m.get("affine"),
        )
        metadata = m.get("metadata") or {}
    else:
        current = layer_affine(layer_or_meta)
        metadata = layer_or_meta.metadata or {}
    stored = metadata.get("affine")
    if stored is not None:
        stored = np.asarray(stored, dtype=np.float64)
        if stored.shape == (4, 4) and np.allclose(stored, current, atol=atol, rtol=0):
            return stored
    return current


def label_names_of(metadata) -> dict[int, str]:
    """A layer's ``metadata["label_names"]`` (the reader's organ names) as {class id: name}.
    Keys may be ints or strings of ints (JSON); entries that do not map a class id to a name
    are left out (the names only decorate messages and files)."""
    names = (metadata or {}).get("label_names")
    out = {}
    for k, v in names.items() if isinstance(names, dict) else ():
        try:
            c = int(k)
        except (TypeError, ValueError):
            continue
        if v is not None and str(v).strip():
            out[c] = str(v).strip()
    return out


def same_grid(shape_a, affine_a, shape_b, affine_b, *, atol: float = 1e-3) -> bool:
    """True when two volumes share their shape and (within ``atol``) their affine."""
    return tuple(shape_a) == tuple(shape_b) and bool(
        np.allclose(np.asarray(affine_a), np.asarray(affine_b), atol=atol, rtol=0)
    )


def slice_axis(not_displayed: tuple[int, ...], ndim_world: int, ndim_layer: int = 3) -> int:
    """The layer's array axis a 2D view slices through.

    napari pairs the layer's data axes with the last world axes in order (it does not look at
    rotations), so the slicing axis of a 3D layer is the one non-displayed world axis, shifted
    by the world's extra leading axes.
    """
    extra = ndim_world - ndim_layer
    axes = [d - extra for d in not_displayed if d - extra >= 0]
    if len(axes) != 1:
        raise ValueError("the view must show a 2D slice of the volume")
    return int(axes[0])
