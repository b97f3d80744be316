"""Benchmark: a click on a clinical-size CT as the user sees it, in napari and in the web demo.

    xvfb-run -a .venv/bin/python bench/frontend_large.py napari [--size 512x512x300@0.7x0.7x1.0]
        [--compare]
    .venv/bin/python bench/frontend_large.py web [--size ...] [--gt]
        [--repeats 2] [--threads 2] [--json F] [--profile DIR]

The volume is ``bench/large_volume.py``'s clinical phantom (the synthetic heart resampled to
512 x 512 x 300 at 0.7 x 0.7 x 1.0 mm by default; float32 HU, RAS+). The model is loaded and
warmed up first, as each front end does in the background. Each repeat ``r`` is one object
session: a first click on structure ``1 + r % 5``, a refining click (the evaluation's
corrective click, ``core.clicks.next_click``, on an axial slice), Undo (back to the first
click's result), then a second object (a first click on structure ``1 + (r + 2) % 5``) and
Clear.

``napari``: a shown viewer (run under a display: ``xvfb-run -a``). Opens the volume as the
reader does (``_reader.volume_layer_data``: the display window, then ``add_image`` and the first
draw), docks Reconstruct, waits for its preload, and clicks through napari's own mouse
callbacks (``sam3d_napari._testing.click_voxel``). A click is timed until its result is on
screen: the Labels and Surface layers hold it and the Qt event queue is drained (the repaint).
The second object follows "Commit object" (the first object written to the label map, timed).
Per step: ``wall`` (click to screen), ``engine`` (the engine's ``timings["total"]``),
``predict`` (``Session.predict`` in the worker), ``show`` (``ObjectLayers.show`` on the GUI
thread: the layers' updates), and the Qt event loop's longest stall (a 5 ms timer).
With ``--compare`` the phantom's labels are opened as the ground truth (a Labels layer on the
image's grid), each object is committed as its ground-truth class, and after the second
commit the Compare widget compares the label map with the ground truth: Compute metrics (to
the table filled), TP/FP/FN overlay, Side by side (to the grid shown), 2D / 3D, and back to
the normal view, each timed as a click (digests: the table's cells, the overlay, the
surfaces).

``web``: the page's handlers (``gradio_app.handlers``), no browser: the volume is written as an
int16 .nii.gz (as scanners do) and uploaded through ``load_volume`` (with ``--gt`` its label
map too, which adds the metrics table and the comparison pictures); the slider moves to the
click's slice (``show_slice``); clicks go to ``click`` at the picture pixel of the voxel; the
second object follows "New object". Per step: ``wall`` (the handler), ``engine``, and the
page's rendering parts (``gradio_app.page``: slice picture, 3D scene .glb, downloads with the
mask .nii.gz, orthogonal views, ground-truth outputs).

Both record digests of what the user gets (the Labels data, the surface; the pictures, the
scene and the downloads' voxels), so two checkouts' runs compare exactly. One JSON line is
printed; the report goes to runs/ (or ``--json``). ``--profile DIR`` also writes a cProfile of
each step (the main thread: the front end's own work, not the engine's worker) to DIR.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from large_volume import clinical_phantom, parse_size  # noqa: E402

DEFAULT_SIZE = "512x512x300@0.7x0.7x1.0"


def h(a) -> str:
    """sha256 prefix of an array's bytes (with its dtype and shape)."""
    a = np.ascontiguousarray(a)
    return hashlib.sha256(a.tobytes() + str((a.dtype, a.shape)).encode()).hexdigest()[:16]


class Profiles:
    """One cProfile per step name, summed over the repeats (off without a folder)."""

    def __init__(self, folder: Path | None):
        self.folder, self.prof = folder, {}

    def __call__(self, step: str):
        import contextlib
        import cProfile

        if self.folder is None:
            return contextlib.nullcontext()
        p = self.prof.setdefault(step, cProfile.Profile())

        @contextlib.contextmanager
        def on():
            p.enable()
            try:
                yield
            finally:
                p.disable()

        return on()

    def dump(self) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        for step, p in self.prof.items():
            p.dump_stats(self.folder / f"{step}.prof")


