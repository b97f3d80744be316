"""Training: ``train(cfg)`` runs the whole loop, readable top to bottom (after nanoGPT).

Seeds -> data (a cache, or a raw folder preprocessed first; train/validation split by case)
-> model (the shipped base, a checkpoint or random weights; LoRA adapters when enabled) ->
AdamW with an explicit LR schedule -> epochs of (gradient accumulation, clipping, AMP on CUDA;
a step whose gradient is not finite is skipped and logged, 10 in a row stop the run)
-> validation on a fixed held-out set -> atomic checkpoints, metrics and a loss curve.

Output folder (``training.output_dir``)::

    config.json          the TrainConfig (also inside every checkpoint)
    data_summary.json    caches, train/validation case ids and item counts, the cases a raw
                         folder's preprocessing could not use (preprocess_failed) and its
                         dataset_problems
    train.log            human-readable log
    metrics.jsonl        one JSON object per epoch (train loss parts, val Dice per mode, lr,
                         seconds, samples/s, skipped steps)
    loss_curve.png       train loss and val Dice per epoch
    last.pt              after every epoch (resume point)
    best.pt              the epoch with the best validation Dice (best.safetensors + .json:
                         its weights in the shipped format; LoRA: adapter_best/)
    epoch_{k:03d}.pt     every ``checkpoint_every`` epochs
    adapter_last/        LoRA only

Under ``torchrun`` (``WORLD_SIZE`` > 1) the same function trains data-parallel: gradients are
averaged over processes (DDP), each process reads its share of every epoch
(``DistributedSampler``), rank 0 validates and writes every file.

The data side lives in ``core.train_data`` (caches, the split by case, loaders) and what a
run writes in ``core.train_outputs`` (log, metrics, curve, checkpoints, adapters).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from core.atomic import make_output_dir, write_json
from core.checkpoint import load_checkpoint, load_weights, set_rng_state
from core.config import INIT_RANDOM, TrainConfig
from core.losses import compute_loss, dice_score
from core.model import INPUTS, Sam3DMed
from core.precision import env_choice, fast_cpu_bf16
from core.self_refine import self_refine_batch
from core.train_data import build_data, check_same_split, split_cases
from core.train_outputs import RunLog, TrainResult, epoch_line, run_result, save_epoch

__all__ = ["TrainResult", "train", "lr_at", "split_cases", "evaluate", "TrainingDiverged"]

Progress = Callable[[int, int, str], None]
_TARGETS = ("occupancy", "sdf", "sdf_valid", "slice_mask")
MAX_BAD_STEPS = 10  # steps in a row with a non-finite gradient before the run is called diverged


class TrainingDiverged(ValueError):
    """``MAX_BAD_STEPS`` steps in a row had a non-finite gradient: the settings (learning rate,
    mixed precision) are the user's to change; the run's files up to its last epoch are kept."""


# --------------------------------------------------------------------------------------------
# Small pieces the loop reads


def lr_at(step: int, *, peak: float, warmup: int, total: int, schedule: str, min_ratio: float):
    """Learning rate of optimizer step ``step`` (0-based): linear warmup over ``warmup`` steps,
    then constant or a cosine from ``peak`` down to ``min_ratio * peak`` at step ``total - 1``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    t = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - third-party code may draw from the global RNG
    torch.manual_seed(seed)


def _to_device(batch: dict, device: torch.device) -> dict:
    keys = set(INPUTS) | set(_TARGETS)
    nb = device.type == "cuda"
    return {k: (v.to(device, non_blocking=nb) if k in keys else v) for k, v in batch.items()}


def _self_refine(model, batch, sampling, seed, step, micro, d, autocast) -> dict:
    """With probability ``sampling.p_self_refine``, 1 to ``max_self_rounds`` refinement rounds
    on the model's own predictions (``core.self_refine``). Seeded by (seed, step, micro-batch,
    rank), so a resumed run draws the same rounds. ``model`` is the unwrapped model: its
    extra no-gradient passes must not enter DDP's collectives."""
    rng = np.random.default_rng((seed, step, micro, d.rank))
    if rng.random() >= sampling.p_self_refine:
        return batch
    rounds = int(rng.integers(1, sampling.max_self_rounds + 1))
    gen = torch.Generator(device=d.device).manual_seed(int(rng.integers(2**62)))
    return self_refine_batch(
        model,
        batch,
        rounds,
        autocast=autocast,
        generator=gen,
        p_no_click=sampling.p_no_click_round,
    )


