"""The engine: prompts -> mask on the input grid, mesh, cube policy, errors, refinement.

A stand-in model that "predicts" a ball of a chosen size in the cube makes the geometry and
the zoom policy testable without trained weights.
"""

import numpy as np
import pytest
import torch
from conftest import oblique_affine
from torch import nn

from core.clicks import Box, Click, PromptSet
from core.engine import CubePolicy, Reconstructor
from core.errors import InputError
from core.intensity import DEFAULT_CT_WINDOW, normalize_intensity
from core.io import Volume, voxel_to_world
from core.metrics import dice
from core.model import INPUTS, ModelConfig, Sam3DMed
from core.samples import build_inputs


class BallModel(nn.Module):
    """Occupancy = a ball of ``radius_mm`` around the cube's centre voxel."""

    def __init__(self, radius_mm: float):
        super().__init__()
        self.cfg = ModelConfig()
        self.radius_mm = radius_mm
        self.spacings = []

    def forward(self, batch):
        n, s = self.cfg.cube_size, self.cfg.view_size
        # The pointmap of the crop view gives the cube's spacing (world mm between pixels).
        pm = batch["crop_pointmap"][0]
        step = torch.nanmean(torch.linalg.norm(pm[:, 1:, :] - pm[:, :-1, :], dim=0)).item()
        self.spacings.append(step)
        g = torch.arange(n, dtype=torch.float32) - n // 2
        d = torch.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2) * step
        occ = torch.where(d <= self.radius_mm, 10.0, -10.0)[None, None]
        return {
            "occupancy": occ,
            "slice_mask": torch.zeros(1, 1, s, s),
            "sdf": torch.zeros_like(occ),
        }


def _volume(shape=(60, 64, 56), spacing=(2.0, 2.0, 2.5), oblique=False):
    rng = np.random.default_rng(0)
    data = rng.normal(40, 10, shape).astype(np.float32)  # soft tissue everywhere (body mask on)
    aff = oblique_affine(spacing=spacing) if oblique else np.diag([*spacing, 1.0])
    return Volume(data, aff, "vol.nii.gz")


def test_mask_on_input_grid_and_mesh_in_world_mm():
    vol = _volume(oblique=True)
    rec = Reconstructor(BallModel(radius_mm=20.0), policy=CubePolicy(zoom_in=False))
    click = Click(2, 28, 30, 32)
    res = rec.predict(vol, PromptSet((click,)))
    assert res.mask.shape == vol.shape and res.mask.dtype == bool
    np.testing.assert_array_equal(res.affine, vol.affine)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"), -1)
    dist = np.linalg.norm(
        voxel_to_world(vol.affine, grid) - voxel_to_world(vol.affine, click.voxel()), axis=-1
    )
    assert dice(res.mask, dist <= 20.0) > 0.93
    centre = voxel_to_world(vol.affine, click.voxel())
    r = np.linalg.norm(res.mesh.vertices - centre, axis=1)
    assert abs(np.median(r) - 20.0) < 1.5  # the surface sits on the sphere, in world mm
    assert res.passes == 2 and not res.touches_border  # one pass + the refinement pass
    t = res.timings
    assert {"normalize", "model", "inputs", "forward", "paste", "mesh", "total"} <= set(t)
    assert 0 < t["inputs"] and 0 < t["forward"] and t["inputs"] + t["forward"] <= t["model"] + 0.1


def test_zoom_out_when_the_organ_touches_the_cube():
    vol = _volume(shape=(120, 120, 120), spacing=(1.0, 1.0, 1.0))
    model = BallModel(radius_mm=200.0)  # larger than any cube: always touching
    policy = CubePolicy(default_spacing_mm=1.0, max_zoom_out=2, refine_passes=0)
    rec = Reconstructor(model, policy=policy)
    res = rec.predict(vol, PromptSet((Click(2, 60, 60, 60),)))
    assert res.passes == 3  # first pass + 2 zoom-outs
    np.testing.assert_allclose(model.spacings, [1.0, 1.6, 2.56], rtol=0.02)
    assert res.touches_border is False  # the whole 120 mm volume fits a 164 mm cube
    assert res.mask.all()


