"""Benchmark: two base weights on the same validation items of a training config.

    .venv/bin/python bench/val_compare.py runs/base_synthetic/best.safetensors \\
        runs/base_synthetic_stage2/best.safetensors [--config configs/base_synthetic_stage2.yaml]

Builds the config's fixed validation loaders (its held-out cases, ``training.val_items`` per
mode; ``core.train_data``) twice: with the config's share of refinement items (a simulated
previous mask) and with first clicks only, and prints the cube Dice of each weights file per
mode. This is how the shipped base was chosen between training stages: on validation data,
never on test data.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    import torch

    from core.checkpoint import load_weights
    from core.config import load_config
    from core.model import Sam3DMed
    from core.precision import fast_cpu_bf16
    from core.train import Dist, evaluate
    from core.train_data import build_data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="+", type=Path, help=".safetensors files (with their .json)")
    ap.add_argument("--config", default=str(REPO / "configs" / "base_synthetic_stage2.yaml"))
    ap.add_argument("--val_items", type=int, default=48)
    a = ap.parse_args(argv)
    bf16 = fast_cpu_bf16()
    device = torch.device("cpu")
    base = load_config(a.config, [f"training.val_items={a.val_items}"])
    with tempfile.TemporaryDirectory() as tmp:
        for p_refine in (base.sampling.p_refine, 0.0):
            cfg = load_config(a.config, [f"training.val_items={a.val_items}",
                                         f"sampling.p_refine={p_refine}"])  # fmt: skip
            data = build_data(cfg, Dist(0, 1, device, False), Path(tmp), lambda *_: None, None,
                              lambda: False)  # fmt: skip
            for path in a.weights:
                state, mcfg = load_weights(path)
                model = Sam3DMed(mcfg)
                model.load_state_dict(state)
                r = evaluate(model, data.val_loaders, device=device, loss_weights=cfg.loss,
                             autocast=lambda: torch.autocast("cpu", torch.bfloat16, enabled=bf16))  # fmt: skip
                print(f"p_refine={p_refine:.2f} {path}: volume {r['val_dice_volume']:.3f}, "
                      f"slice {r['val_dice_slice']:.3f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
