"""Reconstruct's model preload: load, merge the chosen adapter and warm up in a worker.

A fresh session's first click used to pay for torch's import, the model's load, an adapter's
merge and the first forward's setup (2.3-2.6 s with the base, 5.6-5.9 s with an adapter;
BENCHMARKS.md, "the first click"). The widget starts a :class:`Preloader` when it opens and
when its weights change, while the user opens an image and finds the slice. A click during
the preload waits for it in its own worker (``Session`` holds one lock for both).
"""

from __future__ import annotations

from sam3d_napari._qt_common import one_line, start_worker

__all__ = ["Preloader", "LOADING", "READY"]

LOADING = "Loading the model in the background..."
READY = "Model ready."


class Preloader:
    """Runs ``session.preload(adapter)`` in a napari worker and says how it went.

    Parameters
    ----------
    session : the viewer's ``Session``
    adapter_of : () -> the adapter to merge (None, a shipped name or a folder); a ValueError
        (no folder chosen yet, not an adapter) means the base: a click will say why
    timing, status : the widget's labels: ``timing`` reads :data:`LOADING`, then :data:`READY`;
        a failure goes to ``status``
    """

    def __init__(self, session, adapter_of, timing, status):
        self.session = session
        self._adapter_of = adapter_of
        self.timing = timing
        self.status = status
        self.alive = True  # False once the widget is gone: its labels are not touched
        self._worker = None
        self._adapter = None  # what the running or last preload was started for

    @property
    def running(self) -> bool:
        return self._worker is not None

    def _adapter_now(self):
        try:
            return self._adapter_of()
        except ValueError:
            return None

    def start(self) -> None:
        """Start a preload unless one runs (it starts the next when it ends, if the weights
        changed meanwhile) or there is nothing to do (the base, already loaded and warm)."""
        from napari.qt.threading import create_worker

        if self._worker is not None:
            return
        adapter = self._adapter_now()
        if adapter is None and self.session.ready:
            return
        self.timing.value = LOADING
        self._adapter = adapter
        self._worker = create_worker(self.session.preload, adapter, _ignore_errors=True)
        self._worker.errored.connect(self._on_error)
        self._worker.finished.connect(self._on_finished)
        start_worker(self._worker)

    def _on_error(self, exc):
        if self.alive:
            self.timing.value = ""  # not ready: a click will try again and say why
            self.status.show_message(f"Loading the model failed: {one_line(exc)}", "error")

    def _on_finished(self):
        self._worker = None
        if not self.alive:
            return
        if self.timing.value == LOADING:
            self.timing.value = READY
        if self._adapter_now() != self._adapter:  # the weights changed while it ran
            self.start()