def test_no_zoom_out_where_the_volume_ends():
    vol = _volume(shape=(40, 40, 40), spacing=(3.0, 3.0, 3.0))
    model = BallModel(radius_mm=500.0)
    rec = Reconstructor(model, policy=CubePolicy(default_spacing_mm=3.0, refine_passes=0))
    res = rec.predict(vol, PromptSet((Click(2, 20, 20, 20),)))
    assert res.passes == 1  # the cube already covers the volume: nothing is cut off


def test_no_zoom_in_by_default():
    vol = _volume(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))
    model = BallModel(radius_mm=12.0)
    res = Reconstructor(model).predict(vol, PromptSet((Click(2, 32, 32, 32),)))
    assert res.passes == 2 and res.cube.spacing == 3.0  # one pass + the refinement pass
    np.testing.assert_allclose(model.spacings, [3.0, 3.0], rtol=0.02)


def test_zoom_in_for_small_organs():
    vol = _volume(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))
    model = BallModel(radius_mm=12.0)  # 24 mm in a 192 mm cube: fill 0.13
    rec = Reconstructor(
        model,
        policy=CubePolicy(
            default_spacing_mm=3.0, min_spacing_mm=0.5, zoom_in=True, refine_passes=0
        ),
    )
    res = rec.predict(vol, PromptSet((Click(2, 32, 32, 32),)))
    assert res.passes == 2
    assert model.spacings[1] < 1.0  # ~27 mm / (0.6 * 64)
    assert res.cube.spacing == pytest.approx(model.spacings[1], rel=0.05)


def test_policy_per_call_overrides_the_default_and_leaves_it_alone():
    vol = _volume(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))
    rec = Reconstructor(BallModel(radius_mm=12.0))  # default policy: no zoom-in
    prompts = PromptSet((Click(2, 32, 32, 32),))
    zoom = CubePolicy(min_spacing_mm=0.5, zoom_in=True, refine_passes=0)
    res = rec.predict(vol, prompts, policy=zoom)
    assert res.passes == 2 and res.cube.spacing < 1.0  # zoomed in, no refinement pass
    assert rec.policy == CubePolicy()  # the call did not change the shared model's state
    res = rec.predict(vol, prompts)  # the next call without one: the default again
    assert res.passes == 2 and res.cube.spacing == 3.0  # one pass + the refinement pass


def test_no_zoom_in_in_slice_mode():
    vol = _volume(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))
    model = BallModel(radius_mm=12.0)  # small enough to zoom in on in volume mode (above)
    rec = Reconstructor(
        model, policy=CubePolicy(default_spacing_mm=3.0, min_spacing_mm=0.5, zoom_in=True)
    )
    res = rec.predict(vol, PromptSet((Click(2, 32, 32, 32),)), mode="slice")
    assert res.passes == 1 and res.cube.spacing == 3.0


def test_refinement_reuses_the_cube_and_feeds_back_the_previous_result():
    vol = _volume(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))
    seen = []

    class Spy(BallModel):
        def forward(self, batch):
            seen.append(batch["cube"][0, 4].clone())
            return super().forward(batch)

    rec = Reconstructor(Spy(radius_mm=30.0), policy=CubePolicy(zoom_in=False))
    first = rec.predict(vol, PromptSet((Click(2, 32, 32, 32),)))
    second = rec.predict(
        vol, first.prompts.add(Click(2, 32, 36, 32, positive=False)), previous=first
    )
    # the previous prediction is an input, binarised as in training (core.cubes._perturb)
    assert seen[0].max() == 0 and seen[-1].max() == 1
    assert set(torch.unique(seen[-1]).tolist()) <= {0.0, 1.0}
    assert second.cube is first.cube and second.passes == 1


