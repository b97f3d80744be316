"""A compact shape model in the spirit of SAM 3D Objects' geometry stage (see MODEL-NOTES).

Inputs come from one clicked 2D slice (image, prompt channels, pointmap of world mm) seen as a
crop around the prompt (the cube's plane through the click) and as the full slice, plus the 3D
prompt channels in the cube (positive/negative clicks on any slice, the previous prediction)
and, in "volume" mode, the volume itself resampled into the cube. A latent 8^3 grid of tokens
attends to itself and to the slice's condition tokens (transformer blocks with ``to_qkv``,
``to_q``, ``to_kv``, ``to_out`` and MLP ``fc1``/``fc2`` linears: the LoRA targets), and a
conv3d decoder upsamples it to 64^3 occupancy logits (and a truncated SDF). A small 2D head
predicts the mask of the clicked slice.

Shape only: there are no pose tokens. The cube is placed in the volume's world frame by its
affine (``core.cube``), so the output's pose is known, never learned.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ModelConfig",
    "Sam3DMed",
    "random_batch",
    "INPUTS",
    "CUBE_CHANNELS",
    "VIEW_CHANNELS",
    "LORA_TARGETS",
    "LORA_CONV_TARGETS",
]

# 3D input channels of the cube, in order.
CUBE_CHANNELS = (
    "image",
    "volume_on",
    "pos_clicks",
    "neg_clicks",
    "previous",
    "plane_image",
    "plane_marker",
)
# 2D channels of a slice view (crop or full), in order: image + core.prompts.PROMPT_CHANNELS.
VIEW_CHANNELS = ("image", "pos", "neg", "box", "mask")
LORA_TARGETS = ("to_qkv", "to_q", "to_kv", "to_out", "fc1", "fc2")
# The first convolutions of the 2D view encoder and of the 3D cube encoder, where a new
# modality's intensities and textures enter the model. LoRA may adapt them too (by these full
# names in ``lora.targets``), as the shipped head-and-neck adapter does
# (configs/lora_headneck.yaml). The cube encoder's patchify projections (``*.proj``) are not
# among them: the forward pass reads their weights directly (``patchify_conv``), so a wrapped
# copy would never be used.
LORA_CONV_TARGETS = (
    "view_encoder.stem.0",
    "view_encoder.down1.0",
    "view_encoder.down2.0",
    "cube_encoder.e1.conv.0",
    "cube_encoder.e2.conv.0",
)


@dataclass
class ModelConfig:
    """Architecture hyper-parameters; saved as JSON next to every checkpoint.

    Attributes
    ----------
    cube_size : output grid side (64)
    view_size : side of the crop and full slice views (the crop view is the cube's plane)
    patch : 2D patch size of a condition token
    dim : token width
    depth : transformer blocks
    heads : attention heads
    mlp_ratio : MLP hidden width / dim
    enc_channels : 3D encoder widths at 32^3, 16^3 and 8^3
    dec_channels : 3D decoder widths at 16^3 and 32^3 (the third is unused: nothing but a
        depth-to-space runs at 64^3)
    pointmap_scale_mm : pointmaps are (xyz - click) / scale: a fixed mm scale, because
        absolute size matters in medicine
    predict_sdf : also predict a truncated SDF
    sdf_trunc_mm : truncation of the SDF target, mm
    """

    cube_size: int = 64
    view_size: int = 64
    patch: int = 8
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    enc_channels: tuple[int, int, int] = (32, 48, 96)
    dec_channels: tuple[int, int, int] = (48, 32, 0)
    pointmap_scale_mm: float = 100.0
    predict_sdf: bool = True
    sdf_trunc_mm: float = 10.0

    def __post_init__(self):
        self.enc_channels = tuple(int(c) for c in self.enc_channels)
        self.dec_channels = tuple(int(c) for c in self.dec_channels)
        if self.cube_size % 8 or self.cube_size < 16:
            raise ValueError(f"cube_size must be a multiple of 8 and >= 16, got {self.cube_size}")
        if self.view_size % self.patch:
            raise ValueError(f"view_size {self.view_size} must be a multiple of patch {self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if len(self.enc_channels) != 3 or len(self.dec_channels) != 3:
            raise ValueError("enc_channels and dec_channels need 3 widths each")
        if self.pointmap_scale_mm <= 0 or self.sdf_trunc_mm <= 0:
            raise ValueError("pointmap_scale_mm and sdf_trunc_mm must be positive")

    @property
    def latent_size(self) -> int:
        return self.cube_size // 8

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Transformer pieces (names are the LoRA targets)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, dim * 3)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.to_qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.to_out(y.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, dim * 2)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x, ctx):
        b, n, d = x.shape
        m = ctx.shape[1]
        h = self.heads
        q = self.to_q(x).view(b, n, h, d // h).transpose(1, 2)
        kv = self.to_kv(ctx).view(b, m, 2, h, d // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1])
        return self.to_out(y.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Self-attention over the latent grid, cross-attention to the condition tokens, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.norm_ctx = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, ctx):
        x = x + self.attn(self.norm1(x))
        x = x + self.cross(self.norm2(x), self.norm_ctx(ctx))
        return x + self.mlp(self.norm3(x))


# --------------------------------------------------------------------------------------------
# Condition tokens from a slice view


def _conv2d(cin, cout, stride=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(4, cout), nn.GELU()
    )


class ViewEncoder(nn.Module):
    """Image + prompt channels of a view -> feature maps at 1, 1/2, 1/4 and tokens at 1/patch."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = len(VIEW_CHANNELS)
        self.stem = _conv2d(c, 16)
        self.down1 = _conv2d(16, 32, 2)
        self.down2 = _conv2d(32, 48, 2)
        n_down = int(math.log2(cfg.patch)) - 2
        layers, cin = [], 48
        for _ in range(n_down):
            layers.append(_conv2d(cin, 64, 2))
            cin = 64
        self.down3 = nn.Sequential(*layers)
        self.to_token = nn.Conv2d(cin, cfg.dim, 1)

    def forward(self, x):
        f1 = self.stem(x)
        f2 = self.down1(f1)
        f4 = self.down2(f2)
        tokens = self.to_token(self.down3(f4))
        return tokens.flatten(2).transpose(1, 2), (f1, f2, f4)


class PointPatchEmbed(nn.Module):
    """Pointmap (xyz per pixel) -> one token per patch, as in SAM 3D's pointmap branch.

    Per-pixel xyz goes through a small MLP; a learned query attends over the valid pixels of
    each patch window; a window without a valid pixel (outside the body/mask) becomes the
    learned "invalid" token. NaN points are never fed to a layer.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.patch = cfg.patch
        self.scale = cfg.pointmap_scale_mm
        self.point_mlp = nn.Sequential(
            nn.Linear(3, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.dim)
        )
        self.query = nn.Parameter(torch.zeros(cfg.dim))
        self.invalid = nn.Parameter(torch.zeros(cfg.dim))
        nn.init.normal_(self.invalid, std=0.02)

    def forward(self, pointmap, center):
        """pointmap (B, 3, H, W) mm with NaN; center (B, 3) mm -> tokens (B, N, dim)."""
        b, _, h, w = pointmap.shape
        p = self.patch
        valid = torch.isfinite(pointmap).all(1)  # (B, H, W)
        pts = (torch.nan_to_num(pointmap, nan=0.0) - center[:, :, None, None]) / self.scale
        pts = pts * valid[:, None]
        # (B, nH, nW, p*p, 3) windows
        win = pts.view(b, 3, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        win = win.reshape(b, (h // p) * (w // p), p * p, 3)
        vwin = valid.view(b, h // p, p, w // p, p).permute(0, 1, 3, 2, 4)
        vwin = vwin.reshape(b, (h // p) * (w // p), p * p)
        # feat = fc_b(gelu(fc_a(xyz))) per pixel; the query's logits and the attention-weighted
        # sum are linear in feat, so fc_b runs once per window on the pooled hidden features
        # instead of once per pixel (the same result, 64x fewer products).
        fc_a, fc_b = self.point_mlp[0], self.point_mlp[2]
        hidden = F.gelu(fc_a(win))  # (B, N, P, D)
        qb = fc_b.weight.t() @ self.query  # (D,): feat . query = hidden . qb + bias . query
        logits = (hidden @ qb.to(hidden.dtype) + fc_b.bias @ self.query) / math.sqrt(len(qb))
        logits = logits.masked_fill(~vwin, float("-inf"))
        any_valid = vwin.any(-1, keepdim=True)
        attn = torch.softmax(torch.where(any_valid, logits, torch.zeros_like(logits)), -1)
        tok = fc_b((attn.unsqueeze(-1).to(hidden.dtype) * hidden).sum(2))  # attn sums to 1
        return torch.where(any_valid, tok, self.invalid.expand_as(tok).to(tok.dtype))


# --------------------------------------------------------------------------------------------
# 3D encoder / decoder


def space_to_depth(x, r: int = 2):
    """(B, C, D, H, W) -> (B, C*r^3, D/r, H/r, W/r): a lossless stride-r patchify."""
    b, c, d, h, w = x.shape
    x = x.reshape(b, c, d // r, r, h // r, r, w // r, r)
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, c * r**3, d // r, h // r, w // r)


def depth_to_space(x, r: int = 2):
    """Inverse of :func:`space_to_depth`."""
    b, c, d, h, w = x.shape
    co = c // r**3
    x = x.reshape(b, co, r, r, r, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, co, d * r, h * r, w * r)


def conv3d(x, weight, bias=None, *, stride: int = 1, padding: int = 0):
    """``F.conv3d``, through oneDNN for CPU fp32 inference too.

    torch picks oneDNN for an fp32 CPU convolution by a rule made for 2D: a batch of one whose
    N*C*D*H is at most 20480 goes to its im2col path instead, 3-4 times slower for this
    model's 3^3 convs at 16^3 and 8^3 (BENCHMARKS, session 16). bf16 always runs on oneDNN, and
    training (gradients on) keeps ``F.conv3d``'s autograd.
    """
    if (
        x.is_cpu
        and x.dim() == 5  # an unbatched (C, D, H, W) input: F.conv3d handles it
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled  # a user's torch.backends.mkldnn.flags(enabled=False)
    ):
        return torch.ops.aten.mkldnn_convolution(
            x, weight, bias, [padding] * 3, [stride] * 3, [1, 1, 1], 1
        )
    return F.conv3d(x, weight, bias, stride=stride, padding=padding)


class _Conv3(nn.Sequential):
    """3^3 conv + GroupNorm + GELU. (oneDNN on CPU is slow for exactly 16 input channels at
    32^3, several times slower than 24 or 32: widths here avoid 16.)"""

    def __init__(self, cin, cout):
        super().__init__(nn.Conv3d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.GELU())

    def forward(self, x):
        if x.shape[-1] >= 32:  # channels-last halves oneDNN's time at 32^3 (not at 16^3)
            x = x.contiguous(memory_format=torch.channels_last_3d)
        tiny = min(x.shape[2:]) < 3 and x.is_cpu and torch.is_grad_enabled()
        if tiny and torch.is_autocast_enabled("cpu"):
            # oneDNN's bf16 conv3d weight gradient on CPU is garbage (1e20 to inf, in a quarter
            # to all of the calls, by shape) when a side is 2 (torch 2.13): grids that small
            # (the 2^3 level of a 16^3 cube) train in fp32. Sides of 3 and up, and inference,
            # are fine.
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        conv, norm, act = self
        if type(conv) is not nn.Conv3d or conv._forward_hooks or conv._forward_pre_hooks:
            return act(norm(conv(x)))  # a LoRA-wrapped conv (peft), or hooks: the module's call
        return act(norm(conv3d(x, conv.weight, conv.bias, padding=1)))


def patchify_weight(w: torch.Tensor) -> torch.Tensor:
    """A 1x1x1 weight over ``space_to_depth`` channels (out, in * 8, 1, 1, 1) as the equal
    2^3 stride-2 conv weight (out, in, 2, 2, 2): the channel order of space_to_depth."""
    return w.reshape(w.shape[0], w.shape[1] // 8, 2, 2, 2)


def patchify_conv(x, proj: nn.Conv3d):
    """``proj(space_to_depth(x))`` for a 1x1x1 ``proj``, computed as the equal 2^3 stride-2
    conv: no reordering copy, half the time on CPU."""
    return conv3d(x, patchify_weight(proj.weight), proj.bias, stride=2)


def channel_matmul(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A 1x1x1 conv without bias, ``w`` (out, in, 1, 1, 1), as one matrix product over the
    channels (oneDNN's 1x1x1 conv3d is several times slower)."""
    return torch.einsum("oc,bcdhw->bodhw", w[:, :, 0, 0, 0].to(x.dtype), x)


def pointwise(x, proj: nn.Conv3d):
    """``proj(x)`` for a 1x1x1 conv, as :func:`channel_matmul` plus the bias."""
    y = channel_matmul(proj.weight, x)
    return y + proj.bias.to(y.dtype)[:, None, None, None]


class _Down(nn.Module):
    """Stride-2 patchify (space-to-depth + 1x1x1) then a 3^3 conv: cheap on CPU."""

    def __init__(self, cin, cout):
        super().__init__()
        self.proj = nn.Conv3d(cin * 8, cout, 1)
        self.conv = _Conv3(cout, cout)

    def forward(self, x):
        return self.conv(patchify_conv(x, self.proj))


class CubeEncoder(nn.Module):
    """Cube channels (64^3) -> features at 32^3, 16^3 and 8^3.

    ``side`` (weight (O, C, 2, 2, 2), bias (O,)) is another stride-2 patchify of the same
    cube, computed in the same conv as ``e1``'s (the decoder's raw-cube skip): one pass over
    the 64^3 input, channels-last (3x faster than channels-first on CPU)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c1, c2, c3 = cfg.enc_channels
        self.e1 = _Down(len(CUBE_CHANNELS), c1)
        self.e2 = _Down(c1, c2)
        self.e3 = _Down(c2, c3)

    def forward(self, x, side=None):
        p = self.e1.proj
        w, b = patchify_weight(p.weight), p.bias
        if side is not None:
            w, b = torch.cat([w, side[0]]), torch.cat([b, side[1]])
        y = conv3d(x.contiguous(memory_format=torch.channels_last_3d), w, b, stride=2)
        c1 = p.weight.shape[0]
        f1 = self.e1.conv(y[:, :c1])
        f2 = self.e2(f1)
        return f1, f2, self.e3(f2), (y[:, c1:] if side is not None else None)


class _Up(nn.Module):
    """1x1x1 to r^3 x channels then depth-to-space: a transposed conv without its CPU cost."""

    def __init__(self, cin, cout):
        super().__init__()
        self.proj = nn.Conv3d(cin, cout * 8, 1)

    def forward(self, x):
        return depth_to_space(pointwise(x, self.proj))


class CubeDecoder(nn.Module):
    """Latent 8^3 -> 64^3 logits with skips. Nothing runs at 64^3 but the final
    depth-to-space: the last level predicts each 2x2x2 block of outputs from 32^3 features
    that also see the raw cube channels (space-to-depth, so no detail is lost)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c1, c2, _ = cfg.enc_channels
        d1, d2, _ = cfg.dec_channels
        self.n_out = 2 if cfg.predict_sdf else 1
        self.up1 = _Up(cfg.dim, d1)
        self.fuse1 = _Conv3(d1 + c2, d1)
        self.up2 = _Up(d1, d2)
        self.n_mix_features = d2 + c1  # mix2's inputs before the raw cube's channels
        self.mix2 = nn.Conv3d(d2 + c1 + 8 * len(CUBE_CHANNELS), d2, 1)
        self.fuse2 = _Conv3(d2, d2)
        self.head = nn.Conv3d(d2, 8 * self.n_out, 1)

    def cube_skip(self):
        """The raw-cube part of ``mix2`` as a stride-2 2^3 conv (weight, bias): the encoder
        computes it (``CubeEncoder.forward(side=...)``) in its first conv."""
        return patchify_weight(self.mix2.weight[:, self.n_mix_features :]), self.mix2.bias

    def forward(self, z, skips, cube_skip):
        """``cube_skip``: the encoder's output for :meth:`cube_skip` (mix2 applied to the
        space-to-depth of the raw cube, bias included)."""
        f1, f2 = skips
        x = self.fuse1(torch.cat([self.up1(z), f2], 1))
        # mix2 (1x1x1) over [up2(x), f1, space_to_depth(cube)]: the cube's part comes in as
        # cube_skip; the rest is one matrix product
        feats = torch.cat([self.up2(x), f1], 1)
        x = channel_matmul(self.mix2.weight[:, : self.n_mix_features], feats)
        x = self.fuse2(F.gelu(x + cube_skip))
        return depth_to_space(pointwise(x, self.head))


class MaskHead2D(nn.Module):
    """Mask logits of the clicked slice from the crop view's own encoder (its tokens and skip
    features): a 2D path that does not see the 3D latent."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.from_tokens = nn.Conv2d(cfg.dim, 48, 1)
        self.fuse4 = _conv2d(48 + 48, 48)
        self.fuse2 = _conv2d(48 + 32, 32)
        self.fuse1 = _conv2d(32 + 16, 16)
        self.out = nn.Conv2d(16, 1, 1)

    def forward(self, tokens_map, feats):
        f1, f2, f4 = feats
        x = F.interpolate(self.from_tokens(tokens_map), size=f4.shape[-2:], mode="bilinear")
        x = self.fuse4(torch.cat([x, f4], 1))
        x = F.interpolate(x, size=f2.shape[-2:], mode="bilinear")
        x = self.fuse2(torch.cat([x, f2], 1))
        x = F.interpolate(x, size=f1.shape[-2:], mode="bilinear")
        x = self.fuse1(torch.cat([x, f1], 1))
        return self.out(x)


# --------------------------------------------------------------------------------------------


# Keys of the batch dict the model reads (B = batch, C = cube_size, S = view_size).
INPUTS = (
    "cube",  # (B, 7, C, C, C) float, CUBE_CHANNELS
    "crop_view",  # (B, 5, S, S) float, VIEW_CHANNELS on the cube's plane through the click
    "crop_pointmap",  # (B, 3, S, S) world mm, NaN where invalid
    "full_view",  # (B, 5, S, S) float, the whole slice letterboxed
    "full_pointmap",  # (B, 3, S, S) world mm, NaN where invalid
    "center",  # (B, 3) world mm of the click: the pointmaps' origin
)


def random_batch(cfg: ModelConfig, b: int = 1, *, generator=None) -> dict:
    """A batch of random inputs of the right shapes (timing, tests): cube and views uniform
    in [0, 1), pointmaps within about 30 mm of the centre (the origin), no NaN."""
    c, s = cfg.cube_size, cfg.view_size
    return {
        "cube": torch.rand(b, len(CUBE_CHANNELS), c, c, c, generator=generator),
        "crop_view": torch.rand(b, len(VIEW_CHANNELS), s, s, generator=generator),
        "crop_pointmap": torch.randn(b, 3, s, s, generator=generator) * 30,
        "full_view": torch.rand(b, len(VIEW_CHANNELS), s, s, generator=generator),
        "full_pointmap": torch.randn(b, 3, s, s, generator=generator) * 30,
        "center": torch.zeros(b, 3),
    }


class Sam3DMed(nn.Module):
    """The model. ``forward(batch)`` takes a dict of tensors keyed by :data:`INPUTS`.

    Returns a dict: ``occupancy`` (B, 1, C, C, C) logits, ``sdf`` (B, 1, C, C, C) in units of
    ``sdf_trunc_mm`` (tanh-bounded to [-1, 1]; absent when ``predict_sdf`` is False), and
    ``slice_mask`` (B, 1, S, S) logits on the crop view.
    """

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ModelConfig()
        n_view = (cfg.view_size // cfg.patch) ** 2
        self.view_encoder = ViewEncoder(cfg)
        self.point_embed = PointPatchEmbed(cfg)
        # Token groups: crop image, crop pointmap, full image, full pointmap.
        self.group_embed = nn.Parameter(torch.zeros(4, 1, cfg.dim))
        self.view_pos = nn.Parameter(torch.zeros(1, n_view, cfg.dim))
        self.cube_encoder = CubeEncoder(cfg)
        self.to_latent = nn.Linear(cfg.enc_channels[2], cfg.dim)
        self.latent_pos = nn.Parameter(torch.zeros(1, cfg.latent_size**3, cfg.dim))
        self.blocks = nn.ModuleList(
            [Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)]
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.decoder = CubeDecoder(cfg)
        self.mask_head = MaskHead2D(cfg)
        for p in (self.group_embed, self.view_pos, self.latent_pos):
            nn.init.normal_(p, std=0.02)

    def condition(self, batch: dict) -> dict:
        """Everything that does not read ``batch["cube"]``: the slice's condition tokens
        (``ctx``) and the 2D head's ``slice_mask`` logits. A pass that changes only the cube
        (the engine's refinement pass: its own mask as the previous prediction) hands them
        back to :meth:`forward` instead of computing them again."""
        cfg = self.cfg
        center = batch["center"].float()
        crop_tok, crop_feats = self.view_encoder(batch["crop_view"])
        full_tok, _ = self.view_encoder(batch["full_view"])
        crop_pm = self.point_embed(batch["crop_pointmap"], center)
        full_pm = self.point_embed(batch["full_pointmap"], center)
        g = self.group_embed
        ctx = torch.cat(
            [
                crop_tok + self.view_pos + g[0],
                crop_pm + self.view_pos + g[1],
                full_tok + self.view_pos + g[2],
                full_pm + self.view_pos + g[3],
            ],
            1,
        )
        b, s = ctx.shape[0], cfg.view_size // cfg.patch
        crop_map = (crop_tok + self.view_pos).transpose(1, 2).reshape(b, cfg.dim, s, s)
        return {"ctx": ctx, "slice_mask": self.mask_head(crop_map, crop_feats)}

    def forward(self, batch: dict, condition: dict | None = None) -> dict:
        """``condition``: :meth:`condition` of a batch with the same views, pointmaps and
        centre (None: computed here)."""
        cfg = self.cfg
        if condition is None:
            condition = self.condition(batch)
        ctx = condition["ctx"]
        cube = batch["cube"]
        f1, f2, f3, cube_skip = self.cube_encoder(cube, side=self.decoder.cube_skip())
        b = cube.shape[0]
        z = self.to_latent(f3.flatten(2).transpose(1, 2)) + self.latent_pos
        for blk in self.blocks:
            z = blk(z, ctx)
        z = self.norm(z)
        n = cfg.latent_size
        zmap = z.transpose(1, 2).reshape(b, cfg.dim, n, n, n)
        out = self.decoder(zmap, (f1, f2), cube_skip)
        result = {"occupancy": out[:, :1], "slice_mask": condition["slice_mask"]}
        if cfg.predict_sdf:
            result["sdf"] = torch.tanh(out[:, 1:2])
        return result

    def n_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
