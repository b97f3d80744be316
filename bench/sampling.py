"""Benchmark: training-example sampling speed (ms per item of ``core.cubes.CubeDataset``).

    python bench/sampling.py                                # built-in synthetic hearts
    python bench/sampling.py --cache runs/cache/openkbp_train --config configs/lora_headneck.yaml
    # before/after: another checkout's core on the same items, runs interleaved
    git worktree add /tmp/before <commit>
    python bench/sampling.py --repo /tmp/before --repo .

On a GPU the data workers build the examples while the GPU trains, and they were the limit
(BENCHMARKS.md): samples per second = workers x 1000 / (ms per item), at most. Each run is a
fresh single-threaded child process with the checkout's directory first on its path. It first
builds ``--items`` random items (the per-case memory maps and per-worker caches warm up, as
they do over an epoch), then times ``--items`` others. Without ``--cache``, 8 synthetic hearts
are generated and preprocessed into a temporary cache with this checkout's code.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from child import run_json_child  # noqa: E402

CHILD = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from core.config import load_config
from core.cubes import CubeDataset
a = json.loads(sys.argv[1])
cfg = load_config(a["config"])
ds = CubeDataset(a["cache"], model_cfg=cfg.model, sampling=cfg.sampling, seed=a["seed"])
idx = np.random.default_rng(a["seed"]).integers(0, len(ds), 2 * a["items"])
for i in idx[: a["items"]]:
    ds[int(i)]
t = time.perf_counter()
for i in idx[a["items"]:]:
    ds[int(i)]
dt = time.perf_counter() - t
print(json.dumps({"ms_per_item": 1000 * dt / a["items"], "n_items": len(ds)}))
"""


def run_child(repo: Path, cache: Path, config: Path, items: int, seed: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    args = {"cache": str(cache), "config": str(config), "items": items, "seed": seed}
    return run_json_child(CHILD, args, cwd=repo, env=env, what=f"{repo}: the sampling run")


def synthetic_cache(tmp: Path) -> Path:
    from core.preprocess import PreprocessConfig, preprocess_dataset
    from core.synthetic import write_heart_dataset

    write_heart_dataset(tmp / "hearts", n_cases=8, seed=0)
    preprocess_dataset(
        PreprocessConfig(
            input_dir=str(tmp / "hearts"), out_dir=str(tmp / "cache"), classes=5, workers=1
        )
    )
    return tmp / "cache"


def add_data_args(ap: argparse.ArgumentParser) -> None:
    """``--cache``, ``--config`` and ``--repo``: the data and the checkouts to time."""
    ap.add_argument("--cache", type=Path, default=None, help="a preprocessed cache")
    ap.add_argument(
        "--config",
        type=Path,
        default=REPO / "configs" / "base_synthetic_stage7.yaml",
        help="training config whose data, model and sampling settings are used",
    )
    ap.add_argument("--repo", type=Path, action="append", default=None, help="checkout to time")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(ap)
    ap.add_argument("--items", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    repos = [r.resolve() for r in (a.repo or [REPO])]
    with tempfile.TemporaryDirectory() as tmp:
        cache = a.cache.resolve() if a.cache else synthetic_cache(Path(tmp))
        times: dict[str, list[float]] = {str(r): [] for r in repos}
        for _ in range(a.repeats):
            for r in repos:  # interleaved, so a noisy machine hits every checkout alike
                out = run_child(r, cache, a.config.resolve(), a.items, a.seed)
                times[str(r)].append(out["ms_per_item"])
    print(
        f"cache {cache if a.cache else 'synthetic hearts (8)'}, config {a.config.name}, "
        f"{a.items} items x {a.repeats} runs"
    )
    print("| checkout | ms per item (median) | runs | items per s, one worker |")
    print("| --- | --- | --- | --- |")
    rows = []
    for r, ts in times.items():
        med = statistics.median(ts)
        rows.append({"repo": r, "ms_per_item": med, "runs": ts})
        print(f"| {r} | {med:.1f} | {', '.join(f'{t:.1f}' for t in ts)} | {1000 / med:.1f} |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
