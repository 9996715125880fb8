"""Vision Transformer (ViT-S/16, ViT-B/16) with TransReID's options, in timm's parameter layout.

Architecture: Dosovitskiy et al., ICLR 2021 ("An Image is Worth 16x16 Words"); the ReID
options follow TransReID (He et al., ICCV 2021, github.com/damo-cv/TransReID):

* **Overlapping patch embedding**: the 16x16 patch convolution slides with ``stride_size``
  (16: the plain ViT grid; 12: overlapping patches, a 21 x 10 grid at 256x128). The grid is
  ``((H - 16) // stride + 1, (W - 16) // stride + 1)``.
* **Position embeddings** are learned for that grid. ImageNet weights come at 224x224 (a 14 x 14
  grid): ``resize_pos_embed`` keeps the class token's embedding and resizes the grid part by
  bicubic interpolation (a pure function, also applied when loading a checkpoint whose grid
  differs, and on the fly when an input of another size arrives).
* **SIE** (side information embedding): with ``sie=True`` and ``num_cameras > 0`` one learned
  vector per camera (``sie_embed``, ``num_cameras x 1 x C``) is added to every token, scaled by
  ``sie_lambda`` (3.0 in the paper). The module then has ``uses_camera = True`` and its forward
  takes ``cams`` (LongTensor B); without camera ids the term is left out (camera unknown).
* **Stochastic depth** (``drop_path``): linearly increasing over the blocks, as timm.

Attention is ``torch.nn.functional.scaled_dot_product_attention``. Parameter names are timm's
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.{norm1, attn.qkv, attn.proj,
norm2, mlp.fc1, mlp.fc2}``, ``norm``), so timm / DeiT / TransReID ImageNet checkpoints load by
key; their classifier ``head.*`` is dropped. ``forward_features`` returns the final-normed
class token as ``B x C x 1 x 1`` (the ``baseline`` arch's BNNeck head applies to it as to a CNN's
pooled map); ``forward_tokens`` gives all tokens up to a depth (the JPM model uses it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from reidkit.errors import ReIDError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The original ViT (JAX) weights, which TransReID fine-tunes, expect inputs scaled to [-1, 1].
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

# Keys of ImageNet checkpoints that a ReID model replaces or never has.
_DROP_PREFIXES = ("head.", "head_dist.", "fc_norm.", "pre_logits.", "dist_token")


def grid_size(img_size: tuple[int, int], patch_size: int = 16, stride_size: int = 16) -> tuple[int, int]:
    """Patch grid ``(gh, gw)`` of an image ``(H, W)`` for a patch convolution of this size and stride."""
    h, w = int(img_size[0]), int(img_size[1])
    if h < patch_size or w < patch_size:
        raise ReIDError(f"ViT input {h}x{w} is smaller than the {patch_size}x{patch_size} patch")
    return (h - patch_size) // stride_size + 1, (w - patch_size) // stride_size + 1


def resize_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Resize ``1 x (prefix + gh*gw) x C`` position embeddings to ``new_grid`` (bicubic; prefix kept).

    ``old_grid`` defaults to the square grid of the stored token count (224x224 checkpoints).
    """
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise ReIDError(f"pos_embed: expected a 1 x N x C tensor, got shape {tuple(pos_embed.shape)}")
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n = grid.shape[1]
    if old_grid is None:
        side = int(math.isqrt(n))
        if side * side != n:
            raise ReIDError(f"pos_embed: {n} grid tokens are not a square grid; pass old_grid=(gh, gw)")
        old_grid = (side, side)
    gh, gw = int(old_grid[0]), int(old_grid[1])
    if gh * gw != n:
        raise ReIDError(f"pos_embed: old_grid {old_grid} does not hold the {n} stored grid tokens")
    c = grid.shape[2]
    img = grid.reshape(1, gh, gw, c).permute(0, 3, 1, 2)
    # Interpolate in float32: bicubic weights in half precision lose the identity at equal sizes.
    out = F.interpolate(img.float(), size=(int(new_grid[0]), int(new_grid[1])), mode="bicubic", align_corners=False).to(
        grid.dtype
    )
    out = out.permute(0, 2, 3, 1).reshape(1, int(new_grid[0]) * int(new_grid[1]), c)
    return torch.cat([prefix, out], dim=1)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a sample's residual branch with probability ``p`` (rescaling the rest)."""
    if p <= 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


