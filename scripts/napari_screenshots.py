"""Screenshots of the napari plugin's three widgets on the sample data, for the README.

    OMP_NUM_THREADS=1 xvfb-run -a -s "-screen 0 2000x1100x24" .venv/bin/python \
        scripts/napari_screenshots.py [--out docs/images] [--finetune-steps 4]

Everything is driven through the widgets as a user would: clicks on the canvas (replayed
through napari's mouse callbacks), buttons, fields. The fine-tune is a real, short LoRA run
on the shipped base (synthetic hearts; a minute or two on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

PLUGIN = "sam3d-napari"


def _settle(ms: int = 300) -> None:
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def _wait(pred, timeout=600.0) -> None:
    t0 = time.perf_counter()
    while not pred():
        _settle(50)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the widget did not finish in time")


def _click_organ(viewer, recon, gt, label):
    from core.clicks import first_click
    from sam3d_napari._testing import click_voxel

    click_voxel(viewer, recon.image_layer, first_click(gt == label).voxel())
    _wait(lambda: not recon.busy and recon.result is not None)


def _close_toasts() -> None:
    from qtpy.QtWidgets import QApplication

    for w in QApplication.allWidgets():
        if type(w).__name__ == "NapariQtNotification":
            w.close()


def _save(viewer, path: Path, *, canvas_only=False) -> None:
    _close_toasts()
    _settle(500)
    viewer.screenshot(str(path), canvas_only=canvas_only, flash=False)
    print("wrote", path)


def _camera(viewer):
    return viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/images")
    ap.add_argument("--finetune-steps", type=int, default=4, help="steps per epoch (3 epochs)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import napari

    viewer = napari.Viewer(show=True, title="sam3d-napari")
    viewer.window.resize(1500, 950)
    viewer.open_sample(PLUGIN, "heart")
    image = viewer.layers["heart CT (synthetic)"]
    gt_layer = viewer.layers["heart labels (ground truth)"]
    gt = np.asarray(gt_layer.data)
    gt_layer.visible = False

    # 1. Reconstruct: one click on the left ventricle, 2D and 3D
    dock_r, recon = viewer.window.add_plugin_dock_widget(PLUGIN, "Reconstruct (click to 3D)")
    recon.class_id.value = 2
    _click_organ(viewer, recon, gt, 2)
    viewer.layers.selection.active = recon.prompt_layer
    _save(viewer, out / "napari_reconstruct.png")
    # 3D: the surface over the clicked axial slice (the image drawn as a plane there);
    # napari's plane coordinates follow the displayed axes' order (k, j, i on this view)
    k = recon.result.reference_slice[1]
    recon.set_view("3D")
    recon.mask_layer.visible = False
    recon.prompt_layer.visible = False
    image.depiction = "plane"
    image.plane.normal = (1, 0, 0)
    image.plane.position = (k, 32, 32)
    _camera(viewer).angles = (-45, -35, 150)
    _save(viewer, out / "napari_reconstruct_3d.png", canvas_only=True)
    image.depiction = "volume"
    recon.mask_layer.visible = recon.prompt_layer.visible = True
    recon.set_view("axial")

    # commit four chambers: the prediction Compare will look at
    recon.commit()
    for label in (4, 1, 3):
        recon.class_id.value = label
        _click_organ(viewer, recon, gt, label)
        recon.commit()
    predicted = viewer.layers["heart CT (synthetic) labels"]
    predicted.metadata["label_names"] = gt_layer.metadata.get("label_names", {})

    # 2. Fine-tune: a short LoRA run on synthetic hearts with the shipped base
    from core.synthetic import write_heart_dataset

    tmp = Path(tempfile.mkdtemp(prefix="sam3d-shots-"))
    write_heart_dataset(tmp / "hearts", 4, shape=(48, 48, 48), spacing=4.0, seed=7)
    dock_r.hide()
    dock_f, tune = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune (LoRA)")
    tune.folder.value = tmp / "hearts"
    tune.output.value = tmp / "my-heart-adapter"
    tune.epochs.value, tune.steps_per_epoch.value, tune.batch_size.value = 3, args.finetune_steps, 2
    tune.val_fraction.value = 0.25
    tune.extra.value = "training.val_items=4 data.spacing=4.0"
    tune.start()
    _wait(lambda: not tune.busy, timeout=1800)
    print(tune.status.value)
    _save(viewer, out / "napari_finetune.png")

    # 3. Compare: the committed chambers against the ground truth
    dock_f.hide()
    dock_c, comp = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare with ground truth")
    comp.gt.value, comp.pred.value = gt_layer, predicted
    comp.compute()
    _wait(lambda: not comp.busy)
    for lyr in viewer.layers:
        lyr.visible = lyr is image
    comp.show_overlay()
    _save(viewer, out / "napari_compare.png")
    viewer.window.resize(1900, 950)  # room for two viewboxes next to the table
    comp.toggle_side_by_side()
    _wait(lambda: comp.side_by_side)
    comp._toggle_ndisplay()
    _camera(viewer).angles = (-45, -35, 150)
    _camera(viewer).zoom *= 1.8
    _save(viewer, out / "napari_compare_side_by_side.png")
    viewer.close()


if __name__ == "__main__":
    main()
