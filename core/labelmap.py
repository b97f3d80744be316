"""Committing an object into a label map: the one rule that never overwrites silently.

Used by both front ends: napari's Reconstruct widget (Commit object, keep or overwrite) and the
web demo's label-map download (objects in click order, an earlier object keeps its voxels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CommitReport",
    "class_boxes",
    "commit_block",
    "commit_mask",
    "fits",
    "next_free_class",
    "union_box",
]


@dataclass(frozen=True)
class CommitReport:
    """What a commit did.

    Attributes
    ----------
    class_id : the class written
    voxels : voxels of the object
    clashes : object voxels that already had another class
    clash_classes : those other classes
    overwritten : whether the clashes were overwritten (else kept)
    already_had : voxels of ``class_id`` in the map before the commit
    """

    class_id: int
    voxels: int
    clashes: int
    clash_classes: tuple
    overwritten: bool
    already_had: int

    def message(self, target: str, name: str = "") -> str:
        name = f" ({name})" if name else ""
        msg = f"Committed class {self.class_id}{name} to {target!r}: {self.voxels} voxels"
        if self.clashes:
            verb = "overwrote" if self.overwritten else "kept"
            msg += f"; {verb} {self.clashes} voxels already labelled {list(self.clash_classes)}"
        if self.already_had:
            msg += f"; class {self.class_id} already had {self.already_had} voxels (added to them)"
        return msg


def fits(data: np.ndarray, class_id: int) -> bool:
    """``data`` can hold ``class_id`` as it is (not a bool map, nor an integer one too narrow)."""
    if data.dtype == np.bool_:
        return False
    return not (np.issubdtype(data.dtype, np.integer) and class_id > np.iinfo(data.dtype).max)


def _count(data: np.ndarray, value: int) -> int:
    """Voxels equal to ``value``, a few MB at a time: a map-sized temporary costs more in
    fresh memory (page faults) than the comparison itself."""
    if data.ndim == 0 or data.size == 0:
        return int(np.count_nonzero(data == value))
    step = max(1, (4 << 20) // max(1, data[0].size))
    return sum(
        int(np.count_nonzero(data[i : i + step] == value)) for i in range(0, len(data), step)
    )


def commit_block(labels, mask, class_id: int, *, overwrite: bool):
    """:func:`commit_mask` without writing: the object's bounding box, the box's new values
    and the report. ``labels`` must hold ``class_id`` (an integer map wide enough) and is not
    modified; outside the box nothing changes, so a caller writes ``labels[box] = values``
    (the box is None for an empty object).

    Only the box is read and written, besides one count of ``class_id`` over the map.
    """
    from core.geometry import mask_block

    if class_id < 1:
        raise ValueError(f"class id must be at least 1, got {class_id}")
    data = np.asarray(labels)
    mask = np.asarray(mask, dtype=bool)
    if data.shape != mask.shape:
        raise ValueError(f"the object {mask.shape} is not on the label map's grid {data.shape}")
    if not fits(data, class_id):
        raise ValueError(f"class {class_id} does not fit a {data.dtype} label map: widen it first")
    had = _count(data, class_id)
    box = mask_block(mask)
    if box is None:
        report = CommitReport(int(class_id), 0, 0, (), bool(overwrite), had)
        return None, None, report
    values, inside = data[box].copy(), mask[box]
    under = values[inside]
    clash = (under != 0) & (under != class_id)
    report = CommitReport(
        class_id=int(class_id),
        voxels=int(np.count_nonzero(inside)),
        clashes=int(np.count_nonzero(clash)),
        clash_classes=tuple(sorted({int(v) for v in np.unique(under[clash])})),
        overwritten=bool(overwrite),
        already_had=had,
    )
    if overwrite:
        values[inside] = class_id
    else:
        values[inside & (values == 0)] = class_id
    return box, values, report


def commit_mask(labels, mask, class_id: int, *, overwrite: bool):
    """A new label map with ``mask`` written as ``class_id``, and the report.

    Parameters
    ----------
    labels : (I, J, K) integer array (not modified; widened if ``class_id`` does not fit)
    mask : (I, J, K) bool, the object
    class_id : int >= 1
    overwrite : voxels already labelled with another class take ``class_id`` (else they keep
        their class)
    """
    if class_id < 1:
        raise ValueError(f"class id must be at least 1, got {class_id}")
    data = np.asarray(labels)
    if not fits(data, class_id):  # a bool map holds no class above 1 (class 3 was True)
        small = data.dtype == np.bool_ and class_id < 256
        data = data.astype(np.uint8 if small else np.uint16 if class_id < 65536 else np.uint32)
    else:
        data = data.copy()  # a new array: napari redraws a Labels layer on assignment
    box, values, report = commit_block(data, mask, class_id, overwrite=overwrite)
    if box is not None:
        data[box] = values
    return data, report


def next_free_class(labels, after: int, *, maximum: int = 65535) -> int:
    """The first class id above ``after`` that the map does not use yet (``maximum`` at the
    most). The next id is looked for first (one comparison over the map, the usual answer);
    only when it is taken are all the map's values listed."""
    data = np.asarray(labels)
    nxt = after + 1
    if nxt >= maximum or not _count(data, nxt):
        return nxt
    used = {int(v) for v in np.unique(data)}
    while nxt in used and nxt < maximum:
        nxt += 1
    return nxt


def class_boxes(labels) -> dict[int, tuple[slice, ...]] | None:
    """``{class: bounding box (slices)}`` of every non-zero class of an integer label map, from
    one ``scipy.ndimage.find_objects`` pass (no ``np.unique``, no ``labels == class`` over the
    whole map); classes in increasing order. ``None`` when the map is not a map of
    non-negative integers (floats, negative values): callers then take the whole-map path."""
    from scipy.ndimage import find_objects

    a = np.asarray(labels)
    if a.dtype == np.bool_:
        a = a.view(np.uint8)
    if not np.issubdtype(a.dtype, np.integer) or a.size == 0:
        return None
    if np.issubdtype(a.dtype, np.signedinteger) and a.min() < 0:
        return None
    top = int(a.max())
    if top == 0:
        return {}
    if a.dtype.itemsize > 4 and top > np.iinfo(np.int32).max:
        return None
    boxes = find_objects(a, max_label=top)
    return {c: b for c, b in enumerate(boxes, start=1) if b is not None}


def union_box(*boxes) -> tuple[slice, ...] | None:
    """The smallest box holding every given box (``None`` entries skipped; ``None`` if none)."""
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    return tuple(
        slice(min(s.start for s in axis), max(s.stop for s in axis))
        for axis in zip(*boxes, strict=True)
    )


def grow_box(box, shape, margin: int = 1) -> tuple[slice, ...]:
    """``box`` grown by ``margin`` voxels on each side, clamped to an array of ``shape``.

    Metrics computed on the union of two masks' boxes grown by one voxel are bitwise those of
    the whole masks (``core.metrics`` crops the whole masks the same way, so the surface
    points get the same coordinates)."""
    return tuple(
        slice(max(b.start - margin, 0), min(b.stop + margin, n))
        for b, n in zip(box, shape, strict=True)
    )