def init_transformer_weights(module: nn.Module) -> None:
    """The ViT/Swin initialisation: truncated-normal (0.02) Linear weights, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DropPath(nn.Module):
    """Module form of ``drop_path``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Drop whole residual branches per sample in training."""
        return drop_path(x, self.p, self.training)


class PatchEmbed(nn.Module):
    """Patch convolution (``proj``) with a possibly overlapping stride; returns ``B x N x C`` tokens."""

    def __init__(self, patch_size: int = 16, stride_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.stride_size = stride_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Tokens and their grid ``(gh, gw)``."""
        x = self.proj(x)
        gh, gw = int(x.shape[2]), int(x.shape[3])
        return x.flatten(2).transpose(1, 2), (gh, gw)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm names) on SDPA."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ReIDError(f"ViT: embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over all tokens."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return cast(torch.Tensor, self.proj(out.transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    """Two-layer GELU MLP (``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """fc2(gelu(fc1(x)))."""
        return cast(torch.Tensor, self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each with drop path."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One residual attention step and one residual MLP step."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return cast(torch.Tensor, x + self.drop_path(self.mlp(self.norm2(x))))


class VisionTransformer(nn.Module):
    """ViT backbone with TransReID's overlapping patches, SIE and resized position embeddings."""

    def __init__(
        self,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        img_size: tuple[int, int] = (256, 128),
        patch_size: int = 16,
        stride_size: int = 16,
        sie: bool = False,
        num_cameras: int = 0,
        sie_lambda: float = 3.0,
        drop_path: float = 0.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if stride_size < 1 or stride_size > patch_size:
            raise ReIDError(f"model.stride_size: expected 1..{patch_size}, got {stride_size}")
        if not 0.0 <= drop_path < 1.0:
            raise ReIDError(f"model.drop_path: must be in [0, 1), got {drop_path}")
        if sie and int(num_cameras) < 1:
            raise ReIDError(
                "model.sie: SIE needs model.num_cameras >= 1 (the trainer sets it from the data "
                "when it is 0; pass it when building the model yourself)"
            )
        self.embed_dim = self.out_channels = int(embed_dim)
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.grid = grid_size(self.img_size, patch_size, stride_size)
        self.patch_embed = PatchEmbed(patch_size, stride_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], embed_dim))
        self.num_cameras = int(num_cameras) if sie else 0
        self.sie_lambda = float(sie_lambda)
        self.uses_camera = self.num_cameras > 0
        if self.uses_camera:
            self.sie_embed = nn.Parameter(torch.zeros(self.num_cameras, 1, embed_dim))
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()  # values, also under a meta device
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias, rates[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.mean: tuple[float, ...] = IMAGENET_MEAN
        self.std: tuple[float, ...] = IMAGENET_STD
        self._init_weights()

    def _init_weights(self) -> None:
        for p in (self.cls_token, self.pos_embed) + ((self.sie_embed,) if self.uses_camera else ()):
            nn.init.trunc_normal_(p, std=0.02)
        init_transformer_weights(self)

    def embed(self, x: torch.Tensor, cams: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens with the class token prepended, position (and camera) embeddings added."""
        tokens, grid = self.patch_embed(x)
        pos: torch.Tensor = self.pos_embed
        if grid != self.grid:  # another input size than the one the embeddings were learned for
            pos = resize_pos_embed(pos, grid, self.grid)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + pos
        if self.uses_camera and cams is not None:
            cams = torch.as_tensor(cams, device=tokens.device).long().reshape(-1)
            if (
                # torch documents torch.jit.is_tracing as public, but leaves it out of torch.jit.__all__
                not torch.jit.is_tracing()  # type: ignore[attr-defined]
                and cams.numel()
                and (int(cams.min()) < 0 or int(cams.max()) >= self.num_cameras)
            ):
                raise ReIDError(
                    f"camera ids must be in [0, {self.num_cameras - 1}] for this SIE model "
                    f"(model.num_cameras={self.num_cameras}), got {cams.tolist()[:8]}"
                )
            tokens = tokens + self.sie_lambda * self.sie_embed[cams]
        return tokens

    def forward_tokens(
        self, x: torch.Tensor, cams: torch.Tensor | None = None, depth: int | None = None
    ) -> torch.Tensor:
        """All tokens ``B x (1 + gh*gw) x C`` after the first ``depth`` blocks (all by default), not normed."""
        tokens = self.embed(x, cams)
        for blk in self.blocks[:depth]:
            tokens = blk(tokens)
        return tokens

    def forward_features(self, x: torch.Tensor, cams: torch.Tensor | None = None) -> torch.Tensor:
        """The final-normed class token as ``B x C x 1 x 1``."""
        cls = self.norm(self.forward_tokens(x, cams))[:, 0]
        return cast(torch.Tensor, cls[:, :, None, None])

    def forward(self, x: torch.Tensor, cams: torch.Tensor | None = None) -> torch.Tensor:
        """Same as ``forward_features``."""
        return self.forward_features(x, cams)

    def adapt_state_dict(self, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fit a timm-layout state dict to this model: drop classifier heads, resize ``pos_embed``.

        A stored grid equal in size to this model's is taken as this grid; otherwise the
        stored grid must be square (ImageNet checkpoints) and is resized by ``resize_pos_embed``.
        """
        out = {k: v for k, v in sd.items() if not k.startswith(_DROP_PREFIXES)}
        pe = out.get("pos_embed")
        if isinstance(pe, torch.Tensor) and pe.dim() == 3 and tuple(pe.shape) != tuple(self.pos_embed.shape):
            if pe.shape[-1] != self.embed_dim:
                raise ReIDError(
                    f"pretrained weights: pos_embed has width {pe.shape[-1]}, this model "
                    f"{self.embed_dim} (wrong ViT size for this file?)"
                )
            out["pos_embed"] = resize_pos_embed(pe, self.grid)
        return out


_SIZES = {
    "vit_small_patch16": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16": dict(embed_dim=768, depth=12, num_heads=12),
}


def build_vit(
    variant: str,
    last_stride: int = 1,
    img_size: tuple[int, int] | list[int] = (256, 128),
    stride_size: int = 16,
    sie: bool = False,
    num_cameras: int = 0,
    sie_lambda: float = 3.0,
    drop_path: float = 0.0,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> VisionTransformer:
    """Build a registered ViT size; ``last_stride`` does not apply to ViTs and is ignored."""
    size = _SIZES[variant]
    model = VisionTransformer(
        embed_dim=size["embed_dim"],
        depth=size["depth"],
        num_heads=size["num_heads"],
        img_size=(int(img_size[0]), int(img_size[1])),
        stride_size=int(stride_size),
        sie=bool(sie),
        num_cameras=int(num_cameras),
        sie_lambda=float(sie_lambda),
        drop_path=float(drop_path),
    )
    model.mean, model.std = tuple(mean), tuple(std)
    return model


def vit_small_patch16(**kwargs: Any) -> VisionTransformer:
    """ViT-S/16 (384 wide, 6 heads): DeiT-S ImageNet weights (ImageNet normalisation)."""
    return build_vit("vit_small_patch16", **kwargs)


def vit_base_patch16(**kwargs: Any) -> VisionTransformer:
    """ViT-B/16 (768 wide, 12 heads): the JAX ImageNet-21k->1k weights TransReID starts from ([-1, 1] inputs)."""
    kwargs.setdefault("mean", INCEPTION_MEAN)
    kwargs.setdefault("std", INCEPTION_STD)
    return build_vit("vit_base_patch16", **kwargs)
