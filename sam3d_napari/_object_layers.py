"""The current object's layers in napari: its mask (a Labels layer on the image's grid) and its
surface (a Surface layer in world mm), made on first use, kept on the image's grid when the
user moves the image, hidden and emptied when there is nothing to show (saving it then says
so, instead of writing an earlier result's surface)."""

from __future__ import annotations

import numpy as np

from sam3d_napari._qt_common import place_like, placed_like

OBJECT_COLOR = (1.0, 0.85, 0.1, 1.0)


class ObjectLayers:
    """The mask and surface layers of the object being reconstructed on one image."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.mask = None  # napari Labels layer
        self.surface = None  # napari Surface layer

    def _present(self, layer) -> bool:
        return layer is not None and layer in self.viewer.layers

    def forget(self):
        """Another image: its layers stay in the viewer but are no longer this object's."""
        self.mask = self.surface = None

    def forget_removed(self):
        """The user removed a layer: make a new one when next needed."""
        if not self._present(self.mask):
            self.mask = None
        if not self._present(self.surface):
            self.surface = None

    def _no_surface(self):
        if self.surface is not None:
            self.surface.data = (np.zeros((0, 3)), np.zeros((0, 3), int), np.zeros(0))
            self.surface.visible = False

    def show(self, result, image):
        """Draw ``result`` (a ``core.engine.Result`` on ``image``'s grid); None empties."""
        from napari.utils.colormaps import DirectLabelColormap

        if result is None:
            if self.mask is not None:
                self.mask.data = np.zeros(self.mask.data.shape, np.uint8)
            self._no_surface()
            return
        mask = result.mask.astype(np.uint8)
        if not self._present(self.mask):
            self.mask = self.viewer.add_labels(
                mask,
                name=f"{image.name} object",
                opacity=0.55,
                colormap=DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 1: OBJECT_COLOR}),
                **placed_like(image),
            )
        else:
            place_like(self.mask, image)  # the image moved: the object goes with it
            self.mask.data = mask
        if result.mesh is None or not result.mesh.n_faces:
            self._no_surface()
            return
        data = (result.mesh.vertices, result.mesh.faces, np.ones(result.mesh.n_vertices))
        if not self._present(self.surface):
            self.surface = self.viewer.add_surface(
                data,
                name=f"{image.name} surface",
                colormap="yellow",
                contrast_limits=(0, 1),
                shading="smooth",
                opacity=0.9,
            )
        else:
            self.surface.data = data
            self.surface.visible = True
