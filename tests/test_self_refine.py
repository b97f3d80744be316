"""Refinement rounds on the model's own predictions (core.self_refine): where the corrective
click goes, that it is drawn as the engine draws clicks, and what a round changes."""

from __future__ import annotations

import numpy as np
import torch
from conftest import tiny_model_config

from core.clicks import Click, PromptSet
from core.cube import Cube
from core.model import CUBE_CHANNELS, Sam3DMed
from core.samples import _cube_clicks
from core.self_refine import add_cube_click, error_click, self_refine_batch

N = 24


def ball(center, radius, n=N):
    g = np.indices((n, n, n)).transpose(1, 2, 3, 0)
    return torch.from_numpy(((g - np.array(center)) ** 2).sum(-1) <= radius**2)


def test_a_missed_part_gets_a_positive_click_in_its_middle():
    target = ball((12, 12, 12), 8)
    pred = target.clone()
    pred[:, :, 14:] = False  # the model missed the cap k >= 14
    voxel, positive, valid = error_click(pred[None], target[None])
    assert valid.item() and positive.item()
    i, j, k = voxel[0].tolist()
    assert target[i, j, k] and not pred[i, j, k]
    assert abs(i - 12) <= 2 and abs(j - 12) <= 2 and 15 <= k <= 17  # deep inside the cap


def test_a_spurious_blob_gets_a_negative_click_at_its_centre_and_no_error_no_click():
    target = ball((8, 8, 8), 5)
    pred = target | ball((18, 18, 18), 4)
    voxel, positive, valid = error_click(torch.stack((pred, target)), torch.stack((target, target)))
    assert valid.tolist() == [True, False]
    assert not positive[0].item() and voxel[0].tolist() == [18, 18, 18]
    assert not positive[1].item()


def test_misses_and_false_positives_are_not_merged_and_the_border_is_a_boundary():
    # A thin miss beside a thick false positive: the click goes to the thick one.
    target = torch.zeros(N, N, N, dtype=torch.bool)
    target[2:22, 2:22, 10:12] = True  # a 2-voxel slab the model missed
    pred = ball((12, 12, 18), 4)  # a ball it invented
    voxel, positive, _ = error_click(pred[None], target[None])
    assert not positive.item() and voxel[0].tolist() == [12, 12, 18]
    # An error filling a corner of the cube is clicked away from the cube's border.
    target = torch.zeros(N, N, N, dtype=torch.bool)
    target[:8, :8, :8] = True
    voxel, positive, _ = error_click(torch.zeros_like(target)[None], target[None])
    assert positive.item() and all(2 <= v <= 5 for v in voxel[0].tolist())


def test_tie_breaking_is_seeded():
    target = torch.zeros(N, N, N, dtype=torch.bool)
    target[4:20, 4:20, 11:13] = True  # a plateau of equally deep voxels
    pred = torch.zeros_like(target)
    a = error_click(pred[None], target[None], generator=torch.Generator().manual_seed(1))[0]
    b = error_click(pred[None], target[None], generator=torch.Generator().manual_seed(1))[0]
    c = error_click(pred[None], target[None], generator=torch.Generator().manual_seed(2))[0]
    first = error_click(pred[None], target[None])[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert first[0].tolist() == [4, 4, 11]  # without a generator: the first deepest voxel


def test_the_click_is_drawn_as_the_engine_draws_clicks():
    cube = Cube(np.array([12.0, 12.0, 12.0]), 1.0, np.eye(3), N)
    v = (7, 15, 12)
    ref = _cube_clicks(PromptSet((Click.from_voxel(np.array(v, float), 2, True),)), np.eye(4), cube)
    assert ref[0].max() > 0.99  # the cube's voxel grid is the volume's here
    ch = torch.zeros(2, N, N, N)
    add_cube_click(ch, torch.tensor([v, v]), torch.tensor([True, False]))
    assert np.abs(ch[0].numpy() - ref[0]).max() < 1e-3  # the same Gaussian
    assert ch[1].abs().max() == 0  # an invalid click draws nothing
    before = ch[0].clone()
    add_cube_click(ch, torch.tensor([[7, 15, 14], v]), torch.tensor([True, False]))
    assert torch.all(ch[0] >= before) and ch[0, 7, 15, 14] == 1.0  # clicks add up (max)


def _model_and_batch(b: int, n: int = 16):
    """A tiny untrained model and a batch of ``b`` items whose target is a ball."""
    torch.manual_seed(0)
    model = Sam3DMed(tiny_model_config(n)).eval()
    batch = {
        "cube": torch.zeros(b, len(CUBE_CHANNELS), n, n, n),
        "crop_view": torch.zeros(b, 5, n, n),
        "crop_pointmap": torch.zeros(b, 3, n, n),
        "full_view": torch.zeros(b, 5, n, n),
        "full_pointmap": torch.zeros(b, 3, n, n),
        "center": torch.zeros(b, 3),
        "plane": torch.tensor([[2, 8]] * b),
        "occupancy": ball((8, 8, 8), 5, n)[None, None].float().repeat(b, 1, 1, 1, 1),
    }
    batch["cube"][:, 0] = torch.randn(b, n, n, n)
    return model, batch


def test_a_round_feeds_back_the_models_own_prediction_and_one_click():
    b = 2
    model, batch = _model_and_batch(b)
    with torch.no_grad():
        pred = model(batch)["occupancy"][:, 0] > 0
    out = self_refine_batch(model, batch, 1)
    prev = CUBE_CHANNELS.index("previous")
    assert torch.equal(out["cube"][:, prev], pred.float())
    clicks = out["cube"][:, 2:4]
    assert (clicks.flatten(2).max(-1).values == 1.0).sum() == b  # one click per item
    assert torch.equal(out["occupancy"], batch["occupancy"])  # targets unchanged
    assert batch["cube"][:, prev].abs().max() == 0  # the input batch is not modified
    two = self_refine_batch(model, batch, 2)
    assert (two["cube"][:, 2:4] > 0.99).sum() > (clicks > 0.99).sum()  # a second click


def test_rounds_without_a_click_feed_back_only_the_prediction():
    b = 8
    model, batch = _model_and_batch(b)
    with torch.no_grad():
        pred = model(batch)["occupancy"][:, 0] > 0
    prev = CUBE_CHANNELS.index("previous")

    def n_clicked(out):
        return int((out["cube"][:, 2:4].flatten(1).max(-1).values == 1.0).sum())

    none = self_refine_batch(model, batch, 1, p_no_click=1.0)
    assert torch.equal(none["cube"][:, prev], pred.float()) and n_clicked(none) == 0
    gen = torch.Generator().manual_seed(3)
    some = self_refine_batch(model, batch, 1, generator=gen, p_no_click=0.5)
    assert 0 < n_clicked(some) < b and torch.equal(some["cube"][:, prev], pred.float())
    # p_no_click=0 draws nothing: the same clicks as a run without the option
    a = self_refine_batch(model, batch, 2, generator=torch.Generator().manual_seed(5))
    c = self_refine_batch(
        model, batch, 2, generator=torch.Generator().manual_seed(5), p_no_click=0.0
    )
    assert torch.equal(a["cube"], c["cube"])
