"""What the Reconstruct widget's tests share: the sample heart in a viewer with the widget
docked, a click on a voxel, waiting for the result. The ``shipped_model`` and ``fast_model``
fixtures are in conftest.py."""

from __future__ import annotations

import numpy as np

PLUGIN = "sam3d-napari"
RECONSTRUCT = "Reconstruct (click to 3D)"
LV, RV = 2, 4  # the sample heart's left and right ventricles


def sample(viewer):
    """The sample heart opened and Reconstruct docked: (widget, image layer, labels array)."""
    viewer.open_sample(PLUGIN, "heart")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, RECONSTRUCT)
    image = viewer.layers["heart CT (synthetic)"]
    gt = viewer.layers["heart labels (ground truth)"]
    return widget, image, np.asarray(gt.data)


def click_at(viewer, widget, voxel, **kw):
    """A click on the canvas at the world point of ``voxel`` on the current view."""
    from sam3d_napari._testing import click_voxel

    return click_voxel(viewer, widget.image_layer, voxel, **kw)


def wait_result(widget, qtbot, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.busy and widget.result is not None, timeout=timeout)


def organ_click(gt, label):
    from core.clicks import first_click

    return first_click(gt == label)
