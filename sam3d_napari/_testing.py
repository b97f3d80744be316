"""Helpers for the plugin's tests, benchmark and screenshot script (not used by the widgets).

- :func:`click` replays a mouse press and release on a viewer through napari's own
  mouse-callback machinery, at a world position (as a user's click on the canvas);
  :func:`click_voxel` goes to the slice through an image layer's voxel and clicks it.
- :class:`StallMonitor` measures how long the Qt event loop goes without running: a precise
  timer ticks every few milliseconds on the GUI thread; a late tick is a stall.
- :func:`tiny_base` writes small random base weights, so fine-tune tests run in seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

__all__ = [
    "click",
    "click_voxel",
    "StallMonitor",
    "tiny_base",
    "wait_until",
    "TINY_MODEL",
    "TINY_TRAINING",
]

#: A model small enough for tests on 2 CPU cores (as tests/conftest.py's tiny_model_config).
TINY_MODEL = {
    "cube_size": 16,
    "view_size": 16,
    "patch": 8,
    "dim": 32,
    "depth": 1,
    "heads": 2,
    "enc_channels": (24, 24, 32),
    "dec_channels": (24, 24, 0),
}
#: Overrides that keep a fine-tune of the tiny model short (core.cubes' refinement prompts
#: need cubes larger than 16^3, so they are off).
TINY_TRAINING = (
    "sampling.p_refine=0.0",
    "training.val_items=2",
    "training.warmup_steps=1",
    "data.spacing=4.0",
)


class _Persisted:
    """napari swaps the wrapped event of a drag generator on move and release."""

    def __init__(self, event):
        self.__wrapped__ = event

    def __getattr__(self, name):
        return getattr(self.__wrapped__, name)


class _MouseEvent:
    def __init__(self, kind, position, modifiers, button, pos):
        self.type = kind
        self.position = tuple(float(x) for x in position)
        self.modifiers = list(modifiers)
        self.button = button
        self.pos = np.asarray(pos, dtype=float)
        self.is_dragging = kind == "mouse_move"
        self.handled = False


def click(viewer, world, *, modifiers=(), button: int = 1, drag_pixels: float = 0.0) -> None:
    """Press and release the mouse at ``world`` (napari world coordinates) on ``viewer``.

    ``drag_pixels`` moves the mouse between press and release (a pan, not a click, when
    larger than a few pixels).
    """
    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    start = np.array([100.0, 100.0])
    press = _Persisted(_MouseEvent("mouse_press", world, modifiers, button, start))
    mouse_press_callbacks(viewer, press)
    if drag_pixels:
        end = start + drag_pixels
        mouse_move_callbacks(viewer, _MouseEvent("mouse_move", world, modifiers, button, end))
    else:
        end = start
    mouse_release_callbacks(viewer, _MouseEvent("mouse_release", world, modifiers, button, end))


def click_voxel(viewer, image_layer, voxel, **kw) -> np.ndarray:
    """Go to the slice through ``voxel`` (an index of ``image_layer``'s array, as in
    ``core.clicks.Click.voxel()``) on the current view and :func:`click` its world point
    (``kw``: as for :func:`click`). Returns the world point."""
    from core.io import voxel_to_world
    from sam3d_napari._layers import meta_affine

    world = voxel_to_world(meta_affine(image_layer), np.asarray(voxel, float))
    for d in viewer.dims.not_displayed:
        viewer.dims.set_point(d, world[d])
    click(viewer, world, **kw)
    return world


def wait_until(predicate, timeout: float = 120.0, interval: float = 0.01) -> None:
    """Process Qt events until ``predicate()`` is true (TimeoutError after ``timeout`` s)."""
    from qtpy.QtWidgets import QApplication

    t0 = time.perf_counter()
    while not predicate():
        QApplication.processEvents()
        time.sleep(interval)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"condition not met within {timeout} s")


class StallMonitor:
    """The longest time the Qt event loop went without servicing a timer.

    A ``PreciseTimer`` fires every ``interval_ms`` on the GUI thread; the longest gap between
    two ticks, minus the interval, is the longest stall a user could have felt (a frozen
    viewer). Use as a context manager or with :meth:`start` / :meth:`stop`.
    """

    def __init__(self, interval_ms: int = 5):
        from qtpy.QtCore import Qt, QTimer

        self.interval_ms = interval_ms
        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._last = None
        self._t0 = 0.0
        self.gaps_ms: list[float] = []
        self.ends_s: list[float] = []  # when each gap ended, seconds after start()

    def _tick(self):
        now = time.perf_counter()
        if self._last is not None:
            self.gaps_ms.append((now - self._last) * 1000.0)
            self.ends_s.append(now - self._t0)
        self._last = now

    def start(self):
        self._last, self.gaps_ms, self.ends_s = None, [], []
        self._t0 = time.perf_counter()
        self._timer.start()
        return self

    @property
    def longest_stall_at_s(self) -> float | None:
        """When the longest stall ended, seconds after :meth:`start`."""
        if not self.gaps_ms:
            return None
        return round(self.ends_s[int(np.argmax(self.gaps_ms))], 2)

    def stop(self) -> float:
        self._timer.stop()
        return self.longest_stall_ms

    @property
    def longest_stall_ms(self) -> float:
        return max(0.0, max(self.gaps_ms, default=0.0) - self.interval_ms)

    @property
    def ticks(self) -> int:
        return len(self.gaps_ms)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def tiny_base(path) -> Path:
    """Random tiny base weights at ``path`` (``.safetensors`` + ``.json``); returns the path."""
    import torch

    from core.model import ModelConfig, Sam3DMed
    from core.weights import save_weights

    torch.manual_seed(0)
    model = Sam3DMed(ModelConfig(**TINY_MODEL))
    return save_weights(model, path, metadata={"trained_on": "nothing (random, for tests)"})
