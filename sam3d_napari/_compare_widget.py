"""Compare: a prediction (Labels or Surface) against ground-truth labels.

The table holds ``core.metrics.evaluate_labels`` per class (Dice, IoU, HD95, ASSD, surface
Dice, Chamfer) and exports as CSV or JSON. The overlay colours true positives, false
positives and false negatives. Side by side puts the ground truth and the prediction (each
over the image, with its surface) in napari's grid mode, whose viewboxes share one camera,
in 2D or 3D.
"""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, PushButton, SpinBox
from qtpy.QtWidgets import QAbstractItemView, QFileDialog, QTableWidget, QTableWidgetItem

from sam3d_napari._compare import (
    METRIC_COLUMNS,
    OVERLAY_COLORS,
    compare,
    error_overlay,
    prediction_on_grid,
    to_csv,
    to_json_obj,
)
from sam3d_napari._layers import label_names_of, meta_affine
from sam3d_napari._qt_common import (
    StatusLabel,
    form,
    labels_of,
    layer_choices,
    notify,
    one_line,
    placed_like,
    row,
    start_worker,
)

__all__ = ["CompareWidget"]

ALL_CLASSES = "all classes"
#: the Classes field's choices -> ``_compare.CLASS_SCOPES``
SCOPE_CHOICES = {
    "auto (predicted if fewer)": "auto",
    "predicted classes": "predicted",
    "all classes": "all",
}


