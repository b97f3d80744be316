"""Compare widget: numbers equal to core.metrics, exports, the TP/FP/FN overlay, and the
side-by-side grid view (2D and 3D)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

PLUGIN = "sam3d-napari"


def _prediction_from(gt):
    """A plausible imperfect prediction: LV eroded, RA shifted, myocardium dropped, an
    extra class 7 blob."""
    pred = gt.copy()
    lv = gt == 2
    pred[lv & ~ndimage.binary_erosion(lv, iterations=1)] = 0
    pred[gt == 3] = 0
    pred[np.roll(gt == 3, 2, axis=0)] = 3
    pred[gt == 5] = 0
    pred[2:6, 2:6, 2:6] = 7
    return pred


def _setup(make_napari_viewer, **kw):
    viewer = make_napari_viewer(**kw)
    viewer.open_sample(PLUGIN, "heart")
    gt_layer = viewer.layers["heart labels (ground truth)"]
    gt = np.asarray(gt_layer.data)
    from sam3d_napari._qt_common import placed_like

    pred_layer = viewer.add_labels(_prediction_from(gt), name="prediction", **placed_like(gt_layer))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare with ground truth")
    widget.gt.value, widget.pred.value = gt_layer, pred_layer
    return viewer, widget, gt, np.asarray(pred_layer.data)


def _compute(widget, qtbot):
    widget.compute()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert widget.comparison is not None, widget.status.value
    return widget.comparison


def test_metrics_equal_core_metrics_and_export(make_napari_viewer, qtbot, tmp_path):
    from core.io import spacing_of
    from core.metrics import METRIC_NAMES, evaluate_labels
    from sam3d_napari._layers import meta_affine

    viewer, widget, gt, pred = _setup(make_napari_viewer)
    comp = _compute(widget, qtbot)
    spacing = spacing_of(meta_affine(widget.gt.value))
    expected = evaluate_labels(pred, gt, spacing=spacing, classes=[1, 2, 3, 4, 5, 7])
    assert comp.per_class == expected  # exactly core.metrics' numbers
    assert comp.per_class[5]["dice"] == 0.0 and comp.per_class[7]["dice"] == 0.0
    # the table shows them, one row per class and a mean
    table = widget.table
    assert table.rowCount() == len(expected) + 1
    assert table.item(1, 0).text() == "2" and table.item(1, 1).text() == "LV"
    assert float(table.item(1, 2).text()) == pytest.approx(expected[2]["dice"], abs=1e-4)
    # exports keep full precision
    widget.export(tmp_path / "m.json")
    widget.export(tmp_path / "m.csv")
    data = json.loads((tmp_path / "m.json").read_text())
    for c, m in expected.items():
        for k in METRIC_NAMES:
            assert data["metrics"][str(c)][k] == m[k]
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[0].split(",") == ["class", "name", *METRIC_NAMES]
    lv = rows[2].split(",")
    assert lv[:2] == ["2", "LV"] and float(lv[2]) == expected[2]["dice"]
    with pytest.raises(ValueError, match="csv or .json"):
        widget.export(tmp_path / "m.txt")


def test_overlay_colours_true_and_false_positives_and_misses(make_napari_viewer, qtbot):
    from sam3d_napari._compare import FN, FP, TP

    viewer, widget, gt, pred = _setup(make_napari_viewer)
    _compute(widget, qtbot)
    layer = widget.show_overlay()
    over = np.asarray(layer.data)
    assert np.count_nonzero(over == TP) == np.count_nonzero((pred == gt) & (gt > 0))
    assert np.count_nonzero(over == FP) == np.count_nonzero((pred > 0) & (pred != gt))
    assert np.count_nonzero(over == FN) == np.count_nonzero((gt > 0) & (pred == 0))
    colors = layer.colormap.color_dict
    assert colors[TP][1] > 0.5 and colors[FP][0] > 0.5 and colors[FN][2] > 0.5
    # one class only
    widget.overlay_class.value = "2"
    over2 = np.asarray(widget.show_overlay().data)
    assert not over2[(gt != 2) & (pred != 2)].any()


def test_a_surface_prediction_is_voxelised_on_the_ground_truth_grid(make_napari_viewer, qtbot):
    from core.io import spacing_of
    from core.mesh import mask_to_mesh
    from core.metrics import evaluate_labels
    from sam3d_napari._layers import meta_affine
    from sam3d_napari._voxelize import mesh_to_mask

    viewer, widget, gt, _ = _setup(make_napari_viewer)
    a = meta_affine(widget.gt.value)
    mesh = mask_to_mesh(gt == 2, a)
    surf = viewer.add_surface((mesh.vertices, mesh.faces), name="LV surface")
    widget.pred.value = surf
    widget.surface_class.value = 2
    comp = _compute(widget, qtbot)
    pred = mesh_to_mask(mesh.vertices, mesh.faces, gt.shape, a).astype(np.uint8) * 2
    assert comp.per_class == evaluate_labels(pred, gt, spacing=spacing_of(a), classes=[2])
    assert comp.per_class[2]["dice"] > 0.97  # the organ's own surface gives back the organ
    assert "voxelised" in comp.notes[0]


def test_side_by_side_grid_in_2d_and_3d_and_back(make_napari_viewer, qtbot):
    viewer, widget, gt, _ = _setup(make_napari_viewer, show=True)
    _compute(widget, qtbot)
    before = [lyr.name for lyr in viewer.layers]
    widget.toggle_side_by_side()  # meshes the surfaces in a worker, then lays out the grid
    qtbot.waitUntil(lambda: widget.side_by_side, timeout=60_000)
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
    assert grid.enabled and widget.side_by_side

    def viewboxes():
        return {
            pos: [viewer.layers[i].name for i in idx]
            for pos, idx in grid.iter_viewboxes(viewer.layers)
        }

    boxes = viewboxes()  # 2D: the image and the labels on each side
    assert sorted(boxes) == [(0, 0), (0, 1)]
    assert boxes[(0, 0)] == ["heart CT (synthetic)", "heart labels (ground truth)"]
    assert boxes[(0, 1)] == ["heart CT (synthetic) (prediction side)", "prediction"]
    shot = viewer.screenshot(canvas_only=True, flash=False)
    h, w = shot.shape[:2]
    assert shot[:, : w // 2, :3].std() > 10 and shot[:, w // 2 :, :3].std() > 10
    widget._toggle_ndisplay()
    assert viewer.dims.ndisplay == 3
    boxes = viewboxes()  # 3D: both surfaces
    assert boxes == {
        (0, 0): ["heart labels (ground truth) surface"],
        (0, 1): ["prediction surface"],
    }
    shot3d = viewer.screenshot(canvas_only=True, flash=False)
    assert shot3d[:, : w // 2, :3].std() > 10 and shot3d[:, w // 2 :, :3].std() > 10
    widget.toggle_side_by_side()  # straight from 3D: back to the 2D it started from
    assert not grid.enabled and [lyr.name for lyr in viewer.layers] == before
    assert all(lyr.visible for lyr in viewer.layers)
    assert viewer.dims.ndisplay == 2


def test_a_partial_prediction_is_compared_on_its_own_classes_with_the_datasets_names(
    make_napari_viewer, qtbot, tmp_path
):
    """Two organs clicked in a many-organ ground truth: Compare used to average the organs
    nobody segmented (Dice 0) into the mean. Auto compares the predicted classes, says so,
    and names them from the dataset's label_names.json (read with the label file)."""
    from conftest import save_nifti, two_organs

    _, lab = two_organs(shape=(24, 28, 20))
    gt = lab.astype(np.uint8)
    gt[2:6, 2:6, 2:6], gt[18:22, 2:6, 2:6] = 3, 4  # two more organs, not predicted
    a = np.diag([2.0, 2.0, 3.0, 1.0])
    path = save_nifti(gt.astype(np.float64), a, tmp_path / "labels" / "case01.nii.gz")
    (tmp_path / "label_names.json").write_text(
        json.dumps({"case01": {"1": "liver", "2": "spleen", "3": "aorta", "4": "pancreas"}})
    )
    viewer = make_napari_viewer()
    (gt_layer,) = viewer.open(path, plugin=PLUGIN)
    assert gt_layer.metadata["label_names"] == {1: "liver", 2: "spleen", 3: "aorta", 4: "pancreas"}
    from sam3d_napari._qt_common import placed_like

    pred = viewer.add_labels(np.where(gt <= 2, gt, 0), name="clicks", **placed_like(gt_layer))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare with ground truth")
    widget.gt.value, widget.pred.value = gt_layer, pred
    comp = _compute(widget, qtbot)
    assert list(comp.per_class) == [1, 2] and comp.mean["dice"] == 1.0
    assert [widget.table.item(r, 1).text() for r in range(2)] == ["liver", "spleen"]
    status = widget.status.value
    assert "2 predicted class(es)" in status and "2 ground-truth class(es) not compared" in status
    widget.classes.value = "all classes"
    comp = _compute(widget, qtbot)
    assert list(comp.per_class) == [1, 2, 3, 4] and comp.mean["dice"] == 0.5
    assert "all 4 class(es)" in widget.status.value
    assert "not compared" not in widget.status.value