def test_a_previous_result_of_another_grid_is_refused():
    vol = _volume(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))
    rec = Reconstructor(BallModel(radius_mm=20.0))
    first = rec.predict(vol, PromptSet((Click(2, 32, 32, 32),)), mesh=False)
    other = _volume(shape=(48, 70, 60), spacing=(3.0, 3.0, 3.0))
    far = first.prompts.add(Click(2, 30, 3, 3))  # outside the first cube: resamples the mask
    with pytest.raises(ValueError, match=r"shape \(64, 64, 64\), not this volume's"):
        rec.predict(other, far, previous=first)
    moved = Volume(vol.data, vol.affine + _shift(5.0))
    with pytest.raises(ValueError, match="another grid"):
        rec.predict(moved, far, previous=first)
    assert rec.predict(vol, far, previous=first, mesh=False).mask.any()  # its own volume


def _shift(mm: float) -> np.ndarray:
    t = np.zeros((4, 4))
    t[:3, 3] = mm
    return t


def test_volume_ml_is_the_voxel_volume_of_a_sheared_grid():
    # A gantry-tilted CT: its slice axis leans 25 degrees, so a voxel holds 2 x 2 x 3
    # x cos(25 deg) mm^3, less than its spacings multiplied.
    tilt = np.deg2rad(25.0)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    aff[:3, 2] = 3.0 * np.array([0.0, np.sin(tilt), np.cos(tilt)])
    vol = Volume(_volume().data, aff, "vol.nii.gz")
    res = Reconstructor(BallModel(radius_mm=15.0)).predict(vol, PromptSet((Click(2, 28, 30, 32),)))
    voxel_mm3 = 2.0 * 2.0 * 3.0 * np.cos(tilt)
    assert res.volume_ml == pytest.approx(res.mask.sum() * voxel_mm3 / 1000.0)
    assert res.volume_ml == pytest.approx(res.mesh.volume() / 1000.0, rel=0.05)


class PreviousSpy(BallModel):
    """Records the previous-prediction channel of every forward pass."""

    def __init__(self, radius_mm: float):
        super().__init__(radius_mm)
        self.previous = []

    def forward(self, batch):
        self.previous.append(batch["cube"][0, 4].clone())
        return super().forward(batch)


def test_refinement_pass_feeds_the_first_mask_back_in_volume_mode():
    vol = _volume(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))
    spy = PreviousSpy(radius_mm=15.0)
    res = Reconstructor(spy).predict(vol, PromptSet((Click(2, 32, 32, 32),)), mode="volume")
    assert res.passes == 2 and len(spy.previous) == 2
    assert spy.previous[0].max() == 0  # the first pass has no previous prediction
    # the second sees the first's binary mask (the ball), in the same cube
    first_mask = spy.previous[1].numpy()
    assert set(np.unique(first_mask).tolist()) == {0.0, 1.0}
    assert first_mask.sum() == (res.cube_probability > 0.5).sum()
    assert spy.spacings[0] == pytest.approx(spy.spacings[1])


@pytest.mark.parametrize(
    "policy, mode, radius, forwards",
    [
        (CubePolicy(), "slice", 15.0, 1),  # slice mode: no refinement pass
        (CubePolicy(refine_passes=0), "volume", 15.0, 1),
        (CubePolicy(refine_passes=2), "volume", 15.0, 3),
        (CubePolicy(), "volume", -1.0, 1),  # nothing found: an empty previous adds nothing
    ],
)
def test_refinement_passes_by_policy_and_mode(policy, mode, radius, forwards):
    vol = _volume(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))
    spy = PreviousSpy(radius_mm=radius)
    res = Reconstructor(spy, policy=policy).predict(
        vol, PromptSet((Click(2, 32, 32, 32),)), mode=mode
    )
    assert len(spy.previous) == forwards and res.passes == forwards


def test_refinement_passes_must_not_be_negative():
    with pytest.raises(ValueError, match="refine_passes"):
        CubePolicy(refine_passes=-1)


@pytest.mark.parametrize(
    "bad, word",
    [
        ({"default_spacing_mm": 0.0}, "default_spacing_mm"),
        ({"default_spacing_mm": -3.0}, "default_spacing_mm"),
        ({"min_spacing_mm": 0.0}, "min_spacing_mm"),
        ({"max_zoom_out": -1}, "max_zoom_out"),
    ],
)
def test_a_cube_policy_that_cannot_work_is_refused(bad, word):
    with pytest.raises(ValueError, match=word):
        CubePolicy(**bad)


