"""Load test of the web demo's API: N concurrent gradio_client clients, each a different case.

    .venv/bin/python bench/gradio_load.py [--clients 10] [--rounds 1] [--concurrency 2]

Writes N synthetic hearts (different seeds) to a temporary folder, launches the app on
127.0.0.1 (as ``sam3d app`` does: model loaded once), and starts N threads at once, each with
its own ``gradio_client.Client``, each reconstructing its own case (first click on a different
heart structure) through ``api_name="reconstruct"``. Every answer is checked: the mask must be
on the input's affine and equal to the engine's own prediction for the same inputs, and its
Dice against the phantom's ground truth is reported (with a floor). Latency is client side
(upload, queue, reconstruction, download). The JSON report goes to runs/ (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DICE_FLOOR = 0.2  # per answer, against the ground truth; the exact check is vs the engine


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1, help="concurrent bursts (default 1)")
    ap.add_argument("--concurrency", type=int, default=2, help="the app's model concurrency")
    ap.add_argument("--mode", choices=("volume", "slice"), default="volume")
    ap.add_argument("--seed", type=int, default=5000, help="first case's seed")
    ap.add_argument("--out", type=Path, default=None, help="JSON report (default runs/...)")
    a = ap.parse_args(argv)

    import nibabel as nib
    from gradio_client import Client, handle_file

    from core.clicks import PromptSet, first_click
    from core.io import load_image, save_image
    from core.metrics import dice
    from core.synthetic import HEART_LABELS, make_heart_phantom
    from gradio_app.app import close_app, launch

    tmp = Path(tempfile.mkdtemp(prefix="gradio-load-"))
    cases = []
    for i in range(a.clients):
        image, label = make_heart_phantom(a.seed + i)
        structure = 1 + i % 5
        path = save_image(image, tmp / f"heart_{i:02d}.nii.gz")
        click = first_click(label.data == structure)
        cases.append(
            {
                "path": path,
                "gt": label.data == structure,
                "click": click,
                "structure": HEART_LABELS[structure],
            }
        )

    t0 = time.perf_counter()
    demo = launch(
        "127.0.0.1", None, prevent_thread_lock=True, concurrency=a.concurrency, quiet=True
    )
    startup_s = time.perf_counter() - t0
    engine = demo.sam3d_engine
    rows, errors = [], []
    try:
        clients = [
            Client(demo.local_url, verbose=False, download_files=str(tmp / "downloads"))
            for _ in cases
        ]
        # one warm-up call so the first measured request does not pay one-off costs
        c0 = cases[0]
        clients[0].predict(
            handle_file(str(c0["path"])),
            2,
            c0["click"].slice_idx,
            [[c0["click"].row, c0["click"].col]],
            api_name="/reconstruct",
        )
        for rnd in range(a.rounds):
            barrier = threading.Barrier(len(cases))
            results: list = [None] * len(cases)

            def work(i, barrier=barrier, results=results):
                c, cl = cases[i], clients[i]
                k = c["click"]
                barrier.wait()
                t = time.perf_counter()
                try:
                    out = cl.predict(
                        handle_file(str(c["path"])),
                        k.axis,
                        k.slice_idx,
                        [[k.row, k.col]],
                        None,
                        a.mode,
                        api_name="/reconstruct",
                    )
                    results[i] = (time.perf_counter() - t, out)
                except Exception as exc:  # reported below
                    results[i] = (time.perf_counter() - t, exc)

            threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
            t_burst = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            burst_s = time.perf_counter() - t_burst
            for i, (lat, out) in enumerate(results):
                c = cases[i]
                if isinstance(out, Exception):
                    errors.append(f"round {rnd} case {i}: {type(out).__name__}: {out}")
                    continue
                mask_path, mesh_path, info = out
                img = nib.load(mask_path)
                affine_ok = bool(np.allclose(img.affine, nib.load(str(c["path"])).affine))
                mask = np.asarray(img.dataobj).astype(bool)
                direct = engine.predict(
                    load_image(c["path"]), PromptSet((c["click"],)), mode=a.mode
                )
                d = float(dice(mask, c["gt"]))
                ok = affine_ok and np.array_equal(mask, direct.mask) and d > DICE_FLOOR
                if not ok:
                    errors.append(
                        f"round {rnd} case {i}: affine_ok={affine_ok} "
                        f"equal={np.array_equal(mask, direct.mask)} dice={d:.3f}"
                    )
                rows.append(
                    {
                        "round": rnd,
                        "case": i,
                        "structure": c["structure"],
                        "latency_s": round(lat, 3),
                        "server_wall_ms": info["wall_ms"],
                        "engine_total_ms": info["timings_ms"]["total"],
                        "passes": info["passes"],
                        "dice_vs_gt": round(d, 3),
                        "equals_engine": bool(np.array_equal(mask, direct.mask)),
                        "affine_ok": affine_ok,
                        "mesh": mesh_path is not None,
                    }
                )
            print(f"round {rnd}: {len(cases)} concurrent requests in {burst_s:.2f} s")
    finally:
        close_app(demo)

    lat = [r["latency_s"] for r in rows]
    report = {
        "command": "bench/gradio_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "clients": a.clients,
        "rounds": a.rounds,
        "concurrency": a.concurrency,
        "mode": a.mode,
        "startup_s": round(startup_s, 2),
        "n_ok": sum(1 for r in rows if r["equals_engine"] and r["affine_ok"]),
        "n_requests": a.clients * a.rounds,
        "latency_s": {
            "median": round(statistics.median(lat), 3) if lat else None,
            "worst": round(max(lat), 3) if lat else None,
            "best": round(min(lat), 3) if lat else None,
        },
        "engine_total_ms_median": statistics.median(r["engine_total_ms"] for r in rows)
        if rows
        else None,
        "dice_vs_gt": {
            "min": min((r["dice_vs_gt"] for r in rows), default=None),
            "mean": round(statistics.mean(r["dice_vs_gt"] for r in rows), 3) if rows else None,
            "floor": DICE_FLOOR,
        },
        "errors": errors,
        "requests": rows,
    }
    out = a.out or REPO / "runs" / f"gradio_load_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"{report['n_ok']}/{report['n_requests']} answers equal the engine's on the input's "
        f"affine; Dice vs ground truth min {report['dice_vs_gt']['min']} "
        f"(floor {DICE_FLOOR}); latency median {report['latency_s']['median']} s, worst "
        f"{report['latency_s']['worst']} s; report {out}"
    )
    for e in errors:
        print("  ERROR", e)
    return 0 if not errors and report["n_ok"] == report["n_requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
