"""Reconstruct: click an organ on any 2D slice, get its 3D mask and surface.

Clicks are world points (napari's ``event.position``) mapped to voxel indices of the chosen
image with the inverse of its affine (``core.io.world_to_voxel``); the slice they lie on is
the one the 2D view shows (napari's non-displayed axis). The prompt Points layer, the box
Shapes layer and the result Labels layer share the image's transform, so they sit on the
image in 2D and 3D; the Surface layer holds the mesh in world mm directly.

The clicks and the box, and their helper layers, are kept by ``_prompt_editor.PromptEditor``.
The model runs in a worker thread. Clicks made while it runs are kept and answered by one
more run with all of them (refining the last result), so fast clicking never queues work.
"""

from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    PushButton,
    SpinBox,
)

from core.intensity import MODALITIES
from core.labelmap import next_free_class
from core.modes import MODES, zoom_in_applies
from sam3d_napari._commit import commit_object
from sam3d_napari._layers import meta_affine, slice_axis
from sam3d_napari._object_layers import ObjectLayers
from sam3d_napari._preload import Preloader
from sam3d_napari._prompt_editor import PromptEditor
from sam3d_napari._qt_common import (
    StatusLabel,
    announce_none,
    form,
    layer_choices,
    layers_of,
    notify,
    on_close,
    one_line,
    reset_choices_in_order,
    row,
    start_worker,
    volume_of,
)
from sam3d_napari._session import BASE_CHOICE, session_for
from sam3d_napari._views import VIEWS, result_summary, set_view

__all__ = ["ReconstructWidget"]

ADAPTER_FOLDER = "adapter folder..."
NEW_LABEL_MAP = "new label map"
KEEP, OVERWRITE = "keep existing labels", "overwrite existing labels"
_DRAG_PIXELS = 5  # a press and release further apart than this is a pan, not a click


