"""Small pieces the three widgets share: layer lists, volumes from layers, messages, rows."""

from __future__ import annotations

import atexit

import numpy as np
from magicgui.widgets import Container, Label
from qtpy.QtCore import QEvent, QObject

from sam3d_napari._layers import layer_transform, meta_affine, move_layer

__all__ = [
    "layers_of",
    "layer_choices",
    "volume_of",
    "labels_of",
    "notify",
    "one_line",
    "row",
    "form",
    "StatusLabel",
    "placed_like",
    "start_worker",
    "announce_none",
    "on_close",
]

EXIT_WAIT_S = 120  # the longest a Python exit waits for workers still running


def layers_of(viewer, kind: str, *, ndim: int = 3) -> list:
    """The viewer's layers of one kind (``"image"``, ``"labels"``, ``"surface"``...); RGB
    images are left out (a grey-value volume is needed)."""
    return [
        lyr
        for lyr in viewer.layers
        if type(lyr).__name__.lower() == kind
        and getattr(lyr, "ndim", 0) == ndim
        and not getattr(lyr, "rgb", False)
    ]


def layer_choices(viewer, *kinds: str, exclude=()):
    """A magicgui ``choices`` callable listing the layers of ``kinds`` by name."""

    def choices(_widget=None):
        out = []
        for kind in kinds:
            out += [(lyr.name, lyr) for lyr in layers_of(viewer, kind) if lyr not in exclude]
        return out

    return choices


def volume_of(layer):
    """A ``core.io.Volume`` of an Image layer, in world mm (the layer's own transform)."""
    from core.io import Volume

    data = np.asarray(layer.data)
    if data.ndim != 3:
        raise ValueError(f"layer {layer.name!r} is {data.ndim}D; a 3D volume is needed")
    if getattr(layer, "rgb", False):
        raise ValueError(f"layer {layer.name!r} is an RGB image; a grey-value volume is needed")
    path = (layer.metadata or {}).get("source_path") or layer.name
    return Volume(np.ascontiguousarray(data, dtype=np.float32), meta_affine(layer), path)


def labels_of(layer):
    """(data (I, J, K) integer array, (4, 4) affine) of a Labels layer."""
    data = np.asarray(layer.data)
    if data.ndim != 3:
        raise ValueError(f"layer {layer.name!r} is {data.ndim}D; a 3D label map is needed")
    return data, meta_affine(layer)


def placed_like(layer) -> dict:
    """Layer keyword arguments that put a new layer on ``layer``'s grid (same world place,
    same metadata for the writers)."""
    meta = dict(layer.metadata or {})
    keep = {k: meta[k] for k in ("affine", "source_affine", "source_path") if k in meta}
    return {**layer_transform(meta_affine(layer)), "metadata": keep}


def place_like(target, layer) -> None:
    """Move an existing layer onto ``layer``'s grid (what :func:`placed_like` gives a new one),
    e.g. after the user moved the image under it; nothing when it sits there already."""
    if move_layer(target, meta_affine(layer)):
        target.metadata = {**(target.metadata or {}), **placed_like(layer)["metadata"]}


def one_line(exc: BaseException) -> str:
    """An exception as one line: the message of our errors, else ``Type: message``."""
    from core.errors import InputError

    text = str(exc).strip().replace("\n", " ")
    if isinstance(exc, (InputError, ValueError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def notify(message: str, level: str = "info") -> None:
    """A napari notification (one line, no traceback)."""
    from napari.utils.notifications import show_error, show_info, show_warning

    {"info": show_info, "warning": show_warning, "error": show_error}[level](message)


def form(*widgets) -> Container:
    """Labelled fields, one per line."""
    c = Container(widgets=list(widgets), labels=True)
    c.margins = (0, 0, 0, 0)
    return c


def row(*widgets, labels: bool = False) -> Container:
    """Widgets side by side."""
    c = Container(widgets=list(widgets), layout="horizontal", labels=labels)
    c.margins = (0, 0, 0, 0)
    return c


class StatusLabel(Label):
    """A wrapping, selectable label for status lines."""

    def __init__(self, value: str = ""):
        super().__init__(value=value)
        self.native.setWordWrap(True)
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QSizePolicy

        self.native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # magicgui labels are fixed-size; a status line takes the dock's whole width
        self.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def show_message(self, text: str, level: str = "info") -> None:
        color = {"info": "", "warning": "#e0a030", "error": "#ff5050"}[level]
        self.native.setStyleSheet(f"color: {color}" if color else "")
        self.value = text


def reset_choices_in_order(combo) -> None:
    """``combo.reset_choices()`` that keeps the order its choices callable gives (magicgui
    keeps the items it has and appends new ones at the end). The chosen entry stays chosen
    without a change event; if it is gone, the change is announced."""
    value = combo.value
    with combo.changed.blocked():
        combo.native.clear()
        combo.reset_choices()
        if value in combo.choices:
            combo.value = value
    if combo.value != value:
        combo.changed.emit(combo.value)


def announce_none(combo) -> None:
    """Have ``combo.changed`` also fire when its value becomes None: an entry whose data is
    None is chosen (Reconstruct's built-in base), or the last choice went away (the last
    image layer was removed). magicgui's ComboBox stays silent there (None is its null
    value). Blocking ``combo.changed`` blocks this too."""

    def on_index(*_):
        if combo.value is None:
            combo.changed.emit(None)

    combo.native.currentIndexChanged.connect(on_index)


class _CloseWatcher(QObject):
    """Calls back once when its widget is destroyed or taken out of its dock (napari's
    close button takes the widget out of its dock and keeps it alive: it is never
    destroyed while the viewer holds its callbacks)."""

    def __init__(self, widget, callback):
        super().__init__(widget)
        self._callback = callback
        self._docked = widget.parent() is not None
        self._done = False
        widget.installEventFilter(self)
        widget.destroyed.connect(self._close)

    def eventFilter(self, obj, event):
        if event.type() == QEvent.Type.ParentChange:
            if obj.parent() is not None:
                self._docked = True
            elif self._docked:
                self._close()
        return False

    def _close(self, *_):
        if not self._done:
            self._done = True
            self._callback()


def on_close(widget, callback) -> QObject:
    """Call ``callback()`` once when the QWidget ``widget`` is closed: destroyed, or taken
    out of the dock it was in (napari's close button). Returns the watcher (keep it)."""
    return _CloseWatcher(widget, callback)


def start_worker(worker) -> None:
    """Start a napari worker (``create_worker``'s) that Python's exit waits for.

    Closing the viewer leaves a running worker running. If Python then exits, PyQt deletes
    the worker's signals object at exit and the worker's ``finished.emit()`` aborts the process
    ("wrapped C/C++ object of type WorkerBaseSignals has been deleted"). napari's event loop
    waits for workers when the app quits; a script or notebook that closes the viewer never
    gets there. So each start (re)registers an ``atexit`` handler, which runs before PyQt's
    own cleanup (the last registered runs first) and waits up to :data:`EXIT_WAIT_S` for the
    running workers. Closing the viewer itself never waits.
    """
    atexit.unregister(_await_workers)
    atexit.register(_await_workers)
    worker.start()


def _await_workers() -> None:
    from napari.qt.threading import WorkerBase

    try:
        WorkerBase.await_workers(msecs=int(EXIT_WAIT_S * 1000))
    except RuntimeError:  # still running: nothing more can be done at exit
        pass
