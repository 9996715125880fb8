"""Heads on top of a backbone's feature map: pooling, necks (BNNeck, embedding) and classifiers.

A head maps ``B x C x h x w`` to, in training, ``{"feat": metric-loss feature, "logits": ID
logits}`` and, in eval, one ``B x D`` inference feature.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from reidkit.errors import ReIDError

POOLINGS = ("avg", "max", "gem", "avgmax")
NECKS = ("bnneck", "none", "embedding", "fc")
NECK_FEATS = ("after", "before")
# Outputs a caller can ask a head for (``forward_head(fmap, which=...)``).
HEAD_OUTPUTS = ("after", "before", "logits", "pooled")
CLASSIFIERS = ("linear", "arcface", "cosface", "circle")


def check_choice(key: str, value: object, valid: tuple[str, ...]) -> None:
    """Raise ReIDError naming ``key`` when ``value`` is not one of ``valid``."""
    if value not in valid:
        raise ReIDError(f"{key}: unknown value {value!r}; expected one of {', '.join(valid)}")


# ----------------------------------------------------------------------------- pooling


class GeM(nn.Module):
    """Generalised-mean pooling (Radenovic et al.): (mean x^p)^(1/p), p learnable (init 3)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True) -> None:
        super().__init__()
        if p <= 0:
            raise ReIDError(f"gem_p: must be > 0, got {p}")
        self.p = nn.Parameter(torch.full((1,), float(p)), requires_grad=learn_p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``B x C x h x w`` to ``B x C``."""
        # Clamping keeps x^p and its gradient finite for zero/negative activations.
        pooled = F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1)
        return pooled.pow(1.0 / self.p).flatten(1)


class AvgMaxPool(nn.Module):
    """Average + max pooling; ``mode="sum"`` keeps C channels, ``mode="concat"`` gives 2C."""

    def __init__(self, mode: str = "sum") -> None:
        super().__init__()
        check_choice("avgmax mode", mode, ("sum", "concat"))
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``B x C x h x w`` to ``B x C`` (sum) or ``B x 2C`` (concat)."""
        avg = F.adaptive_avg_pool2d(x, 1).flatten(1)
        mx = F.adaptive_max_pool2d(x, 1).flatten(1)
        return avg + mx if self.mode == "sum" else torch.cat([avg, mx], dim=1)


class GlobalPool(nn.Module):
    """Global average or max pooling to ``B x C``."""

    def __init__(self, kind: str = "avg") -> None:
        super().__init__()
        check_choice("pooling", kind, ("avg", "max"))
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``B x C x h x w`` to ``B x C``."""
        if self.kind == "avg":
            return F.adaptive_avg_pool2d(x, 1).flatten(1)
        return F.adaptive_max_pool2d(x, 1).flatten(1)


def build_pooling(name: str, gem_p: float = 3.0) -> nn.Module:
    """Pooling module by name: avg, max, gem, avgmax (the sum of avg and max, C channels)."""
    check_choice("model.pooling", name, POOLINGS)
    if name == "gem":
        return GeM(gem_p)
    if name == "avgmax":
        return AvgMaxPool("sum")
    return GlobalPool(name)


# ----------------------------------------------------------------------------- classifiers


class LinearClassifier(nn.Module):
    """Bias-free linear classifier (BoT), weights ~ N(0, init_std) (BoT 0.001); labels are ignored."""

    def __init__(self, in_dim: int, num_classes: int, init_std: float = 0.001, bias: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes, bias=bias)
        nn.init.normal_(self.fc.weight, std=init_std)
        if bias:  # torchreid's classifier has a bias (zero-initialised)
            nn.init.zeros_(self.fc.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The ``num_classes x in_dim`` weight matrix."""
        return self.fc.weight

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``B x num_classes``."""
        return cast(torch.Tensor, self.fc(x))


class _CosineClassifier(nn.Module):
    """Shared part of margin classifiers: cosine between normalised features and class weights."""

    def __init__(self, in_dim: int, num_classes: int, scale: float, margin: float) -> None:
        super().__init__()
        if scale <= 0:
            raise ReIDError(f"model.cls_scale: must be > 0, got {scale}")
        if margin < 0:
            raise ReIDError(f"model.cls_margin: must be >= 0, got {margin}")
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        nn.init.normal_(self.weight, std=0.001)
        self.scale = float(scale)
        self.margin = float(margin)

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``B x num_classes`` between features and class weights."""
        # float32 even under autocast: the margin maths (sqrt(1 - cos^2)) underflows in fp16.
        return F.linear(F.normalize(x.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def _one_hot(self, labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels.long(), like.shape[1]).to(like.dtype)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled logits; the margin is applied to the target class when labels are given."""
        cos = self.cosine(x)
        if labels is None:
            if self.training:
                raise ReIDError(
                    f"model.classifier: {type(self).__name__} needs the labels in training; call model(images, labels)"
                )
            return self.scale * cos
        return self.margin_logits(cos, labels)

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ArcFace(_CosineClassifier):
    """Additive angular margin (Deng et al. 2019): target logit s*cos(theta+m), others s*cos."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        scale: float = 30.0,
        margin: float = 0.35,
        easy_margin: bool = False,
    ) -> None:
        super().__init__(in_dim, num_classes, scale, margin)
        self.easy_margin = easy_margin
        self.cos_m = math.cos(margin)
        self.sin_m = math.sin(margin)
        # Beyond theta = pi - m, cos(theta+m) stops decreasing in theta; ArcFace switches to a
        # linear penalty cos(theta) - m*sin(m) there so the target logit stays monotone.
        self.th = math.cos(math.pi - margin)
        self.mm = math.sin(math.pi - margin) * margin

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits with cos(theta+m) on the target class (easy-margin/threshold handled)."""
        # Clamp before sqrt: sin is 0 at |cos|=1 and its gradient would be infinite there.
        sin = (1.0 - cos.pow(2)).clamp(min=1e-12).sqrt()
        phi = cos * self.cos_m - sin * self.sin_m
        if self.easy_margin:
            phi = torch.where(cos > 0, phi, cos)
        else:
            phi = torch.where(cos > self.th, phi, cos - self.mm)
        one_hot = self._one_hot(labels, cos)
        return self.scale * (one_hot * phi + (1.0 - one_hot) * cos)


class CosFace(_CosineClassifier):
    """Large-margin cosine (Wang et al. 2018): target logit s*(cos - m), others s*cos."""

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits with the cosine margin on the target class."""
        return self.scale * (cos - self.margin * self._one_hot(labels, cos))


class CircleClassifier(_CosineClassifier):
    """Circle loss, classification form (Sun et al. 2020) with self-paced weights alpha.

    Target: s*alpha_p*(cos - (1-m)), alpha_p = [1 + m - cos]_+; others: s*alpha_n*(cos - m),
    alpha_n = [cos + m]_+; alphas are treated as constants (no gradient) as in the paper.
    """

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Circle logits; cross-entropy on them is the circle loss."""
        m = self.margin
        alpha_p = (1.0 + m - cos.detach()).clamp(min=0.0)
        alpha_n = (cos.detach() + m).clamp(min=0.0)
        s_p = self.scale * alpha_p * (cos - (1.0 - m))
        s_n = self.scale * alpha_n * (cos - m)
        one_hot = self._one_hot(labels, cos)
        return one_hot * s_p + (1.0 - one_hot) * s_n


def build_classifier(
    name: str,
    in_dim: int,
    num_classes: int,
    scale: float = 30.0,
    margin: float = 0.35,
    init_std: float = 0.001,
    bias: bool = False,
) -> nn.Module:
    """Classifier by name: linear, arcface, cosface, circle; all called as ``clf(x, labels)``."""
    check_choice("model.classifier", name, CLASSIFIERS)
    if num_classes < 1:
        raise ReIDError(f"num_classes: must be >= 1, got {num_classes}")
    if not init_std > 0:
        raise ReIDError(f"model.cls_init_std: must be > 0, got {init_std}")
    if name == "linear":
        return LinearClassifier(in_dim, num_classes, init_std, bias)
    cls: type[ArcFace | CosFace | CircleClassifier] = {
        "arcface": ArcFace,
        "cosface": CosFace,
        "circle": CircleClassifier,
    }[name]
    return cls(in_dim, num_classes, scale=scale, margin=margin)


# ----------------------------------------------------------------------------- necks


class BNNeck(nn.Module):
    """BoT BNNeck: BatchNorm1d with its bias frozen at zero (weight 1, bias 0)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        # A shift would move every feature away from the origin; BoT freezes it so the
        # cosine-distance inference feature stays centred.
        self.bn.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``B x D`` features."""
        return cast(torch.Tensor, self.bn(x))


class EmbeddingHead(nn.Module):
    """The older experiments' head: fc hidden -> BN -> ReLU -> [dropout] -> fc D (Kaiming init)."""

    def __init__(self, in_dim: int, hidden: int = 1024, out_dim: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden < 1 or out_dim < 1:
            raise ReIDError(f"model.embedding_hidden/embedding_dim: must be >= 1, got {hidden}/{out_dim}")
        self.fc1 = nn.Linear(in_dim, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc2 = nn.Linear(hidden, out_dim)
        nn.init.kaiming_normal_(self.fc1.weight, nonlinearity="relu")
        nn.init.zeros_(self.fc1.bias)
        nn.init.kaiming_normal_(self.fc2.weight, nonlinearity="linear")
        nn.init.zeros_(self.fc2.bias)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``B x in_dim`` to ``B x out_dim``."""
        return cast(torch.Tensor, self.fc2(self.dropout(self.relu(self.bn(self.fc1(x))))))


class FCNeck(nn.Module):
    """torchreid's embedding (OSNet ``fc``): Linear -> BatchNorm1d -> ReLU, Linear ~ N(0, 0.01), zero bias."""

    def __init__(self, in_dim: int, out_dim: int = 512) -> None:
        super().__init__()
        if out_dim < 1:
            raise ReIDError(f"model.embedding_dim: must be >= 1, got {out_dim}")
        self.fc = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.relu = nn.ReLU(inplace=True)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``B x in_dim`` to ``B x out_dim``."""
        return cast(torch.Tensor, self.relu(self.bn(self.fc(x))))


class ReIDHead(nn.Module):
    """Pooling + neck + classifier on a ``B x C x h x w`` feature map.

    Training returns ``{"feat", "logits"}`` (``feat`` is the metric-loss feature: pre-BN for
    BNNeck, the embedding for the embedding neck, the pooled feature with no neck); eval returns
    the inference feature (BNNeck: post-BN when ``neck_feat="after"``, pre-BN when "before").
    ``dropout`` acts inside the embedding head, and before the classifier for the other necks.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        pooling: str = "avg",
        gem_p: float = 3.0,
        neck: str = "bnneck",
        neck_feat: str = "after",
        embedding_dim: int = 128,
        embedding_hidden: int = 1024,
        dropout: float = 0.0,
        classifier: str = "linear",
        cls_scale: float = 30.0,
        cls_margin: float = 0.35,
        cls_init_std: float = 0.001,
        cls_bias: bool = False,
    ) -> None:
        super().__init__()
        check_choice("model.neck", neck, NECKS)
        check_choice("model.neck_feat", neck_feat, NECK_FEATS)
        if not 0.0 <= dropout < 1.0:
            raise ReIDError(f"model.dropout: must be in [0, 1), got {dropout}")
        self.pool = build_pooling(pooling, gem_p)
        self.neck_type = neck
        self.neck_feat = neck_feat
        dim = in_channels
        if neck == "bnneck":
            self.neck: nn.Module = BNNeck(dim)
            self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        elif neck == "embedding":
            self.neck = EmbeddingHead(dim, embedding_hidden, embedding_dim, dropout)
            self.dropout = nn.Identity()
            dim = embedding_dim
        elif neck == "fc":
            self.neck = FCNeck(dim, embedding_dim)
            self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
            dim = embedding_dim
        else:
            self.neck = nn.Identity()
            self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.feat_dim = dim
        self.classifier = build_classifier(classifier, dim, num_classes, cls_scale, cls_margin, cls_init_std, cls_bias)

    def pool_features(self, fmap: torch.Tensor) -> torch.Tensor:
        """The pooled ``B x C`` feature of a (possibly partial) ``B x C x h x w`` map."""
        return cast(torch.Tensor, self.pool(fmap))

    def forward_head(
        self, fmap: torch.Tensor, which: str = "after", labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One output chosen by ``which`` (see ``HEAD_OUTPUTS``), in the module's current mode.

        "pooled": the pooled feature; "before": the metric-loss feature (pooled for BNNeck and
        no neck, the embedding for the embedding neck); "after": the inference feature after the
        neck (BNNeck output; the embedding; the pooled feature with no neck); "logits": the ID
        logits (margin classifiers need ``labels`` in training).
        """
        check_choice("which", which, HEAD_OUTPUTS)
        # nn.Module.__call__ is typed Any; pool, neck and classifier map tensors to tensors
        pooled = cast(torch.Tensor, self.pool(fmap))
        if which == "pooled":
            return pooled
        if self.neck_type == "bnneck":
            if which == "before":
                return pooled
            after = cast(torch.Tensor, self.neck(pooled))
            if which == "after":
                return after
            return cast(torch.Tensor, self.classifier(self.dropout(after), labels))
        feat = cast(torch.Tensor, self.neck(pooled))
        if which in ("before", "after"):
            return feat
        return cast(torch.Tensor, self.classifier(self.dropout(feat), labels))

    def forward(self, fmap: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor] | torch.Tensor:
        """Training: ``{"feat", "logits"}``; eval: the ``B x feat_dim`` inference feature (``neck_feat``)."""
        if not self.training:
            return self.forward_head(fmap, self.neck_feat)
        pooled = self.pool(fmap)
        if self.neck_type == "bnneck":
            after = self.neck(pooled)
            return {"feat": pooled, "logits": self.classifier(self.dropout(after), labels)}
        feat = self.neck(pooled)
        return {"feat": feat, "logits": self.classifier(self.dropout(feat), labels)}