@torch.no_grad()
def evaluate(model, loaders: dict, *, device, loss_weights, autocast=contextlib.nullcontext):
    """Mean 3D Dice of ``occupancy > 0`` vs the target cube (and the mean loss), per mode.

    Parameters
    ----------
    model : the (unwrapped) model
    loaders : ``{mode: DataLoader}`` over fixed validation items
    autocast : a context-manager factory (mixed precision on CUDA)

    Returns
    -------
    dict: ``val_dice_<mode>`` per mode, ``val_dice`` (mean of the modes), ``val_loss``
    """
    was_training = model.training
    model.eval()
    out, losses = {}, []
    for mode, loader in loaders.items():
        dices = []
        for batch in loader:
            batch = _to_device(batch, device)
            with autocast():
                pred = model(batch)
            _, parts = compute_loss(pred, batch, loss_weights)
            losses.append(parts["total"])
            dices.append(dice_score(pred["occupancy"].float(), batch["occupancy"]).cpu())
        out[f"val_dice_{mode}"] = float(torch.cat(dices).mean())
    out["val_dice"] = float(np.mean([out[f"val_dice_{m}"] for m in loaders]))
    out["val_loss"] = float(np.mean(losses))
    model.train(was_training)
    return out


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, world size, device, and whether ``train`` owns
    (and so destroys) the process group."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool

    @property
    def master(self) -> bool:
        return self.rank == 0


def _setup_device(device_opt: str) -> Dist:
    if device_opt == "cuda" and not torch.cuda.is_available():
        raise ValueError("training.device is 'cuda' but no CUDA GPU is available")
    cuda = device_opt == "cuda" or (device_opt == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, torch.device("cuda" if cuda else "cpu"), False)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu")
    if cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    owns = not dist.is_initialized()
    if owns:  # preprocessing a raw folder on rank 0 can take a while: a generous timeout
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=2))
    return Dist(rank, world, device, owns)


def _cpu_amp(d: Dist) -> bool:
    """``training.amp=true`` on CPU: bf16 where ``core.precision`` finds it the faster. Rank 0
    decides (measuring at most once) and every rank follows; a bad ``SAM3D_CPU_BF16`` fails
    every rank alike, before any of them waits for the answer."""
    env_choice()
    use = d.master and fast_cpu_bf16()
    if d.world > 1:
        box = [use]
        dist.broadcast_object_list(box, src=0)
        use = bool(box[0])
    return use


def _shipped_base() -> Path | None:
    """The base weights shipped with the package (``core.weights``), if present."""
    try:
        from core.weights import shipped_base_path
    except ImportError:
        return None
    path = shipped_base_path()
    return path if path.is_file() else None


def _initial_model(cfg: TrainConfig) -> tuple[Sam3DMed, str]:
    """The starting model and a line saying where its weights came from."""
    init = cfg.training.init_checkpoint
    path = None
    if init is None:
        path = _shipped_base()
        if path is None and cfg.lora.enabled:
            raise ValueError(
                "LoRA needs a base model and no shipped base (core.weights) is installed: set "
                "training.init_checkpoint to a .safetensors or .pt file"
            )
    elif init != INIT_RANDOM:
        path = Path(init)
    if path is None:
        return Sam3DMed(cfg.model), "random initialisation"
    state, base_cfg = load_weights(path)
    if asdict(base_cfg) != asdict(cfg.model):
        diff = ", ".join(
            f"model.{k}: {v!r} (config) vs {asdict(base_cfg)[k]!r} (weights)"
            for k, v in asdict(cfg.model).items()
            if asdict(base_cfg)[k] != v
        )
        raise ValueError(f"{path}: weights were trained with another model config ({diff})")
    model = Sam3DMed(base_cfg)
    model.load_state_dict(state)
    return model, f"weights from {path}"


def _initial_adapter(model, lc) -> tuple[torch.nn.Module, Path]:
    """``model`` with the adapter ``lc.init_adapter`` loaded trainable, after checking that its
    LoRA settings are those of the config (the base is checked by ``load_adapter``)."""
    from core import lora
    from core.weights import resolve_adapter

    folder = Path(resolve_adapter(lc.init_adapter))
    wanted = lora.lora_settings(**lc.adapter_settings())
    diff = lora.settings_differences(wanted, lora.read_adapter_info(folder).get("lora") or {})
    if diff:
        raise ValueError(
            f"{folder}: lora.init_adapter was trained with other LoRA settings (config vs "
            f"adapter: lora.{'; lora.'.join(diff)}): set this config's lora section to match"
        )
    return lora.load_adapter(model, folder, trainable=True), folder


