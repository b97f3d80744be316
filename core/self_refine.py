"""Refinement rounds on the model's own predictions during training (as SAM trains its clicks).

The data workers simulate a "previous" prediction by perturbing the ground truth
(``core.cubes``). A volume-mode model can undo most such perturbations from the image alone,
so those examples teach it little about the corrective clicks; at inference the previous
prediction is the model's own, with errors the image did *not* resolve, and only the click
can. A self-refinement round therefore runs the model on the batch (no gradient), takes its
binary prediction as the new ``previous`` cube channel (exactly what the engine passes on a
refinement: ``cube_probability > 0.5``) and adds one corrective click at the deepest point
of its error (positive on a miss, negative on a false positive), as the evaluation protocol
(``core.clicks.next_click``) clicks the centre of the largest error. The training step then
learns from the refined inputs. Everything runs on the batch's device: on a GPU the extra
forward passes cost little next to the CPU cube sampling that limits training.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from core.model import CUBE_CHANNELS
from core.samples import CLICK_RADIUS_VOXELS, CLICK_SIGMA_VOXELS

__all__ = ["error_click", "add_cube_click", "self_refine_batch"]

_POS, _NEG, _PREV = (CUBE_CHANNELS.index(c) for c in ("pos_clicks", "neg_clicks", "previous"))


def error_click(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    max_depth: int = 16,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where a user would click to correct each prediction of a batch.

    Misses (``target & ~pred``) and false positives (``pred & ~target``) are kept apart, as
    ``core.clicks.next_click`` keeps them; the click goes to the deepest voxel of either: the
    one that survives the most 3x3x3 erosions of its error (a chessboard distance to the
    error's boundary, the cube's border counting as boundary, capped at ``max_depth``). This
    stands in for ``next_click``'s centre of the largest error at a batch's cost on the GPU.

    Parameters
    ----------
    pred, target : (B, C, C, C) bool, prediction and ground truth in the cube
    max_depth : erosions at most
    generator : breaks ties among the deepest voxels at random (None: the first in memory order)

    Returns
    -------
    (voxel (B, 3) long, positive (B,) bool, valid (B,) bool): the click's cube voxel, whether
    it corrects a miss (a positive click), and whether the item has any error at all.
    """
    err = torch.stack((target & ~pred, pred & ~target), dim=1).float()  # (B, 2, C, C, C)
    depth, cur = err.clone(), err
    for _ in range(max_depth - 1):
        cur = -F.max_pool3d(-F.pad(cur, (1,) * 6), 3, stride=1)  # erosion, zero outside
        if not cur.any():
            break
        depth = depth + cur
    score = depth.flatten(2)  # (B, 2, C^3)
    if generator is not None:  # in [0, 0.5): only breaks ties between equally deep voxels
        noise = torch.rand(score.shape, generator=generator, device=generator.device) * 0.5
        score = score + noise.to(score.device) * (score > 0)
    flat = score.flatten(1).argmax(1)  # over both kinds: miss first in memory order
    n, n3 = pred.shape[-1], score.shape[-1]
    kind, flat = flat // n3, flat % n3
    voxel = torch.stack((flat // (n * n), (flat // n) % n, flat % n), dim=1)
    valid = err.flatten(1).any(1)
    return voxel, (kind == 0) & valid, valid


def add_cube_click(channel: torch.Tensor, voxel: torch.Tensor, valid: torch.Tensor) -> None:
    """Draw each valid click into its item's (B, C, C, C) heatmap channel, in place: the same
    Gaussian (sigma ``CLICK_SIGMA_VOXELS``, cut at ``CLICK_RADIUS_VOXELS``) ``core.samples``
    draws."""
    n = channel.shape[-1]
    r = CLICK_RADIUS_VOXELS
    ar = torch.arange(n, device=channel.device)
    d = [ar[None, :] - voxel[:, i, None].to(channel.device) for i in range(3)]  # (B, C) each
    d2 = d[0][:, :, None, None] ** 2 + d[1][:, None, :, None] ** 2 + d[2][:, None, None, :] ** 2
    near = (
        (d[0].abs() <= r)[:, :, None, None]
        & (d[1].abs() <= r)[:, None, :, None]
        & (d[2].abs() <= r)[:, None, None, :]
    )
    g = torch.exp(-d2.float() / (2 * CLICK_SIGMA_VOXELS**2)) * near
    g = g * valid.to(channel.device)[:, None, None, None]
    channel.copy_(torch.maximum(channel, g.to(channel.dtype)))


def self_refine_batch(
    model: torch.nn.Module,
    batch: dict,
    rounds: int,
    *,
    autocast=contextlib.nullcontext,
    generator: torch.Generator | None = None,
    p_no_click: float = 0.0,
) -> dict:
    """``rounds`` refinement rounds on the model's own predictions (no gradient).

    Each round: predict, make the binary prediction the ``previous`` channel, add one
    corrective click per item at its deepest error. With probability ``p_no_click`` an item
    gets no click in a round (only its new ``previous``), as the engine's refinement pass on
    the first click feeds the model its own mask without one. The batch's targets are
    unchanged; a new ``cube`` tensor is returned in a shallow copy of ``batch``.
    """
    cube = batch["cube"].clone()
    target = batch["occupancy"][:, 0] > 0.5
    for _ in range(rounds):
        with torch.no_grad(), autocast():
            logits = model({**batch, "cube": cube})["occupancy"][:, 0]
        pred = logits.float() > 0
        voxel, positive, valid = error_click(pred, target, generator=generator)
        if p_no_click > 0:  # no draw otherwise: runs without it keep their random stream
            dev = generator.device if generator is not None else pred.device
            skip = torch.rand(pred.shape[0], generator=generator, device=dev) < p_no_click
            valid = valid & ~skip.to(valid.device)
        cube[:, _PREV] = pred.to(cube.dtype)
        add_cube_click(cube[:, _POS], voxel, valid & positive)
        add_cube_click(cube[:, _NEG], voxel, valid & ~positive)
    return {**batch, "cube": cube}
