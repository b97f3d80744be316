"""``sam3d train``: its arguments, progress bars, Ctrl-C handling and report (the training
itself is :func:`core.train.train`). Nothing heavy is imported until the command runs."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["add_train"]


def add_train(sub) -> None:
    """The ``train`` subcommand on the ``sam3d`` parser's subparsers."""
    p = sub.add_parser(
        "train",
        help="train the model (or a LoRA adapter) on a cache or a labelled dataset folder",
        description="Train from a YAML config (a file, or a shipped config by name: "
        "lora_headneck, lora_heart, base_synthetic, ...) plus section.key=value "
        "overrides, e.g. training.epochs=50 lora.rank=8 data.preprocess_crop_size=[64,64] "
        "(values are read as YAML; before, between or after the flags). The flags "
        "below are shortcuts for common overrides and win over them. A raw dataset folder "
        "is preprocessed into <output_dir>/cache first (needs data.classes). Ctrl-C stops "
        "before the next batch and keeps last.pt of the last finished epoch (exit 130); "
        "--resume continues exactly. Data-parallel: torchrun --nproc_per_node N -m core train "
        "...",
    )
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    p.add_argument("--config", default=None, help="YAML config file")
    p.add_argument("--data", default=None, help="data.train_data: a cache or a dataset folder")
    p.add_argument("--output_dir", default=None, help="training.output_dir")
    p.add_argument("--epochs", type=int, default=None, help="training.epochs")
    p.add_argument("--batch_size", type=int, default=None, help="training.batch_size")
    p.add_argument(
        "--lora_rank", type=int, default=None, help="enable LoRA with this rank (lora.rank)"
    )
    p.add_argument("--gpu", action="store_true", help="train on CUDA (training.device=cuda)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in output_dir from last.pt"
    )
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    import json
    import os
    import signal

    from tqdm import tqdm

    from core.config import load_config
    from core.train import train

    overrides = list(args.overrides)
    # Paths as JSON strings: valid YAML that never turns "a: b" or "yes" into something else.
    if args.data is not None:
        overrides.append(f"data.train_data={json.dumps(args.data)}")
    if args.output_dir is not None:
        overrides.append(f"training.output_dir={json.dumps(args.output_dir)}")
    if args.epochs is not None:
        overrides.append(f"training.epochs={args.epochs}")
    if args.batch_size is not None:
        overrides.append(f"training.batch_size={args.batch_size}")
    if args.lora_rank is not None:
        overrides += ["lora.enabled=true", f"lora.rank={args.lora_rank}"]
    if args.gpu:
        overrides.append("training.device=cuda")
    cfg = load_config(args.config, overrides)

    bars: dict = {}

    def progress(done: int, total: int, message: str) -> None:
        kind = "preprocess" if message.startswith("preprocess") else "train"
        if kind not in bars:
            for bar in bars.values():
                bar.close()
            unit = "case" if kind == "preprocess" else "step"
            bars[kind] = tqdm(total=total, initial=done, desc=kind, unit=unit, file=sys.stderr)
        bar = bars[kind]
        bar.total, bar.n = total, done
        bar.set_postfix_str(message[-50:], refresh=False)
        bar.refresh()

    stop = {"requested": False}

    def on_sigint(signum, frame):
        if stop["requested"]:  # a second Ctrl-C: abort now (main() exits 130)
            raise KeyboardInterrupt
        stop["requested"] = True
        print("\nsam3d train: stopping (Ctrl-C again to abort now)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = train(
            cfg, progress=progress, should_stop=lambda: stop["requested"], resume=args.resume
        )
    finally:
        signal.signal(signal.SIGINT, previous)
        for bar in bars.values():
            bar.close()
    if os.environ.get("RANK", "0") != "0":
        return 130 if result.stopped else 0
    out = Path(result.output_dir)
    dice = "" if result.best_val_dice is None else f" (val Dice {result.best_val_dice:.3f})"
    print(
        f"train: {result.epochs_done} epoch(s), {result.steps} steps, "
        f"{result.samples_per_second:.1f} samples/s; best epoch {result.best_epoch}{dice}"
    )
    if result.best_checkpoint:
        extra = f" (weights: {result.best_weights})" if result.best_weights else ""
        print(f"  best checkpoint: {result.best_checkpoint}{extra}")
    if result.adapter_best:
        print(
            f"  LoRA adapter: {result.adapter_best} (trainable "
            f"{100 * result.trainable_fraction:.2f}% of the weights)"
        )
    if result.last_checkpoint:
        print(f"  last checkpoint: {result.last_checkpoint}")
    if result.loss_curve:
        print(f"  loss curve: {result.loss_curve}")
    for cid, msg in sorted(result.failed_cases.items()):
        print(f"  failed: {cid}: {msg}")
    for line in result.dataset_problems:
        print(f"  dataset: {line}")
    print(f"  log: {out / 'train.log'}; metrics: {out / 'metrics.jsonl'}")
    if result.stopped:
        print(
            f"sam3d train: stopped; last.pt keeps epoch {result.epochs_done}; rerun with "
            "--resume to continue",
            file=sys.stderr,
        )
        return 130
    return 0
