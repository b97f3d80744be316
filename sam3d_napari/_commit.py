"""Committing an object into a napari label map: the rule of ``core.labelmap`` written as one
step of the map's own undo history (napari's Ctrl+Z takes it back)."""

from __future__ import annotations

import numpy as np

from core.labelmap import commit_block, commit_mask, fits
from sam3d_napari._layers import label_names_of
from sam3d_napari._qt_common import placed_like

__all__ = ["commit_object", "write_undoably"]


def commit_object(viewer, image, target, mask, class_id: int, *, overwrite: bool):
    """Write ``mask`` as ``class_id`` into the Labels layer ``target`` (None, or a layer no
    longer in the viewer: a new ``<image> labels`` layer on ``image``'s grid).

    Returns
    -------
    (the target layer, its new data, the one-line message, the ``core.labelmap`` report)
    """
    if target is None or target not in viewer.layers:
        dtype = np.uint8 if class_id < 256 else np.uint16
        target = viewer.add_labels(
            np.zeros(image.data.shape, dtype), name=f"{image.name} labels", **placed_like(image)
        )
    old = target.data
    if isinstance(old, np.ndarray) and fits(old, class_id):
        # the usual case: only the object's bounding box is read and written
        box, values, report = commit_block(old, mask, class_id, overwrite=overwrite)
        undoable = write_undoably(target, box, values)
    else:  # the map widens for the class id (or is not a numpy array): replaced
        data, report = commit_mask(old, mask, class_id, overwrite=overwrite)
        target.data = data
        undoable = False
    msg = report.message(target.name, label_names_of(target.metadata).get(class_id, ""))
    if undoable:
        msg += " (Ctrl+Z on the label map undoes it)"
    return target, target.data, msg, report


def write_undoably(layer, box, values) -> bool:
    """Write ``values`` into the box ``box`` (slices; None: nothing) of the Labels ``layer``'s
    numpy data as one step of its undo history (napari's Ctrl+Z / ``layer.undo()`` takes the
    commit back); True if so. A commit that changes no voxel (all kept) is no step (Ctrl+Z
    would undo the one before)."""
    if box is None:
        return False
    old = layer.data
    # the history keeps the indices of the changed voxels: the smallest integer type that
    # holds them (2 bytes per axis for volumes under 65536 voxels a side, not 8)
    index_type = np.uint16 if max(old.shape) <= 65536 else np.int64
    local = np.nonzero(old[box] != values)
    changed = tuple((ix + s.start).astype(index_type) for ix, s in zip(local, box, strict=True))
    if changed[0].size:
        with layer.block_history():  # one undo step for the whole object
            layer.data_setitem(changed, values[local])
    return bool(changed[0].size)
