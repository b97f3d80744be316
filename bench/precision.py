"""Benchmark: fp32 against bf16 autocast on this CPU, for the shipped model's forward and for a
training step, alternating in one process (so machine drift hits both); and what
``core.precision`` decides here.

    .venv/bin/python bench/precision.py [--threads 2] [--repeats 20] [--train_repeats 6]
                                        [--batch 4]

Inputs are random (``core.model.random_batch``); the training step is the model's forward,
a BCE on the occupancy plus the slice mask's mean, backward and an AdamW step on the shipped
weights (the timing does not depend on the values).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--train_repeats", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4, help="items per training step")
    a = ap.parse_args(argv)
    import torch
    import torch.nn.functional as F

    from core.model import random_batch
    from core.precision import ENV_VAR, cache_file, env_choice, fast_cpu_bf16, known_timing
    from core.weights import load_model

    torch.set_num_threads(a.threads)
    model = load_model(None).eval()
    g = torch.Generator().manual_seed(0)
    batch = random_batch(model.cfg, generator=g)

    def forward(bf16: bool) -> float:
        t = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            model(batch)
        return (time.perf_counter() - t) * 1000.0

    train_batch = random_batch(model.cfg, a.batch, generator=g)
    c = model.cfg.cube_size
    target = (torch.rand(a.batch, 1, c, c, c, generator=g) > 0.5).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step(bf16: bool) -> float:
        model.train()
        t = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = model(train_batch)
            loss = F.binary_cross_entropy_with_logits(out["occupancy"].float(), target)
            loss = loss + out["slice_mask"].float().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.eval()
        return time.perf_counter() - t

    rows = []
    for name, fn, n, unit in (
        ("forward, batch 1", forward, a.repeats, "ms"),
        (f"training step, batch {a.batch}", step, a.train_repeats, "s"),
    ):
        fn(False), fn(True)  # warm-up
        times = {False: [], True: []}
        for _ in range(n):
            for bf16 in (False, True):
                times[bf16].append(fn(bf16))
        fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
        rows.append((name, f"{fp32:.3g} {unit}", f"{bf16:.3g} {unit}", f"{bf16 / fp32:.2f}"))

    t = time.perf_counter()
    decided = fast_cpu_bf16()
    took = time.perf_counter() - t
    print(f"torch {torch.__version__}, {a.threads} threads, median of alternating runs\n")
    print("| what | fp32 | bf16 autocast | bf16 / fp32 |\n| --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if env_choice() is not None:
        how = f"{ENV_VAR}={os.environ[ENV_VAR].strip()}"
    elif known_timing() is not None:
        tm = known_timing()
        how = (
            f"measured once on random weights, fp32 {tm.fp32_ms:.0f} ms, bf16 {tm.bf16_ms:.0f} ms, "
            f"pairs bf16/fp32 {', '.join(f'{r:.2f}' for r in tm.ratios)}; kept in {cache_file()}"
        )
    else:
        how = "from the CPU's flags"
    print(f"\ncore.precision.fast_cpu_bf16(): {decided} ({how}; {took:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
