"""Benchmark: engine-level validation of base weights and cube policies on held-out
*validation* cases (never the test sets), with the click protocol of ``sam3d eval``.

    # the base's held-out hearts (the val split of a base training run)
    .venv/bin/python bench/engine_val.py --checkpoint runs/base_synthetic_stage4/best.safetensors
    # the adapter's held-out openkbp_train cases (never openkbp_val)
    .venv/bin/python bench/engine_val.py --which headneck [--adapter headneck-ct]

The validation case ids come from the training run's ``data_summary.json`` (``--run``); the
cases are linked (never copied) into ``--out``. Prints Dice after 1 and N clicks per mode and
cube policy: how the engine's default (no zoom-in) was chosen.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

POLICIES = ("no_zoom_in", "zoom_in")


def _link(src: Path, dst: Path) -> None:
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src.resolve(), dst)


def heart_cases(run: Path, data: Path, out: Path) -> Path:
    """The heart cases of a base run's validation split, linked as case folders."""
    val = json.loads((run / "data_summary.json").read_text())["val_cases"]
    root = out / "heart_val_data"
    for c in val:
        if c.startswith("heart"):
            _link(data / c, root / c)
    return root


def headneck_cases(run: Path, data: Path, out: Path) -> Path:
    """An adapter run's held-out openkbp_train cases, linked in the nnU-Net layout."""
    val = json.loads((run / "data_summary.json").read_text())["val_cases"]
    root = out / "headneck_val_data"
    _link(data / "dataset.json", root / "dataset.json")
    for c in val:
        _link(data / "imagesTr" / f"{c}_0000.nii.gz", root / "imagesTr" / f"{c}_0000.nii.gz")
        _link(data / "labelsTr" / f"{c}.nii.gz", root / "labelsTr" / f"{c}.nii.gz")
    return root


def add_validation_args(ap: argparse.ArgumentParser) -> None:
    """The options that pick the weights and the validation cases (shared with diagnose.py)."""
    ap.add_argument("--which", choices=("heart", "headneck"), default="heart")
    ap.add_argument("--checkpoint", default=None, help="base weights (default: the shipped)")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--run", type=Path, default=None, help="training run with data_summary.json")
    ap.add_argument("--data", type=Path, default=None, help="the run's raw dataset folder")


def prepare(a: argparse.Namespace, out: Path) -> Path | None:
    """Torch threads from ``OMP_NUM_THREADS`` (default 2), then the validation cases of
    ``a.run`` linked under ``out``; None (after saying so) when the head-and-neck data is
    absent."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if a.which == "heart":
        run = a.run or REPO / "runs" / "base_synthetic_stage4"
        return heart_cases(run, a.data or REPO / "runs" / "data" / "pretrain", out)
    data = a.data or REPO.parent / "shared" / "data" / "openkbp_train"
    if not data.is_dir():
        print(f"{data}: not found; skipping the head-and-neck cases")
        return None
    return headneck_cases(a.run or REPO / "runs" / "lora_headneck", data, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_validation_args(ap)
    ap.add_argument("--clicks", type=int, default=3)
    ap.add_argument("--modes", default="volume,slice")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "engine_val")
    a = ap.parse_args(argv)

    from core.engine import CubePolicy
    from core.evaluate import EvalConfig, evaluate

    root = prepare(a, a.out)
    if root is None:
        return 0
    tag = Path(a.checkpoint).parent.name if a.checkpoint else "shipped"
    print(f"| weights | cube policy | mode | Dice@1 | Dice@{a.clicks} | median model ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in a.policies.split(","):
        policy = CubePolicy(zoom_in=name == "zoom_in")
        for mode in a.modes.split(","):
            cfg = EvalConfig(
                data_root=str(root),
                output_dir=str(a.out / f"{a.which}_{tag}_{name}_{mode}"),
                checkpoint=a.checkpoint,
                adapter=a.adapter,
                clicks=a.clicks,
                mode=mode,
                baselines=False,
            )
            rep = evaluate(cfg, policy=policy)
            agg = rep["aggregate"]
            print(
                f"| {tag}{' + ' + a.adapter if a.adapter else ''} | {name} | {mode} | "
                f"{agg['overall']['dice@1']:.3f} | {agg['dice']:.3f} | "
                f"{rep['model_latency_ms']['median']:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