class CompareWidget(Container):
    """Compare. See the module docstring; the README has a user guide."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=False)
        # napari hands plugins a proxy that hides private attributes; only public API is
        # used here, and layer identity checks need the real objects.
        viewer = getattr(viewer, "__wrapped__", viewer)
        self.viewer = viewer
        self._comparison = None
        self._pred_labels = None
        self._gt_labels = None  # the ground-truth array the comparison was computed on
        self._worker = None
        self._overlay_layer = None
        self._side_layers: list = []
        self._saved_state = None

        self.gt = ComboBox(label="Ground truth", choices=layer_choices(viewer, "labels"))
        self.pred = ComboBox(label="Prediction", choices=layer_choices(viewer, "labels", "surface"))
        self.surface_class = SpinBox(label="Surface class", min=1, max=65535, value=1)
        self.classes = ComboBox(label="Classes", choices=list(SCOPE_CHOICES))
        self.classes.tooltip = (
            "Which classes to compare and average: the prediction's own, or every class of "
            "either map (a class the prediction misses scores Dice 0). Auto takes the "
            "prediction's when it has fewer classes than the ground truth."
        )
        self.tolerance = FloatSpinBox(
            label="Surface Dice tol. (mm)", min=0.0, max=100.0, step=0.5, value=1.0
        )
        self.compute_button = PushButton(text="Compute metrics")
        self.csv_button = PushButton(text="Export CSV...")
        self.json_button = PushButton(text="Export JSON...")
        self.overlay_class = ComboBox(label="Overlay", choices=self._overlay_choices)
        self.overlay_button = PushButton(text="TP/FP/FN overlay")
        self.side_button = PushButton(text="Side by side")
        self.dim_button = PushButton(text="2D / 3D")
        self.status = StatusLabel("Pick the ground truth and a prediction, then Compute.")
        self.table = QTableWidget(0, 2 + len(METRIC_COLUMNS))
        self.table.setHorizontalHeaderLabels(["class", "name", *(t for _, t in METRIC_COLUMNS)])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(160)

        self.extend(
            [
                form(self.gt, self.pred, self.classes, self.surface_class, self.tolerance),
                row(self.compute_button, self.csv_button, self.json_button),
                self.status,
            ]
        )
        self.native.layout().addWidget(self.table)
        self.extend(
            [form(self.overlay_class), row(self.overlay_button, self.side_button, self.dim_button)]
        )
        self.pred.changed.connect(self._on_pred)
        self.compute_button.changed.connect(self.compute)
        self.csv_button.changed.connect(lambda *_: self._export_dialog(".csv"))
        self.json_button.changed.connect(lambda *_: self._export_dialog(".json"))
        self.overlay_button.changed.connect(self.show_overlay)
        self.side_button.changed.connect(self.toggle_side_by_side)
        self.dim_button.changed.connect(self._toggle_ndisplay)
        for ev in ("inserted", "removed", "reordered"):
            getattr(viewer.layers.events, ev).connect(self._reset_layers)
        self._on_pred(self.pred.value)

    def _reset_layers(self, *_):
        if self._saved_state is not None:
            return  # side by side owns the layer list until it is switched off
        self.gt.reset_choices()
        self.pred.reset_choices()

    def _overlay_choices(self, _w=None):
        classes = self._comparison.per_class if self._comparison is not None else ()
        return [ALL_CLASSES, *(str(c) for c in classes)]

    def _on_pred(self, layer):
        is_surface = type(layer).__name__ == "Surface"
        self.surface_class.visible = is_surface
        self.classes.visible = not is_surface  # a surface is one class

    # ------------------------------------------------------------------------------ metrics

    @property
    def comparison(self):
        """The last ``_compare.Comparison`` (None before Compute)."""
        return self._comparison

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _inputs(self):
        gt_layer, pred_layer = self.gt.value, self.pred.value
        if gt_layer is None or pred_layer is None:
            raise ValueError("choose a ground-truth labels layer and a prediction layer")
        if gt_layer is pred_layer:
            raise ValueError("the prediction is the ground truth itself: choose another layer")
        gt, gt_affine = labels_of(gt_layer)
        if type(pred_layer).__name__ == "Surface":
            from sam3d_napari._writer import surface_to_mesh

            mesh = surface_to_mesh(pred_layer.data, {**_attrs(pred_layer)})
            pred = ("surface", mesh.vertices, mesh.faces)
        else:
            data, affine = labels_of(pred_layer)
            pred = ("labels", data, affine)
        names = {}  # the reader's names from the dataset, the ground truth's first
        for lyr in (pred_layer, gt_layer):
            names.update(label_names_of(lyr.metadata))
        return gt, gt_affine, pred, names

    def compute(self, *_):
        """Compute the metrics in a worker thread; the table fills when done."""
        from napari.qt.threading import create_worker

        if self._worker is not None:
            return
        try:
            gt, gt_affine, pred, names = self._inputs()
        except Exception as exc:
            self.status.show_message(one_line(exc), "error")
            return
        self.status.show_message("Computing ...")
        self._worker = create_worker(
            _compute,
            gt,
            gt_affine,
            pred,
            int(self.surface_class.value),
            float(self.tolerance.value),
            names,
            SCOPE_CHOICES[self.classes.value],
            _ignore_errors=True,
        )
        self._worker.returned.connect(self._on_computed)
        self._worker.errored.connect(self._on_error)
        self._worker.finished.connect(self._on_finished)
        start_worker(self._worker)

    def _on_computed(self, out):
        comp, pred_labels, gt = out
        self._comparison, self._pred_labels, self._gt_labels = comp, pred_labels, gt
        rows = comp.rows()
        self.table.setRowCount(len(rows))
        for i, cells in enumerate(rows):
            for j, text in enumerate(cells):
                self.table.setItem(i, j, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        # wide enough for every column: the dock grows instead of hiding them
        header = self.table.horizontalHeader()
        self.table.setMinimumWidth(header.length() + 2 * self.table.frameWidth() + 4)
        self.overlay_class.reset_choices()
        note = ("; " + "; ".join(comp.notes)) if comp.notes else ""
        mean = comp.mean
        self.status.show_message(
            f"Mean over {comp.mean_over}: Dice {mean['dice']:.3f}, HD95 {mean['hd95']:.1f} mm{note}"
        )

    def _on_error(self, exc):
        msg = one_line(exc)
        self.status.show_message(f"Comparison failed: {msg}", "error")
        notify(msg, "error")

    def _on_finished(self):
        self._worker = None

    # ------------------------------------------------------------------------------ export

    def export(self, path) -> Path:
        """Write the table as ``.csv`` or ``.json`` (atomically); returns the path."""
        from core.atomic import write_json, write_text

        if self._comparison is None:
            raise ValueError("compute the metrics first")
        p = Path(path)
        if p.suffix.lower() == ".json":
            write_json(p, to_json_obj(self._comparison))
        elif p.suffix.lower() == ".csv":
            write_text(p, to_csv(self._comparison))
        else:
            raise ValueError(f"{p}: export as .csv or .json")
        return p

    def _export_dialog(self, suffix: str):
        if self._comparison is None:
            self.status.show_message("Compute the metrics first.", "warning")
            return
        kind = "CSV (*.csv)" if suffix == ".csv" else "JSON (*.json)"
        path, _ = QFileDialog.getSaveFileName(
            self.native, "Export metrics", f"metrics{suffix}", kind
        )
        if not path:
            return
        if not path.lower().endswith(suffix):
            path += suffix
        try:
            self.export(path)
        except (OSError, ValueError) as exc:
            self.status.show_message(one_line(exc), "error")
            return
        self.status.show_message(f"Saved {path}")

    # ------------------------------------------------------------------------------ overlay

    def show_overlay(self, *_):
        """A Labels layer of true positives (green), false positives (red) and false
        negatives (blue) on the ground truth's grid."""
        from napari.utils.colormaps import DirectLabelColormap

        if self._pred_labels is None:
            self.status.show_message("Compute the metrics first.", "warning")
            return None
        gt_layer = self.gt.value
        gt, _ = labels_of(gt_layer)
        choice = self.overlay_class.value
        classes = None if choice == ALL_CLASSES else [int(choice)]
        # the comparison's boxes hold every class of both maps: only they are read (the same
        # overlay), unless the ground truth is another array than the one compared
        box = None
        if gt is self._gt_labels:
            box = self._comparison.boxes.get(None if classes is None else classes[0])
        over = error_overlay(gt, self._pred_labels, classes, box=box)
        colors = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
        colors.update({k: rgba for k, (_, rgba) in OVERLAY_COLORS.items()})
        name = "TP/FP/FN"
        lyr = self._overlay_layer
        if lyr is None or lyr not in self.viewer.layers:
            self._overlay_layer = self.viewer.add_labels(
                over,
                name=name,
                opacity=0.6,
                colormap=DirectLabelColormap(color_dict=colors),
                **placed_like(gt_layer),
            )
        else:
            lyr.data = over
            lyr.visible = True
        part = over if box is None else over[box]  # nothing is marked outside the box
        counts = {n: int(np.count_nonzero(part == k)) for k, (n, _) in OVERLAY_COLORS.items()}
        self.status.show_message(
            "Overlay: " + ", ".join(f"{n} {c}" for n, c in counts.items())
            + " voxels (green TP, red FP, blue FN)"
        )  # fmt: skip
        return self._overlay_layer

    # ------------------------------------------------------------------------------ side by side

    @property
    def side_by_side(self) -> bool:
        return self._saved_state is not None

    def toggle_side_by_side(self, *_):
        """Ground truth | prediction in napari's grid (one camera for both), with their
        surfaces; again to go back to the normal view."""
        from napari.qt.threading import create_worker

        if self._saved_state is not None:
            self._leave_side_by_side()
            return
        if self._worker is not None:
            return
        gt_layer, pred_layer = self.gt.value, self.pred.value
        if gt_layer is None or pred_layer is None:
            self.status.show_message("Choose a ground truth and a prediction first.", "error")
            return
        # surfaces are meshed (and smoothed) in a worker; the layout changes when they are in
        jobs = [labels_of(gt_layer)]
        if type(pred_layer).__name__ != "Surface":
            jobs.append(labels_of(pred_layer))
        self.status.show_message("Meshing the surfaces ...")
        self._worker = create_worker(_class_meshes_all, jobs, _ignore_errors=True)
        self._worker.returned.connect(
            lambda meshes: self._enter_side_by_side(gt_layer, pred_layer, meshes)
        )
        self._worker.errored.connect(self._on_error)
        self._worker.finished.connect(self._on_finished)
        start_worker(self._worker)

    def _image_for(self, labels_layer):
        for lyr in self.viewer.layers:
            if type(lyr).__name__ == "Image" and lyr.ndim == 3:
                if lyr.data.shape == labels_layer.data.shape and np.allclose(
                    meta_affine(lyr), meta_affine(labels_layer), atol=1e-3
                ):
                    return lyr
        return None

    def _enter_side_by_side(self, gt_layer, pred_layer, meshes):
        viewer = self.viewer
        if gt_layer not in viewer.layers or pred_layer not in viewer.layers:
            self.status.show_message("The layers changed meanwhile: try again.", "warning")
            return
        layers = viewer.layers
        image = self._image_for(gt_layer)
        gt_surf = _surface_data(meshes[0], gt_layer, name=f"{gt_layer.name} surface")
        pred_surf = None
        if len(meshes) > 1:
            pred_surf = _surface_data(meshes[1], pred_layer, name=f"{pred_layer.name} surface")
        new, left, right = [], [gt_layer], []
        if image is not None:
            left.insert(0, image)
            twin = viewer.add_image(
                image.data,
                name=f"{image.name} (prediction side)",
                colormap=image.colormap,
                contrast_limits=image.contrast_limits,
                **placed_like(image),
            )
            new.append(twin)
            right.append(twin)
        if type(pred_layer).__name__ == "Surface":
            if self._pred_labels is not None:
                pl = viewer.add_labels(
                    self._pred_labels,
                    name=f"{pred_layer.name} (voxelised)",
                    opacity=gt_layer.opacity,
                    **placed_like(gt_layer),
                )
                new.append(pl)
                right.append(pl)
        right.append(pred_layer)
        for data, side in ((gt_surf, left), (pred_surf, right)):
            if data is not None:
                lyr = viewer.add_surface(data[0], **data[1])
                new.append(lyr)
                side.append(lyr)
        # remember how things were; then hide the rest and pack both sides into two
        # viewboxes: grid groups consecutive layers (stride) from the bottom of the list.
        self._saved_state = {
            "order": list(layers),
            "visible": {id(lyr): lyr.visible for lyr in layers},
            "grid": (_grid(viewer).enabled, _grid(viewer).stride, tuple(_grid(viewer).shape)),
            "ndisplay": viewer.dims.ndisplay,
        }
        self._side_layers = new
        stride = max(len(left), len(right))
        left += [None] * (stride - len(left))
        right += [None] * (stride - len(right))
        pads = []
        seq = []
        for lyr in left + right:
            if lyr is None:  # an invisible spacer keeps both sides aligned on the stride
                lyr = viewer.add_points(np.empty((0, 3)), name="(spacer)", visible=False)
                pads.append(lyr)
            seq.append(lyr)
        self._side_layers += pads
        for i, lyr in enumerate(seq):
            layers.move(layers.index(lyr), i)
        self._saved_state["shown"] = [lyr for lyr in seq if lyr not in pads]
        for lyr in layers:
            lyr.visible = lyr in self._saved_state["shown"]
        self._side_visibility()
        grid = _grid(viewer)
        grid.stride = stride
        grid.shape = (1, 2)
        grid.enabled = True
        viewer.reset_view()  # each viewbox shows its whole volume
        self.side_button.text = "Back to normal view"
        self.status.show_message("Left: ground truth; right: prediction (linked cameras).")

    def _leave_side_by_side(self):
        viewer, state = self.viewer, self._saved_state
        self._saved_state = None
        grid = _grid(viewer)
        grid.enabled, grid.stride, grid.shape = state["grid"]
        viewer.dims.ndisplay = state["ndisplay"]  # "2D / 3D" meanwhile is side by side's own
        for lyr in self._side_layers:
            if lyr in viewer.layers:
                viewer.layers.remove(lyr)
        self._side_layers = []
        for i, lyr in enumerate(lyr for lyr in state["order"] if lyr in viewer.layers):
            viewer.layers.move(viewer.layers.index(lyr), i)
        for lyr in viewer.layers:
            lyr.visible = state["visible"].get(id(lyr), lyr.visible)
        self.side_button.text = "Side by side"
        viewer.reset_view()
        self._reset_layers()

    def _toggle_ndisplay(self, *_):
        """2D <-> 3D. Side by side, 2D shows image and labels, 3D the surfaces alone."""
        dims = self.viewer.dims
        dims.ndisplay = 3 if dims.ndisplay == 2 else 2
        if self._saved_state is not None:
            self._side_visibility()
            self.viewer.reset_view()

    def _side_visibility(self):
        three_d = self.viewer.dims.ndisplay == 3
        for lyr in self._saved_state["shown"]:
            if lyr in self.viewer.layers:
                is_surface = type(lyr).__name__ == "Surface"
                lyr.visible = is_surface if three_d else not is_surface


