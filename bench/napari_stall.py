"""How responsive the napari viewer stays while Fine-tune trains in the background.

Opens a shown viewer (run under a display: ``xvfb-run -a``), docks the plugin's Fine-tune
widget from its manifest, starts a LoRA fine-tune on synthetic hearts, and measures the
longest stall of the Qt event loop (a precise 5 ms timer on the GUI thread; a late tick is
a stall) from Start until the run returns, while the 2D canvas is also being redrawn.

    OMP_NUM_THREADS=1 xvfb-run -a .venv/bin/python bench/napari_stall.py              # tiny model
    OMP_NUM_THREADS=1 xvfb-run -a .venv/bin/python bench/napari_stall.py --base shipped \
        --epochs 2 --steps 3                                                           # real base

Prints one JSON line: longest stall and 99th-percentile timer gap (ms), ticks, seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", choices=["tiny", "shipped"], default="tiny")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="steps per epoch")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument(
        "--slider-hz", type=float, default=1.0,
        help="move the slice slider this often during training (0: leave the canvas alone)",
    )  # fmt: skip
    args = ap.parse_args(argv)

    import napari

    from core.synthetic import write_heart_dataset
    from sam3d_napari._session import session_for
    from sam3d_napari._testing import TINY_TRAINING, StallMonitor, tiny_base

    tmp = Path(tempfile.mkdtemp(prefix="sam3d-stall-"))
    write_heart_dataset(tmp / "hearts", args.cases, shape=(32, 32, 32), spacing=6.0)
    viewer = napari.Viewer(show=True)
    viewer.open_sample("sam3d-napari", "heart")
    _, w = viewer.window.add_plugin_dock_widget("sam3d-napari", "Fine-tune (LoRA)")
    extra = list(TINY_TRAINING) if args.base == "tiny" else ["data.spacing=6.0"]
    if args.base == "tiny":
        session_for(viewer).set_base_weights(tiny_base(tmp / "tiny_base.safetensors"))
        extra.append("training.val_items=2")
    w.folder.value = tmp / "hearts"
    w.output.value = tmp / "run"
    w.epochs.value, w.steps_per_epoch.value, w.batch_size.value = (
        args.epochs,
        args.steps,
        args.batch,
    )
    w.extra.value = " ".join(extra)

    # keep the canvas busy too: the slider moves through the slices while training runs,
    # inside a real Qt event loop (as napari's application runs)
    from qtpy.QtCore import QEventLoop, QTimer

    dims = viewer.dims
    lo, hi, _ = dims.range[-1]
    ticker = QTimer()
    pos = [0]

    def move_slider():
        pos[0] = (pos[0] + 1) % 32
        dims.set_point(dims.ndim - 1, lo + pos[0] * (hi - lo) / 32)

    ticker.timeout.connect(move_slider)
    # let the window settle (first paint, docking) before measuring
    settle = QEventLoop()
    QTimer.singleShot(2000, settle.quit)
    settle.exec()
    monitor = StallMonitor(5)
    t0 = time.perf_counter()
    monitor.start()
    if args.slider_hz > 0:
        ticker.start(int(1000 / args.slider_hz))
    w.start()
    if w.busy:
        loop = QEventLoop()
        w._worker.finished.connect(loop.quit)
        loop.exec()
    ticker.stop()
    stall = monitor.stop()
    seconds = time.perf_counter() - t0
    gaps = np.asarray(monitor.gaps_ms)
    out = {
        "base": args.base,
        "slider_hz": args.slider_hz,
        "longest_stall_ms": round(stall, 1),
        "longest_stall_at_s": monitor.longest_stall_at_s,
        "p99_gap_ms": round(float(np.percentile(gaps, 99)), 1) if gaps.size else None,
        "ticks": monitor.ticks,
        "seconds": round(seconds, 1),
        "epochs_done": w.result.epochs_done if w.result else None,
        "error": None if w._error is None else str(w._error),
    }
    print(json.dumps(out))
    viewer.close()
    return out


if __name__ == "__main__":
    sys.exit(0 if main()["error"] is None else 1)
