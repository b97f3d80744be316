"""Training losses: occupancy (BCE + soft Dice), truncated SDF (L1), 2D slice mask (BCE + Dice).

Every term is a mean of per-sample values over the batch, so the loss of a batch of 2B equals
the mean of the losses of its two halves: data-parallel training (gradients averaged over
processes) then follows the same path as one process with the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["soft_dice_loss", "compute_loss", "dice_score"]

_SMOOTH = 1.0


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice of sigmoid(logits) vs a {0, 1} target, per sample -> (B,).

    A smoothing term of 1 voxel keeps an empty target with an empty prediction at ~0 loss.
    """
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.float().flatten(1)
    inter = (p * t).sum(1)
    return 1 - (2 * inter + _SMOOTH) / (p.sum(1) + t.sum(1) + _SMOOTH)


def _bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE with logits (stable for any logit), mean per sample -> (B,)."""
    return (
        F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
        .flatten(1)
        .mean(1)
    )


def compute_loss(outputs: dict, batch: dict, w) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted training loss of one batch.

    Parameters
    ----------
    outputs : the model's outputs: ``occupancy`` (B, 1, C, C, C) logits, ``sdf``
        (B, 1, C, C, C) in [-1, 1] (optional), ``slice_mask`` (B, 1, S, S) logits
    batch : targets: ``occupancy`` (B, 1, C, C, C) {0, 1}, ``sdf`` (B, 1, C, C, C),
        ``sdf_valid`` (B,) bool, ``slice_mask`` (B, 1, S, S) {0, 1}
    w : weights, a ``core.config.LossSection`` (``w_occ_bce``, ``w_occ_dice``, ``w_sdf_loss``,
        ``w_mask_loss``)

    Returns
    -------
    total : () float32 tensor, differentiable
    parts : floats ``occ_bce``, ``occ_dice``, ``sdf_l1``, ``mask_bce``, ``mask_dice``, ``total``
        (unweighted terms, and the weighted total)
    """
    # Losses in fp32 whatever precision the model ran in (autocast).
    outputs = {k: v.float() for k, v in outputs.items()}
    occ, occ_t = outputs["occupancy"], batch["occupancy"]
    if occ.shape != occ_t.shape:
        raise ValueError(f"occupancy logits {tuple(occ.shape)} vs target {tuple(occ_t.shape)}")
    terms = {
        "occ_bce": _bce(occ, occ_t).mean(),
        "occ_dice": soft_dice_loss(occ, occ_t).mean(),
    }
    zero = occ.new_zeros((), dtype=torch.float32)
    if "sdf" in outputs and w.w_sdf_loss > 0:
        valid = batch["sdf_valid"].reshape(-1).float()
        per = (outputs["sdf"].float() - batch["sdf"].float()).abs().flatten(1).mean(1)
        # Mean over the batch (a sample without an SDF target adds 0), as every other term.
        terms["sdf_l1"] = (per * valid).sum() / valid.numel()
    else:
        terms["sdf_l1"] = zero
    if "slice_mask" in outputs and w.w_mask_loss > 0:
        m, m_t = outputs["slice_mask"], batch["slice_mask"]
        terms["mask_bce"] = _bce(m, m_t).mean()
        terms["mask_dice"] = soft_dice_loss(m, m_t).mean()
    else:
        terms["mask_bce"] = terms["mask_dice"] = zero
    total = (
        w.w_occ_bce * terms["occ_bce"]
        + w.w_occ_dice * terms["occ_dice"]
        + w.w_sdf_loss * terms["sdf_l1"]
        + w.w_mask_loss * (terms["mask_bce"] + terms["mask_dice"])
    )
    parts = {k: float(v.detach()) for k, v in terms.items()}
    parts["total"] = float(total.detach())
    return total, parts


@torch.no_grad()
def dice_score(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice of ``logits > 0`` vs ``target > 0.5`` per sample -> (B,); 1 when both are
    empty."""
    p = (logits > 0).flatten(1).float()
    t = (target > 0.5).flatten(1).float()
    inter = (p * t).sum(1)
    denom = p.sum(1) + t.sum(1)
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(denom))
