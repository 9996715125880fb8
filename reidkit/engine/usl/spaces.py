"""Feature spaces of a model for clustering: global (pool + neck) and the upper/lower halves (SSG).

:class:`SpaceModel` is the training forward of the cluster trainer: an ``nn.Module`` (so DDP and
``torch.compile`` wrap it) mapping images to ``{space: B x D}``. :func:`extract_spaces` computes
the L2-normalised features of every training image in eval mode, sharded across torchrun ranks
and gathered in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from reidkit.models.build import ReIDModel

__all__ = ["SpaceModel", "extract_spaces", "space_features"]


def _pool(net: ReIDModel, fmap: torch.Tensor, which: str) -> torch.Tensor:
    return net.forward_head(fmap, which=which)


def space_features(net: ReIDModel, fmap: torch.Tensor, spaces: list[str], neck_after: bool) -> dict[str, torch.Tensor]:
    """Features of each space from a backbone feature map (global: pool + neck, parts: pooled halves)."""
    out: dict[str, torch.Tensor] = {"global": _pool(net, fmap, "after" if neck_after else "before")}
    h = fmap.shape[2]
    if "upper" in spaces or "lower" in spaces:
        # Rounding the split towards the top gives the lower half the odd row, as SSG's slicing.
        mid = max(1, h // 2)
        if "upper" in spaces:
            out["upper"] = _pool(net, fmap[:, :, :mid], "pooled")
        if "lower" in spaces:
            out["lower"] = _pool(net, fmap[:, :, mid:] if h > 1 else fmap, "pooled")
    return out


class SpaceModel(nn.Module):
    """``images -> {space: B x D}`` around a ReID model (the module DDP wraps in USL training)."""

    def __init__(self, net: ReIDModel, spaces: list[str], neck_after: bool) -> None:
        super().__init__()
        self.net = net
        self.spaces = list(spaces)
        self.neck_after = neck_after

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.net.forward_features(x)
        return space_features(self.net, fmap, self.spaces, self.neck_after)


@torch.no_grad()
def extract_spaces(
    net: ReIDModel,
    images: np.ndarray,
    spaces: list[str],
    device: torch.device,
    mean: list[float],
    std: list[float],
    neck_after: bool = True,
    batch_size: int = 128,
    distributed: bool = False,
    autocast: Any = None,
) -> dict[str, torch.Tensor]:
    """L2-normalised N x D features (CPU) of each space for uint8 NHWC images (eval mode, no flip).

    Goes through the one inference path (``reidkit.inference.FeatureExtractor``) with the
    :class:`SpaceModel` as the model. With ``distributed`` (an initialised process group) each rank
    extracts its contiguous shard and every rank receives all features in the original order.
    """
    from reidkit.inference import FeatureExtractor

    model = SpaceModel(net, spaces, neck_after)
    fx = FeatureExtractor.from_model(model, device=device, size=images.shape[1:3], mean=mean, std=std)
    was = net.training
    try:
        out = fx.embed_tensor(
            images, flip=False, batch_size=batch_size, normalize=True, distributed=distributed, autocast=autocast
        )
    finally:
        net.train(was)
    return {k: out[k].cpu() for k in spaces}
