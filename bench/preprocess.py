"""Benchmark: preprocessing throughput (volumes per second) and peak memory.

    python bench/preprocess.py                    # 50 synthetic hearts + openkbp_val (if present)
    python bench/preprocess.py --hearts 50 --workers 2 --skip-real

Each dataset is preprocessed from scratch into a temporary folder (no meshes unless
--extract-mesh) in a fresh child process, so peak memory (max RSS of the run's processes) is
measured per run. Results are printed as a Markdown table and saved as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "bench"))

from child import run_json_child  # noqa: E402

CHILD = r"""
import json, resource, sys, time
from core.preprocess import PreprocessConfig, preprocess_dataset
args = json.loads(sys.argv[1])
cfg = PreprocessConfig(**args)
t = time.perf_counter()
s = preprocess_dataset(cfg)
dt = time.perf_counter() - t
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": dt, "processed": len(s.processed), "failed": len(s.failed),
                  "max_rss_parent_mb": own / 1024, "max_rss_worker_mb": kids / 1024}))
"""


def run_one(name, input_dir, out_dir, classes, workers, extract_mesh, spacing):
    args = dict(
        input_dir=str(input_dir),
        out_dir=str(out_dir),
        classes=classes,
        workers=workers,
        extract_mesh=extract_mesh,
        spacing=spacing,
    )
    r = run_json_child(CHILD, args, cwd=REPO, what=f"preprocessing {name}")
    r.update(
        name=name,
        workers=workers,
        extract_mesh=extract_mesh,
        spacing=spacing,
        volumes_per_s=r["processed"] / r["seconds"],
        peak_mb=max(r["max_rss_parent_mb"], r["max_rss_worker_mb"]),
    )
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hearts", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--extract-mesh", action="store_true")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    from core.synthetic import write_heart_dataset

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        write_heart_dataset(tmp / "hearts", a.hearts, seed=123)
        print(
            f"generated {a.hearts} synthetic hearts in {time.perf_counter() - t:.1f} s",
            file=sys.stderr,
        )
        results.append(
            run_one(
                f"synthetic heart x{a.hearts} (64^3, 3 mm)",
                tmp / "hearts",
                tmp / "c1",
                5,
                a.workers,
                a.extract_mesh,
                3.0,
            )
        )
        kbp = SHARED / "openkbp_val"
        if not a.skip_real and kbp.is_dir():
            results.append(
                run_one(
                    "openkbp_val x33 (128^3 -> 3 mm)",
                    kbp,
                    tmp / "c2",
                    7,
                    a.workers,
                    a.extract_mesh,
                    3.0,
                )
            )
        elif not a.skip_real:
            print(f"skipping openkbp_val: {kbp} is absent", file=sys.stderr)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, "
        f"python {platform.python_version()}\n"
    )
    print("| dataset | workers | meshes | volumes | seconds | volumes/s | peak RSS (MB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['name']} | {r['workers']} | {'yes' if r['extract_mesh'] else 'no'} | "
            f"{r['processed']} | {r['seconds']:.1f} | {r['volumes_per_s']:.1f} | "
            f"{r['peak_mb']:.0f} |"
        )
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
