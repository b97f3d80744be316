"""Compare's computations, free of Qt: metrics per class, the error overlay, exports.

Numbers come from ``core.metrics.evaluate_labels`` unchanged; this module only brings the
prediction onto the ground truth's grid (a Surface is voxelised, a Labels layer on another
grid is resampled nearest-neighbour through both affines) and formats the results.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

import numpy as np

from core.labelmap import class_boxes, grow_box, union_box

__all__ = [
    "METRIC_COLUMNS",
    "CLASS_SCOPES",
    "Comparison",
    "prediction_on_grid",
    "compare",
    "error_overlay",
    "to_csv",
    "to_json_obj",
    "OVERLAY_COLORS",
]

#: (key in core.metrics, column title)
METRIC_COLUMNS = (
    ("dice", "Dice"),
    ("iou", "IoU"),
    ("hd95", "HD95 mm"),
    ("assd", "ASSD mm"),
    ("surface_dice", "Surf. Dice"),
    ("chamfer", "Chamfer mm"),
)

#: which classes a comparison covers: "auto" is the prediction's own when it has fewer than
#: the ground truth (one or two organs segmented in a many-organ ground truth), else "all"
#: (the classes of either map)
CLASS_SCOPES = ("auto", "predicted", "all")

TP, FP, FN = 1, 2, 3
#: overlay label -> (name, RGBA)
OVERLAY_COLORS = {
    TP: ("true positive", (0.1, 0.85, 0.2, 1.0)),
    FP: ("false positive", (0.95, 0.15, 0.15, 1.0)),
    FN: ("false negative", (0.15, 0.45, 1.0, 1.0)),
}


@dataclass
class Comparison:
    """Metrics of one prediction against one ground truth.

    Attributes
    ----------
    per_class : {class id: {metric: value}} exactly as ``core.metrics.evaluate_labels``
    mean : unweighted mean over classes (``core.metrics.mean_metrics``)
    mean_over : which classes ``mean`` averages, in words ("the 2 predicted classes")
    names : class id -> name, where known
    spacing : (3,) mm, the ground truth's voxel size
    tolerance_mm : surface Dice tolerance
    notes : how the prediction was brought onto the ground truth's grid, if it had to be
    boxes : class -> the box (slices) holding that class in both maps, ``None`` -> the box
        holding every class of both (empty when unknown: the overlay reads the whole maps)
    """

    per_class: dict
    mean: dict
    mean_over: str = ""
    names: dict = field(default_factory=dict)
    spacing: tuple = (1.0, 1.0, 1.0)
    tolerance_mm: float = 1.0
    notes: list = field(default_factory=list)
    boxes: dict = field(default_factory=dict, repr=False, compare=False)

    def rows(self) -> list[list[str]]:
        """Table rows: class, name, then the metrics (formatted), and a mean row."""
        out = []
        for c, m in self.per_class.items():
            out.append([str(c), self.names.get(c, "")] + [_fmt(m[k]) for k, _ in METRIC_COLUMNS])
        if len(self.per_class) > 1:
            out.append(["mean", ""] + [_fmt(self.mean[k]) for k, _ in METRIC_COLUMNS])
        return out


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"


def prediction_on_grid(pred, gt_shape, gt_affine, *, surface_class: int = 1):
    """The prediction as a label map on the ground truth's grid, and a note on what was done.

    Parameters
    ----------
    pred : ``("labels", data (I', J', K') int, affine)`` or ``("surface", vertices world mm,
        faces)``
    gt_shape, gt_affine : the ground truth's grid
    surface_class : label given to the inside of a surface

    Returns
    -------
    labels : (I, J, K) integer array
    note : str or None
    """
    from sam3d_napari._layers import same_grid

    kind = pred[0]
    if kind == "surface":
        from sam3d_napari._voxelize import mesh_to_mask

        inside = mesh_to_mask(pred[1], pred[2], gt_shape, gt_affine)
        labels = inside.astype(np.uint16 if surface_class > 255 else np.uint8) * surface_class
        return labels, f"surface voxelised on the ground truth's grid as class {surface_class}"
    if kind != "labels":
        raise ValueError(f"unknown prediction kind {kind!r}")
    data, affine = np.asarray(pred[1]), np.asarray(pred[2], dtype=np.float64)
    if data.ndim != 3:
        raise ValueError(f"prediction must be a 3D label map, got shape {data.shape}")
    if same_grid(data.shape, affine, gt_shape, gt_affine):
        return data, None
    from scipy import ndimage

    # ground-truth voxel -> prediction voxel: inv(A_pred) @ A_gt; nearest neighbour, 0 outside
    m = np.linalg.inv(affine) @ np.asarray(gt_affine, dtype=np.float64)
    out = ndimage.affine_transform(
        data, m[:3, :3], offset=m[:3, 3], output_shape=tuple(gt_shape), order=0, cval=0
    )
    return out, "prediction resampled (nearest neighbour) onto the ground truth's grid"


def compare(
    gt,
    pred_labels,
    *,
    spacing,
    classes=None,
    scope: str = "all",
    tolerance_mm: float = 1.0,
    names=None,
) -> Comparison:
    """Per-class metrics, straight from ``core.metrics.evaluate_labels``.

    ``classes`` default: chosen by ``scope`` (one of :data:`CLASS_SCOPES`); ground-truth
    classes it leaves out are named in the notes.
    """
    from core.metrics import evaluate_labels, mean_metrics

    if scope not in CLASS_SCOPES:
        raise ValueError(f"unknown class scope {scope!r}; choose one of {CLASS_SCOPES}")
    gt, pred_labels = np.asarray(gt), np.asarray(pred_labels)
    if gt.shape != pred_labels.shape:
        raise ValueError(f"shapes differ: ground truth {gt.shape}, prediction {pred_labels.shape}")
    # every class's bounding box in one pass over each map (a CT-sized map's np.unique and
    # per-class ``== c`` took most of the time); None for maps find_objects cannot take
    gt_boxes, pred_boxes = class_boxes(gt), class_boxes(pred_labels)
    boxed = gt_boxes is not None and pred_boxes is not None
    if boxed:
        gt_classes, predicted_all = set(gt_boxes), sorted(pred_boxes)
    else:
        gt_classes = {int(v) for v in np.unique(gt)} - {0}
        predicted_all = None
    chosen_by_scope = classes is None  # else given (a surface's class): no Classes choice
    over = f"class(es) {', '.join(str(c) for c in classes)}" if classes is not None else ""
    if classes is None:
        if predicted_all is None:
            predicted_all = sorted({int(v) for v in np.unique(pred_labels)} - {0})
        predicted = predicted_all
        if predicted and (
            scope == "predicted" or (scope == "auto" and len(predicted) < len(gt_classes))
        ):
            classes, over = predicted, f"the {len(predicted)} predicted class(es)"
        else:
            classes = sorted(gt_classes | set(predicted))
            over = f"all {len(classes)} class(es) of the ground truth and the prediction"
    if not classes:
        raise ValueError("nothing to compare: both label maps are empty")
    if boxed:
        per_class = _metrics_in_boxes(
            pred_labels, gt, pred_boxes, gt_boxes, spacing, classes, tolerance_mm
        )
    else:
        per_class = evaluate_labels(
            pred_labels, gt, spacing=spacing, classes=classes, tolerance_mm=tolerance_mm
        )
    comp = Comparison(
        per_class=per_class,
        mean=mean_metrics(per_class),
        mean_over=over,
        names={int(k): str(v) for k, v in (names or {}).items()},
        spacing=tuple(float(s) for s in spacing),
        tolerance_mm=float(tolerance_mm),
    )
    if boxed:  # where either map has any class: the overlay reads only this box
        comp.boxes = {c: union_box(gt_boxes.get(c), pred_boxes.get(c)) for c in per_class}
        comp.boxes[None] = union_box(*gt_boxes.values(), *pred_boxes.values())
    left_out = len(gt_classes - set(classes))
    if left_out:
        hint = " (Classes: all)" if chosen_by_scope else ""
        comp.notes.append(f"{left_out} ground-truth class(es) not compared{hint}")
    return comp


def _metrics_in_boxes(pred, gt, pred_boxes, gt_boxes, spacing, classes, tolerance_mm) -> dict:
    """``core.metrics.evaluate_labels``'s numbers, each class's read from the union of its
    boxes in both maps (``binary_metrics(volume_shape=)``: the whole volume's values)."""
    from core.metrics import binary_metrics

    out = {}
    for c in sorted({int(c) for c in classes}):
        box = union_box(gt_boxes.get(c), pred_boxes.get(c))
        if box is None:  # in neither map: the empty-mask policy, on the whole volume's shape
            box = tuple(slice(0, 1) for _ in gt.shape)
        box = grow_box(box, gt.shape)  # bitwise the whole maps' distances
        out[c] = binary_metrics(
            pred[box] == c, gt[box] == c, spacing=spacing, tolerance_mm=tolerance_mm,
            volume_shape=gt.shape,
        )  # fmt: skip
    return out


def error_overlay(gt, pred_labels, classes=None, *, box=None) -> np.ndarray:
    """(I, J, K) uint8: 1 true positive, 2 false positive, 3 false negative, 0 elsewhere.

    With ``classes``, only those classes count; a voxel given the wrong class is a false
    positive (of the predicted class) and shows as such. ``box`` (slices): a box outside
    which both maps hold none of the counted classes; only the box is read then.
    """
    g, p = np.asarray(gt), np.asarray(pred_labels)
    if box is not None:
        out = np.zeros(g.shape, dtype=np.uint8)
        out[box] = error_overlay(g[box], p[box], classes)
        return out
    if classes is not None:
        keep = np.asarray(sorted(classes))
        g = np.where(np.isin(g, keep), g, 0)
        p = np.where(np.isin(p, keep), p, 0)
    out = np.zeros(g.shape, dtype=np.uint8)
    out[(p != 0) & (p == g)] = TP
    out[(p != 0) & (p != g)] = FP
    out[(g != 0) & (p == 0)] = FN
    return out


def to_json_obj(comp: Comparison) -> dict:
    return {
        "metrics": {
            str(c): {"name": comp.names.get(c), **{k: float(v) for k, v in m.items()}}
            for c, m in comp.per_class.items()
        },
        "mean": {k: float(v) for k, v in comp.mean.items()},
        "mean_over": comp.mean_over,
        "spacing_mm": list(comp.spacing),
        "surface_dice_tolerance_mm": comp.tolerance_mm,
        "notes": list(comp.notes),
        "source": "core.metrics.evaluate_labels",
    }


def to_csv(comp: Comparison) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    keys = [k for k, _ in METRIC_COLUMNS]
    w.writerow(["class", "name", *keys])
    for c, m in comp.per_class.items():
        w.writerow([c, comp.names.get(c, ""), *[repr(float(m[k])) for k in keys]])
    if comp.mean:
        w.writerow(["mean", "", *[repr(float(comp.mean[k])) for k in keys]])
    return buf.getvalue()
