"""Benchmark: engine-level validation of base weights and cube policies on held-out
*validation* cases (never the test sets), with the click protocol of ``sam3d eval``.

    # the shipped base's held-out hearts (its training split, recomputed)
    .venv/bin/python bench/engine_val.py
    # another base on the val split of its own training run
    .venv/bin/python bench/engine_val.py --checkpoint runs/base_synthetic_stage4/best.safetensors \
        --run runs/base_synthetic_stage4
    # the adapter's held-out openkbp_train cases (never openkbp_val)
    .venv/bin/python bench/engine_val.py --which headneck [--adapter headneck-ct]

The validation case ids come from the training run's ``data_summary.json`` (``--run``; the
cases are linked, never copied, into ``--out``). Without ``--run`` a fresh clone needs no run
folder: the shipped base's 16 held-out hearts are recomputed from its recipe's split and
written afresh, and the head-and-neck cases are those the adapter's metadata
(``sam3d_adapter.json``) records as held out. Prints Dice after 1 and N clicks per mode and
cube policy: how the engine's default (no zoom-in, one refinement pass in volume mode) was
chosen.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Cube policies by name: the engine's default ("no_zoom_in"), with zoom-in, and without the
# volume mode's refinement pass ("one_pass"): how the default was chosen.
POLICIES = {"no_zoom_in": {}, "zoom_in": {"zoom_in": True}, "one_pass": {"refine_passes": 0}}


def _link(src: Path, dst: Path) -> None:
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src.resolve(), dst)


def run_val_cases(run: Path) -> list[str]:
    """A training run's held-out case ids (its ``data_summary.json``)."""
    return json.loads((run / "data_summary.json").read_text())["val_cases"]


def heart_cases(run: Path, data: Path, out: Path) -> Path:
    """The heart cases of a base run's validation split, linked as case folders."""
    val = run_val_cases(run)
    root = out / "heart_val_data"
    for c in val:
        if c.startswith("heart"):
            _link(data / c, root / c)
    return root


# The shipped base's synthetic training set (scripts/pretrain_data.sh, core/assets/base.json)
# and the recipe that split it (every stage kept stage 1's split: data.split_seed 0).
PRETRAIN_CASES = (("heart", 240), ("organ", 300))
SPLIT_RECIPE = REPO / "configs" / "base_synthetic_stage7.yaml"


def shipped_base_val_cases() -> list[str]:
    """The shipped base's held-out cases, recomputed from its recipe: the same split and the
    same first ``training.val_cases`` as its training runs (no run folder needed)."""
    from core.config import load_config
    from core.train_data import split_cases, split_seed

    cfg = load_config(SPLIT_RECIPE)
    ids = [f"{kind}_{i:03d}" for kind, n in PRETRAIN_CASES for i in range(n)]
    _, val = split_cases(ids, val_fraction=cfg.data.val_fraction, seed=split_seed(cfg))
    return val[: cfg.training.val_cases]


def write_heart_val_cases(out: Path) -> Path:
    """The shipped base's held-out hearts written afresh under ``out`` (the same phantoms as in
    its training data: each case's seed depends only on (0, its number))."""
    from core.synthetic import write_heart_dataset

    hearts = [int(c.split("_")[1]) for c in shipped_base_val_cases() if c.startswith("heart_")]
    root = out / "heart_val_data"
    write_heart_dataset(root, dict(PRETRAIN_CASES)["heart"], seed=0, indices=hearts)
    return root


def adapter_val_cases(adapter: str) -> list[str]:
    """The held-out cases an adapter recorded in its metadata (shipped name or folder)."""
    from core.lora import read_adapter_info
    from core.weights import resolve_adapter

    folder = resolve_adapter(adapter)
    cases = read_adapter_info(folder).get("data", {}).get("val_cases")
    if not cases:
        raise SystemExit(f"{folder}: its metadata records no val_cases; pass --run")
    return list(cases)


def headneck_cases(val: list[str], data: Path, out: Path) -> Path:
    """Held-out openkbp_train cases, linked in the nnU-Net layout."""
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
        if a.run is None:
            return write_heart_val_cases(out)
        return heart_cases(a.run, a.data or REPO / "runs" / "data" / "pretrain", out)
    data = a.data or REPO.parent / "shared" / "data" / "openkbp_train"
    if not data.is_dir():
        print(f"{data}: not found; skipping the head-and-neck cases")
        return None
    val = run_val_cases(a.run) if a.run else adapter_val_cases(a.adapter or "headneck-ct")
    return headneck_cases(val, data, out)


def structures(a: argparse.Namespace, out: Path):
    """The engine for ``a``'s weights and an iterator over the validation cases' labelled
    structures: ``(case_id, image, label value, ground truth mask, its first click)``; None
    when there is nothing to validate on (see :func:`prepare`)."""
    from core.clicks import first_click
    from core.datasets import discover
    from core.engine import Reconstructor
    from core.io import load_pair

    root = prepare(a, out)
    if root is None:
        return None

    def each():
        for case in discover(str(root)).cases:
            image, label = load_pair(case.image, case.label)
            for k in label.present_labels():
                gt = label.data == k
                yield case.case_id, image, k, gt, first_click(gt)

    return Reconstructor.from_pretrained(a.checkpoint, a.adapter), each()


def print_class_table(per_class: dict, columns, note: str) -> None:
    """A Markdown table of Dice per class (``per_class``: class -> rows of one value per
    column, one row per structure) and the mean of the class means, as ``sam3d eval``
    aggregates."""
    import numpy as np

    print(f"\n| class | {' | '.join(columns)} | ({note}) |")
    print("| --- |" + " --- |" * (len(columns) + 1))
    means = {k: np.mean(v, axis=0) for k, v in sorted(per_class.items())}
    for k, m in means.items():
        print(f"| {k} | " + " | ".join(f"{x:.3f}" for x in m) + " | |")
    overall = np.mean(list(means.values()), axis=0)
    print("| **mean** | " + " | ".join(f"**{x:.3f}**" for x in overall) + " | |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_validation_args(ap)
    ap.add_argument("--clicks", type=int, default=3)
    ap.add_argument("--modes", default="volume,slice")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "engine_val")
    a = ap.parse_args(argv)
    unknown = [p for p in a.policies.split(",") if p not in POLICIES]
    if unknown:
        ap.error(f"--policies: unknown {', '.join(unknown)}; known: {', '.join(POLICIES)}")

    from core.engine import CubePolicy
    from core.evaluate import EvalConfig, evaluate

    root = prepare(a, a.out)
    if root is None:
        return 0
    tag = Path(a.checkpoint).parent.name if a.checkpoint else "shipped"
    # the adapter in the folder name too: a base and an adapter run never overwrite each other
    run_tag = f"{tag}_{Path(a.adapter).name}" if a.adapter else tag
    print(f"| weights | cube policy | mode | Dice@1 | Dice@{a.clicks} | median model ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in a.policies.split(","):
        policy = CubePolicy(**POLICIES[name])
        for mode in a.modes.split(","):
            cfg = EvalConfig(
                data_root=str(root),
                output_dir=str(a.out / f"{a.which}_{run_tag}_{name}_{mode}"),
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
