"""Training: overfitting a batch, checkpoints, the loop's files, exact resume, stopping,
LoRA, the CLI and data-parallel training, all on a tiny model and tiny synthetic hearts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from train_common import FAST, TINY, make_cfg

from core.checkpoint import (
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    save_weights_safetensors,
    set_rng_state,
)
from core.config import TrainConfig, load_config
from core.losses import compute_loss
from core.model import ModelConfig, Sam3DMed, random_batch
from core.train import train

REPO = Path(__file__).resolve().parents[1]
# one thread, the tiny synthetic hearts and their cache: tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_thread")


def state_of(path) -> dict:
    return load_checkpoint(path)["model"]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_overfits_one_batch(hearts_cache):
    """The model + losses can memorise a batch: the loss falls by more than half in 30 steps."""
    from core.cubes import CubeDataset

    cfg = make_cfg(hearts_cache, "unused")
    ds = CubeDataset(hearts_cache, model_cfg=cfg.model, sampling=cfg.sampling)
    batch = torch.utils.data.default_collate([ds[0], ds[7]])
    torch.manual_seed(0)
    model = Sam3DMed(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, _ = compute_loss(model(batch), batch, cfg.loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# --------------------------------------------------------------------------------------------
# checkpoints


def test_checkpoint_round_trip_weights_only_and_atomic(tmp_path, monkeypatch):
    model = Sam3DMed(ModelConfig(cube_size=16, view_size=16, dim=32, depth=1, heads=2))
    opt = torch.optim.AdamW(model.parameters())
    model(random_batch(model.cfg))["occupancy"].mean().backward()
    opt.step()
    cfg = TrainConfig(model=model.cfg)
    path = tmp_path / "c.pt"
    save_checkpoint(path, model_state=model.state_dict(), optimizer_state=opt.state_dict(),
                    scheduler_state={"step": 1}, step=1, epoch=1, config_dict=cfg.to_dict(),
                    extra={"rng": rng_state()})  # fmt: skip
    raw = torch.load(path, weights_only=True)  # plain tensors and values only
    assert raw["step"] == 1
    ck = load_checkpoint(path)
    assert TrainConfig.from_dict(ck["config"]) == cfg
    assert max_diff(ck["model"], model.state_dict()) == 0
    opt2 = torch.optim.AdamW(Sam3DMed(model.cfg).parameters())
    opt2.load_state_dict(ck["optimizer"])  # optimizer state survives weights_only

    # A failed write leaves the previous checkpoint and no temporary file.
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, model_state={}, optimizer_state=None, scheduler_state=None,
                        step=2, epoch=2, config_dict={})  # fmt: skip
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "sam3d-checkpoint-v1", "x": Path("/")}, path)  # a pickled class
    with pytest.raises(ValueError, match="not a readable sam3d checkpoint"):
        load_checkpoint(path)
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a sam3d checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_rng_state_restores_every_generator():
    import random

    state = rng_state()
    draws = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(draws[0], again[0])
    assert np.array_equal(draws[1], again[1]) and draws[2] == again[2]


def test_safetensors_weights_round_trip(tmp_path):
    cfg = ModelConfig(cube_size=16, view_size=16, dim=32, depth=1, heads=2)
    model = Sam3DMed(cfg)
    path = save_weights_safetensors(model, tmp_path / "base.safetensors", cfg)
    assert (tmp_path / "base.json").is_file()
    state, cfg2 = load_weights(path)
    assert cfg2 == cfg and max_diff(state, model.state_dict()) == 0
    with pytest.raises(ValueError, match="differs"):
        save_weights_safetensors(model, tmp_path / "x.safetensors", ModelConfig())


# --------------------------------------------------------------------------------------------
# the training loop


def test_two_epoch_run_writes_everything_a_user_looks_for(hearts_cache, tmp_path):
    cfg = make_cfg(hearts_cache, tmp_path / "run")
    calls = []
    result = train(cfg, progress=lambda d, t, m: calls.append((d, t, m)))
    out = tmp_path / "run"
    assert not result.stopped and result.epochs_done == 2 and result.steps == 4
    for name in ("best.pt", "last.pt", "epoch_001.pt", "epoch_002.pt", "metrics.jsonl",
                 "loss_curve.png", "train.log", "config.json", "best.safetensors"):  # fmt: skip
        assert (out / name).is_file(), name
    assert calls[-1][:2] == (4, 4) and "epoch 2/2" in calls[-1][2]

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert r["samples_per_s"] > 0 and r["lr"] > 0
        assert 0 < r["data_wait_s"] < r["train_seconds"]  # workers start: some wait
        assert 0 <= r["val_dice_volume"] <= 1 and 0 <= r["val_dice_slice"] <= 1
        assert {"train_occ_bce", "train_occ_dice", "train_sdf_l1", "train_mask_bce"} <= set(r)
    best = max(rows, key=lambda r: r["val_dice"])
    assert result.best_epoch == best["epoch"]
    assert result.best_val_dice == pytest.approx(best["val_dice"])
    assert load_checkpoint(out / "best.pt")["epoch"] == best["epoch"]
    assert load_checkpoint(out / "last.pt")["epoch"] == 2

    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert TrainConfig.from_dict(json.loads((out / "config.json").read_text())) == cfg
    log = (out / "train.log").read_text()
    assert "samples/s" in log and "val dice" in log and "epoch 2/2" in log
    assert "% waiting for data" in log
    # the shipped-format export of best.pt holds the same weights
    state, _ = load_weights(out / "best.safetensors")
    assert max_diff(state, state_of(out / "best.pt")) == 0
    # what the summary calls the best checkpoint loads as weights too (sam3d eval/predict)
    from core.engine import Reconstructor

    rec = Reconstructor.from_pretrained(out / "best.pt")
    assert max_diff(rec.model.state_dict(), state) == 0
    # an existing run is never silently overwritten
    with pytest.raises(ValueError, match="already holds a training run"):
        train(cfg)


@pytest.mark.parametrize("p_self", [0.0, 1.0], ids=["plain", "self_refine"])
def test_resume_continues_exactly(hearts_cache, tmp_path, monkeypatch, p_self):
    import core.train

    rounds = []
    real = core.train.self_refine_batch

    def counted(model, batch, n, **kw):
        rounds.append(n)
        return real(model, batch, n, **kw)

    monkeypatch.setattr(core.train, "self_refine_batch", counted)
    extra = f"sampling.p_self_refine={p_self}"
    full = train(make_cfg(hearts_cache, tmp_path / "a", extra))
    # with p_self_refine=1 every step first refines its batch 1 or 2 times (max_self_rounds)
    assert len(rounds) == (4 if p_self else 0) and set(rounds) <= {1, 2}

    seen = []
    # stop at the first batch of epoch 2 (after epoch 1's checkpoints)
    stopped = train(
        make_cfg(hearts_cache, tmp_path / "b", extra),
        progress=lambda d, t, m: seen.append(d),
        should_stop=lambda: bool(seen) and seen[-1] >= 2,
    )
    assert stopped.stopped and stopped.epochs_done == 1 and stopped.steps == 2
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "b" / "epoch_002.pt").exists()

    resumed = train(make_cfg(hearts_cache, tmp_path / "b", extra), resume=True)
    assert not resumed.stopped and resumed.steps == full.steps == 4
    assert (
        max_diff(state_of(tmp_path / "a" / "last.pt"), state_of(tmp_path / "b" / "last.pt")) < 1e-6
    )
    a_rows = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    b_rows = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(b_rows) == 2
    for ra, rb in zip(map(json.loads, a_rows), map(json.loads, b_rows), strict=True):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-6)
        assert rb["val_dice"] == pytest.approx(ra["val_dice"], rel=1e-6)
    assert "resumed from" in (tmp_path / "b" / "train.log").read_text()


def test_stop_in_first_epoch_and_resume_without_checkpoint(hearts_cache, tmp_path):
    result = train(make_cfg(hearts_cache, tmp_path / "r"), should_stop=lambda: True)
    assert result.stopped and result.epochs_done == 0 and result.last_checkpoint is None
    assert not (tmp_path / "r" / "last.pt").exists()
    with pytest.raises(ValueError, match="nothing to resume"):
        train(make_cfg(hearts_cache, tmp_path / "r"), resume=True)


def test_base_weights_must_match_the_model_config(hearts_cache, tmp_path):
    cfg = make_cfg(hearts_cache, tmp_path / "w")
    other = ModelConfig(**{**cfg.model.__dict__, "dim": 64})
    path = save_weights_safetensors(Sam3DMed(other), tmp_path / "base.safetensors", other)
    bad = make_cfg(
        hearts_cache, tmp_path / "w", f"training.init_checkpoint={json.dumps(str(path))}"
    )
    with pytest.raises(ValueError, match="model.dim"):
        train(bad)


def test_lora_run_trains_adapters_only_and_saves_them(hearts_cache, tmp_path):
    lora = pytest.importorskip("core.lora")
    from core.weights import load_model

    cfg0 = make_cfg(hearts_cache, tmp_path / "l")
    torch.manual_seed(1)
    base = Sam3DMed(cfg0.model)
    base_path = save_weights_safetensors(base, tmp_path / "base.safetensors", cfg0.model)
    init = f"training.init_checkpoint={json.dumps(str(base_path))}"

    too_big = make_cfg(hearts_cache, tmp_path / "l0", init, "lora.enabled=true", "lora.rank=16")
    with pytest.raises(ValueError, match="max_trainable_fraction"):
        train(too_big)  # rank 16 on every target of this tiny model: 3.6 %

    cfg = make_cfg(hearts_cache, tmp_path / "l", init, "lora.enabled=true", "lora.rank=2",
                   "lora.max_trainable_fraction=0.05", "training.epochs=1")  # fmt: skip
    result = train(cfg)
    assert 0 < result.trainable_fraction < 0.05
    assert "trainable" in (tmp_path / "l" / "train.log").read_text()
    for folder in (result.adapter_best, result.adapter_last):
        info = lora.read_adapter_info(folder)
        assert info["base_hash"] == lora.base_hash(base)
        assert info["data"]["train_cases"] and info["training"]["lora"]["rank"] == 2
    assert result.best_weights is None  # a LoRA run exports its adapter, not full weights
    from core.errors import InputError

    with pytest.raises(InputError, match=r"a LoRA run's checkpoint: its weights are") as exc:
        load_model(tmp_path / "l" / "best.pt")
    assert str(result.adapter_best) in str(exc.value)
    with pytest.raises(InputError, match=r"a LoRA run's checkpoint") as exc:
        load_model(tmp_path / "l" / "last.pt")
    assert str(result.adapter_last) in str(exc.value)

    # the frozen base is untouched; the adapter changes the output
    plain = load_model(base_path)
    tuned = lora.load_adapter(load_model(base_path), result.adapter_best)
    x = random_batch(cfg.model)
    with torch.no_grad():
        assert torch.equal(plain(x)["occupancy"], base.eval()(x)["occupancy"])
        assert not torch.allclose(tuned(x)["occupancy"], plain(x)["occupancy"])

    # lora.init_adapter trains that adapter further (here with a negligible learning rate, so
    # the result must still be the adapter, not a fresh one, which would equal the base)
    start = f"lora.init_adapter={json.dumps(str(result.adapter_best))}"
    mismatch = make_cfg(hearts_cache, tmp_path / "l2", init, "lora.enabled=true", start,
                        "lora.rank=4", "lora.max_trainable_fraction=0.05")  # fmt: skip
    with pytest.raises(ValueError, match=r"config vs adapter: lora.rank: 4 vs 2\)"):
        train(mismatch)
    go_on = make_cfg(hearts_cache, tmp_path / "l3", init, "lora.enabled=true", start,
                     "lora.rank=2", "lora.max_trainable_fraction=0.05", "training.epochs=1",
                     "training.learning_rate=1e-12")  # fmt: skip
    more = train(go_on)
    assert "adapter from" in (tmp_path / "l3" / "train.log").read_text()
    again = lora.load_adapter(load_model(base_path), more.adapter_last)
    with torch.no_grad():
        assert torch.allclose(again(x)["occupancy"], tuned(x)["occupancy"], atol=1e-5)


# --------------------------------------------------------------------------------------------
# command line and processes


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_cli_train_then_ctrl_c_stops_cleanly(hearts_cache, tmp_path, capsys):
    from core.cli import main

    out = tmp_path / "cli"
    args = ["train", "--data", str(hearts_cache), "--output_dir", str(out), "--epochs", "1",
            "--batch_size", "2", *TINY, *FAST[1:]]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert str(out / "best.pt") in printed and str(out / "loss_curve.png") in printed
    assert main(args) == 1  # the run exists: refused, with a message
    assert "already holds a training run" in capsys.readouterr().err

    # Ctrl-C in a real process: exit 130, last.pt of the finished epoch kept, resumable
    out2 = tmp_path / "cli2"
    cmd = [sys.executable, "-m", "core", "train", "--data", str(hearts_cache),
           "--output_dir", str(out2), "--epochs", "50", "--batch_size", "2", *TINY, *FAST[1:]]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not (out2 / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr
    assert load_checkpoint(out2 / "last.pt")["epoch"] >= 1


def test_cli_train_into_a_plain_file_is_one_error_line(hearts_cache, tmp_path, capsys):
    from core.cli import main

    taken = tmp_path / "notes.txt"
    taken.write_text("not a folder")
    for out, problem in [
        (taken, f"{taken}: exists and is not a folder"),
        (taken / "run", f"{taken / 'run'}: cannot create the folder: {taken} is not a folder"),
    ]:
        args = ["train", "--data", str(hearts_cache), "--output_dir", str(out), *TINY]
        assert main(args) == 1
        assert capsys.readouterr().err.strip() == f"sam3d train: error: {problem}"
    assert taken.read_text() == "not a folder"


def test_cli_train_from_a_raw_folder_prints_the_cases_it_could_not_use(
    hearts_raw, tmp_path, capsys
):
    """A bad case and an image without a label are named, with the reason, in the final
    summary (not only in the progress bar's transient text and train.log)."""
    import shutil

    from core.cli import main

    raw = tmp_path / "raw"
    shutil.copytree(hearts_raw, raw)
    (raw / "heart_003" / "heart_003-label.nii.gz").unlink()
    (raw / "heart_002" / "heart_002-image.nii.gz").write_bytes(b"not a NIfTI file")
    args = ["train", "--data", str(raw), "--output_dir", str(tmp_path / "run"), "--epochs", "1",
            "--batch_size", "2", *TINY, *FAST[1:], "data.classes=5", "data.spacing=6.0",
            "data.val_fraction=0"]  # fmt: skip
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    failed = [line for line in lines if line.startswith("  failed: ")]
    assert len(failed) == 1 and failed[0].startswith("  failed: heart_002: ")
    assert str(raw / "heart_002" / "heart_002-image.nii.gz") in failed[0]
    assert "not a valid NIfTI" in failed[0]
    assert f"  dataset: {raw / 'heart_003' / 'heart_003-image.nii.gz'}: image without label" in (
        "\n".join(lines)
    )
    summary = json.loads((tmp_path / "run" / "data_summary.json").read_text())
    assert set(summary["preprocess_failed"]) == {"heart_002"}
    assert len(summary["dataset_problems"]) == 1


def test_cli_train_from_a_raw_folder_where_no_case_works_is_one_error_line(
    hearts_raw, tmp_path, capsys
):
    import shutil

    from core.cli import main

    raw = tmp_path / "raw"
    shutil.copytree(hearts_raw, raw)
    cases = sorted(p for p in raw.iterdir() if p.is_dir())
    for case in cases:
        (case / f"{case.name}-image.nii.gz").write_bytes(b"not a NIfTI file")
    args = ["train", "--data", str(raw), "--output_dir", str(tmp_path / "run"), "--epochs", "1",
            *TINY, *FAST[1:], "data.classes=5"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert err.startswith(
        f"sam3d train: error: {raw}: no case could be preprocessed ({len(cases)} failed"
    )
    assert "e.g. heart_000: " in err and "not a valid NIfTI" in err and "train.log" in err


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1], ids=["inline", "data_workers"])
def test_two_processes_match_one_process_with_the_same_global_batch(
    hearts_cache, tmp_path, workers
):
    """torchrun with 2 x batch 2 takes the same optimizer steps on the same samples as one
    process with batch 4: equal step counts and (float-close) equal weights, loss, Dice; with
    persistent data workers too (each process's sampler hands its share to its workers)."""
    common = [*TINY, *FAST[1:], "training.epochs=1", "training.steps_per_epoch=2",
              "training.grad_clip=0.5", f"data.num_workers={workers}"]  # fmt: skip
    single = load_config(None, [*common, "training.batch_size=4",
                                f"data.train_data={json.dumps(str(hearts_cache))}",
                                f"training.output_dir={json.dumps(str(tmp_path / 'one'))}"])  # fmt: skip
    train(single)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "core", "train", "--data", str(hearts_cache), "--output_dir",
           str(tmp_path / "two"), "--batch_size", "2", *common]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two] == [r["step"] for r in one] == [2]
    assert two[0]["train_loss"] == pytest.approx(one[0]["train_loss"], rel=1e-5)
    assert two[0]["val_dice"] == pytest.approx(one[0]["val_dice"], abs=1e-4)
    ck_one, ck_two = (
        load_checkpoint(tmp_path / "one" / "last.pt"),
        load_checkpoint(tmp_path / "two" / "last.pt"),
    )
    diff = max_diff(ck_one["model"], ck_two["model"])
    # the weights moved far more than the two runs differ
    torch.manual_seed(0)
    moved = max_diff(ck_one["model"], Sam3DMed(single.model).state_dict())
    assert diff < 1e-4 and moved > 100 * diff, (diff, moved)
    log = (tmp_path / "two" / "train.log").read_text()
    assert log.count("epoch 1/1 step 2") == 1  # rank 0 alone writes the log
    assert "x 2" in log and "global batch 4" in log