class Timers:
    """Wrap functions (``module.attr``) to sum their wall time per name since :meth:`take`."""

    def __init__(self):
        self.ms = defaultdict(float)
        self._undo = []

    def wrap(self, owner, attr: str, name: str | None = None):
        fn = getattr(owner, attr)
        name = name or attr

        @functools.wraps(fn)
        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.ms[name] += (time.perf_counter() - t) * 1000.0

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, fn))

    def take(self) -> dict:
        out = {k: round(v, 1) for k, v in self.ms.items()}
        self.ms.clear()
        return out


def _structures(r: int) -> tuple[int, int]:
    return 1 + r % 5, 1 + (r + 2) % 5


# --------------------------------------------------------------------------------------------
# napari


def run_napari(a, image, label) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    from core.clicks import first_click, next_click
    from sam3d_napari import _object_layers, _session
    from sam3d_napari._reader import volume_layer_data
    from sam3d_napari._testing import StallMonitor, click_voxel, wait_until

    timers, profiles = Timers(), Profiles(a.profile)
    timers.wrap(_object_layers.ObjectLayers, "show", "show")
    timers.wrap(_session.Session, "predict", "predict")

    def drain():
        QApplication.processEvents()

    viewer = napari.Viewer(show=True)
    drain()
    opened = {}
    t = time.perf_counter()
    data, kwargs, _ = volume_layer_data(image)
    opened["reader_kwargs_ms"] = (time.perf_counter() - t) * 1000.0
    t = time.perf_counter()
    layer = viewer.add_image(data, **kwargs)
    opened["add_image_ms"] = (time.perf_counter() - t) * 1000.0
    t = time.perf_counter()
    drain()
    opened["first_draw_ms"] = (time.perf_counter() - t) * 1000.0
    opened = {k: round(v, 1) for k, v in opened.items()}

    gt_layer = None
    if a.compare:  # the ground truth opened as the reader opens a label map: on the image's grid
        from sam3d_napari._qt_common import placed_like

        t = time.perf_counter()
        gt_layer = viewer.add_labels(label, name="ground truth", **placed_like(layer))
        drain()
        opened["add_ground_truth_ms"] = round((time.perf_counter() - t) * 1000.0, 1)

    widget = viewer.window.add_plugin_dock_widget("sam3d-napari", "Reconstruct (click to 3D)")[1]
    wait_until(lambda: not widget.loading, timeout=600)
    if a.compare:
        compare_widget = viewer.window.add_plugin_dock_widget(
            "sam3d-napari", "Compare with ground truth"
        )[1]
    drain()
    timers.take()

    def timed(step, action, *, waits_for_result: bool, until=None) -> dict:
        """Time ``action`` to screen: until its result is in (or ``until()``), events drained."""
        before = widget.result
        stall = StallMonitor().start()
        wait_until(lambda: stall.ticks >= 1, 60, 0.001)  # ticking before the action starts
        with profiles(step):
            t = time.perf_counter()
            action()
            if waits_for_result:
                wait_until(lambda: widget.result is not before and not widget.busy, 600, 0.001)
            if until is not None:
                wait_until(until, 600, 0.001)
            drain()
            wall = (time.perf_counter() - t) * 1000.0
        longest = stall.stop()
        row = {"wall_ms": round(wall, 1), "longest_stall_ms": round(longest, 1), **timers.take()}
        res = widget.result
        if waits_for_result and res is not None:
            row["engine_ms"] = round(res.timings["total"], 1)
            row["engine_stages_ms"] = {k: round(v, 1) for k, v in res.timings.items()}
        return row

    def on_screen() -> dict:
        """Digests of what the object layers show."""
        m, s = widget.mask_layer, widget.surface_layer
        out = {"mask": h(m.data) if m is not None else None}
        if s is not None and s.visible:
            out["surface"] = h(s.data[0]) + h(s.data[1])
        return out

    rows, digests = [], []
    for r in range(a.repeats):
        k1, k2 = _structures(r)
        gt1 = label == k1
        c1 = first_click(gt1)
        steps = {}
        steps["first"] = timed(
            "first", lambda c=c1: click_voxel(viewer, layer, c.voxel()), waits_for_result=True
        )
        digests.append(on_screen())
        fix = next_click(widget.result.mask, gt1, spacing=image.spacing)
        if fix is not None:
            steps["refine"] = timed(
                "refine",
                lambda c=fix: click_voxel(
                    viewer, layer, c.voxel(), modifiers=() if c.positive else ("Shift",)
                ),
                waits_for_result=True,
            )
            digests.append(on_screen())
            steps["undo"] = timed("undo", widget.undo, waits_for_result=False)
            digests.append(on_screen())
        if a.compare:  # each object gets its ground-truth class, as a user comparing would
            widget.class_id.value = k1
        steps["commit"] = timed("commit", widget.commit, waits_for_result=False)
        c2 = first_click(label == k2)
        steps["other_organ"] = timed(
            "other_organ", lambda c=c2: click_voxel(viewer, layer, c.voxel()), waits_for_result=True
        )
        digests.append(on_screen())
        if a.compare:
            widget.class_id.value = k2
        steps["commit_2"] = timed("commit_2", widget.commit, waits_for_result=False)
        target = widget.target.value
        digests.append({"label_map": h(target.data)})
        if a.compare:
            assert target is not gt_layer
            steps.update(compare_steps(compare_widget, timed, gt_layer, target, digests))
        # the next object session starts on a fresh label map, as the first did
        viewer.layers.remove(target)
        steps["clear"] = timed("clear", widget.clear, waits_for_result=False)
        rows.append({"structures": [k1, k2], **steps})
        drain()
    viewer.close()
    profiles.dump()
    return {"open": opened, "repeats": rows, "digests": digests}


