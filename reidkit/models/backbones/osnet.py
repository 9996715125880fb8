"""OSNet and OSNet-AIN (omni-scale networks), in torchreid's parameter layout.

Zhou et al., "Omni-Scale Feature Learning for Person Re-Identification", ICCV 2019, and
"Learning Generalisable Omni-Scale Representations for Person Re-Identification", TPAMI 2021
(OSNet-AIN); reference code: torchreid (github.com/KaiyangZhou/deep-person-reid).

An omni-scale block reduces the channels 4x (``conv1``), runs T = 4 streams of 1..4 stacked
"lite" 3x3 convolutions (1x1 pointwise then 3x3 depthwise, so stream t sees a receptive field of
2t+1), fuses the streams with one shared channel gate (global pooling -> bottleneck MLP ->
sigmoid, ``gate``: the aggregation gate, the same weights for every stream) and expands back
(``conv3``, linear), with a residual (projected by ``downsample`` when the width changes).
The network: 7x7 stem (stride 2) + 3x3 max pool, three stages of two blocks with a 1x1 conv +
2x2 average pool transition after the first two, and a final 1x1 conv (``conv5``). torchreid's
global pool, ``fc`` (512-d embedding) and ``classifier`` are not part of this backbone: reidkit's
head replaces them (their keys are dropped on load). ``forward_features`` gives the ``conv5``
map, ``B x C x H/16 x W/16`` (C = 512 for x1_0; channels scale with the width multiplier).

Layouts: OSNet (ICCV) numbers the stage modules ``conv2.{0,1,2}`` (the transition is the
third element) and the four streams ``conv2a..conv2d``; OSNet-AIN (TPAMI) has separate
``pool2``/``pool3`` transitions, the streams as ``conv2.{0..3}.layers``, instance norm in the stem,
and blocks with an instance norm inside the residual branch (``IN``) at the positions found by
its architecture search. Weights: torchreid's ImageNet releases (Google Drive, so no default URL:
download them and pass the local file, e.g. ``model.pretrained=osnet_x1_0_imagenet.pth``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Stage widths (stem, stage 2, 3, 4) per width multiplier, as torchreid.
WIDTHS = {
    "x1_0": (64, 256, 384, 512),
    "x0_75": (48, 192, 288, 384),
    "x0_5": (32, 128, 192, 256),
    "x0_25": (16, 64, 96, 128),
}


class ConvLayer(nn.Module):
    """conv (no bias) -> BatchNorm (or affine InstanceNorm) -> ReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        instance_norm: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False, groups=groups)
        self.bn = nn.InstanceNorm2d(cout, affine=True) if instance_norm else nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(bn(conv(x)))."""
        return cast(torch.Tensor, self.relu(self.bn(self.conv(x))))


class Conv1x1(ConvLayer):
    """1x1 conv + BN + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(cin, cout, 1, stride=stride)