def _grid(viewer):
    """napari's grid model (``viewer.canvas.grid`` since 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def _attrs(layer) -> dict:
    return {
        "scale": layer.scale,
        "translate": layer.translate,
        "rotate": layer.rotate,
        "shear": layer.shear,
        "affine": layer.affine.affine_matrix,
        "metadata": layer.metadata,
    }


def _class_meshes(data, affine) -> list:
    """[(class, vertices world mm, faces)] of every class of a label map (smoothed)."""
    from core.mesh import label_meshes

    return [(c, m.vertices, m.faces) for c, m in label_meshes(data, affine, smooth_iterations=5)]


def _class_meshes_all(jobs) -> list:
    return [_class_meshes(data, affine) for data, affine in jobs]


def _surface_data(meshes, labels_layer, *, name):
    """(data, kwargs) of one Surface layer holding every class's mesh, coloured as the labels
    layer shows them; None for an empty map."""
    if not meshes:
        return None
    verts, faces, colors, n = [], [], [], 0
    for c, v, f in meshes:
        verts.append(v)
        faces.append(f + n)
        rgba = np.asarray(labels_layer.get_color(c), dtype=float)
        colors.append(np.tile(rgba, (len(v), 1)))
        n += len(v)
    kwargs = {"name": name, "vertex_colors": np.concatenate(colors), "shading": "smooth"}
    return (np.concatenate(verts), np.concatenate(faces)), kwargs


def _compute(gt, gt_affine, pred, surface_class, tolerance, names, scope="auto"):
    from core.io import spacing_of

    pred_labels, note = prediction_on_grid(pred, gt.shape, gt_affine, surface_class=surface_class)
    classes = None
    if pred[0] == "surface":
        classes = [surface_class]
    comp = compare(
        gt, pred_labels, spacing=spacing_of(gt_affine), classes=classes, scope=scope,
        tolerance_mm=tolerance, names=names,
    )  # fmt: skip
    if note:
        comp.notes.insert(0, note)  # how the prediction got here, before what was left out
    return comp, pred_labels, gt
