"""What the widgets docked on one viewer share: the model and the adapters on offer.

One :class:`Session` per viewer (:func:`session_for`): Reconstruct and Fine-tune docked on the
same viewer see the same base weights, the same loaded model and the same list of adapters,
so an adapter trained in Fine-tune is selectable in Reconstruct the moment it is saved.

The model is loaded in a worker thread (never at import or on the GUI thread): when the
Reconstruct widget opens or its weights change (:meth:`Session.preload`, which also merges the
chosen adapter and warms up), or else on first use.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path

from qtpy.QtCore import QObject, Signal

__all__ = ["Session", "session_for", "BASE_CHOICE"]

BASE_CHOICE = "built-in base"

# Keyed by id(viewer); each entry is dropped when its viewer is garbage-collected.
_SESSIONS: dict[int, Session] = {}


class Session(QObject):
    """Model and adapters shared by the widgets of one viewer.

    Attributes
    ----------
    base_weights : path of the base weights (``.safetensors`` + ``.json``); None: shipped base
    adapters : display name -> adapter folder, the adapters trained or added in this session
    """

    adapters_changed = Signal()

    def __init__(self, base_weights: str | os.PathLike | None = None):
        super().__init__()
        self.base_weights = None if base_weights is None else str(base_weights)
        self.adapters: dict[str, Path] = {}
        self._rec = None
        self._rec_base = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------- weights

    def set_base_weights(self, path: str | os.PathLike | None) -> None:
        """Use other base weights (the model reloads on next use; adapters must match it).
        Never waits: a load or a reconstruction in progress finishes with the old weights."""
        self.base_weights = None if path is None else str(path)

    def base_model_config(self) -> dict:
        """The base's ModelConfig as a dict (what a fine-tune must train on top of)."""
        from core.weights import read_weights_info, shipped_base_path

        return dict(read_weights_info(self.base_weights or shipped_base_path())["model"])

    def add_adapter(self, name: str, folder: str | os.PathLike) -> str:
        """Offer an adapter folder under ``name`` (made unique); returns the name used."""
        base, k = name, 2
        while name in self.adapters and self.adapters[name] != Path(folder):
            name = f"{base} ({k})"
            k += 1
        self.adapters[name] = Path(folder)
        self.adapters_changed.emit()
        return name

    # ---------------------------------------------------------------------------- inference

    def predict(self, volume, prompts, *, adapter=None, zoom_in=False, **kwargs):
        """``Reconstructor.predict`` with ``adapter`` (None, a shipped name or a folder)
        active and the engine's default cube policy, with its optional zoom-in if
        ``zoom_in``; loads the model on first use. Call from a worker thread: everything that
        imports torch happens here, never on the GUI thread (a first click would freeze the
        window for the seconds torch's import takes)."""
        from core.engine import CubePolicy

        with self._lock:
            rec = self._reconstructor()
            rec.set_adapter(adapter)  # merged once per folder and write time, then reused
            return rec.predict(volume, prompts, policy=CubePolicy(zoom_in=zoom_in), **kwargs)

    @property
    def ready(self) -> bool:
        """The model is loaded and warmed up (a hint, read without the lock)."""
        rec = self._rec
        return rec is not None and rec.warm and self._rec_base == self.base_weights

    def preload(self, adapter=None) -> None:
        """Load the model, merge ``adapter`` (None, a shipped name or a folder) and warm up
        (``Reconstructor.warm_up``), so that the first click runs at full speed instead of
        paying torch's import, the load, the adapter's merge and the first forward's setup.
        Call from a worker thread; what is already done is not done again."""
        with self._lock:
            rec = self._reconstructor()
            rec.set_adapter(adapter)
            rec.warm_up()

    def _reconstructor(self):
        from core.engine import Reconstructor

        base = self.base_weights  # read once: set_base_weights may change it meanwhile
        if self._rec is None or self._rec_base != base:
            self._rec = Reconstructor.from_pretrained(base)
            self._rec_base = base
        return self._rec


def session_for(viewer) -> Session:
    """The viewer's session (created on first request)."""
    key = id(viewer)
    s = _SESSIONS.get(key)
    if s is None:
        s = Session()
        _SESSIONS[key] = s
        weakref.finalize(viewer, _SESSIONS.pop, key, None)
    return s
