"""What a training run writes: train.log, metrics.jsonl, loss_curve.png, checkpoints,
adapters.

Every file is written atomically (``core.atomic``); ``save_epoch`` writes ``last.pt`` last, so
a run killed mid-epoch resumes from the previous epoch. ``run_result`` gathers what exists into
a ``TrainResult``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from core.atomic import atomic_path, json_text, write_text

__all__ = ["TrainResult", "RunLog", "epoch_line", "save_epoch", "run_result"]


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes
    ----------
    output_dir : the run's folder
    best_checkpoint, last_checkpoint : ``best.pt`` / ``last.pt`` (None if no epoch finished)
    best_weights : ``best.safetensors`` (full training only)
    adapter_best, adapter_last : LoRA adapter folders (LoRA only)
    loss_curve : ``loss_curve.png``
    best_epoch : 1-based epoch of ``best.pt``
    best_val_dice : its mean validation Dice (None without validation)
    epochs_done : epochs completed (including those of a resumed run)
    steps : optimizer steps done
    stopped : ``should_stop`` ended the run early
    samples_per_second : training throughput of this call (all processes)
    trainable_fraction : trainable / all parameters (1.0 without LoRA)
    history : one dict per epoch, as in ``metrics.jsonl``
    failed_cases : case id -> reason, the cases of a raw dataset folder that preprocessing
        could not use (not trained on)
    dataset_problems : what else the raw folder's discovery found wrong (an image without
        its label, ...), one line each
    """

    output_dir: str
    best_checkpoint: str | None
    last_checkpoint: str | None
    best_weights: str | None
    adapter_best: str | None
    adapter_last: str | None
    loss_curve: str | None
    best_epoch: int | None
    best_val_dice: float | None
    epochs_done: int
    steps: int
    stopped: bool
    samples_per_second: float
    trainable_fraction: float
    history: tuple[dict, ...]
    failed_cases: dict[str, str] = field(default_factory=dict)
    dataset_problems: tuple[str, ...] = ()


class RunLog:
    """``train.log`` lines (rank 0 only)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def __call__(self, line: str) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


def epoch_line(r: dict, epochs: int, improved: bool) -> str:
    parts = ", ".join(
        f"{k[6:]} {v:.4f}"
        for k, v in r.items()
        if k.startswith("train_") and k not in ("train_loss", "train_seconds")
    )
    line = f"epoch {r['epoch']}/{epochs} step {r['step']} loss {r['train_loss']:.4f} ({parts})"
    if r["val_dice"] is not None:
        line += (
            f" val dice {r['val_dice']:.4f} (volume {r['val_dice_volume']:.4f}, slice "
            f"{r['val_dice_slice']:.4f}) val loss {r['val_loss']:.4f}"
        )
    line += f" lr {r['lr']:.2e} {r['seconds']:.1f} s {r['samples_per_s']:.2f} samples/s"
    if r.get("data_wait_s") is not None and r.get("train_seconds"):
        line += f" ({100 * r['data_wait_s'] / r['train_seconds']:.0f} % waiting for data)"
    if r.get("skipped_steps"):
        line += f" ({r['skipped_steps']} steps skipped: non-finite gradients)"
    return line + (" *best*" if improved else "")


def _save_curve(path: Path, history: list[dict]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ep = [h["epoch"] for h in history]
    ax1.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    if any(h.get("val_loss") is not None for h in history):
        ax1.plot(ep, [h.get("val_loss") for h in history], "s--", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax1.legend()
    plotted = False
    for key, label in (
        ("val_dice", "mean"),
        ("val_dice_volume", "volume mode"),
        ("val_dice_slice", "slice mode"),
    ):
        if any(h.get(key) is not None for h in history):
            ax2.plot(ep, [h.get(key) for h in history], "o-", label=label)
            plotted = True
    ax2.set(xlabel="epoch", ylabel="Dice", title="validation Dice (occupancy)", ylim=(0, 1))
    if plotted:
        ax2.legend()
    else:
        ax2.text(0.5, 0.5, "no validation cases", ha="center", transform=ax2.transAxes)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)


def _save_adapter(peft_model, folder: Path, base_hash: str, metadata: dict) -> Path:
    # core.lora's format (three files); the training config goes inside sam3d_adapter.json
    # and the run's config.json sits beside the folder.
    from core import lora

    return Path(lora.save_adapter(peft_model, folder, base_hash=base_hash, metadata=metadata))


def save_epoch(
    out: Path,
    cfg,
    *,
    model,
    optimizer,
    scaler,
    step,
    epoch,
    total_steps,
    history,
    best,
    improved,
    data_summary,
    base_hash,
    frac,
) -> None:
    """Every file of an epoch, each written atomically; ``last.pt`` last (the resume point:
    a kill before it redoes the epoch)."""
    # imported here: TrainResult and RunLog must not pull in torch (the napari plugin reads
    # results in its GUI process, where importing torch would freeze the viewer)
    from core.checkpoint import rng_state, save_checkpoint, save_weights_safetensors

    ckpt = {
        "model_state": model.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "scheduler_state": {
            "schedule": cfg.training.lr_schedule,
            "step": step,
            "total_steps": total_steps,
        },
        "step": step,
        "epoch": epoch,
        "config_dict": cfg.to_dict(),
        "extra": {
            "rng": rng_state(),
            "history": history,
            "best": best,
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "trainable_fraction": frac,
            "data": data_summary,
        },
    }
    meta = {"epoch": epoch, "val_dice": history[-1]["val_dice"], "data": data_summary}
    if improved:
        save_checkpoint(out / "best.pt", **ckpt)
        if base_hash is not None:
            _save_adapter(
                model, out / "adapter_best", base_hash, {"training": cfg.to_dict(), **meta}
            )
        else:
            save_weights_safetensors(
                model,
                out / "best.safetensors",
                cfg.model,
                metadata={"recipe": cfg.to_dict(), "trained_on": meta},
            )
    every = cfg.training.checkpoint_every
    if every and epoch % every == 0:
        save_checkpoint(out / f"epoch_{epoch:03d}.pt", **ckpt)
    if base_hash is not None:
        _save_adapter(model, out / "adapter_last", base_hash, {"training": cfg.to_dict(), **meta})
    write_text(out / "metrics.jsonl", "".join(json_text(h) + "\n" for h in history))
    _save_curve(out / "loss_curve.png", history)
    save_checkpoint(out / "last.pt", **ckpt)


def run_result(out: Path, history, best, step, *, stopped, sps, frac, data=None) -> TrainResult:
    """``data``: the run's data summary (``core.train_data``), for what preprocessing skipped."""
    data = data or {}

    def existing(name):
        return str(out / name) if (out / name).exists() else None

    return TrainResult(
        output_dir=str(out),
        best_checkpoint=existing("best.pt"),
        last_checkpoint=existing("last.pt"),
        best_weights=existing("best.safetensors"),
        adapter_best=existing("adapter_best"),
        adapter_last=existing("adapter_last"),
        loss_curve=existing("loss_curve.png"),
        best_epoch=best.get("epoch"),
        best_val_dice=best.get("dice"),
        epochs_done=history[-1]["epoch"] if history else 0,
        steps=step,
        stopped=stopped,
        samples_per_second=float(sps),
        trainable_fraction=frac,
        history=tuple(history),
        failed_cases=dict(data.get("preprocess_failed", {})),
        dataset_problems=tuple(data.get("dataset_problems", ())),
    )