def test_a_surface_class_compared_alone_names_what_was_left_without_a_setting_to_change():
    """A surface prediction is compared on its one class; the Classes box is hidden then, so
    the note must not point at it."""
    from sam3d_napari._compare import compare

    gt = np.zeros((10, 10, 10), np.uint8)
    gt[1:4, 1:4, 1:4], gt[6:9, 6:9, 6:9] = 1, 2
    pred = (gt == 1).astype(np.uint8)
    comp = compare(gt, pred, spacing=(1, 1, 1), classes=[1])
    assert comp.notes == ["1 ground-truth class(es) not compared"]
    comp = compare(gt, pred, spacing=(1, 1, 1), scope="auto")
    assert comp.notes == ["1 ground-truth class(es) not compared (Classes: all)"]


def _random_maps(rng, shape=(30, 34, 26)):
    """A ground truth and a prediction with shared, missed, extra and border classes."""
    gt = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for c in (1, 2, 3, 5):
        lo = rng.integers(0, 18, size=3)
        hi = lo + rng.integers(2, 10, size=3)
        gt[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = c
        if c != 5:  # 5 is missed; the others shifted a little
            s = rng.integers(-2, 3, size=3)
            lo, hi = np.clip(lo + s, 0, None), hi + s
            pred[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = c
    pred[-3:, :4, -2:] = 7  # only in the prediction, on the border
    return gt, pred


@pytest.mark.parametrize("seed", range(6))
def test_box_metrics_and_overlay_equal_the_whole_maps(seed, monkeypatch):
    """compare() reads each class's union box of both maps (one find_objects pass each, no
    np.unique, ``binary_metrics(volume_shape=)``) and the overlay only the comparison's box:
    exactly evaluate_labels' numbers and the whole maps' overlay, for every class scope, an
    explicit class in neither map, and one class's overlay."""
    from core.metrics import evaluate_labels
    from sam3d_napari._compare import compare, error_overlay

    rng = np.random.default_rng(seed)
    gt, pred = _random_maps(rng)
    sp = (0.7, 0.9, 1.5)
    whole_overlay = {None: error_overlay(gt, pred)}
    whole_overlay.update({c: error_overlay(gt, pred, [c]) for c in (1, 2, 3, 5, 7, 8)})
    cases = [({"scope": s}, None) for s in ("auto", "predicted", "all")]
    cases.append(({"classes": [2, 8]}, [2, 8]))  # 8 is in neither map

    real_unique = np.unique

    def no_unique(a, *args, **kw):  # percentiles call it on small arrays
        if np.size(a) >= gt.size:
            raise AssertionError("np.unique over the map")
        return real_unique(a, *args, **kw)

    for kw, classes in cases:
        with monkeypatch.context() as m:
            m.setattr(np, "unique", no_unique)
            comp = compare(gt, pred, spacing=sp, tolerance_mm=1.5, **kw)
        if classes is None:
            classes = list(comp.per_class)
        assert comp.per_class == evaluate_labels(
            pred, gt, spacing=sp, classes=classes, tolerance_mm=1.5
        )
        for c in [None, *comp.per_class]:
            box = comp.boxes[c]
            sel = None if c is None else [c]
            got = error_overlay(gt, pred, sel, box=box)
            assert np.array_equal(got, whole_overlay[c]), (kw, c)
