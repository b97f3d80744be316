"""Per-browser-session state of the web demo (kept in a ``gr.State``).

A session holds the loaded volume (and its ground truth), the slice on screen, and the objects
the user has reconstructed: each object is its prompts plus the latest result, with a short
history so that "undo" restores the previous result exactly; "clear" is an undo step too.
Files written for the session live in its own temporary folder, removed by
:meth:`Session.close` when gradio deletes the state (the tab closed) or when the app shuts
down.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from core.clicks import PromptSet
    from core.engine import Result
    from core.io import LabelVolume, Volume
    from core.source_grid import SourceGrid

__all__ = ["Settings", "ObjectState", "Session", "SessionClosed"]

#: Undo steps kept per object (each holds a full-size mask).
HISTORY = 20
#: "Clear"s that Undo can take back, per session (each keeps every object and its history).
CLEARS = 5
#: Output folders kept per session (older ones are deleted: gradio has its own copies).
KEEP_STEPS = 3


class SessionClosed(RuntimeError):
    """The session's tab closed while a request worked on it (its volume and files are gone):
    nobody is left to answer, so the web page logs this as one quiet line."""


@dataclass(frozen=True)
class Settings:
    """What a reconstruction depends on besides the prompts."""

    mode: str = "volume"
    weights: str = "base"
    modality: str = "ct"
    zoom_in: bool = False  # the engine's optional zoom-in (volume mode; core.engine.CubePolicy)


@dataclass(frozen=True)
class GtStats:
    """A ground-truth class: its bounding box (slices), voxel count and centre (voxel index,
    the mean of its voxels')."""

    box: tuple[slice, ...]
    count: int
    centre: np.ndarray


@dataclass
class ObjectState:
    """One structure: its prompts, its latest result and the settings that made it."""

    prompts: PromptSet | None = None
    result: Result | None = None
    settings: Settings | None = None
    history: list = field(default_factory=list)  # [(prompts, result, settings)] before each step

    @property
    def n_prompts(self) -> int:
        if self.prompts is None:
            return 0
        return len(self.prompts.clicks) + (self.prompts.box is not None)

    def push(self, prompts, result, settings) -> None:
        self.history.append((self.prompts, self.result, self.settings))
        del self.history[:-HISTORY]
        self.prompts, self.result, self.settings = prompts, result, settings

    def redo(self, result, settings) -> None:
        """The same prompts' result under other settings: not an undo step (undo goes back a
        prompt, and the page's settings stay as chosen)."""
        self.result, self.settings = result, settings

    def pop(self) -> bool:
        """Undo the last step; False when there is nothing to undo."""
        if not self.history:
            return False
        self.prompts, self.result, self.settings = self.history.pop()
        return True


class Session:
    """Everything one browser tab works on.

    Parameters
    ----------
    root : folder the session's temporary folder is created in
    """

    def __init__(self, root: str | Path | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="session-", dir=root))
        self.session_hash: str | None = None
        self._volume: Volume | None = None
        self.name = ""
        self.grid: SourceGrid | None = None  # the uploaded file's own grid (None for the sample)
        # the server paths of the uploads loaded (None for the sample), for the upload boxes
        self.volume_file: str | None = None
        self.label_file: str | None = None
        self.gt: LabelVolume | None = None
        self.gt_classes: list[int] = []  # its non-zero values, sorted (set_gt)
        self.class_names: dict[int, str] = {}
        self.gt_meshes: dict = {}  # ground-truth class -> core.mesh.Mesh, made once
        self._gt_boxes: dict = {}  # ground-truth class -> its bounding box (slices)
        self._gt_stats: dict[int, GtStats] = {}
        # object index -> (its result, its class, its metrics row): a step recomputes only
        # the objects whose result changed
        self.metric_rows: dict[int, tuple] = {}
        self.window = (0.0, 1.0)
        self.axis = 2
        self.slice_idx = 0
        self.objects: list[ObjectState] = [ObjectState()]
        self.corner: tuple[int, int, int, int] | None = None  # (axis, idx, row, col) of a box
        self._cleared: list[list[ObjectState]] = []  # the objects before each "clear"
        self._steps = itertools.count(1)
        self.closed = False
        # held by each page event that changes the session (gradio_app.events.one_at_a_time)
        self.lock = threading.Lock()

    # ----------------------------------------------------------------------------------------

    @property
    def volume(self) -> Volume | None:
        """The loaded volume (None before one is); :class:`SessionClosed` once the session
        closed, so a request still running on it stops there, as the closed-tab case."""
        if self.closed:
            raise SessionClosed("the session is closed (its tab closed)")
        return self._volume

    @volume.setter
    def volume(self, value: Volume | None) -> None:
        self._volume = value

    def set_volume(self, volume: Volume, name: str, grid=None, file=None) -> None:
        from gradio_app.render import intensity_window

        self.volume, self.name, self.grid = volume, name, grid
        self.volume_file = None if file is None else os.fspath(file)
        self.set_gt(None)
        self.window = intensity_window(volume.data)
        self.axis = 2
        self.slice_idx = volume.shape[2] // 2
        self.reset_objects()

    def unload(self) -> None:
        """No volume, ground truth or objects, as a new session (the upload box cleared)."""
        self.volume, self.name, self.grid, self.volume_file = None, "", None, None
        self.set_gt(None)
        self.window = (0.0, 1.0)
        self.axis, self.slice_idx = 2, 0
        self.reset_objects()

    def set_gt(self, gt, class_names=None, boxes=None, file=None) -> None:
        """The ground truth, its classes' names, and its classes' bounding boxes
        (``core.labelmap.class_boxes``, when the caller has them: each scan is a pass over the
        whole map); its classes are the boxes' keys."""
        from core.labelmap import class_boxes

        self.gt, self.class_names, self.gt_meshes = gt, dict(class_names or {}), {}
        if gt is not None and boxes is None:
            boxes = class_boxes(gt.data)
        self._gt_boxes, self._gt_stats, self.metric_rows = dict(boxes or {}), {}, {}
        self.gt_classes = sorted(self._gt_boxes)  # its non-zero values
        self.label_file = None if file is None else os.fspath(file)

    def reset_objects(self) -> None:
        """No objects, and none to bring back (a new volume, or the session's end)."""
        self.objects = [ObjectState()]
        self.corner = None
        self._cleared = []

    def clear_objects(self) -> bool:
        """Remove every object and prompt as one undo step; False when there was none."""
        self.corner = None
        if not any(o.n_prompts for o in self.objects):
            return False
        self._cleared.append(self.objects)
        del self._cleared[:-CLEARS]
        self.objects = [ObjectState()]
        return True

    def restore_cleared(self) -> bool:
        """Undo the last "clear" (the objects come back with their own undo history); False
        when there is none to undo. Only once the objects made since are undone: undo goes
        back one step at a time."""
        if not self._cleared or len(self.objects) > 1 or self.current.n_prompts:
            return False
        self.objects = self._cleared.pop()
        return True

    @property
    def current(self) -> ObjectState:
        return self.objects[-1]

    @property
    def done(self) -> list[tuple[int, ObjectState]]:
        """``(index, object)`` of the objects that have a non-empty result."""
        return [
            (i, o)
            for i, o in enumerate(self.objects)
            if o.result is not None and o.result.mask.any()
        ]

    def gt_stats(self, cls: int) -> GtStats | None:
        """The bounding box, voxel count and centre of a ground-truth class (None when it has
        no voxels). The boxes of every class come from one pass over the map, the first time;
        the rest reads the class's box alone."""
        if self.gt is None:
            return None
        if cls not in self._gt_stats:
            box = self._gt_boxes.get(cls)
            if box is None:
                return None
            inside = np.argwhere(self.gt.data[box] == cls)
            # the centre as np.argwhere(gt == cls).mean(0) gives it: the same voxels in the same
            # order, offset by the box's corner
            centre = (inside + np.array([b.start for b in box])).mean(0)
            self._gt_stats[cls] = GtStats(box, len(inside), centre)
        return self._gt_stats[cls]

    def gt_class_at(self, obj: ObjectState) -> int | None:
        """The ground-truth class an object stands for: the label under its first positive
        click (or its box's centre), else the class it overlaps most; None without one."""
        if self.gt is None or obj.result is None:
            return None
        labels = self.gt.data
        p = obj.prompts
        if p.positives:
            v = p.positives[0].voxel_index()
            if all(0 <= a < n for a, n in zip(v, labels.shape, strict=True)) and labels[v]:
                return int(labels[v])
        elif p.box is not None:
            from core.geometry import slice_voxel_index

            b = p.box
            v = slice_voxel_index(
                b.axis, b.slice_idx, (b.r0 + b.r1 - 1) // 2, (b.c0 + b.c1 - 1) // 2
            )
            if labels[tuple(int(x) for x in v)]:
                return int(labels[tuple(int(x) for x in v)])
        hit = labels[obj.result.mask]
        hit = hit[hit > 0]
        if hit.size == 0:
            return None
        return int(np.bincount(hit).argmax())

    def class_name(self, value: int) -> str:
        return self.class_names.get(value, f"label {value}")

    # ----------------------------------------------------------------------------------------
    # files

    def step_dir(self) -> Path:
        """A fresh folder for this update's files; old ones are pruned."""
        if self.closed:
            raise SessionClosed("the session is closed (its tab closed)")
        d = self.dir / f"step-{next(self._steps):05d}"
        d.mkdir(parents=True)
        steps = sorted(p for p in self.dir.iterdir() if p.name.startswith("step-"))
        for old in steps[:-KEEP_STEPS]:
            shutil.rmtree(old, ignore_errors=True)
        return d

    def close(self) -> None:
        """Remove the session's files (idempotent)."""
        self.closed = True
        self.unload()
        shutil.rmtree(self.dir, ignore_errors=True)
