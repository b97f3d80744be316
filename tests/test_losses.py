"""The training losses (occupancy BCE + soft Dice, truncated SDF L1, 2D mask) and the
learning-rate schedule (split from test_train.py)."""

from __future__ import annotations

import pytest
import torch

from core.config import LossSection
from core.losses import compute_loss, dice_score
from core.train import lr_at


def toy_batch(b=2, c=8, s=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    occ = (torch.rand(b, 1, c, c, c, generator=g) > 0.6).float()
    return {
        "occupancy": occ,
        "sdf": torch.rand(b, 1, c, c, c, generator=g) * 2 - 1,
        "sdf_valid": torch.ones(b, dtype=torch.bool),
        "slice_mask": (torch.rand(b, 1, s, s, generator=g) > 0.5).float(),
    }


def perfect(batch, margin=30.0):
    return {
        "occupancy": (batch["occupancy"] * 2 - 1) * margin,
        "sdf": batch["sdf"].clone(),
        "slice_mask": (batch["slice_mask"] * 2 - 1) * margin,
    }


def test_perfect_prediction_has_near_zero_loss_and_a_wrong_one_does_not():
    batch = toy_batch()
    total, parts = compute_loss(perfect(batch), batch, LossSection())
    assert float(total) < 1e-3
    assert set(parts) == {"occ_bce", "occ_dice", "sdf_l1", "mask_bce", "mask_dice", "total"}
    wrong = perfect(batch)
    wrong["occupancy"] = -wrong["occupancy"]
    total_wrong, parts_wrong = compute_loss(wrong, batch, LossSection())
    assert parts_wrong["occ_bce"] > 10 and parts_wrong["occ_dice"] > 0.9
    assert float(total_wrong) > 10


def test_loss_weights_are_respected():
    batch = toy_batch()
    pred = {k: torch.zeros_like(v) for k, v in perfect(batch).items()}
    only_sdf = LossSection(w_occ_bce=0, w_occ_dice=0, w_sdf_loss=1, w_mask_loss=0)
    total, parts = compute_loss(pred, batch, only_sdf)
    assert float(total) == pytest.approx(parts["sdf_l1"])
    base, p = compute_loss(pred, batch, LossSection())
    doubled, _ = compute_loss(pred, batch, LossSection(w_occ_bce=2.0))
    assert float(doubled) - float(base) == pytest.approx(p["occ_bce"], rel=1e-5)
    heavy_mask, _ = compute_loss(pred, batch, LossSection(w_mask_loss=1.0))
    assert float(heavy_mask) - float(base) == pytest.approx(
        0.5 * (p["mask_bce"] + p["mask_dice"]), rel=1e-5
    )


def test_sdf_loss_ignores_samples_without_an_sdf():
    batch = toy_batch()
    pred = perfect(batch)
    pred["sdf"] = -batch["sdf"]  # all wrong...
    batch["sdf_valid"] = torch.zeros(2, dtype=torch.bool)  # ...but no target to compare with
    _, parts = compute_loss(pred, batch, LossSection())
    assert parts["sdf_l1"] == 0.0


def test_loss_is_stable_for_extreme_logits_and_splits_over_the_batch():
    batch = toy_batch(b=4)
    pred = perfect(batch, margin=1e4)
    pred["occupancy"] = pred["occupancy"].requires_grad_()
    total, _ = compute_loss(pred, batch, LossSection())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(pred["occupancy"].grad).all()
    # A batch's loss is the mean of its halves' losses: what data-parallel training relies on.
    rand = {k: torch.randn_like(v) for k, v in perfect(batch).items()}
    whole, _ = compute_loss(rand, batch, LossSection())
    halves = [
        compute_loss({k: v[i : i + 2] for k, v in rand.items()},
                     {k: v[i : i + 2] for k, v in batch.items()}, LossSection())[0]
        for i in (0, 2)
    ]  # fmt: skip
    assert float(whole) == pytest.approx(float(sum(halves) / 2), rel=1e-6)


def test_dice_score():
    t = torch.zeros(2, 1, 4, 4, 4)
    t[0, 0, :2] = 1
    logits = torch.full_like(t, -5.0)
    logits[0, 0, :1] = 5.0  # half of the target in sample 0; sample 1 empty vs empty
    assert dice_score(logits, t).tolist() == pytest.approx([2 * 16 / (16 + 32), 1.0])


def test_lr_schedule_warms_up_then_decays_to_ten_percent():
    kw = dict(peak=1e-3, warmup=10, total=110, schedule="cosine", min_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(1e-4)
    assert lr_at(9, **kw) == pytest.approx(1e-3)
    assert lr_at(10, **kw) == pytest.approx(1e-3)
    assert lr_at(109, **kw) == pytest.approx(1e-4)
    lrs = [lr_at(s, **kw) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lr_at(100, **{**kw, "schedule": "constant"}) == 1e-3