def test_bad_prompts():
    vol = _volume()
    rec = Reconstructor(BallModel(10.0))
    with pytest.raises(InputError) as exc:
        rec.predict(vol, PromptSet((Click(2, 28, 300, 5),)))
    assert "vol.nii.gz" in str(exc.value) and "outside the volume" in str(exc.value)
    with pytest.raises(ValueError, match="positive click"):
        rec.predict(vol, PromptSet((Click(2, 28, 3, 5, positive=False),)))
    with pytest.raises(ValueError, match="mode"):
        rec.predict(vol, PromptSet((Click(2, 28, 3, 5),)), mode="3d")
    # an array for a Volume, a click for a PromptSet: a clear TypeError, not an AttributeError
    with pytest.raises(TypeError, match="core.io.Volume"):
        rec.predict(vol.data, PromptSet((Click(2, 28, 3, 5),)))
    with pytest.raises(TypeError, match="PromptSet"):
        rec.predict(vol, Click(2, 28, 3, 5))


def _one_line_input_error(call, *words):
    with pytest.raises(InputError) as exc:
        call()
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("vol.nii.gz: ")
    for w in words:
        assert w in msg, msg


def test_prompts_that_do_not_fit_the_volume_are_one_line_errors():
    vol = _volume()  # (60, 64, 56): an axial slice is 60 x 64, a coronal one 60 x 56
    rec = Reconstructor(BallModel(10.0))
    far_box = PromptSet(box=Box(2, 28, 100, 100, 120, 120))
    _one_line_input_error(lambda: rec.predict(vol, far_box), "box", "outside", "60 x 64")
    late_box = PromptSet(box=Box(2, 56, 10, 10, 20, 20))
    _one_line_input_error(lambda: rec.predict(vol, late_box), "box", "slice 56", "axis 2")
    wrong = PromptSet(mask=(1, 30, np.ones((60, 64), bool)))
    _one_line_input_error(lambda: rec.predict(vol, wrong), "mask", "(60, 64)", "60 x 56")
    before = PromptSet(box=Box(2, 28, -30, -20, -5, 10))  # above the slice's first row
    _one_line_input_error(lambda: rec.predict(vol, before), "box", "outside", "60 x 64")
    # a box running past the slice's edge is fine: the part on the slice is the prompt
    edge = rec.predict(vol, PromptSet(box=Box(2, 28, 50, 50, 90, 90)), mesh=False)
    assert edge.prompts.box.rc == (50, 50, 60, 64) and edge.mask.any()
    # past the first row and column too: the same prediction as the part on the slice
    low = rec.predict(vol, PromptSet(box=Box(2, 28, -40, -8, 10, 12)), mesh=False)
    on = rec.predict(vol, PromptSet(box=Box(2, 28, 0, 0, 10, 12)), mesh=False)
    assert low.prompts.box.rc == (0, 0, 10, 12)
    np.testing.assert_array_equal(low.mask, on.mask)
    np.testing.assert_array_equal(low.cube.center, on.cube.center)
    ok = PromptSet(mask=(1, 30, np.pad(np.ones((10, 10), bool), ((25, 25), (23, 23)))))
    assert rec.predict(vol, ok, mesh=False).mask.any()


def test_nan_voxels_are_a_one_line_error_not_an_empty_mask():
    vol = _volume()
    data = vol.data.copy()
    data[20:30, 20:30, 28:30] = np.nan
    data[0, 0, 0] = np.inf
    bad = Volume(data, vol.affine, "vol.nii.gz")
    rec = Reconstructor(BallModel(10.0))
    click = PromptSet((Click(2, 28, 30, 30),))
    _one_line_input_error(lambda: rec.predict(bad, click), "201 NaN/Inf voxels")
    assert rec.predict(vol, click, mesh=False).mask.any()  # the same engine, a clean volume


