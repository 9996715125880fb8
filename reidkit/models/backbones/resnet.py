"""ResNet / ResNeXt backbones with optional squeeze-excitation and IBN-a / IBN-b normalisation.

Attribute names and the state-dict layout follow torchvision (conv1, bn1, relu, maxpool,
layer1..layer4; blocks with conv1..3, bn1..3, downsample), so torchvision ImageNet checkpoints
load by name and MGN can split the stages. IBN layers use the IBN-Net release layout
(`bn1.IN.*` / `bn1.BN.*`, block-level `IN.*`), SE layers `se.fc.0` / `se.fc.2`, so the
IBN-Net ImageNet releases load by name too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from reidkit.errors import ReIDError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class IBN(nn.Module):
    """Instance-Batch Normalisation (IBN-Net, Pan et al. 2018): IN on the first half of the channels, BN on the rest."""

    def __init__(self, planes: int, ratio: float = 0.5) -> None:
        super().__init__()
        # (not `self.half`: that name is nn.Module.half(), which an int attribute would shadow)
        self.in_planes = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.in_planes, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.in_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the two channel groups separately and concatenate them back."""
        a, b = torch.split(x, [self.in_planes, x.shape[1] - self.in_planes], dim=1)
        return torch.cat((self.IN(a.contiguous()), self.BN(b.contiguous())), dim=1)


class SELayer(nn.Module):
    """Squeeze-and-excitation channel gate (Hu et al. 2018), reduction 16, bias-free as in IBN-Net's SE models."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale each channel by a gate computed from its global average."""
        w = self.fc(x.mean(dim=(2, 3)))
        return cast(torch.Tensor, x * w[:, :, None, None])


def _norm1(planes: int, ibn: str | None) -> nn.Module:
    return IBN(planes) if ibn == "a" else nn.BatchNorm2d(planes)


class _Block(nn.Module):
    """What both residual blocks share: the arguments, the optional SE gate on the residual branch before the
    addition (Hu et al., fig. 3), IBN-b's IN after the addition (it keeps the identity path's style statistics
    out of later layers; Pan et al. 2018) and the final ReLU. A subclass builds and runs its branch."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        ibn: str | None = None,
        in_after_add: bool = False,
        se: bool = False,
    ) -> None:
        super().__init__()
        self._build(inplanes, planes, stride, groups, base_width, ibn)
        self.relu = nn.ReLU(inplace=True)
        self.se = SELayer(planes * self.expansion) if se else None
        self.IN = nn.InstanceNorm2d(planes * self.expansion, affine=True) if in_after_add else None
        self.downsample = downsample
        self.stride = stride

    def _build(self, inplanes: int, planes: int, stride: int, groups: int, base_width: int, ibn: str | None) -> None:
        raise NotImplementedError

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block forward."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self._branch(x)
        if self.se is not None:
            out = self.se(out)
        out = out + identity
        if self.IN is not None:
            out = self.IN(out)
        return cast(torch.Tensor, self.relu(out))


class BasicBlock(_Block):
    """Two 3x3 convolutions with a residual (ResNet-18/34)."""

    expansion = 1

    def _build(self, inplanes: int, planes: int, stride: int, groups: int, base_width: int, ibn: str | None) -> None:
        if groups != 1 or base_width != 64:
            raise ReIDError("BasicBlock supports only groups=1 and base_width=64 (use Bottleneck for ResNeXt)")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = _norm1(planes, ibn)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class Bottleneck(_Block):
    """1x1 - 3x3 (grouped for ResNeXt, carries the stride as in torchvision) - 1x1 block with a residual."""

    expansion = 4

    def _build(self, inplanes: int, planes: int, stride: int, groups: int, base_width: int, ibn: str | None) -> None:
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = _norm1(width, ibn)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return cast(torch.Tensor, self.bn3(self.conv3(out)))


class ResNet(nn.Module):
    """ResNet/ResNeXt feature extractor (no pooling, no classifier) with SE and IBN-a/IBN-b switches."""

    # the four stages, set by name in __init__ (torchvision's attribute names, so its weights load)
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        *,
        groups: int = 1,
        width_per_group: int = 64,
        ibn: str | None = None,
        se: bool = False,
        last_stride: int = 1,
    ) -> None:
        super().__init__()
        if ibn not in (None, "a", "b"):
            raise ReIDError(f"ibn must be None, 'a' or 'b', got {ibn!r}")
        if last_stride not in (1, 2):
            raise ReIDError(f"last_stride must be 1 or 2, got {last_stride!r}")
        self.ibn = ibn
        self.last_stride = last_stride
        self.groups = groups
        self.base_width = width_per_group
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        # IBN-b normalises the stem with IN (affine) instead of BN, as in the IBN-Net release.
        self.bn1 = nn.InstanceNorm2d(64, affine=True) if ibn == "b" else nn.BatchNorm2d(64)
        self.relu: nn.Module = nn.ReLU(inplace=True)  # nn.Module: interop may swap in nn.Identity
        self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        # IBN-a: IBN in every block of layer1-3 (layer4 stays BN for discrimination);
        # IBN-b: IN after the addition of the last block of layer1 and layer2.
        stage_ibn = ("a", "a", "a", None) if ibn == "a" else (None,) * 4
        stage_in = (True, True, False, False) if ibn == "b" else (False,) * 4
        strides = (1, 2, 2, last_stride)
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            stage = self._make_layer(block, planes, n, strides[i], stage_ibn[i], stage_in[i], se)
            setattr(self, f"layer{i + 1}", stage)
        self.out_channels = 512 * block.expansion
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD
        self._init_weights()

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int,
        ibn: str | None,
        in_last: bool,
        se: bool,
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = []
        for i in range(blocks):
            layers.append(
                block(
                    self.inplanes,
                    planes,
                    stride if i == 0 else 1,
                    downsample if i == 0 else None,
                    groups=self.groups,
                    base_width=self.base_width,
                    ibn=ibn,
                    in_after_add=in_last and i == blocks - 1,
                    se=se,
                )
            )
            self.inplanes = planes * block.expansion
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W image batch -> B x out_channels x H/16 x W/16 (last_stride=1) or H/32 x W/32."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return cast(torch.Tensor, self.layer4(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as forward_features."""
        return self.forward_features(x)


@dataclass(frozen=True)
class ResNetSpec:
    """Architecture of one named ResNet variant."""

    block: type[BasicBlock] | type[Bottleneck]
    layers: tuple[int, int, int, int]
    groups: int = 1
    width_per_group: int = 64
    ibn: str | None = None
    se: bool = False


_DEPTHS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def spec(
    depth: int, *, groups: int = 1, width_per_group: int = 64, ibn: str | None = None, se: bool = False
) -> ResNetSpec:
    """Architecture spec for a ResNet of the given depth with the chosen options."""
    block, layers = _DEPTHS[depth]
    return ResNetSpec(block, layers, groups, width_per_group, ibn, se)


def build_resnet(s: ResNetSpec, last_stride: int = 1) -> ResNet:
    """Instantiate a ResNet from its spec."""
    return ResNet(
        s.block,
        s.layers,
        groups=s.groups,
        width_per_group=s.width_per_group,
        ibn=s.ibn,
        se=s.se,
        last_stride=last_stride,
    )
