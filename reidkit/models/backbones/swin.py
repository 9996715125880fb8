"""Swin Transformer (Swin-T/S/B) with SOLIDER's semantic weight, in the original/timm layout.

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021
(github.com/microsoft/Swin-Transformer); the ReID variant follows SOLIDER (Chen et al., "Beyond
Appearance: a Semantic Controllable Self-Supervised Learning Framework for Human-Centric Visual
Tasks", CVPR 2023; github.com/tinyvision/SOLIDER, SOLIDER-REID).

Algorithm: a 4x4 patch embedding (conv + LayerNorm), then four stages of transformer blocks
that attend inside non-overlapping 7x7 windows; every second block shifts the windows by 3
tokens (a cyclic roll, with an attention mask that keeps tokens of different original regions
apart), and a learned relative position bias (a ``(2*7-1)^2 x heads`` table) is added to the
attention logits. Between stages a patch merging layer concatenates each 2x2 neighbourhood
(order: (0,0), (1,0), (0,1), (1,1)), normalises it and halves the width back (``reduction``).

**Window size at 256x128.** The feature maps are 64x32, 32x16, 16x8 and 8x4, not multiples
of 7. As SOLIDER (and Swin's detection code) does, the window stays 7 and each block pads its
(normalised) map with zeros at the right/bottom up to a multiple of 7 before the windows are
cut, then crops the result; the shift stays 3 even in the last stage, and the mask only
separates shifted regions (padded tokens take part as keys, as in SOLIDER). The ImageNet
relative-position tables (window 7) thus load unchanged.

**Semantic weight** (SOLIDER): a scalar s in [0, 1] (``semantic_weight``; 0.2 for ReID) is fed
as the pair (s, 1 - s) to two small linear layers per stage, ``semantic_embed_w.{i}`` and
``semantic_embed_b.{i}`` (``Linear(2, C)``, C = the width of the tokens leaving stage i, i.e. after
its patch merging; the last stage's width for i = 3). After stage i the tokens become
``x * softplus(w) + b``. As in SOLIDER these layers are frozen (they come with the
pretrained weights), and the modulation after the last stage does not reach the output,
which is the last stage's map before modulation, normed (``norm``). With
``semantic_weight < 0`` the layers do not exist (plain Swin).

Parameter names (timm / original Swin, ``downsample`` at the end of ``layers.0..2``):
``patch_embed.proj``, ``patch_embed.norm``, ``layers.N.blocks.M.{norm1, attn.qkv,
attn.relative_position_bias_table, attn.proj, norm2, mlp.fc1, mlp.fc2}``,
``layers.N.downsample.{norm, reduction}``, ``norm``, ``semantic_embed_w.N``, ``semantic_embed_b.N``.
SOLIDER's own checkpoints use mmdet names (``stages``, ``attn.w_msa``, ``ffn.layers.0.0`` /
``ffn.layers.1``, ``patch_embed.projection``, ``norm3``) and an unfold channel order in the
patch merging (inverse of SOLIDER's ``swin_converter``: reshape ``(out, C, 4)`` -> swap to
``(out, 4, C)`` and reorder the four blocks [0, 2, 1, 3]); ``reidkit.models.interop`` maps them.
timm >= 0.9 checkpoints (downsample at the start of ``layers.1..3``) are shifted back on load.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypedDict, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reidkit.errors import ReIDError
from reidkit.models.backbones.vit import DropPath, Mlp, init_transformer_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def relative_position_index(window: int) -> torch.Tensor:
    """``window^2 x window^2`` index into the ``(2w-1)^2`` bias table for each pair of window tokens."""
    # on the CPU even under a meta device context: a derived buffer that no checkpoint carries
    coords = torch.stack(
        torch.meshgrid(torch.arange(window, device="cpu"), torch.arange(window, device="cpu"), indexing="ij")
    ).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shift_mask(hp: int, wp: int, window: int, shift: int) -> torch.Tensor:
    """``nW x w^2 x w^2`` additive mask (0 / -100) separating the regions a cyclic shift brings together."""
    # Built in numpy so that tracing (ONNX / TorchScript export) sees a constant, not slicing ops.
    img = np.zeros((hp, wp), dtype=np.float32)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in cuts:
        for ws in cuts:
            img[hs, ws] = label
            label += 1
    win = img.reshape(hp // window, window, wp // window, window).transpose(0, 2, 1, 3).reshape(-1, window * window)
    diff = win[:, None, :] - win[:, :, None]
    return torch.from_numpy(np.where(diff != 0, np.float32(-100.0), np.float32(0.0)))


class WindowAttention(nn.Module):
    """Window multi-head attention with a relative position bias table (SDPA with an additive mask)."""

    relative_position_index: torch.Tensor  # a buffer (register_buffer)

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        # Derived from the window size, so not stored (original checkpoints carry it; dropped on load).
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention within each window; ``x`` is ``(B*nW) x w^2 x C``, ``mask`` ``nW x w^2 x w^2``."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(n, n, self.num_heads).permute(2, 0, 1)  # heads x N x N
        if mask is None:
            attn_mask = bias.unsqueeze(0)
        else:
            nw = mask.shape[0]
            attn_mask = (
                (bias.unsqueeze(0).unsqueeze(0) + mask.to(bias.dtype)[None, :, None])
                .expand(bw // nw, nw, self.num_heads, n, n)
                .reshape(bw, self.num_heads, n, n)
            )
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask.to(qkv.dtype))
        return cast(torch.Tensor, self.proj(out.transpose(1, 2).reshape(bw, n, c)))


class SwinBlock(nn.Module):
    """(Shifted-)window attention block, padding the map to whole windows as SOLIDER does."""

    def __init__(
        self, dim: int, num_heads: int, window: int = 7, shift: int = 0, mlp_ratio: float = 4.0, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """``B x H*W x C`` -> same shape."""
        b, _, c = x.shape
        h, w = hw
        ws = self.window
        y = self.norm1(x).reshape(b, h, w, c)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        mask = None
        if self.shift > 0:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask = shift_mask(hp, wp, ws, self.shift).to(y.device)
        win = y.reshape(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        win = self.attn(win, mask)
        y = win.reshape(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if self.shift > 0:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        y = y[:, :h, :w].reshape(b, h * w, c)
        x = x + self.drop_path(y)
        return cast(torch.Tensor, x + self.drop_path(self.mlp(self.norm2(x))))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concatenation (zero-padded to even size) -> LayerNorm(4C) -> Linear(4C, 2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        """Tokens at half the resolution and their grid."""
        b, _, c = x.shape
        h, w = hw
        x = x.reshape(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        nh, nw = int(x.shape[1]), int(x.shape[2])
        return self.reduction(self.norm(x.reshape(b, nh * nw, 4 * c))), (nh, nw)


class SwinStage(nn.Module):
    """``blocks`` (alternating plain / shifted windows) and an optional ``downsample``."""

    def __init__(
        self, dim: int, depth: int, num_heads: int, window: int, drop_paths: list[float], downsample: bool
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else window // 2, drop_path=drop_paths[i])
                for i in range(depth)
            ]
        )
        self.downsample = PatchMerging(dim) if downsample else None


class _PatchEmbed(nn.Module):
    """Patch projection and its norm (the ``patch_embed.proj`` / ``patch_embed.norm`` keys of Swin's weights)."""

    def __init__(self, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)


class SwinTransformer(nn.Module):
    """Swin backbone; ``forward_features(x, semantic_weight=None) -> B x 8C x H/32 x W/32`` (normed)."""

    def __init__(
        self,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window: int = 7,
        patch_size: int = 4,
        drop_path: float = 0.0,
        semantic_weight: float = -1.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= drop_path < 1.0:
            raise ReIDError(f"model.drop_path: must be in [0, 1), got {drop_path}")
        if semantic_weight > 1.0:
            raise ReIDError(f"model.semantic_weight: expected a value in [0, 1] (or < 0: off), got {semantic_weight}")
        self.patch_size = patch_size
        self.patch_embed = _PatchEmbed(embed_dim, patch_size)
        dims = [embed_dim * 2**i for i in range(len(depths))]
        rates = torch.linspace(0, drop_path, sum(depths), device="cpu").tolist()  # values, also under a meta device
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(
                SwinStage(dims[i], depth, heads, window, rates[start : start + depth], downsample=i < len(depths) - 1)
            )
        self.norm = nn.LayerNorm(dims[-1])
        self.out_channels = dims[-1]
        self.semantic_weight = float(semantic_weight)
        if self.semantic_weight >= 0:
            widths = [dims[min(i + 1, len(dims) - 1)] for i in range(len(depths))]
            self.semantic_embed_w = nn.ModuleList([nn.Linear(2, d) for d in widths])
            self.semantic_embed_b = nn.ModuleList([nn.Linear(2, d) for d in widths])
        self.mean: tuple[float, ...] = IMAGENET_MEAN
        self.std: tuple[float, ...] = IMAGENET_STD
        self._init_weights()
        if self.semantic_weight >= 0:
            # SOLIDER keeps them fixed: they come with the person-pretrained weights.
            for p in list(self.semantic_embed_w.parameters()) + list(self.semantic_embed_b.parameters()):
                p.requires_grad_(False)

    def _init_weights(self) -> None:
        init_transformer_weights(self)
        for m in self.modules():
            if isinstance(m, WindowAttention):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)

    def _semantic(self, x: torch.Tensor, semantic_weight: float | torch.Tensor | None) -> torch.Tensor | None:
        if self.semantic_weight < 0:
            return None
        sw = self.semantic_weight if semantic_weight is None else semantic_weight
        w = torch.as_tensor(sw, dtype=x.dtype, device=x.device)
        if w.dim() == 0:
            w = w.expand(x.shape[0])
        w = w.reshape(x.shape[0], -1)
        return w if w.shape[1] == 2 else torch.cat([w, 1 - w], dim=1)

    def forward_features(self, x: torch.Tensor, semantic_weight: float | torch.Tensor | None = None) -> torch.Tensor:
        """The last stage's normed map ``B x C x h x w``; ``semantic_weight`` overrides the module's value."""
        sem = self._semantic(x, semantic_weight)
        b = x.shape[0]
        ph, pw = (-x.shape[2]) % self.patch_size, (-x.shape[3]) % self.patch_size
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        x = self.patch_embed.proj(x)
        hw = (int(x.shape[2]), int(x.shape[3]))
        x = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
        out, out_hw = x, hw
        for i, stage in enumerate(self.layers):
            assert isinstance(stage, SwinStage)  # the only modules __init__ puts in self.layers
            for blk in stage.blocks:
                x = blk(x, hw)
            out, out_hw = x, hw
            if stage.downsample is not None:
                x, hw = stage.downsample(x, hw)
            if sem is not None:
                scale = F.softplus(self.semantic_embed_w[i](sem)).unsqueeze(1)
                x = x * scale + self.semantic_embed_b[i](sem).unsqueeze(1)
        out = self.norm(out)
        return cast(torch.Tensor, out.transpose(1, 2).reshape(b, -1, out_hw[0], out_hw[1]))

    def forward(self, x: torch.Tensor, semantic_weight: float | torch.Tensor | None = None) -> torch.Tensor:
        """Same as ``forward_features``."""
        return self.forward_features(x, semantic_weight)

    def adapt_state_dict(self, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fit an original/timm Swin state dict: drop the head and derived buffers, undo timm>=0.9's stage shift."""
        out = {
            k: v
            for k, v in sd.items()
            if not (k.startswith("head") or k.endswith(("relative_position_index", "attn_mask")))
        }
        if any(k.startswith(f"layers.{len(self.layers) - 1}.downsample.") for k in out):
            # timm >= 0.9 puts stage i's patch merging at the start of stage i + 1.
            pat = re.compile(r"^layers\.(\d+)\.downsample\.")
            out = {pat.sub(lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", k): v for k, v in out.items()}
        return out


class _SwinSize(TypedDict):
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]


_SIZES: dict[str, _SwinSize] = {
    "swin_tiny": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
    "swin_small": {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24)},
    "swin_base": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)},
}


def build_swin(
    variant: str, last_stride: int = 1, drop_path: float = 0.0, semantic_weight: float = -1.0
) -> SwinTransformer:
    """Build a Swin size (window 7); ``last_stride`` does not apply to Swin and is ignored."""
    if variant not in _SIZES:
        raise ReIDError(f"unknown Swin size {variant!r}; expected one of {', '.join(_SIZES)}")
    size = _SIZES[variant]
    return SwinTransformer(
        embed_dim=size["embed_dim"],
        depths=size["depths"],
        num_heads=size["num_heads"],
        drop_path=float(drop_path),
        semantic_weight=float(semantic_weight),
    )