def test_real_model_runs_in_both_modes():
    torch.manual_seed(0)
    cfg = ModelConfig(cube_size=32, view_size=32, dim=32, depth=1, heads=2)
    rec = Reconstructor(Sam3DMed(cfg), policy=CubePolicy(zoom_in=False, max_zoom_out=0))
    vol = _volume(shape=(40, 40, 40))
    for mode in ("volume", "slice"):
        res = rec.predict(vol, PromptSet((Click(1, 20, 20, 20),)), mode=mode)
        assert res.mask.shape == vol.shape and res.cube_probability.shape == (32, 32, 32)
        assert res.slice_mask.shape == (40, 40)


class Whole(nn.Module):
    """The same network without its condition split: the engine computes everything."""

    def __init__(self, m):
        super().__init__()
        self.m, self.cfg = m, m.cfg

    def forward(self, batch):
        return self.m(batch)


def _tiny_model() -> Sam3DMed:
    """A small random Sam3DMed whose first mask is not empty (so refinement passes run)."""
    torch.manual_seed(0)
    cfg = ModelConfig(cube_size=32, view_size=32, dim=32, depth=1, heads=2)
    model = Sam3DMed(cfg).eval()
    with torch.no_grad():
        model.decoder.head.bias[:8] += 1.0
    return model


def test_the_refinement_pass_reuses_the_slice_condition_with_the_same_result():
    """The refinement pass rebuilds only the previous-prediction channel and reuses the
    slice's condition tokens: the same mask, probabilities and slice mask as a model that
    computes everything each pass, with the view encoder run once (crop + full) instead of
    once per pass."""
    model = _tiny_model()
    cfg = model.cfg

    calls = []
    model.view_encoder.register_forward_hook(lambda *_: calls.append(1))
    policy = CubePolicy(zoom_in=False, max_zoom_out=0, refine_passes=1)
    vol, prompts = _volume(shape=(40, 40, 40)), PromptSet((Click(1, 20, 20, 20),))
    split = Reconstructor(model, policy=policy, precision="fp32").predict(vol, prompts)
    n_split = len(calls)
    calls.clear()
    whole = Reconstructor(Whole(model), policy=policy, precision="fp32").predict(vol, prompts)
    assert split.passes == whole.passes == 2
    assert (n_split, len(calls)) == (2, 4)
    np.testing.assert_array_equal(split.cube_probability, whole.cube_probability)
    np.testing.assert_array_equal(split.mask, whole.mask)
    np.testing.assert_array_equal(split.slice_mask, whole.slice_mask)
    assert 0 < split.mask.sum() < split.mask.size
    # and it is the pass it stands for: the first pass's own mask as the previous prediction
    one = Reconstructor(
        model, policy=CubePolicy(zoom_in=False, max_zoom_out=0, refine_passes=0), precision="fp32"
    ).predict(vol, prompts)
    own = (one.cube_probability > 0.5).astype(np.float32)
    inp = build_inputs(
        normalize_intensity(vol.data, "ct", ct_window=DEFAULT_CT_WINDOW),
        vol.affine, prompts, one.cube, cfg, mode="volume", previous=own,
    )  # fmt: skip
    with torch.no_grad():
        out = model({k: torch.from_numpy(np.asarray(inp[k]))[None] for k in INPUTS})
    expected = torch.sigmoid(out["occupancy"][0, 0]).numpy()
    np.testing.assert_allclose(split.cube_probability, expected, atol=1e-6, rtol=0)
    assert np.abs(one.cube_probability - expected).max() > 1e-3  # the pass changed something