class ReconstructWidget(Container):
    """Click to 3D. See the module docstring; the README has a user guide."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=False)
        # napari hands plugins a proxy that hides private attributes; only public API is
        # used here, and layer identity checks need the real objects.
        viewer = getattr(viewer, "__wrapped__", viewer)
        self.viewer = viewer
        self.session = session_for(viewer)
        self._alive = True
        self.editor = PromptEditor(viewer, on_edit=self._after_edit, on_box=self._on_box_drawn)
        self._results: dict = {}  # (settings, actions) -> core.engine.Result
        self._failed = None  # the key whose run failed last (not re-run by itself)
        self._shown = None  # the Result on screen
        self._worker = None
        self._pending = False
        self._negative_mode = False
        self._image = None
        self.objects = ObjectLayers(viewer)  # the current object's mask and surface layers
        self._volume_cache = (None, None)
        self._view_set = False

        self.image = ComboBox(label="Image", choices=layer_choices(viewer, "image"))
        self.mode = ComboBox(label="Mode", choices=list(MODES), value="volume")
        self.modality = ComboBox(label="Modality", choices=list(MODALITIES), value="ct")
        self.weights = ComboBox(label="Weights", choices=self._weight_choices)
        self.adapter_dir = FileEdit(label="Adapter folder", mode="d", visible=False)
        self.negative = CheckBox(text="Negative clicks (N; or Shift+click)", value=False)
        self.auto_run = CheckBox(text="Run on every click", value=True)
        # the engine's optional zoom-in (volume mode): BENCHMARKS.md, "Zoom-in re-checked"
        self.zoom_in = CheckBox(text="Zoom in on small compact organs (volume mode)", value=False)
        self.zoom_in.tooltip = (
            "Look again at a finer scale when the organ fills under 30 % of the first cube. "
            "Helps compact organs such as heart chambers; hurts thin tubes such as the "
            "spinal cord."
        )
        self.run_button = PushButton(text="Run")
        self.box_button = PushButton(text="Draw box")
        self.undo_button = PushButton(text="Undo click")
        self.clear_button = PushButton(text="Clear")
        self.status = StatusLabel("Choose an image, then click an organ on a 2D slice.")
        self.timing = StatusLabel("")
        self._preloader = Preloader(self.session, lambda: self.adapter, self.timing, self.status)
        self.class_id = SpinBox(label="Class id", min=1, max=65535, value=1)
        self.target = ComboBox(label="Label map", choices=self._target_choices)
        self.overlap = ComboBox(label="Already labelled", choices=[KEEP, OVERWRITE], value=KEEP)
        self.commit_button = PushButton(text="Commit object")
        self.view_buttons = {name: PushButton(text=name) for name in (*VIEWS, "3D")}

        self.extend(
            [
                form(self.image, self.mode, self.modality, self.weights, self.adapter_dir),
                self.negative,
                self.auto_run,
                self.zoom_in,
                row(self.run_button, self.box_button, self.undo_button, self.clear_button),
                self.status,
                self.timing,
                form(self.class_id, self.target, self.overlap),
                self.commit_button,
                row(*self.view_buttons.values()),
            ]
        )
        for combo in (self.image, self.weights):  # the last image removed; the base chosen
            announce_none(combo)
        self.image.changed.connect(self._on_image_changed)
        for w in (self.mode, self.modality, self.zoom_in):
            w.changed.connect(self._on_settings_changed)
        self.mode.changed.connect(self._on_mode_changed)
        self.modality.changed.connect(self._on_modality_changed)
        self.weights.changed.connect(self._on_weights_changed)
        self.adapter_dir.changed.connect(self._on_settings_changed)
        self.adapter_dir.changed.connect(self._start_preload)
        self.run_button.changed.connect(self.run)
        self.box_button.changed.connect(self.start_box)
        self.undo_button.changed.connect(self.undo)
        self.clear_button.changed.connect(self.clear)
        self.commit_button.changed.connect(self.commit)
        self.negative.changed.connect(self._on_negative_toggled)
        for name, b in self.view_buttons.items():
            b.changed.connect(lambda *_, n=name: self.set_view(n))
        self.session.adapters_changed.connect(self._refresh_weights)
        for ev in ("inserted", "removed", "reordered"):
            getattr(viewer.layers.events, ev).connect(self._on_layers_changed)
        viewer.mouse_drag_callbacks.append(self._on_mouse)
        viewer.bind_key("n", self._toggle_negative, overwrite=True)
        # closed (destroyed, or napari's close button): no more clicks, no more layers
        self._close_watcher = on_close(self.native, self._on_destroyed)
        self._on_image_changed(self.image.value)
        self._start_preload()  # while the user opens an image and finds the slice

    # ------------------------------------------------------------------------------ choices

    def _weight_choices(self, _w=None):
        from core.weights import list_shipped_adapters

        out = [(BASE_CHOICE, None)]
        out += [(f"{name} (shipped)", name) for name in list_shipped_adapters()]
        out += [(f"{name} (fine-tuned)", str(p)) for name, p in self.session.adapters.items()]
        out.append((ADAPTER_FOLDER, ADAPTER_FOLDER))
        return out

    def _target_choices(self, _w=None):
        out = [(NEW_LABEL_MAP, None)]
        img = self._image
        if img is not None:
            for lyr in layers_of(self.viewer, "labels"):
                if lyr is self.objects.mask or lyr.data.shape != img.data.shape:
                    continue
                if np.allclose(meta_affine(lyr), meta_affine(img), atol=1e-3):
                    out.append((lyr.name, lyr))
        return out

    def _refresh_weights(self):
        reset_choices_in_order(self.weights)  # a new adapter goes before "adapter folder..."

    def _on_layers_changed(self, event=None):
        if not self._alive:
            return
        self.image.reset_choices()
        self.target.reset_choices()
        self.editor.forget_removed_layers()
        self.objects.forget_removed()

    # ------------------------------------------------------------------------------ settings

    @property
    def adapter(self):
        """The adapter to use: None (base), a shipped name or a folder."""
        v = self.weights.value
        if v == ADAPTER_FOLDER:
            path = self.adapter_dir.value
            if not path or str(path) in ("", "."):
                raise ValueError("choose the adapter folder (Weights: adapter folder...)")
            p = path if path.is_dir() else path.parent  # a file inside the folder is fine
            from core.adapter_files import read_adapter_info  # torch-free: GUI thread

            read_adapter_info(p)  # not an adapter: say so now, naming the folder
            return str(p)
        return v

    def _settings(self):
        return (self.mode.value, self.modality.value, str(self.weights.value),
                str(self.adapter_dir.value) if self.weights.value == ADAPTER_FOLDER else "",
                self._zoom_in())  # fmt: skip

    def _zoom_in(self) -> bool:
        return bool(self.zoom_in.value) and zoom_in_applies(self.mode.value)

    def _on_mode_changed(self, *_):
        self.zoom_in.enabled = zoom_in_applies(self.mode.value)  # greyed out where it does nothing

    def _on_modality_changed(self, value):
        # the image keeps its modality: chosen again later, and offered by Fine-tune
        if self._image is not None:
            self._image.metadata["modality"] = str(value)

    def _on_weights_changed(self, value=None):
        self.adapter_dir.visible = self.weights.value == ADAPTER_FOLDER
        self._on_settings_changed()
        self._start_preload()  # merge the adapter now, not at the next click

    def _on_settings_changed(self, *_):
        self._results.clear()
        if self.editor.actions and self.auto_run.value and self.editor.has_positive():
            self.run()

    def _on_negative_toggled(self, value):
        self._negative_mode = bool(value)

    def _toggle_negative(self, viewer=None):
        self.negative.value = not self.negative.value

    # ------------------------------------------------------------------------------ image

    @property
    def image_layer(self):
        return self._image

    @property
    def prompt_layer(self):
        """The Points layer of the clicks (None before an image is chosen)."""
        return self.editor.points

    @property
    def box_layer(self):
        """The Shapes layer of the box (None before the first box)."""
        return self.editor.box_layer

    def _on_image_changed(self, layer):
        if layer is self._image:
            return
        self._shown = None
        # the helper layers sit on the old image's grid: prompts and box go, results stay
        self.editor.attach(layer)
        self.objects.forget()
        self._image = layer
        self._results.clear()
        self._volume_cache = (None, None)
        if layer is None:  # none left (a run in flight is not shown: its prompts are gone)
            self.status.show_message("Choose an image, then click an organ on a 2D slice.")
            return
        if layer.metadata.get("modality") in MODALITIES:
            self.modality.value = layer.metadata["modality"]
        else:  # runs with the modality on show: Fine-tune offers that one for it too
            layer.metadata["modality"] = str(self.modality.value)
        if not self._view_set and self.viewer.dims.ndisplay == 2:
            self._view_set = True
            if tuple(self.viewer.dims.order) == (0, 1, 2) and self.viewer.dims.ndim == 3:
                self.set_view("axial")
        self.status.show_message(
            f"{layer.name}: click an organ (Shift+click or N: negative click)."
        )
        self.target.reset_choices()
        self._start_preload()

    def _start_preload(self, *_):
        """Load and warm up the model in the background, with the chosen adapter merged
        (``_preload.Preloader``): when the widget opens, when the weights change, and when an
        image is chosen after the session's base weights changed. Not while a reconstruction
        runs (it loads the model itself)."""
        if self._worker is None:
            self._preloader.start()

    def _volume(self):
        img = self._image
        if img is None:
            raise ValueError("no image chosen")
        key = (id(img.data), meta_affine(img).tobytes())
        if self._volume_cache[0] != key:
            if self._volume_cache[0] is not None:  # the layer moved or got new data: the
                self._results.clear()  # results are of the old grid (no previous for it)
            self._volume_cache = (key, volume_of(img))
        return self._volume_cache[1]

    # ------------------------------------------------------------------------------ clicks

    def _click_allowed(self) -> bool:
        if self._image is None or self.editor.points is None:
            return False
        active = self.viewer.layers.selection.active
        # a layer in a drawing mode (painting labels, drawing the box) owns the click
        return str(getattr(active, "mode", "pan_zoom")) == "pan_zoom"

    def _on_mouse(self, viewer, event):
        if not self._alive or event.button != 1 or not self._click_allowed():
            return
        start = np.asarray(event.pos, dtype=float)
        moved = False
        yield
        while event.type == "mouse_move":
            if np.linalg.norm(np.asarray(event.pos, dtype=float) - start) > _DRAG_PIXELS:
                moved = True
            yield
        if moved:
            return
        mods = {str(getattr(m, "name", m)).lower() for m in event.modifiers}
        negative = self._negative_mode or bool(mods & {"shift", "control"})
        self.add_click_world(event.position, positive=not negative)

    def add_click_world(self, position, *, positive: bool = True):
        """Add a click at a world position (napari world coordinates) on the current view.

        Returns the ``core.clicks.Click`` added, or None (with a message) when the click is
        outside the volume or not on a 2D slice.
        """
        from core.clicks import Click, check_click_in_volume
        from core.errors import InputError
        from core.io import world_to_voxel

        if self._image is None:
            self.status.show_message("Choose an image first.", "warning")
            return None
        if self.viewer.dims.ndisplay != 2:
            self.status.show_message("Clicks go on a 2D slice: switch the viewer to 2D.", "warning")
            return None
        world = np.asarray(position, dtype=float)[-3:]
        axis = slice_axis(tuple(self.viewer.dims.not_displayed), self.viewer.dims.ndim)
        voxel = world_to_voxel(meta_affine(self._image), world)
        click = Click.from_voxel(voxel, axis, positive=positive)
        try:
            check_click_in_volume(click, self._image.data.shape, path=self._image.name)
        except InputError:
            w = ", ".join(f"{x:.1f}" for x in world)
            msg = f"Click at ({w}) mm is outside {self._image.name!r}: click inside the volume."
            self.status.show_message(msg, "warning")
            notify(msg, "warning")
            return None
        self.add_prompt(click)
        return click

    def add_prompt(self, prompt):
        """Add a ``Click`` or a ``Box`` (a new box replaces the previous one)."""
        self.editor.add(prompt)
        if self.auto_run.value:
            if self.editor.has_positive():
                self.run()
            else:
                self.status.show_message("Add a positive click (or a box) to start.")

    def prompts(self):
        """The current ``core.clicks.PromptSet`` (clicks in order, the last box)."""
        return self.editor.prompts()

    def _after_edit(self):
        if not self.editor.actions:
            self._show(None)
        elif self.editor.has_positive():
            if self._image is not None:
                self._volume()  # the image moved since? then its kept results are of the old grid
            cached = self._results.get(self._key())
            if cached is not None:
                self._show(cached)
            elif self.auto_run.value:
                self.run()

    def undo(self, *_):
        """Remove the last click (or box); show the result of the clicks before it."""
        if not self.editor.actions:
            self.status.show_message("Nothing to undo.")
            return
        self.editor.set(self.editor.actions[:-1])
        self._after_edit()
        if not self.editor.actions:
            self.status.show_message("All clicks undone.")

    def clear(self, *_):
        """Remove every prompt and the current (uncommitted) object."""
        self.editor.set([])
        self._show(None)
        self.status.show_message("Cleared: click the next object.")

    # ------------------------------------------------------------------------------ box

    def start_box(self, *_):
        """Draw a rectangle on the current slice: it becomes the box prompt."""
        if self._image is None:
            self.status.show_message("Choose an image first.", "warning")
            return
        self.editor.start_box()
        self.status.show_message("Drag a rectangle around the organ on this slice.")

    def _on_box_drawn(self, corners):
        try:
            box = self.box_from_corners(corners)
        except ValueError as exc:
            self.status.show_message(one_line(exc), "warning")
            return
        self.add_prompt(box)

    def box_from_corners(self, corners):
        """A ``core.clicks.Box`` from rectangle corners in voxel indices (N, 3), on the slice
        the view shows."""
        return self.editor.box_from_corners(corners)

    # ------------------------------------------------------------------------------ running

    @property
    def busy(self) -> bool:
        """A reconstruction is running."""
        return self._worker is not None

    @property
    def loading(self) -> bool:
        """The model is loading and warming up in the background (a click meanwhile waits for
        it)."""
        return self._preloader.running

    def _key(self):
        return (self._settings(), tuple(self.editor.actions))

    def run(self, *_):
        """Reconstruct from the current prompts (in a worker thread)."""
        from napari.qt.threading import create_worker

        if self._image is None:
            self.status.show_message("Choose an image first.", "warning")
            return
        if not self.editor.actions:
            self.status.show_message("Click the organ first.")
            return
        if not self.editor.has_positive():
            self.status.show_message("Add a positive click (or a box): negative clicks only "
                                     "say what the organ is not.", "warning")  # fmt: skip
            return
        if self._worker is not None:
            self._pending = True
            return
        try:
            volume = self._volume()  # first: a moved layer's results are dropped
            adapter = self.adapter
            prompts = self.prompts()
        except ValueError as exc:  # core's InputError is a ValueError
            self.status.show_message(one_line(exc), "error")
            return
        key = self._key()
        if key in self._results:
            self._show(self._results[key])
            return
        previous = self._results.get((key[0], key[1][:-1]))
        self.status.show_message(f"Reconstructing from {len(self.editor.actions)} prompt(s)...")
        self._worker = create_worker(
            self.session.predict,
            volume,
            prompts,
            adapter=adapter,
            zoom_in=self._zoom_in(),
            mode=self.mode.value,
            modality=self.modality.value,
            previous=previous,
            _ignore_errors=True,
        )
        self._worker.returned.connect(lambda res, k=key: self._on_result(k, res))
        self._worker.errored.connect(lambda exc, k=key: self._on_error(exc, k))
        self._worker.finished.connect(self._on_finished)
        start_worker(self._worker)

    def _on_result(self, key, result):
        if not self._alive:
            return
        self._results[key] = result
        if key == self._key():
            self._show(result)

    def _on_error(self, exc, key=None):
        self._failed = key  # not re-run by itself (it failed for these prompts and settings)
        msg = one_line(exc)
        self.status.show_message(f"Reconstruction failed: {msg}", "error")
        notify(msg, "error")

    def _on_finished(self):
        self._worker = None
        if not self._alive:
            return
        if self._pending or (self.editor.actions and self._key() not in self._results
                             and self._key() != self._failed
                             and self.auto_run.value and self.editor.has_positive()):  # fmt: skip
            self._pending = False
            self.run()

    # ------------------------------------------------------------------------------ display

    @property
    def result(self):
        """The ``core.engine.Result`` on screen (None before the first run)."""
        return self._shown

    @property
    def mask_layer(self):
        return self.objects.mask

    @property
    def surface_layer(self):
        return self.objects.surface

    def _show(self, result):
        self._shown = result
        self.objects.show(result, self._image)
        if result is None:
            self.timing.value = ""
            return
        self.editor.select_points()
        text = result_summary(result)
        self.timing.value = text
        if result.warnings:  # values that do not fit the modality: say so where it is read
            notes = "; ".join(result.warnings)  # all of them: fixing one should not hide another
            self.status.show_message(f"Check the Modality: {notes}.", "warning")
        else:
            self.status.show_message("Add clicks to refine, or commit the object.")

    # ------------------------------------------------------------------------------ commit

    def commit(self, *_):
        """Write the current object into the label map under the class id, then start the
        next object. Voxels already labelled with another class are kept or overwritten as
        chosen, and the message says how many."""
        result, img = self._shown, self._image
        if result is None or not result.mask.any():
            self.status.show_message("Nothing to commit: reconstruct an object first.", "warning")
            return None
        cid = int(self.class_id.value)
        target, data, msg, report = commit_object(
            self.viewer, img, self.target.value, result.mask, cid,
            overwrite=self.overlap.value == OVERWRITE,
        )  # fmt: skip
        if target is not self.target.value:  # a new label map
            self.target.reset_choices()
            self.target.value = target
        notify(msg, "warning" if report.clashes else "info")
        self.editor.set([])
        self._show(None)
        self.class_id.value = next_free_class(data, cid, maximum=self.class_id.max)
        self.status.show_message(msg + ". Click the next object.")
        return target

    # ------------------------------------------------------------------------------ view

    def set_view(self, name: str):
        """``axial``, ``coronal``, ``sagittal`` (2D, radiological) or ``3D``."""
        set_view(self.viewer, name)

    # ------------------------------------------------------------------------------ teardown

    def _on_destroyed(self, *_):
        self._alive = self._preloader.alive = False
        try:
            self.viewer.mouse_drag_callbacks.remove(self._on_mouse)
        except ValueError:
            pass
        try:
            self.viewer.bind_key("n", None)
        except (KeyError, ValueError):
            pass
        try:  # its helper layers go with it (a reopened widget makes its own)
            self.editor.attach(None)
        except Exception:  # the viewer itself is closing: its layers go anyway
            pass
