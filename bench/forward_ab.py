"""Benchmark: the model's forward, this checkout's ``core.model`` against another commit's,
on the same weights and inputs, alternating in one process (so machine drift hits both).

    .venv/bin/python bench/forward_ab.py [--ref 8504320~1] [--threads 2] [--repeats 20]

The default ref is the code before the faster forward (commit 8504320). Inputs are random
(no NaN in the pointmaps), batch 1, bf16 autocast where it is the faster (core.precision:
AMX, or measured).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="8504320~1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args(argv)
    import torch

    from core.engine import _native_bf16
    from core.model import random_batch
    from core.weights import load_model

    torch.set_num_threads(a.threads)
    src = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{a.ref}:core/model.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ref_model.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location("ref_model", path)
        ref = importlib.util.module_from_spec(spec)
        sys.modules["ref_model"] = ref
        spec.loader.exec_module(ref)
    new = load_model(None).eval()
    old = ref.Sam3DMed(ref.ModelConfig(**vars(new.cfg))).eval()
    old.load_state_dict(new.state_dict())
    batch = random_batch(new.cfg, generator=torch.Generator().manual_seed(0))
    bf16 = _native_bf16(torch.device("cpu"))
    times = {"ref": [], "this": []}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out_old, out_new = old(batch), new(batch)
        for _ in range(a.repeats):
            for name, m in (("ref", old), ("this", new)):
                t = time.perf_counter()
                m(batch)
                times[name].append((time.perf_counter() - t) * 1000)
    diff = float((out_old["occupancy"].float() - out_new["occupancy"].float()).abs().max())
    print(f"threads {a.threads}, {'bf16' if bf16 else 'fp32'}, ref {a.ref}")
    print("| code | median ms | min ms |")
    print("| --- | --- | --- |")
    for name, v in times.items():
        print(f"| {name} | {np.median(v):.1f} | {min(v):.1f} |")
    print(f"max |occupancy logit difference| {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