def test_a_corrective_click_on_another_slice_reuses_the_slice_condition():
    """A corrective click off the reference slice, in the same cube, leaves the views as they
    were: the condition is reused across calls, with the result of a model that computes
    everything. A click on the reference slice, or weights changed in place, compute it
    again."""
    model = _tiny_model()
    calls = []
    model.view_encoder.register_forward_hook(lambda *_: calls.append(1))
    policy = CubePolicy(zoom_in=False, max_zoom_out=0, refine_passes=0)
    rec = Reconstructor(model, policy=policy, precision="fp32")
    whole = Reconstructor(Whole(model), policy=policy, precision="fp32")
    vol = _volume(shape=(40, 40, 40))
    first = PromptSet((Click(1, 20, 20, 20),))
    other = PromptSet((Click(1, 20, 20, 20), Click(2, 22, 18, 21, positive=False)))
    same = PromptSet((Click(1, 20, 20, 20), Click(1, 20, 24, 18, positive=False)))
    r1 = rec.predict(vol, first)
    r2 = rec.predict(vol, other, previous=r1)
    assert r2.cube == r1.cube and len(calls) == 2  # crop + full view, once for both calls
    calls.clear()
    w2 = whole.predict(vol, other, previous=whole.predict(vol, first))
    assert len(calls) == 4
    np.testing.assert_array_equal(r2.cube_probability, w2.cube_probability)
    np.testing.assert_array_equal(r2.slice_mask, w2.slice_mask)
    calls.clear()
    r3 = rec.predict(vol, same, previous=r1)  # drawn on the reference slice's views
    assert len(calls) == 2
    with torch.no_grad():
        model.view_encoder.stem[0].weight.mul_(1.5)  # a weight changed in place
    r4 = rec.predict(vol, same, previous=r1)
    assert len(calls) == 4
    assert not np.array_equal(r4.slice_mask, r3.slice_mask)


def test_warm_up_runs_one_click_once_and_changes_no_result():
    """The warm-up runs the model on its built-in volume once (both volume-mode passes), does
    nothing after that or after a real click, and leaves the next result as a cold engine
    gives it."""
    model = _tiny_model()
    calls = []
    model.cube_encoder.register_forward_hook(lambda *_: calls.append(1))
    policy = CubePolicy(zoom_in=False, max_zoom_out=0, refine_passes=1)
    vol, prompts = _volume(shape=(40, 40, 40)), PromptSet((Click(1, 20, 20, 20),))
    rec = Reconstructor(model, policy=policy, precision="fp32")
    assert not rec.warm
    timings = rec.warm_up()
    assert rec.warm and len(calls) == 2 and timings["total"] > 0 and "mesh" in timings
    assert rec.warm_up() is None and len(calls) == 2
    warmed = rec.predict(vol, prompts)
    cold = Reconstructor(model, policy=policy, precision="fp32")
    fresh = cold.predict(vol, prompts)
    np.testing.assert_array_equal(warmed.cube_probability, fresh.cube_probability)
    np.testing.assert_array_equal(warmed.slice_mask, fresh.slice_mask)
    assert cold.warm and cold.warm_up() is None  # a real click warms it too


def test_mask_on_volume_level_and_prompted_component():
    from core.cube import Cube, axis_directions
    from core.paste import mask_on_volume

    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    shape = (40, 40, 40)
    cube = Cube(voxel_to_world(aff, (20, 20, 20)), 2.0, axis_directions(aff), 32)
    g = np.indices((32,) * 3).transpose(1, 2, 3, 0).astype(float)
    # two cones of probability (1 at their tips, 0 at 8 voxels): the clicked one and another
    a, b = np.array([10.0, 16, 16]), np.array([24.0, 16, 16])
    prob = np.maximum(
        1 - np.linalg.norm(g - a, axis=-1) / 8, 1 - np.linalg.norm(g - b, axis=-1) / 8
    )
    prob = np.clip(prob, 0, 1).astype(np.float32)
    # cube voxel (10, 16, 16) is volume voxel (14, 20, 20): same spacing, centres aligned
    prompts = PromptSet((Click(2, 14, 20, 20),))
    low = mask_on_volume(prob, cube, aff, shape, prompts, level=0.3)
    high = mask_on_volume(prob, cube, aff, shape, prompts, level=0.7)
    assert low[14, 20, 20] and high[14, 20, 20]
    assert not low[28, 20, 20]  # the unclicked cone is dropped
    assert high.sum() < low.sum() and not (high & ~low).any()
    # radius (1 - level) * 8 voxels: about 4/3 pi r^3 voxels
    for m, level in ((low, 0.3), (high, 0.7)):
        r = (1 - level) * 8
        assert abs(m.sum() / (4 / 3 * np.pi * r**3) - 1) < 0.25
    assert not mask_on_volume(prob * 0.2, cube, aff, shape, prompts).any()
