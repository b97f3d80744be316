"""The prompts of the object being made in Reconstruct, and the layers that show them.

A ``PromptEditor`` holds the clicks and the box in the order made (``actions``) and keeps
two helper layers in step with them: a Points layer (green discs for positive clicks, red
crosses for negative ones) and a Shapes layer for the box. Both share the image's transform,
so they sit on the image in 2D and 3D. Points the user deletes by hand drop their clicks; a
newly drawn rectangle replaces the previous box. The widget is told through two callbacks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sam3d_napari._layers import layer_transform, meta_affine, move_layer, slice_axis
from sam3d_napari._views import box_from_corners

POSITIVE_COLOR, NEGATIVE_COLOR = "#30e030", "#ff3030"
BOX_COLOR = "#30c0ff"


def _placement(image) -> dict:
    """Keyword arguments that put a helper layer on ``image``'s grid (no writer metadata)."""
    return layer_transform(meta_affine(image))


class PromptEditor:
    """Clicks and box for one image.

    on_edit() : called after the user deleted prompt points by hand (``actions`` changed)
    on_box(corners) : called when a rectangle was drawn, with its corners in voxel indices
        (the caller makes the box with :meth:`box_from_corners` and adds it)
    """

    def __init__(self, viewer, on_edit: Callable[[], None], on_box: Callable[[object], None]):
        self.viewer = viewer
        self.actions: list = []  # Click or Box, in the order made
        self.image = None
        self.points = None  # napari Points layer of the clicks
        self.box_layer = None  # napari Shapes layer of the box
        self._on_edit = on_edit
        self._on_box = on_box
        self._syncing = False

    # ------------------------------------------------------------------------------ image

    def attach(self, image):
        """Start over on another image (or None): its prompts go, and the helper layers of
        the old image's grid are removed."""
        self.set([])
        for lyr in (self.points, self.box_layer):
            if lyr is not None and lyr in self.viewer.layers:
                self.viewer.layers.remove(lyr)
        self.points = self.box_layer = None
        self.image = image
        if image is not None:
            self.ensure_points()

    def ensure_points(self):
        """The Points layer of the clicks, made (and selected) if it is not in the viewer."""
        if self.points is None or self.points not in self.viewer.layers:
            self.points = self.viewer.add_points(
                np.empty((0, 3)),
                name=f"{self.image.name} prompts",
                size=3,
                border_color="white",
                border_width=0.1,
                **_placement(self.image),
            )
            self.points.events.data.connect(self._on_points_edited)
            self.points.mode = "pan_zoom"
            self.viewer.layers.selection.active = self.points
        return self.points

    def follow_image(self):
        """Keep the helper layers on the image's grid: the user may have moved the image
        since they were made (a box drawn on a layer left behind would name other voxels)."""
        if self.image is None:
            return
        for lyr in (self.points, self.box_layer):
            if lyr is not None and lyr in self.viewer.layers:
                move_layer(lyr, meta_affine(self.image))

    def forget_removed_layers(self):
        """The user removed a helper layer: forget it (and the clicks it showed)."""
        if self.points is not None and self.points not in self.viewer.layers:
            self.points = None
            if self.actions:
                self.set([])
        if self.box_layer is not None and self.box_layer not in self.viewer.layers:
            self.box_layer = None

    def select_points(self):
        """Keep the clicks on top and selected, so that the next click goes to them."""
        if self.points is not None and self.points in self.viewer.layers:
            layers = self.viewer.layers
            layers.move(layers.index(self.points), len(layers))
            layers.selection.active = self.points

    # ------------------------------------------------------------------------------ prompts

    def has_positive(self) -> bool:
        from core.clicks import Box

        return any(isinstance(a, Box) or a.positive for a in self.actions)

    def prompts(self):
        """The ``core.clicks.PromptSet`` (clicks in order, the last box)."""
        from core.clicks import Box, PromptSet

        clicks = tuple(a for a in self.actions if not isinstance(a, Box))
        boxes = [a for a in self.actions if isinstance(a, Box)]
        return PromptSet(clicks=clicks, box=boxes[-1] if boxes else None)

    def add(self, prompt):
        """Add a ``Click``, or a ``Box`` (which replaces the previous box)."""
        from core.clicks import Box

        kept = self.actions
        if isinstance(prompt, Box):
            kept = [a for a in kept if not isinstance(a, Box)]
        self.set([*kept, prompt])

    def set(self, actions):
        """Replace the prompts and redraw the helper layers."""
        from core.clicks import Box

        self.actions = list(actions)
        layer = self.points
        if layer is None or layer not in self.viewer.layers:
            return
        self.follow_image()
        clicks = [a for a in self.actions if not isinstance(a, Box)]
        self._syncing = True
        try:
            layer.data = np.array([c.voxel() for c in clicks]).reshape(-1, 3)
            if clicks:
                layer.face_color = [
                    POSITIVE_COLOR if c.positive else NEGATIVE_COLOR for c in clicks
                ]
                layer.symbol = ["disc" if c.positive else "cross" for c in clicks]
            layer.selected_data = set()
        finally:
            self._syncing = False
        if self.box_layer is not None and not any(isinstance(a, Box) for a in self.actions):
            self.box_layer.data = []

    def _on_points_edited(self, event):
        # the user deleted prompt points by hand: drop those clicks too
        from core.clicks import Box

        if self._syncing or str(getattr(event, "action", "")) != "removing":
            return
        idx = {int(i) for i in getattr(event, "data_indices", ())}
        clicks = [a for a in self.actions if not isinstance(a, Box)]
        gone = {id(clicks[i]) for i in idx if 0 <= i < len(clicks)}
        self.actions = [a for a in self.actions if id(a) not in gone]  # layer is being edited
        self._on_edit()

    # ------------------------------------------------------------------------------ box

    def start_box(self):
        """Select the box layer (made if needed) in rectangle-drawing mode."""
        if self.box_layer is None or self.box_layer not in self.viewer.layers:
            self.box_layer = self.viewer.add_shapes(
                ndim=3,
                name=f"{self.image.name} box",
                edge_color=BOX_COLOR,
                face_color="transparent",
                edge_width=0.5,
                **_placement(self.image),
            )
            self.box_layer.events.data.connect(self._on_box_drawn)
        self.follow_image()
        self.viewer.layers.selection.active = self.box_layer
        self.box_layer.mode = "add_rectangle"

    def box_from_corners(self, corners):
        """A ``core.clicks.Box`` from rectangle corners in voxel indices (N, 3), on the slice
        the view shows."""
        axis = slice_axis(tuple(self.viewer.dims.not_displayed), self.viewer.dims.ndim)
        return box_from_corners(corners, axis, self.image.data.shape)

    def _on_box_drawn(self, event):
        if self._syncing or str(getattr(event, "action", "")) != "added":
            return
        layer = self.box_layer
        if not len(layer.data):
            return
        corners = np.asarray(layer.data[-1])
        self._syncing = True
        try:  # one box per object: keep the newest rectangle, back to clicking
            if len(layer.data) > 1:
                layer.data = [layer.data[-1]]
            layer.mode = "pan_zoom"
        finally:
            self._syncing = False
        if self.points is not None:
            self.viewer.layers.selection.active = self.points
        self._on_box(corners)
