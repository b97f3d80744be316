"""core.model's fast CPU paths compute exactly what the plain layers they replace compute
(so the shipped weights mean the same thing): stride-2 patchify conv, 1x1x1 matrix products,
the pointmap branch's pooled second layer, the decoder's split raw-cube skip; and CPU bf16
training gradients where oneDNN gets them wrong."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.model import (
    CUBE_CHANNELS,
    ModelConfig,
    PointPatchEmbed,
    Sam3DMed,
    _Conv3,
    depth_to_space,
    patchify_conv,
    pointwise,
    space_to_depth,
)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_patchify_conv_equals_space_to_depth_then_1x1():
    torch.manual_seed(0)
    proj = nn.Conv3d(7 * 8, 12, 1)
    x = _rand(2, 7, 8, 12, 16)
    ref = proj(space_to_depth(x))
    torch.testing.assert_close(patchify_conv(x, proj), ref, atol=1e-5, rtol=1e-5)
    # and space_to_depth is lossless
    torch.testing.assert_close(depth_to_space(space_to_depth(x)), x)


def test_pointwise_equals_1x1_conv_in_any_memory_layout():
    torch.manual_seed(0)
    proj = nn.Conv3d(10, 6, 1)
    x = _rand(1, 10, 6, 6, 6)
    for inp in (x, x.contiguous(memory_format=torch.channels_last_3d)):
        torch.testing.assert_close(pointwise(inp, proj), proj(x), atol=1e-5, rtol=1e-5)


def _naive_point_embed(pe: PointPatchEmbed, pointmap, center):
    """The branch as specified: MLP per pixel, attention pooling per patch, invalid token."""
    b, _, h, w = pointmap.shape
    p = pe.patch
    valid = torch.isfinite(pointmap).all(1)
    pts = (torch.nan_to_num(pointmap) - center[:, :, None, None]) / pe.scale * valid[:, None]
    win = pts.view(b, 3, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p, 3)
    vwin = valid.view(b, h // p, p, w // p, p).permute(0, 1, 3, 2, 4).reshape(b, -1, p * p)
    feat = pe.point_mlp(win)
    logits = (feat * pe.query).sum(-1) / math.sqrt(feat.shape[-1])
    logits = logits.masked_fill(~vwin, float("-inf"))
    anyv = vwin.any(-1, keepdim=True)
    attn = torch.softmax(torch.where(anyv, logits, torch.zeros_like(logits)), -1)
    tok = (attn.unsqueeze(-1) * feat).sum(2)
    return torch.where(anyv, tok, pe.invalid.expand_as(tok))


def test_point_embed_equals_the_per_pixel_formulation_with_invalid_windows():
    torch.manual_seed(0)
    cfg = ModelConfig(view_size=16, patch=8, dim=32, heads=4)
    pe = PointPatchEmbed(cfg)
    nn.init.normal_(pe.query)  # the shipped query is not zero
    pm = _rand(2, 3, 16, 16) * 40
    pm[0, :, :8, :8] = float("nan")  # a window with no valid pixel
    pm[1, :, 3:11, 2] = float("nan")  # partly invalid windows
    center = _rand(2, 3, seed=1)
    with torch.no_grad():
        got, ref = pe(pm, center), _naive_point_embed(pe, pm, center)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[0, 0], pe.invalid.detach())


def test_decoder_mix_equals_the_concatenated_1x1_conv():
    torch.manual_seed(0)
    cfg = ModelConfig(cube_size=32, view_size=16, patch=8, dim=32, heads=4)
    model = Sam3DMed(cfg).eval()
    dec, enc = model.decoder, model.cube_encoder
    cube = _rand(1, len(CUBE_CHANNELS), 32, 32, 32)
    z = _rand(1, cfg.dim, 4, 4, 4, seed=2)
    with torch.no_grad():
        f1, f2, _, skip = enc(cube, side=dec.cube_skip())
        got = dec(z, (f1, f2), skip)
        # reference: the layers as declared (mix2 over the concatenation, 1x1 convs)
        x = dec.fuse1(torch.cat([depth_to_space(dec.up1.proj(z)), f2], 1))
        x = dec.mix2(torch.cat([depth_to_space(dec.up2.proj(x)), f1, space_to_depth(cube)], 1))
        ref = depth_to_space(dec.head(dec.fuse2(F.gelu(x))))
        ref_f1 = enc.e1.conv(enc.e1.proj(space_to_depth(cube)))
    torch.testing.assert_close(f1, ref_f1, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert np.isfinite(got.numpy()).all()


def test_bf16_training_gradients_of_a_2_cubed_conv_are_right():
    """oneDNN's bf16 conv3d weight gradient is garbage (1e20 to inf, about one call in three)
    on a grid with a side of 2 (a 16^3 cube's coarsest level; torch 2.13 on CPU). ``_Conv3``
    trains such grids in fp32: twenty backward passes under CPU autocast must all match fp32.
    """
    torch.manual_seed(0)
    block = _Conv3(32, 32)
    for trial in range(20):
        x = _rand(2, 32, 2, 2, 2, seed=trial)
        grads = []
        for amp in (False, True):
            block.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                y = block(x)
            (y.float() * x).sum().backward()
            grads.append(block[0].weight.grad.clone())
        ref, got = grads
        assert torch.isfinite(got).all(), f"trial {trial}: non-finite weight gradient"
        torch.testing.assert_close(got, ref, atol=1e-2 * float(ref.abs().max()), rtol=0.05)


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN:UserWarning")
def test_oneDNN_conv3d_equals_torch_conv3d_for_inference_and_training():
    """``core.model.conv3d`` sends fp32 CPU inference to oneDNN (torch's own rule would pick its
    3-4x slower im2col path for these batch-1 3D convs); the numbers must not change, a user's
    ``mkldnn.flags(enabled=False)`` is obeyed, and with gradients on it stays torch's conv."""
    from torch.profiler import profile

    from core.model import conv3d

    def ops(fn) -> set[str]:
        with profile() as prof:
            fn()
        return {e.key for e in prof.key_averages()}

    torch.manual_seed(0)
    for shape, cout, stride, padding, k, bias in (
        ((1, 48, 16, 16, 16), 48, 1, 1, 3, True),
        ((1, 96, 8, 8, 8), 96, 1, 1, 3, True),
        ((1, 48, 16, 16, 16), 96, 2, 0, 2, True),
        ((3, 24, 5, 2, 1), 24, 1, 1, 3, False),  # a batch, odd sides, no bias
    ):
        base = _rand(shape[0], shape[1] + 8, *shape[2:]).contiguous(
            memory_format=torch.channels_last_3d
        )
        w = _rand(cout, shape[1], k, k, k, seed=1) * 0.05
        b = _rand(cout, seed=2) if bias else None
        # contiguous, channels-last, and a channel slice of a channels-last tensor (the encoder's)
        for x in (base[:, : shape[1]].contiguous(), base[:, : shape[1]]):
            ref = F.conv3d(x, w, b, stride=stride, padding=padding)
            with torch.inference_mode():
                got = conv3d(x, w, b, stride=stride, padding=padding)
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    x, w, b = _rand(1, 48, 16, 16, 16), _rand(48, 48, 3, 3, 3, seed=1), _rand(48, seed=2)
    with torch.inference_mode():
        assert "aten::mkldnn_convolution" in ops(lambda: conv3d(x, w, b, padding=1))
        with torch.backends.mkldnn.flags(enabled=False):
            assert "aten::mkldnn_convolution" not in ops(lambda: conv3d(x, w, b, padding=1))
    with torch.inference_mode():  # an unbatched (C, D, H, W) input, as F.conv3d takes it
        torch.testing.assert_close(
            conv3d(x[0], w, b, padding=1), F.conv3d(x[0], w, b, padding=1), atol=1e-4, rtol=1e-4
        )
    w = w.clone().requires_grad_()
    conv3d(x, w, b, padding=1).sum().backward()  # training: torch's differentiable conv
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_a_reused_condition_gives_what_the_full_forward_gives():
    """The refinement pass changes only the cube (its own mask as the previous prediction):
    the slice's condition of another batch with the same views is reused, and the result is
    the full forward's; a different slice's condition changes it."""
    torch.manual_seed(0)
    cfg = ModelConfig(cube_size=32, view_size=16, patch=8, dim=32, heads=4)
    model = Sam3DMed(cfg).eval()
    b = 2
    batch = {
        "cube": _rand(b, len(CUBE_CHANNELS), 32, 32, 32),
        "crop_view": _rand(b, 5, 16, 16, seed=1),
        "crop_pointmap": _rand(b, 3, 16, 16, seed=2) * 30,
        "full_view": _rand(b, 5, 16, 16, seed=3),
        "full_pointmap": _rand(b, 3, 16, 16, seed=4) * 30,
        "center": _rand(b, 3, seed=5),
    }
    refined = {**batch, "cube": batch["cube"].clone()}
    refined["cube"][:, CUBE_CHANNELS.index("previous")] = (_rand(b, 32, 32, 32, seed=6) > 0).float()
    with torch.no_grad():
        cond = model.condition(batch)
        full = model(refined)
        reused = model(refined, condition=cond)
        other = model(
            refined, condition=model.condition({**batch, "crop_view": -batch["crop_view"]})
        )
    for key in ("occupancy", "sdf", "slice_mask"):
        torch.testing.assert_close(reused[key], full[key], atol=0, rtol=0)
    assert not torch.equal(full["occupancy"], model(batch)["occupancy"])  # the cube counts
    assert not torch.allclose(other["occupancy"], full["occupancy"])  # and so does the slice