def compare_steps(cw, timed, gt_layer, pred_layer, digests) -> dict:
    """The Compare widget ``cw`` on the objects' label map: Compute metrics, the TP/FP/FN
    overlay, Side by side (2D), 2D / 3D, back to the normal view. Digests of the table, the
    overlay and the side-by-side surfaces go to ``digests``."""
    cw.gt.value, cw.pred.value = gt_layer, pred_layer
    steps = {}
    steps["compute"] = timed(
        "compute", cw.compute, waits_for_result=False, until=lambda: not cw.busy
    )
    t = cw.table
    cells = [[t.item(i, j).text() for j in range(t.columnCount())] for i in range(t.rowCount())]
    # the table shows 4 digits: the comparison's full-precision numbers too
    exact = {str(c): m for c, m in cw.comparison.per_class.items()}
    digests.append({"table": cells, "status": cw.status.value, "metrics": json.dumps(exact)})
    steps["overlay"] = timed("overlay", cw.show_overlay, waits_for_result=False)
    digests.append({"overlay": h(cw._overlay_layer.data)})
    steps["side_by_side"] = timed(
        "side_by_side",
        cw.toggle_side_by_side,
        waits_for_result=False,
        until=lambda: cw.side_by_side,
    )
    surfaces = [lyr for lyr in cw._side_layers if type(lyr).__name__ == "Surface"]
    steps["to_3d"] = timed(
        "to_3d", lambda: cw.dim_button.changed.emit(True), waits_for_result=False
    )
    digests.append(
        {f"surface {s.name}": h(s.data[0]) + h(s.data[1]) + h(s.vertex_colors) for s in surfaces}
    )
    steps["back"] = timed("back", cw.toggle_side_by_side, waits_for_result=False)
    return steps


# --------------------------------------------------------------------------------------------
# web demo


