"""Benchmark: the training data loader as a fast GPU sees it (seconds per epoch, and the wait
for each epoch's first batch), with no model in the loop.

    python bench/loader.py                                   # built-in synthetic hearts
    python bench/loader.py --cache runs/cache/openkbp_train --config configs/lora_headneck.yaml
    # before/after: another checkout's core on the same data, runs interleaved
    git worktree add /tmp/before <commit>
    python bench/loader.py --repo /tmp/before --repo .

Each run is a fresh child process with the checkout's directory first on its path. It builds
the run's data exactly as ``sam3d train`` does (``core.train_data.build_data``: the split, the
sampler, the training loader with ``--workers`` data workers and the fixed validation loaders),
then goes through ``--epochs`` epochs of ``--steps`` batches the way ``core.train`` does
(``set_epoch``, a new iterator, the batches, then both validation loaders), taking every batch
as soon as it is ready: the time is all data time, what a GPU run would wait for if its model
took no time. Reported: the median epoch, the first epoch (workers and caches cold), and the
mean wait for an epoch's first batch after the first epoch.
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
from sampling import add_data_args, synthetic_cache  # noqa: E402

CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from core.config import load_config
from core.train import _setup_device
from core.train_data import build_data
a = json.loads(sys.argv[1])
over = [
    f"data.train_data={json.dumps(a['cache'])}",
    f"training.output_dir={json.dumps(a['out'])}",
    f"data.num_workers={a['workers']}",
    f"training.steps_per_epoch={a['steps']}",
    f"training.batch_size={a['batch']}",
    "training.grad_accum=1",
]
cfg = load_config(a["config"], over)
d = _setup_device("cpu")
data = build_data(cfg, d, Path(a["out"]), lambda *x: None, None, lambda: False)
epochs, first_waits = [], []
for epoch in range(a["epochs"]):
    t0 = time.perf_counter()
    data.train_ds.set_epoch(epoch)
    data.sampler.set_epoch(epoch)
    batches = iter(data.loader)
    for s in range(data.steps_per_epoch):
        next(batches)
        if s == 0:
            first_waits.append(time.perf_counter() - t0)
    del batches
    for loader in data.val_loaders.values():
        for _ in loader:
            pass
    epochs.append(time.perf_counter() - t0)
print(json.dumps({"epochs": epochs, "first_waits": first_waits, "steps": data.steps_per_epoch,
                  "val_items": {m: len(v.dataset) for m, v in data.val_loaders.items()}}))
"""


def run_child(repo: Path, a, cache: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    args = {
        "cache": str(cache),
        "config": str(a.config.resolve()),
        "out": str(out),
        "workers": a.workers,
        "steps": a.steps,
        "batch": a.batch,
        "epochs": a.epochs,
    }
    return run_json_child(CHILD, args, cwd=repo, env=env, what=f"{repo}: the loader run")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(ap)
    ap.add_argument("--workers", type=int, default=2, help="data workers")
    ap.add_argument("--steps", type=int, default=8, help="batches per epoch")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    repos = [r.resolve() for r in (a.repo or [REPO])]
    with tempfile.TemporaryDirectory() as tmp:
        cache = a.cache.resolve() if a.cache else synthetic_cache(Path(tmp))
        runs: dict[str, list[dict]] = {str(r): [] for r in repos}
        for k in range(a.repeats):
            for i, r in enumerate(repos):  # interleaved: a noisy machine hits every checkout
                runs[str(r)].append(run_child(r, a, cache, Path(tmp) / f"out{k}_{i}"))
    print(
        f"cache {cache if a.cache else 'synthetic hearts (8)'}, config {a.config.name}, "
        f"{a.workers} workers, {a.epochs} epochs x {a.steps} batches of {a.batch} "
        f"+ validation, {a.repeats} runs each"
    )
    print(
        "| checkout | epoch, median (s) | first epoch (s) | wait for an epoch's first batch (s) |"
    )
    print("| --- | --- | --- | --- |")
    rows = []
    for r, rs in runs.items():
        later = [e for x in rs for e in x["epochs"][1:]]
        first = [x["epochs"][0] for x in rs]
        waits = [w for x in rs for w in x["first_waits"][1:]]
        row = {
            "repo": r,
            "epoch_median_s": statistics.median(later),
            "first_epoch_s": statistics.median(first),
            "first_batch_wait_s": statistics.mean(waits),
            "runs": rs,
        }
        rows.append(row)
        print(
            f"| {r} | {row['epoch_median_s']:.2f} | {row['first_epoch_s']:.2f} "
            f"| {row['first_batch_wait_s']:.2f} |"
        )
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
