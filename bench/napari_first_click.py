"""The first click in a fresh napari session: seconds from the click to the result on screen.

Opens a shown viewer (run under a display: ``xvfb-run -a``) with the sample heart, docks
Reconstruct, clicks the left ventricle (the organ's first click, ``core.clicks.first_click``)
and waits for the result. The first click of a process used to pay for torch's import, the
model's load and the first forward's setup; the widget now does that in the background from
the moment it opens (``Session.preload``). So this times:

    xvfb-run -a .venv/bin/python bench/napari_first_click.py --wait ready     # click once loaded
    xvfb-run -a .venv/bin/python bench/napari_first_click.py --wait 1         # click after 1 s
    xvfb-run -a .venv/bin/python bench/napari_first_click.py --no_preload     # as before
    xvfb-run -a .venv/bin/python bench/napari_first_click.py --adapter headneck-ct --wait ready

``--wait S`` clicks S seconds after the widget opened (``ready``: when the preload is done;
``clicked_at_s`` says when that was). ``--dock_first`` docks the widget first and opens the
sample right after, so the preload and the image's opening compete for the two cores and the
interpreter (``open_s``: the sample's opening, the widget's docking included).
Run each in its own process: only a process's first click is in question. Also reports the
second click (another organ) and the longest stall of the Qt event loop from the widget's
opening to the first result (a precise 5 ms timer on the GUI thread). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LV, RV = 2, 4


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wait", default="ready", help="seconds before the click, or 'ready'")
    ap.add_argument("--no_preload", action="store_true", help="load on the first click")
    ap.add_argument("--dock_first", action="store_true", help="dock, then open the sample")
    ap.add_argument("--adapter", default=None, help="choose this shipped adapter on docking")
    a = ap.parse_args(argv)
    wait = None if a.wait == "ready" else float(a.wait)

    t_start = time.perf_counter()
    import napari

    from core.clicks import first_click
    from sam3d_napari._reconstruct_widget import ReconstructWidget
    from sam3d_napari._testing import StallMonitor, click, wait_until

    if a.no_preload:
        ReconstructWidget._start_preload = lambda self: None
    viewer = napari.Viewer(show=True)

    def dock():
        return viewer.window.add_plugin_dock_widget("sam3d-napari", "Reconstruct (click to 3D)")[1]

    def dock_and_choose():
        w = dock()
        if a.adapter:
            w.weights.value = a.adapter
        return w

    t = time.perf_counter()
    widget = dock_and_choose() if a.dock_first else None
    viewer.open_sample("sam3d-napari", "heart")  # a docked widget chooses it
    open_s = time.perf_counter() - t
    stall = StallMonitor().start()
    t_open = time.perf_counter()
    if widget is None:
        widget = dock_and_choose()
    else:
        t_open = t
    gt = np.asarray(viewer.layers["heart labels (ground truth)"].data)
    if wait is None:
        wait_until(lambda: not widget.loading, timeout=300)
    else:
        wait_until(lambda: time.perf_counter() - t_open >= wait, timeout=300)
    ready_s = round(time.perf_counter() - t_open, 2)

    def click_and_wait(label):
        from core.io import voxel_to_world
        from sam3d_napari._layers import meta_affine

        world = voxel_to_world(meta_affine(widget.image_layer), first_click(gt == label).voxel())
        for d in viewer.dims.not_displayed:
            viewer.dims.set_point(d, world[d])
        before = widget.result
        t = time.perf_counter()
        click(viewer, world)
        wait_until(lambda: widget.result is not before and not widget.busy, timeout=300)
        return time.perf_counter() - t, widget.result

    first_s, res = click_and_wait(LV)
    longest = stall.stop()
    second_s, res2 = click_and_wait(RV)
    out = {
        "preload": not a.no_preload,
        "wait": a.wait,
        "dock_first": a.dock_first,
        "adapter": a.adapter,
        "open_s": round(open_s, 2),
        "first_click_s": round(first_s, 3),
        "first_click_engine_ms": res.timings["total"],
        "second_click_s": round(second_s, 3),
        "second_click_engine_ms": res2.timings["total"],
        "clicked_at_s": ready_s,
        "longest_stall_ms": round(longest, 1),
        "longest_stall_at_s": stall.longest_stall_at_s,
        "p99_gap_ms": round(float(np.percentile(stall.gaps_ms, 99)), 1),
        "process_s": round(time.perf_counter() - t_start, 2),
    }
    print(json.dumps(out), flush=True)
    viewer.close()
    return out


if __name__ == "__main__":
    main()