def run_web(a, image, label) -> dict:
    from core.clicks import first_click, next_click
    from core.engine import Reconstructor
    from core.io import LabelVolume, load_label, save_image, save_label
    from gradio_app import handlers as H
    from gradio_app import page
    from gradio_app.service import SharedEngine

    tmp = Path(tempfile.mkdtemp(prefix="frontend-large-"))
    # int16 HU, as scanners write CT; the phantom's float values round to the same integers
    vol_path = save_image(
        type(image)(np.round(image.data).astype(np.int16), image.affine, image.path),
        tmp / "ct.nii.gz",
    )
    lab_path = save_label(LabelVolume(label, image.affine, "labels"), tmp / "ct_labels.nii.gz")

    engine = SharedEngine(Reconstructor.from_pretrained(a.checkpoint))
    engine.preload()  # as `sam3d app` does before it serves

    timers, profiles = Timers(), Profiles(a.profile)
    for name in (
        "slice_picture",
        "save_scene_glb",
        "_write_downloads",
        "save_mask",
        "orthogonal_views",
        "_ground_truth_outputs",
        "_focus",
    ):
        timers.wrap(page, name)
    timers.wrap(H, "_read_volume", "load_image")
    timers.wrap(H, "_read_labels", "load_labels")
    timers.wrap(H, "render", "render")

    def timed(fn, *args, step=None, **kw):
        with profiles(step or fn.__name__):
            t = time.perf_counter()
            session, view = fn(*args, **kw)
            wall = (time.perf_counter() - t) * 1000.0
        row = {"wall_ms": round(wall, 1), **timers.take()}
        if view.timings.get("total") is not None and fn is H.click:
            row["engine_ms"] = round(view.timings["total"], 1)
            row["engine_stages_ms"] = {k: round(v, 1) for k, v in view.timings.items()}
        return session, view, row

    def shown(view) -> dict:
        out = {
            "slice": h(view.slice_image),
            "views": None if view.views is None else h(view.views),
            "compare": None if view.compare is None else h(view.compare),
            "metrics": json.dumps(view.metrics),
        }
        for p in view.downloads:
            if p.endswith(".nii.gz"):
                out["mask_nii"] = h(load_label(p).data)
            else:
                out[Path(p).suffix] = hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16]
        for key in ("scene", "gt_scene"):
            p = getattr(view, key)
            out[key] = None if p is None else hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16]
        return out

    def click_voxel(session, c, positive=True, step="click"):
        """Move the slider to the click's slice, then click its pixel."""
        assert c.axis == session.axis == 2
        session, _, slider = timed(H.show_slice, session, c.slice_idx)
        x, y = H.slice_view(session).rc_to_pixel(c.row, c.col)
        tool = "positive" if positive else "negative"
        session, view, row = timed(H.click, session, engine, x, y, tool=tool, step=step)
        return session, view, {**row, "slider_ms": slider["wall_ms"]}

    rows, digests, session = [], [], None
    for r in range(a.repeats):
        k1, k2 = _structures(r)
        steps = {}
        labels = lab_path if a.gt else None
        session, view, steps["load"] = timed(H.load_volume, session, vol_path, labels, root=tmp)
        gt1 = label == k1
        c1 = first_click(gt1)
        session, view, steps["first"] = click_voxel(session, c1, step="first")
        digests.append(shown(view))
        fix = next_click(session.current.result.mask, gt1, spacing=image.spacing)
        if fix is not None:
            session, view, steps["refine"] = click_voxel(session, fix, fix.positive, "refine")
            digests.append(shown(view))
            session, view, steps["undo"] = timed(H.undo, session)
            digests.append(shown(view))
        session, view, steps["new_object"] = timed(H.new_object, session)
        session, view, steps["other_organ"] = click_voxel(
            session, first_click(label == k2), step="other_organ"
        )
        digests.append(shown(view))
        session, view, steps["clear"] = timed(H.clear, session)
        digests.append(shown(view))
        rows.append({"structures": [k1, k2], **steps})
    session.close()
    profiles.dump()
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return {"repeats": rows, "digests": digests}


# --------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("front", choices=("napari", "web"))
    ap.add_argument("--size", type=parse_size, default=parse_size(DEFAULT_SIZE))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gt", action="store_true", help="web: upload the label map too")
    ap.add_argument(
        "--compare",
        action="store_true",
        help="napari: open the ground truth too and run Compare on each repeat's label map",
    )
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--json", type=Path, default=None, help="report (default runs/...)")
    ap.add_argument("--profile", type=Path, default=None, help="cProfile each step into DIR")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    shape, spacing = a.size
    image, label = clinical_phantom(shape, spacing)
    run = run_napari if a.front == "napari" else run_web
    got = run(a, image, label)
    steps = [k for k in got["repeats"][0] if k != "structures"]
    summary = {}
    for step in steps:
        for key in ("wall_ms", "engine_ms", "longest_stall_ms"):
            vals = [r[step][key] for r in got["repeats"] if key in r.get(step, {})]
            if vals:
                summary[f"{step}_{key}"] = [min(vals), max(vals)]
    report = {
        "command": "bench/frontend_large.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "volume": "x".join(map(str, shape)) + " @ " + "x".join(f"{s:g}" for s in spacing),
        "front": a.front,
        "gt": a.gt,
        "compare": a.compare,
        "summary": summary,
        **got,
    }
    out = (
        a.json or REPO / "runs" / f"frontend_large_{a.front}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({"report": str(out), "volume": report["volume"], "front": a.front,
                      **({"open": got["open"]} if "open" in got else {}),
                      "summary": summary}), flush=True)  # fmt: skip
    return report


if __name__ == "__main__":
    main()
