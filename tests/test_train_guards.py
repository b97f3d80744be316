"""Training that stays sound: mixed precision on CPU, steps with a non-finite gradient
(skipped, logged, a run that keeps failing stopped), and data workers that live through the
run without changing its items or its exact resume. The tiny model, data and helpers of
test_train."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_train import make_cfg, max_diff, state_of

from core.checkpoint import load_checkpoint, save_weights_safetensors
from core.model import Sam3DMed
from core.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("amp", "faster", "expected"), [
    ("true", "1", "precision: bf16 autocast"),
    ("auto", "1", "precision: bf16 autocast"),  # "auto" on a CPU follows core.precision too
    ("true", "0", "precision: fp32"),
    ("auto", "0", "precision: fp32"),
])  # fmt: skip
def test_cpu_amp_is_bf16_where_faster_else_fp32(
    hearts_cache, tmp_path, monkeypatch, amp, faster, expected
):
    """``training.amp`` true or auto on a CPU: bf16 autocast where core.precision finds it the
    faster (SAM3D_CPU_BF16 stands in for the measurement), else fp32; an explicit true that
    is not taken is logged."""
    monkeypatch.setenv("SAM3D_CPU_BF16", faster)
    cfg = make_cfg(hearts_cache, tmp_path / "run", f"training.amp={amp}", "training.epochs=1")
    result = train(cfg)
    log = (tmp_path / "run" / "train.log").read_text()
    assert result.epochs_done == 1
    assert expected in log
    assert ("not faster than fp32" in log) == (amp == "true" and faster == "0")
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert np.isfinite(rows[0]["train_loss"])
    assert rows[0]["skipped_steps"] == 0  # bf16's gradients are right, none needed skipping


def _cpu_amp_on_rank(rank, init_file, envs, out):
    """One process of a 2-process gloo group: its own SAM3D_CPU_BF16, then core.train's CPU
    AMP decision; writes what it decided (or the error it raised)."""
    import os
    from datetime import timedelta
    from pathlib import Path

    import torch.distributed as dist

    from core.train import Dist, _cpu_amp

    os.environ["SAM3D_CPU_BF16"] = envs[rank]
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
        timeout=timedelta(seconds=60),
    )  # fmt: skip
    try:
        try:
            answer = _cpu_amp(Dist(rank, 2, torch.device("cpu"), False))
        except ValueError as e:
            answer = str(e)
        Path(out, f"{rank}.json").write_text(json.dumps(answer))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("envs", "expected"), [
    (("1", "0"), True),  # rank 0 finds bf16 faster: every rank takes it
    (("0", "1"), False),
    (("yes", "yes"), "SAM3D_CPU_BF16 must be 0 or 1, got 'yes'"),  # every rank fails, none waits
])  # fmt: skip
def test_every_rank_follows_rank_0s_cpu_amp_decision(tmp_path, envs, expected):
    """Only rank 0 decides (and measures, where it must); a rank that decided alone could
    train in another precision than its peers."""
    torch.multiprocessing.spawn(
        _cpu_amp_on_rank, args=(str(tmp_path / "init"), envs, str(tmp_path)), nprocs=2
    )
    got = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert got == [expected, expected]


def _poison_losses(monkeypatch, bad_calls):
    """Make the training losses of the given calls (1-based) infinite, so their gradients are
    not finite (what a broken kernel or a too-high learning rate does)."""
    import core.train

    real, calls = core.train.compute_loss, []

    def poisoned(outputs, batch, weights):
        loss, parts = real(outputs, batch, weights)
        calls.append(1)
        if outputs["occupancy"].requires_grad and bad_calls(len(calls)):
            return loss * float("inf"), {**parts, "total": float("inf")}
        return loss, parts

    monkeypatch.setattr(core.train, "compute_loss", poisoned)


def test_a_step_with_a_non_finite_gradient_is_skipped_and_logged(
    hearts_cache, tmp_path, monkeypatch
):
    _poison_losses(monkeypatch, lambda n: n == 2)  # the second of the epoch's two steps
    result = train(make_cfg(hearts_cache, tmp_path / "run", "training.epochs=1"))
    assert result.epochs_done == 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert "step 1: non-finite gradient norm" in log and "1 steps skipped" in log
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["skipped_steps"] == 1
    assert np.isfinite(row["train_loss"])  # the skipped step's loss is not in the mean
    weights = state_of(tmp_path / "run" / "last.pt")
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_a_run_that_keeps_failing_stops_with_a_clear_error_and_keeps_its_epochs(
    hearts_cache, tmp_path, monkeypatch
):
    import core.train
    from core.train import TrainingDiverged

    monkeypatch.setattr(core.train, "MAX_BAD_STEPS", 2)
    _poison_losses(monkeypatch, lambda n: n > 2)  # epoch 1 is fine, epoch 2 is not
    with pytest.raises(TrainingDiverged, match=r"2 steps in a row.*last\.pt holds epoch 1"):
        train(make_cfg(hearts_cache, tmp_path / "run"))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_persistent_data_workers_draw_each_epochs_own_items(hearts_cache, tmp_path):
    """The data workers live through the run (they keep the dataset copy they started with),
    so the epoch reaches them with each index: two workers give each epoch the very items the
    training process would draw itself, and epochs differ."""
    from core.train import _setup_device
    from core.train_data import build_data

    def epochs_of(workers: int) -> list[list[torch.Tensor]]:
        cfg = make_cfg(hearts_cache, tmp_path / f"w{workers}", f"data.num_workers={workers}")
        data = build_data(cfg, _setup_device("cpu"), tmp_path, lambda *a: None, None, None)
        assert data.loader.persistent_workers == (workers > 0)
        # only the batches an epoch trains on: workers build nothing to throw away
        assert len(data.loader) == data.steps_per_epoch == 2
        seen = []
        for epoch in range(2):  # as core.train does it
            data.train_ds.set_epoch(epoch)
            data.sampler.set_epoch(epoch)
            batches = iter(data.loader)
            seen.append([next(batches)["cube"] for _ in range(2)])
            del batches
        return seen

    inline, workers = epochs_of(0), epochs_of(2)
    for epoch in range(2):
        for a, b in zip(inline[epoch], workers[epoch], strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(inline[0][0], inline[1][0])


def test_resume_with_data_workers_and_lora_dropout_continues_exactly(hearts_cache, tmp_path):
    """LoRA dropout draws from the global RNG in the training process; the data loaders must
    not (a persistent worker's loader draws its seed once per run, a resumed run's again), or
    a resumed run would drift from the run it continues."""
    cfg0 = make_cfg(hearts_cache, tmp_path / "x")
    torch.manual_seed(1)
    base = save_weights_safetensors(Sam3DMed(cfg0.model), tmp_path / "base.safetensors", cfg0.model)
    extra = [f"training.init_checkpoint={json.dumps(str(base))}", "lora.enabled=true",
             "lora.rank=2", "lora.max_trainable_fraction=0.05", "lora.dropout=0.1",
             "data.num_workers=1"]  # fmt: skip
    train(make_cfg(hearts_cache, tmp_path / "a", *extra))
    seen = []
    stopped = train(
        make_cfg(hearts_cache, tmp_path / "b", *extra),
        progress=lambda d, t, m: seen.append(d),
        should_stop=lambda: bool(seen) and seen[-1] >= 2,
    )
    assert stopped.stopped and stopped.epochs_done == 1
    train(make_cfg(hearts_cache, tmp_path / "b", *extra), resume=True)
    assert max_diff(state_of(tmp_path / "a" / "last.pt"), state_of(tmp_path / "b" / "last.pt")) == 0


def _refuse(constant):
    raise ValueError(f"not strict JSON: {constant}")


def test_an_epoch_of_skipped_steps_is_never_the_best(hearts_cache, tmp_path, monkeypatch):
    """Without validation the best epoch is the lowest training loss; an epoch whose every step
    was skipped has none (NaN, null in metrics.jsonl: strict JSON), and must not hold "best"
    against the epochs after it."""
    _poison_losses(monkeypatch, lambda n: n <= 2)  # all of epoch 1 (2 steps)
    result = train(make_cfg(hearts_cache, tmp_path / "run", "data.val_fraction=0"))
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    rows = [json.loads(r, parse_constant=_refuse) for r in text.splitlines()]
    assert rows[0]["skipped_steps"] == 2 and rows[0]["train_loss"] is None
    assert np.isfinite(rows[1]["train_loss"]) and rows[1]["skipped_steps"] == 0
    assert result.best_epoch == 2


def test_fp16_overflows_are_skipped_but_a_non_finite_loss_still_stops_the_run(
    hearts_cache, tmp_path, monkeypatch
):
    """With fp16's GradScaler (CUDA; here a CPU scaler stands in), the scaler skips steps whose
    gradients overflow; they are counted and logged, and a loss that stays non-finite still
    ends the run as diverged instead of training on NaN."""
    import core.train
    from core.train import TrainingDiverged

    real_scaler = torch.amp.GradScaler
    monkeypatch.setattr(
        core.train.torch.amp, "GradScaler", lambda *a, **k: real_scaler("cpu", enabled=True)
    )
    monkeypatch.setattr(core.train, "MAX_BAD_STEPS", 2)
    _poison_losses(monkeypatch, lambda n: True)
    with pytest.raises(TrainingDiverged, match="2 steps in a row"):
        train(make_cfg(hearts_cache, tmp_path / "run"))
    assert "non-finite gradient norm" in (tmp_path / "run" / "train.log").read_text()
