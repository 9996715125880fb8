"""Multiple Granularity Network (Wang et al., ACM MM 2018) on any ResNet-family backbone.

Shared trunk: stem + layer1..layer3[0]. Three branches, each with its own copy of
layer3[1:] + layer4: the global branch keeps layer4's stride 2, the two part branches use
stride 1. Each branch is max-pooled globally; the part branches are also max-pooled into
2 and 3 horizontal stripes. The 8 pooled features are each reduced to 256-d by
1x1 conv + BN + ReLU; each reduced feature has its own classifier. MGN always uses max
pooling, as published (``ModelConfig.pooling``, ``last_stride``, ``dropout`` and the neck
options do not apply). Training output: ``feat`` (the 8 reduced features concatenated, for
center loss), ``logits`` (the global branch's), ``feats`` (the 3 global reduced features, for
triplet) and ``logits_list`` (8); eval output: the concatenated ``B x 8*256`` feature.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from reidkit.errors import ReIDError
from reidkit.models.heads import build_classifier, check_choice

RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
MGN_STRIPES = (1, 2, 3)  # stripes of the global, part-2 and part-3 branches (besides globals)


def _check_resnet(backbone: nn.Module, name: str) -> None:
    missing = [p for p in RESNET_PARTS if not hasattr(backbone, p)]
    if missing or len(list(backbone.get_submodule("layer3").children())) < 2:
        raise ReIDError(
            f"model.backbone: MGN needs a ResNet-family backbone (attributes {', '.join(RESNET_PARTS)}"
            f" and at least 2 blocks in layer3); {name!r} does not qualify"
        )


class MGNTrunk(nn.Module):
    """Shared stem + three branch copies; ``forward_features`` returns the 3 branch maps."""

    def __init__(self, global_bb: nn.Module, part_bb: nn.Module) -> None:
        super().__init__()
        part = global_bb.get_submodule  # a ResNet-family backbone's parts (_check_resnet)
        self.stem = nn.Sequential(*(part(p) for p in RESNET_PARTS[:6]), part("layer3.0"))
        rest3 = nn.Sequential(*list(part("layer3").children())[1:])
        layer4, part_layer4 = part("layer4"), part_bb.get_submodule("layer4")
        self.branch_global = nn.Sequential(copy.deepcopy(rest3), copy.deepcopy(layer4))
        self.branch_p2 = nn.Sequential(copy.deepcopy(rest3), copy.deepcopy(part_layer4))
        self.branch_p3 = nn.Sequential(copy.deepcopy(rest3), copy.deepcopy(part_layer4))
        self.out_channels = int(getattr(global_bb, "out_channels"))

    def forward_features(self, x: torch.Tensor, cams: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Three feature maps: global (stride-2 layer4), part-2 and part-3 (stride 1)."""
        shared = self.stem(x)
        return [self.branch_global(shared), self.branch_p2(shared), self.branch_p3(shared)]


class MGNHead(nn.Module):
    """Max pooling (globals + 2/3 stripes), 8 reductions to ``reduce_dim`` and 8 classifiers."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        reduce_dim: int = 256,
        classifier: str = "linear",
        cls_scale: float = 30.0,
        cls_margin: float = 0.35,
    ) -> None:
        super().__init__()
        self.num_feats = 3 + sum(s for s in MGN_STRIPES if s > 1)
        self.reductions = nn.ModuleList([self._reduction(in_channels, reduce_dim) for _ in range(self.num_feats)])
        self.classifiers = nn.ModuleList(
            [
                build_classifier(classifier, reduce_dim, num_classes, cls_scale, cls_margin)
                for _ in range(self.num_feats)
            ]
        )
        self.feat_dim = reduce_dim * self.num_feats

    @staticmethod
    def _reduction(cin: int, cout: int) -> nn.Module:
        conv = nn.Conv2d(cin, cout, 1, bias=False)
        bn = nn.BatchNorm2d(cout)
        nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
        nn.init.ones_(bn.weight)
        nn.init.zeros_(bn.bias)
        return nn.Sequential(conv, bn, nn.ReLU(inplace=True))

    def _reduced(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The 8 reduced features: 3 globals first, then the 2 + 3 stripes."""
        if not isinstance(maps, (list, tuple)) or len(maps) != len(MGN_STRIPES):
            raise ReIDError(
                f"MGN head: expected the {len(MGN_STRIPES)} branch maps of forward_features, got {type(maps).__name__}"
            )
        pooled = [F.adaptive_max_pool2d(m, 1) for m in maps]  # 3 globals first
        for m, stripes in zip(maps, MGN_STRIPES):
            if stripes > 1:
                parts = F.adaptive_max_pool2d(m, (stripes, 1))
                pooled.extend(parts[:, :, i : i + 1] for i in range(stripes))
        return [red(p).flatten(1) for red, p in zip(self.reductions, pooled)]

    def forward_head(
        self, maps: list[torch.Tensor], which: str = "after", labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``"after"``/``"before"``: the concatenated feature (MGN has no neck); ``"logits"``: the global branch's."""
        check_choice("which", which, ("after", "before", "logits"))
        reduced = self._reduced(maps)
        if which == "logits":
            return cast(torch.Tensor, self.classifiers[0](reduced[0], labels))
        return torch.cat(reduced, dim=1)

    def forward(
        self, maps: list[torch.Tensor], labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | list[torch.Tensor]] | torch.Tensor:
        """Training: ``{"feat", "logits", "feats", "logits_list"}``; eval: the B x 2048 feature."""
        reduced = self._reduced(maps)
        feat = torch.cat(reduced, dim=1)
        if not self.training:
            return feat
        logits_list = [clf(f, labels) for clf, f in zip(self.classifiers, reduced)]
        return {"feat": feat, "logits": logits_list[0], "feats": reduced[:3], "logits_list": logits_list}


def build_mgn_parts(
    backbone_name: str,
    num_classes: int,
    pretrained: bool | str = False,
    classifier: str = "linear",
    cls_scale: float = 30.0,
    cls_margin: float = 0.35,
    reduce_dim: int = 256,
) -> tuple[MGNTrunk, MGNHead, list[float], list[float]]:
    """Build MGN's trunk and head from a registered ResNet-family backbone name."""
    from reidkit.models.backbones import build_backbone

    global_bb = build_backbone(backbone_name, pretrained=pretrained, last_stride=2)
    _check_resnet(global_bb, backbone_name)
    # Stride only changes the convolutions' hyper-parameters, not their weights, so the
    # stride-1 copy takes the (possibly pretrained) weights without loading them twice.
    part_bb = build_backbone(backbone_name, pretrained=False, last_stride=1)
    part_bb.load_state_dict(global_bb.state_dict())
    trunk = MGNTrunk(global_bb, part_bb)
    head = MGNHead(trunk.out_channels, num_classes, reduce_dim, classifier, cls_scale, cls_margin)
    mean = list(getattr(global_bb, "mean", (0.485, 0.456, 0.406)))
    std = list(getattr(global_bb, "std", (0.229, 0.224, 0.225)))
    return trunk, head, mean, std
