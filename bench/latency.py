"""Benchmark: click -> mask and mesh latency of the engine, and peak memory.

    .venv/bin/python bench/latency.py [--checkpoint F] [--adapter A] [--repeats 20]
        [--precision auto] [--interleave] [--device cpu|cuda] [--refine_passes N]

Two volumes: the 64^3 synthetic heart (3 mm) and a 128^3 one (the same anatomy at 1.5 mm).
Each repeat is one first click on a different structure/slice, timed end to end by the engine
(normalisation, model passes including zooms and the volume mode's refinement pass,
paste-back, mesh). Reports the median and 90th percentile, the number of model passes, and the
peak RSS of the process; and, apart, the median of a second click: the evaluation's corrective
click (``core.clicks.next_click``) refining the first click's result.

The volumes are made before the clicks are timed, as a viewer holds them. ``--interleave``
makes each phantom right before its click instead (the method of earlier runs): the phantom's
second of numpy/scipy work just before the click makes the model's forward up to twice as
slow on this VM (cache and memory state), so both are reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--adapter", default=None, help="an adapter (shipped name or folder)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--mode", default="volume", choices=("volume", "slice"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu (the product's target) or cuda")
    ap.add_argument(
        "--refine_passes",
        type=int,
        default=None,
        help="the volume mode's refinement passes (default: the engine's, CubePolicy)",
    )
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--interleave", action="store_true", help="make each phantom just before its click"
    )
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from core.clicks import PromptSet, first_click, next_click
    from core.engine import CubePolicy, Reconstructor
    from core.io import spacing_of
    from core.synthetic import make_heart_phantom

    policy = CubePolicy() if a.refine_passes is None else CubePolicy(refine_passes=a.refine_passes)
    rec = Reconstructor.from_pretrained(
        a.checkpoint, a.adapter, precision=a.precision, device=a.device, policy=policy
    )
    rows = []
    for shape, spacing in (((64, 64, 64), 3.0), ((128, 128, 128), 1.5)):
        times, passes, second = [], [], []
        made = (
            {}
            if a.interleave
            else {
                r: make_heart_phantom(9000 + r, shape=shape, spacing=spacing)
                for r in range(a.repeats + 2)
            }
        )
        for r in range(a.repeats + 2):
            if a.interleave:
                image, label = make_heart_phantom(9000 + r, shape=shape, spacing=spacing)
            else:
                image, label = made[r]
            k = 1 + r % 5
            click = first_click(label.data == k)
            res = rec.predict(image, PromptSet((click,)), mode=a.mode)
            # the second click: the evaluation's corrective click on the largest error
            fix = next_click(res.mask, label.data == k, spacing=spacing_of(image.affine))
            res2 = None
            if fix is not None:
                prompts = PromptSet((click, fix))
                res2 = rec.predict(image, prompts, mode=a.mode, previous=res)
            if r >= 2:  # two warm-up runs
                times.append(res.timings)
                passes.append(res.passes)
                if res2 is not None:
                    second.append(res2.timings)
        tot = np.array([t["total"] for t in times])
        row = {
            "shape": "x".join(map(str, shape)),
            "mode": a.mode,
            "precision": rec.precision,
            "median_ms": float(np.median(tot)),
            "p90_ms": float(np.percentile(tot, 90)),
            "median_model_ms": float(np.median([t["model"] for t in times])),
            "median_inputs_ms": float(np.median([t["inputs"] for t in times])),
            "median_forward_ms": float(np.median([t["forward"] for t in times])),
            "median_mesh_ms": float(np.median([t.get("mesh", 0.0) for t in times])),
            "mean_passes": float(np.mean(passes)),
            "n": len(times),
            "second_click_median_ms": float(np.median([t["total"] for t in second])),
            "second_click_median_forward_ms": float(np.median([t["forward"] for t in second])),
            "n_second": len(second),
        }
        rows.append(row)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    how = "each made just before its click" if a.interleave else "made before timing"
    print(
        f"machine: {platform.machine()}, device {a.device}, torch threads {a.threads}, "
        f"peak RSS {peak:.0f} MB, weights {rec.name}, refine passes {policy.refine_passes}, "
        f"volumes {how}\n"
    )
    print(
        "| volume | mode | precision | median ms | p90 ms | model ms (inputs + forward) "
        "| mesh ms | passes | second click ms (forward) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['shape']} | {r['mode']} | {r['precision']} | {r['median_ms']:.0f} | "
            f"{r['p90_ms']:.0f} | {r['median_model_ms']:.0f} ({r['median_inputs_ms']:.0f} + "
            f"{r['median_forward_ms']:.0f}) | {r['median_mesh_ms']:.0f} | "
            f"{r['mean_passes']:.2f} | {r['second_click_median_ms']:.0f} "
            f"({r['second_click_median_forward_ms']:.0f}) |"
        )
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "peak_rss_mb": peak}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
