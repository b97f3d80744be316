"""The plugin in a fresh process: torch is never imported on napari's GUI thread, and
closing the viewer while a worker runs exits cleanly (split from test_napari_reconstruct.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui]


GUI_THREAD_IMPORTS = """
import builtins, json, sys, threading

HEAVY = set(json.loads(sys.argv[2]))  # torch and the core modules that import it
seen = []
_import = builtins.__import__


def watch(name, globals=None, locals=None, fromlist=(), level=0):
    # every import statement, also of a module already imported (another thread's import)
    if level == 0 and threading.current_thread() is threading.main_thread():
        names = [name] + [f"{name}.{f}" for f in fromlist or ()]
        seen.extend(n for n in names if n.split(".")[0] == "torch" or n in HEAVY)
    return _import(name, globals, locals, fromlist, level)


builtins.__import__ = watch
import napari
import numpy as np

from core.clicks import first_click
from core.weights import resolve_adapter
from sam3d_napari._reconstruct_widget import ADAPTER_FOLDER, ReconstructWidget
from sam3d_napari._testing import click_voxel, wait_until

if sys.argv[1] == "no_preload":
    ReconstructWidget._start_preload = lambda self, *_: None
viewer = napari.Viewer(show=False)
viewer.open_sample("sam3d-napari", "heart")
_, widget = viewer.window.add_plugin_dock_widget("sam3d-napari", "Reconstruct (click to 3D)")
widget.weights.value = ADAPTER_FOLDER  # checked on the GUI thread
widget.adapter_dir.value = resolve_adapter("headneck-ct")
gt = np.asarray(viewer.layers["heart labels (ground truth)"].data)
click_voxel(viewer, widget.image_layer, first_click(gt == 2).voxel())
wait_until(lambda: widget.result is not None and not widget.busy and not widget.loading, 300)
print(json.dumps({"gui_thread_imports": sorted(set(seen)), "torch": "torch" in sys.modules,
                  "mask": bool(widget.result.mask.any())}))
viewer.close()
"""


def _torch_importing_core_modules() -> set[str]:
    """The ``core`` modules whose import imports torch: those that import it at module level,
    and those that import one of them at module level (read from the sources)."""
    import ast

    deps, direct = {}, set()
    for path in (REPO / "core").glob("*.py"):
        name = f"core.{path.stem}"
        deps[name] = set()
        for node in ast.parse(path.read_text()).body:  # module level only
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for m in mods:
                if m.split(".")[0] == "torch":
                    direct.add(name)
                elif m.startswith("core."):
                    deps[name].add(m)
    heavy, grew = set(direct), True
    while grew:
        more = {n for n, d in deps.items() if d & heavy} - heavy
        heavy |= more
        grew = bool(more)
    return heavy


def test_the_torch_importing_core_modules_are_found():
    heavy = _torch_importing_core_modules()
    assert {"core.engine", "core.lora", "core.model", "core.config"} <= heavy
    assert not {"core.adapter_files", "core.weights", "core.clicks", "core.io"} & heavy


@pytest.mark.parametrize("preload", ["preload", "no_preload"])
def test_torch_is_never_imported_on_the_gui_thread(tmp_path, preload):
    """torch's import takes seconds and holds the interpreter: on the GUI thread it froze the
    window at the first click. The preload, the click and an adapter folder's check leave
    torch, and every core module that imports it, to worker threads. Every import statement
    on the main thread is watched, also of modules a worker already imported."""
    import os

    script = tmp_path / "gui_imports.py"
    script.write_text(GUI_THREAD_IMPORTS)
    heavy = json.dumps(sorted(_torch_importing_core_modules()))
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    res = subprocess.run(
        [sys.executable, str(script), preload, heavy], cwd=REPO, capture_output=True,
        text=True, env=env, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"gui_thread_imports": [], "torch": True, "mask": True}


CLOSE_WHILE_RUNNING = """
import json, sys, threading, time

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

import sam3d_napari._compare_widget as compare_widget
from sam3d_napari._session import Session

closed = threading.Event()


def busy(*_, **__):
    # a load or a computation that runs until the viewer is closed, then still runs Python
    # while the interpreter exits (no timing race: a slow machine cannot end it before close)
    closed.wait(120)
    end = time.perf_counter() + 1.0
    while time.perf_counter() < end:
        sum(range(1000))


real_compute = compare_widget._compute
Session.preload = lambda self, adapter=None: busy()
compare_widget._compute = lambda *a: (busy(), real_compute(*a))[1]  # a real result
viewer = napari.Viewer(show=False)
_, rec = viewer.window.add_plugin_dock_widget("sam3d-napari", "Reconstruct (click to 3D)")
running = lambda: rec.loading  # noqa: E731
if sys.argv[1] == "compare":
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[2:5, 2:5, 2:5] = 1
    viewer.add_labels(lab, name="gt")
    viewer.add_labels(lab, name="pred")
    _, cmp = viewer.window.add_plugin_dock_widget("sam3d-napari", "Compare with ground truth")
    cmp.gt.value, cmp.pred.value = viewer.layers["gt"], viewer.layers["pred"]
    cmp.compute()
    running = lambda: cmp.busy  # noqa: E731
for _ in range(10):
    QApplication.processEvents()
    time.sleep(0.02)
was_running = running()
t0 = time.perf_counter()
viewer.close()
close_s = time.perf_counter() - t0
closed.set()
print(json.dumps({"running": was_running, "close_s": close_s}), flush=True)
"""


@pytest.mark.parametrize("worker", ["preload", "compare"])
def test_closing_the_viewer_while_a_worker_runs_exits_cleanly(tmp_path, worker):
    """Closing napari while the model still loaded (or Compare still computed), then exiting
    Python, aborted the process: PyQt deleted the worker's signals at exit and its last
    ``finished.emit()`` raised. Python's exit now waits for the worker; closing does not."""
    import os

    script = tmp_path / "close_running.py"
    script.write_text(CLOSE_WHILE_RUNNING)
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    res = subprocess.run(
        [sys.executable, str(script), worker], cwd=REPO, capture_output=True, text=True,
        env=env, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    # the worker waits for the close, so a close that waited for the worker would hang 120 s
    assert out["running"] and out["close_s"] < 60