def _build_model(cfg: TrainConfig, log) -> tuple[torch.nn.Module, str | None, float]:
    """The model to train, the base's hash (LoRA) and the trainable fraction."""
    model, origin = _initial_model(cfg)
    base_hash, frac = None, 1.0
    if cfg.lora.enabled:
        from core import lora

        base_hash = lora.base_hash(model)
        if cfg.lora.init_adapter is None:
            model = lora.apply_lora(model, **cfg.lora.adapter_settings())
        else:
            model, folder = _initial_adapter(model, cfg.lora)
            origin += f", adapter from {folder}"
        frac = float(lora.trainable_fraction(model))
        if frac > cfg.lora.max_trainable_fraction:
            raise ValueError(
                f"LoRA would train {100 * frac:.2f}% of the weights, above "
                f"lora.max_trainable_fraction {100 * cfg.lora.max_trainable_fraction:.2f}%: "
                "lower lora.rank, narrow lora.targets, or raise lora.max_trainable_fraction"
            )
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora_note = f"; LoRA rank {cfg.lora.rank} on {list(cfg.lora.targets)}" if base_hash else ""
    log(
        f"model: {origin}; {n_all:,} parameters, {n_train:,} trainable ({100 * frac:.2f}%)"
        + lora_note
    )
    return model, base_hash, frac