class Conv1x1Linear(nn.Module):
    """1x1 conv + BN (optional), no activation: the block's expansion and the residual projection."""

    def __init__(self, cin: int, cout: int, bn: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """bn(conv(x))."""
        x = self.conv(x)
        return x if self.bn is None else self.bn(x)


class LightConv3x3(nn.Module):
    """Lite 3x3: pointwise 1x1 then depthwise 3x3, BN, ReLU (``conv1``, ``conv2``, ``bn``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False, groups=cout)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(bn(depthwise(pointwise(x))))."""
        return cast(torch.Tensor, self.relu(self.bn(self.conv2(self.conv1(x)))))


class ChannelGate(nn.Module):
    """Aggregation gate: global average -> fc1 (C/16) -> ReLU -> fc2 (C) -> sigmoid, scaling the input."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x * sigmoid(mlp(mean(x)))."""
        g = self.fc2(self.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(g)


class OSBlock(nn.Module):
    """Omni-scale residual block of OSNet (ICCV 2019): streams ``conv2a..conv2d`` of depth 1..4."""

    def __init__(self, cin: int, cout: int, reduction: int = 4) -> None:
        super().__init__()
        mid = cout // reduction
        self.conv1 = Conv1x1(cin, mid)
        self.conv2a = LightConv3x3(mid, mid)
        self.conv2b = nn.Sequential(*[LightConv3x3(mid, mid) for _ in range(2)])
        self.conv2c = nn.Sequential(*[LightConv3x3(mid, mid) for _ in range(3)])
        self.conv2d = nn.Sequential(*[LightConv3x3(mid, mid) for _ in range(4)])
        self.gate = ChannelGate(mid)
        self.conv3 = Conv1x1Linear(mid, cout)
        self.downsample = Conv1x1Linear(cin, cout) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(conv3(sum_t gate(stream_t(conv1(x)))) + residual)."""
        x1 = self.conv1(x)
        x2 = sum(self.gate(s(x1)) for s in (self.conv2a, self.conv2b, self.conv2c, self.conv2d))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv3(x2) + identity)


class LightConvStream(nn.Module):
    """``depth`` stacked lite 3x3 convolutions (OSNet-AIN's stream, ``layers``)."""

    def __init__(self, cin: int, cout: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(LightConv3x3(cin, cout), *[LightConv3x3(cout, cout) for _ in range(depth - 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stacked convolutions."""
        return cast(torch.Tensor, self.layers(x))


class OSBlockAIN(nn.Module):
    """OSNet-AIN block; with ``instance_norm`` the expansion has no BN and an IN (``IN``) follows it."""

    def __init__(self, cin: int, cout: int, instance_norm: bool = False, reduction: int = 4, streams: int = 4) -> None:
        super().__init__()
        mid = cout // reduction
        self.conv1 = Conv1x1(cin, mid)
        self.conv2 = nn.ModuleList([LightConvStream(mid, mid, t) for t in range(1, streams + 1)])
        self.gate = ChannelGate(mid)
        self.conv3 = Conv1x1Linear(mid, cout, bn=not instance_norm)
        self.downsample = Conv1x1Linear(cin, cout) if cin != cout else None
        self.IN = nn.InstanceNorm2d(cout, affine=True) if instance_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(norm(conv3(sum_t gate(stream_t(conv1(x))))) + residual)."""
        x1 = self.conv1(x)
        x2 = sum(self.gate(s(x1)) for s in self.conv2)
        x3 = self.conv3(x2)
        if self.IN is not None:
            x3 = self.IN(x3)
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(x3 + identity)


def _transition(c: int) -> nn.Sequential:
    return nn.Sequential(Conv1x1(c, c), nn.AvgPool2d(2, stride=2))


class _OSNetBase(nn.Module):
    """Shared init and the ReID feature contract (``out_channels``, ``mean``/``std``)."""

    forward_features: Callable[[torch.Tensor], torch.Tensor]  # each subclass defines its own

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as ``forward_features``."""
        return self.forward_features(x)


class OSNet(_OSNetBase):
    """OSNet (ICCV 2019) without its pool/fc/classifier; ``forward_features -> B x C x H/16 x W/16``."""

    def __init__(self, widths: tuple[int, int, int, int] = WIDTHS["x1_0"]) -> None:
        super().__init__()
        c0, c1, c2, c3 = widths
        self.conv1 = ConvLayer(3, c0, 7, stride=2, padding=3)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Sequential(OSBlock(c0, c1), OSBlock(c1, c1), _transition(c1))
        self.conv3 = nn.Sequential(OSBlock(c1, c2), OSBlock(c2, c2), _transition(c2))
        self.conv4 = nn.Sequential(OSBlock(c2, c3), OSBlock(c3, c3))
        self.conv5 = Conv1x1(c3, c3)
        self.out_channels = c3
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``conv5`` feature map."""
        x = self.maxpool(self.conv1(x))
        return cast(torch.Tensor, self.conv5(self.conv4(self.conv3(self.conv2(x)))))


# Which OSNet-AIN x1_0 blocks carry the residual instance norm (torchreid's searched architecture).
AIN_BLOCKS = ((True, True), (False, True), (True, False))


class OSNetAIN(_OSNetBase):
    """OSNet-AIN (TPAMI 2021) without its pool/fc/classifier; ``forward_features -> B x C x H/16 x W/16``."""

    def __init__(
        self, widths: tuple[int, int, int, int] = WIDTHS["x1_0"], blocks: tuple[tuple[bool, bool], ...] = AIN_BLOCKS
    ) -> None:
        super().__init__()
        c0, c1, c2, c3 = widths
        self.conv1 = ConvLayer(3, c0, 7, stride=2, padding=3, instance_norm=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = self._stage(c0, c1, blocks[0])
        self.pool2 = _transition(c1)
        self.conv3 = self._stage(c1, c2, blocks[1])
        self.pool3 = _transition(c2)
        self.conv4 = self._stage(c2, c3, blocks[2])
        self.conv5 = Conv1x1(c3, c3)
        self.out_channels = c3
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self._init_weights()

    @staticmethod
    def _stage(cin: int, cout: int, ins: tuple[bool, ...]) -> nn.Sequential:
        return nn.Sequential(*[OSBlockAIN(cin if i == 0 else cout, cout, use_in) for i, use_in in enumerate(ins)])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``conv5`` feature map."""
        x = self.maxpool(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.pool3(self.conv3(x))
        return cast(torch.Tensor, self.conv5(self.conv4(x)))


def osnet(width: str, last_stride: int = 1) -> OSNet:
    """OSNet at a width multiplier (``x1_0``, ``x0_75``, ``x0_5``, ``x0_25``); ``last_stride`` does not apply."""
    return OSNet(WIDTHS[width])


def osnet_ain_x1_0(last_stride: int = 1) -> OSNetAIN:
    """OSNet-AIN x1_0; ``last_stride`` does not apply (the last stage never downsamples)."""
    return OSNetAIN(WIDTHS["x1_0"])
