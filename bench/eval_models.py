"""Benchmark: accuracy with the click protocol (core.evaluate), model vs baselines.

    # synthetic heart test cases (seed 1000: never used in training), both modes
    .venv/bin/python bench/eval_models.py heart --out runs/eval
    # head-and-neck CT validation set (../shared/data/openkbp_val), base vs adapter, both modes
    .venv/bin/python bench/eval_models.py headneck --out runs/eval [--max_cases N]
    # only the adapter (when the base did not change), one mode per process
    .venv/bin/python bench/eval_models.py headneck --out runs/eval --weights headneck-ct --modes volume
    .venv/bin/python bench/eval_models.py headneck --out runs/eval --weights headneck-ct --modes slice --no_baselines
    # a candidate base (and an adapter trained on it) before shipping them
    .venv/bin/python bench/eval_models.py heart --out runs/eval --checkpoint runs/s5/weights.safetensors
    .venv/bin/python bench/eval_models.py headneck --out runs/eval --checkpoint runs/s5/weights.safetensors \
        --weights runs/lora_s5/adapter_best,base

Prints Markdown tables (per structure, Dice after 1 and N clicks, HD95, baselines) for
BENCHMARKS.md; the full metrics.json files stay under --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run(name, data_root, out, *, checkpoint, adapter, mode, clicks, max_cases, baselines):
    from core.evaluate import EvalConfig, evaluate, summary_table

    cfg = EvalConfig(
        data_root=str(data_root),
        output_dir=str(out / name),
        checkpoint=checkpoint,
        adapter=adapter,
        clicks=clicks,
        mode=mode,
        max_cases=max_cases,
        baselines=baselines,
    )
    rep = evaluate(cfg)
    print(
        f"\n### {name}: {mode} mode, weights {rep['weights']}, "
        f"{rep['aggregate']['n_structures']} structures, {rep['seconds']:.0f} s, "
        f"median model latency {rep['model_latency_ms']['median']:.0f} ms\n"
    )
    print(summary_table(rep))
    return rep


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=("heart", "headneck"))
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "eval")
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--max_cases", type=int, default=None)
    ap.add_argument("--modes", default="volume,slice")
    ap.add_argument(
        "--weights",
        default="headneck-ct,base",
        help="headneck: adapters to run, 'base' for the bare base (baselines run with the first)",
    )
    ap.add_argument("--no_baselines", action="store_true", help="skip the two baselines")
    ap.add_argument(
        "--checkpoint",
        default=None,
        help="base weights to evaluate (a candidate before shipping it); default: the shipped base",
    )
    a = ap.parse_args(argv)
    modes = a.modes.split(",")
    if a.which == "heart":
        from core.synthetic import write_heart_dataset

        data = a.out / "heart_test_data"
        write_heart_dataset(data, 20, seed=1000)  # seed 1000: disjoint from training (seed 0)
        for mode in modes:
            run(
                f"heart_{mode}",
                data,
                a.out,
                checkpoint=a.checkpoint,
                adapter=None,
                mode=mode,
                clicks=a.clicks,
                max_cases=a.max_cases,
                baselines=mode == modes[0] and not a.no_baselines,
            )
    else:
        data = REPO.parent / "shared" / "data" / "openkbp_val"
        if not data.is_dir():
            print(f"skipping: {data} is absent")
            return 0
        adapters = [None if w == "base" else w for w in a.weights.split(",")]
        for adapter in adapters:
            for mode in modes:
                run(
                    f"headneck_{Path(adapter).name if adapter else 'base'}_{mode}",
                    data,
                    a.out,
                    checkpoint=a.checkpoint,
                    adapter=adapter,
                    mode=mode,
                    clicks=a.clicks,
                    max_cases=a.max_cases,
                    baselines=adapter is adapters[0] and mode == modes[0] and not a.no_baselines,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