# --------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train (or fine-tune with LoRA) the model as ``cfg`` says.

    Parameters
    ----------
    cfg : the run (``core.config``)
    progress : called as ``progress(done_steps, total_steps, message)`` after each step
        (and per case while a raw folder is preprocessed)
    should_stop : polled before every batch; when it returns True the run returns at once
        with ``stopped=True``; ``last.pt`` keeps the last completed epoch
    resume : continue the run in ``training.output_dir`` from its ``last.pt``, exactly
        (weights, optimizer, schedule position, epoch, RNG state, history, best)

    Raises
    ------
    ValueError
        Bad data or output folder, too few cases or items, a base that does not match the
        model config, a LoRA run that would train too large a share of the weights.
    """
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if not cfg.data.train_data:
        raise ValueError("data.train_data is not set (a cache or a raw dataset folder)")
    out = Path(cfg.training.output_dir)
    if resume and not (out / "last.pt").is_file():
        raise ValueError(f"{out}: nothing to resume (no last.pt)")
    if not resume and (out / "last.pt").is_file():
        raise ValueError(
            f"{out}: already holds a training run (last.pt); resume it or choose another "
            "training.output_dir"
        )
    d = _setup_device(cfg.training.device)
    done = False
    try:
        result = _train(cfg, d, out, progress, should_stop or (lambda: False), resume)
        done = True
        return result
    finally:
        if d.owns_group and dist.is_initialized():
            # No process tears the group down while another still uses it (gloo once aborted
            # a finished rank in CI); a failed rank skips the barrier, so nothing hangs.
            if done:
                dist.barrier()
            dist.destroy_process_group()


def _train(cfg: TrainConfig, d: Dist, out: Path, progress, should_stop, resume) -> TrainResult:
    tc = cfg.training
    make_output_dir(out)
    log = RunLog(out / "train.log", d.master)
    progress = progress if d.master else None
    log(f"{'resuming' if resume else 'starting'} run in {out} on {d.device} x {d.world}")

    def stop_requested() -> bool:
        flag = bool(should_stop())
        if d.world > 1:  # every process must leave the loop at the same step
            t = torch.tensor([float(flag)], device=d.device)
            dist.all_reduce(t)
            flag = bool(t.item() > 0)
        return flag

    # ---- seeds, data
    _seed_everything(tc.seed)
    data = build_data(cfg, d, out, log, progress, should_stop)
    if data is None:
        log("stopped while preprocessing; finished cases are kept in the cache")
        return run_result(out, [], {}, 0, stopped=True, sps=0.0, frac=float("nan"))
    steps_per_epoch, total_steps = data.steps_per_epoch, tc.epochs * data.steps_per_epoch
    global_batch = tc.batch_size * tc.grad_accum * d.world
    s = data.summary
    log(
        f"data: {s['n_train_cases']} train cases ({s['n_train_items']} items), "
        f"{s['n_val_cases']} validation cases; {steps_per_epoch} steps/epoch x {tc.epochs} "
        f"epochs, global batch {global_batch}"
    )

    # ---- model (base or random; LoRA), optimizer, mixed precision
    model, base_hash, frac = _build_model(cfg, log)
    model.to(d.device)
    params = [p for p in model.parameters() if p.requires_grad]
    cuda = d.device.type == "cuda"
    optimizer = torch.optim.AdamW(
        [  # no weight decay on biases and norm weights (nanoGPT's rule)
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": tc.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=tc.learning_rate,
        betas=(0.9, 0.95),
        fused=True if cuda else None,
    )
    get_lr = partial(
        lr_at,
        peak=tc.learning_rate,
        warmup=tc.warmup_steps,
        total=total_steps,
        schedule=tc.lr_schedule,
        min_ratio=tc.min_lr_ratio,
    )
    # "auto" and true: on CUDA (bf16, or fp16 with a GradScaler), and on a CPU as bf16 where it
    # is the faster precision (``core.precision``: AMX, or measured once per machine on CPUs
    # with AVX512-BF16 alone; some run it 30 % faster, some 20 % slower). Every rank follows
    # rank 0's answer (``_cpu_amp``).
    use_amp = tc.amp in ("auto", True) and (cuda or _cpu_amp(d))
    if not cuda and tc.amp is True and not use_amp:
        log("training.amp ignored: bf16 is not faster than fp32 on this CPU (core.precision)")
    fp16 = cuda and (
        tc.amp_dtype == "fp16" or (tc.amp_dtype == "auto" and not torch.cuda.is_bf16_supported())
    )
    if not cuda and tc.amp_dtype == "fp16" and use_amp:
        log("training.amp_dtype=fp16 is CUDA only: bf16 on CPU")
    amp_dtype = torch.float16 if fp16 else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and fp16)
    amp_device = "cuda" if cuda else "cpu"
    log(f"precision: {('fp16' if fp16 else 'bf16') + ' autocast' if use_amp else 'fp32'}")

    def autocast():
        if not use_amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=amp_device, dtype=amp_dtype)

    # ---- resume: weights, optimizer, schedule position, history, RNG
    step, start_epoch, history, best = 0, 0, [], {"metric": None, "epoch": None, "dice": None}
    if resume:
        ckpt = load_checkpoint(out / "last.pt", map_location="cpu")
        for section in ("model", "lora"):
            if ckpt["config"].get(section) != cfg.to_dict()[section]:
                raise ValueError(
                    f"{out / 'last.pt'}: the run was trained with another {section} config; "
                    "resume with the same one (see its config.json)"
                )
        check_same_split(out / "last.pt", ckpt["extra"].get("data"), data.summary)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, start_epoch = int(ckpt["step"]), int(ckpt["epoch"])
        history, best = list(ckpt["extra"]["history"]), dict(ckpt["extra"]["best"])
        if ckpt["extra"].get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(ckpt["extra"]["scaler"])
        set_rng_state(ckpt["extra"]["rng"])
        log(f"resumed from {out / 'last.pt'}: epoch {start_epoch}, step {step}")
    raw_model = model  # what is validated and saved; `model` may become the DDP wrapper
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[d.device.index] if cuda else None)
    if d.master:
        write_json(out / "config.json", cfg.to_dict())
        write_json(out / "data_summary.json", data.summary)

    # ---- epochs
    samples_done, train_seconds = 0, 0.0
    sampling = cfg.sampling

    def finish(stopped: bool) -> TrainResult:
        sps = samples_done / train_seconds if train_seconds else 0.0
        return run_result(
            out, history, best, step, stopped=stopped, sps=sps, frac=frac, data=data.summary
        )

    bad_in_a_row = 0
    for epoch in range(start_epoch, tc.epochs):
        data.train_ds.set_epoch(epoch)
        data.sampler.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        counted = skipped = 0  # micro-batches in the logged loss; steps skipped
        t0 = time.perf_counter()
        data_wait = 0.0  # time spent waiting for the data workers (they limit a GPU run)
        batches = iter(data.loader)
        for _ in range(steps_per_epoch):
            lr = get_lr(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_parts: dict[str, float] = {}
            for micro in range(tc.grad_accum):
                if stop_requested():
                    kept = history[-1]["epoch"] if history else "none"
                    log(f"stopped in epoch {epoch + 1} at step {step}; last.pt: epoch {kept}")
                    return finish(stopped=True)
                tw = time.perf_counter()
                batch = next(batches)
                data_wait += time.perf_counter() - tw
                batch = _to_device(batch, d.device)
                if sampling.p_self_refine > 0:
                    batch = _self_refine(
                        raw_model, batch, sampling, tc.seed, step, micro, d, autocast
                    )
                # Only the last micro-batch of a step all-reduces the gradients.
                last_micro = micro == tc.grad_accum - 1
                sync = (
                    model.no_sync() if d.world > 1 and not last_micro else contextlib.nullcontext()
                )
                with sync:
                    with autocast():
                        outputs = model(batch)
                    loss, parts = compute_loss(outputs, batch, cfg.loss)
                    scaler.scale(loss / tc.grad_accum).backward()
                for k, v in parts.items():
                    step_parts[k] = step_parts.get(k, 0.0) + v
            scaler.unscale_(optimizer)  # a no-op without fp16's scaler
            grads = [p.grad for p in params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads)
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grads_with_norm_(params, tc.grad_clip, norm)
            # A step with a non-finite gradient is skipped, not applied: one would turn the
            # weights into NaN for good. Every process sees the same all-reduced norm, so all
            # skip together. fp16's scaler skips such steps itself (and lowers its scale).
            finite = bool(torch.isfinite(norm))
            if finite or scaler.is_enabled():
                scaler.step(optimizer)
                scaler.update()
            if finite:
                bad_in_a_row = 0
                for k, v in step_parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                counted += tc.grad_accum
            else:
                skipped += 1
                if scaler.is_enabled() and math.isfinite(step_parts.get("total", math.nan)):
                    # an fp16 overflow while the scaler finds its scale: routine, not divergence
                    log(f"step {step}: fp16 gradient overflow; scale now {scaler.get_scale():g}")
                else:
                    bad_in_a_row += 1
                    log(f"step {step}: non-finite gradient norm ({float(norm)}); step skipped")
                if bad_in_a_row >= MAX_BAD_STEPS:
                    kept = history[-1]["epoch"] if history else "none"
                    raise TrainingDiverged(
                        f"{out}: training diverged, {bad_in_a_row} steps in a row with "
                        f"non-finite gradients (last at step {step}); last.pt holds epoch "
                        f"{kept}. Lower training.learning_rate or turn training.amp off"
                    )
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if progress:
                msg = f"epoch {epoch + 1}/{tc.epochs} loss {parts['total']:.4f} lr {lr:.2e}"
                progress(step, total_steps, msg)
        del batches
        sums = {k: v / counted for k, v in sums.items()} if counted else {"total": math.nan}
        if d.world > 1:  # the logged loss is the mean over every process's batches
            t = torch.tensor(list(sums.values()), device=d.device, dtype=torch.float64)
            dist.all_reduce(t)
            sums = dict(zip(sums, (t / d.world).tolist(), strict=True))
        seconds = time.perf_counter() - t0
        samples_done += steps_per_epoch * global_batch
        train_seconds += seconds

        # ---- validation on the fixed held-out items (rank 0), shared with every process
        val = {}
        if data.val_loaders and d.master:
            val = evaluate(
                raw_model,
                data.val_loaders,
                device=d.device,
                loss_weights=cfg.loss,
                autocast=autocast,
            )
        if data.val_loaders and d.world > 1:
            box = [val]
            dist.broadcast_object_list(box, src=0)
            val = box[0]
        record = {
            "epoch": epoch + 1,
            "step": step,
            "lr": lr,
            "train_loss": sums.pop("total"),
            **{f"train_{k}": v for k, v in sums.items()},
            "val_dice": val.get("val_dice"),
            "val_dice_volume": val.get("val_dice_volume"),
            "val_dice_slice": val.get("val_dice_slice"),
            "val_loss": val.get("val_loss"),
            "seconds": time.perf_counter() - t0,
            "train_seconds": seconds,
            "samples_per_s": steps_per_epoch * global_batch / seconds,
            "data_wait_s": data_wait,
            "skipped_steps": skipped,
        }
        history.append(record)
        # Higher is better: validation Dice, or minus the training loss without validation.
        metric = val["val_dice"] if val else -record["train_loss"]
        # NaN (an epoch whose every step was skipped) never counts as best, and any number
        # beats a NaN that an older run may have stored
        improved = math.isfinite(metric) and (
            best["metric"] is None or not math.isfinite(best["metric"]) or metric > best["metric"]
        )
        if improved:
            best = {"metric": metric, "epoch": epoch + 1, "dice": val.get("val_dice")}
        log(epoch_line(record, tc.epochs, improved))
        if d.master:
            save_epoch(
                out,
                cfg,
                model=raw_model,
                optimizer=optimizer,
                scaler=scaler,
                step=step,
                epoch=epoch + 1,
                total_steps=total_steps,
                history=history,
                best=best,
                improved=improved,
                data_summary=data.summary,
                base_hash=base_hash,
                frac=frac,
            )

    dice = f" (val dice {best['dice']:.4f})" if best["dice"] is not None else ""
    log(f"done: {step} steps; best epoch {best['epoch']}{dice}")
    return finish(stopped=False)
