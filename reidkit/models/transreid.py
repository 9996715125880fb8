"""TransReID (He et al., ICCV 2021): a ViT with SIE and the jigsaw patch module (JPM).

Reference code: github.com/damo-cv/TransReID (``make_model.py``, ``build_transformer_local``).

The ViT backbone (``reidkit.models.backbones.vit``) runs all blocks but the last. The last
block is then used twice:

* **global branch**: the backbone's own last block and final norm (``backbone.vit.blocks[-1]``,
  ``backbone.vit.norm``) over all tokens; its class token is the global feature.
* **local branch (JPM)**: a copy of that block and norm (``backbone.local_block``,
  ``backbone.local_norm``, initialised from the same pretrained weights). The patch tokens are
  *shifted* and *shuffled*: as TransReID's ``shuffle_unit``, the sequence
  ``tokens[shift:] ++ tokens[1:shift]`` (so the class token drops out and the patches are
  rolled by ``shift - 1``) is cut into ``shuffle_groups`` equal parts that are interleaved
  (a transpose; when the count does not divide, the second-to-last token is repeated once).
  The result is split into ``k`` consecutive groups; each group, with the class token
  prepended, goes through the local block + norm, and its class token is that group's local
  feature. With k = 4 and a 211-token input, the groups hold 52 patches each (the remainder
  is left out, as TransReID does).

Every branch has its own BNNeck and ID classifier (``head.necks[i]``, ``head.classifiers[i]``;
index 0 is global). Training returns the dict protocol of multi-branch models:
``feat`` (pre-BN features of all branches concatenated), ``logits`` (global), ``feats`` (the
k + 1 pre-BN branch features: triplet on each) and ``logits_list`` (k + 1: ID loss on each).
reidkit's criterion averages each loss over the branches; TransReID weighs the global branch
0.5 and the mean of the local ones 0.5, which is the same when k = 1 and close otherwise.
Evaluation returns ``[global, local_1 / k, ..., local_k / k]`` concatenated (post-BN with
``neck_feat="after"``, pre-BN with ``"before"``), ``(k + 1) * C`` wide: 5 * 768 for ViT-B.

Parameter names, and TransReID's (for ``reidkit.models.interop``): ``backbone.vit.*`` = ``base.*``
(timm names; ``sie_embed``), except that the global branch ``b1.0.*`` / ``b1.1.*`` is
``backbone.vit.blocks.{depth-1}.*`` / ``backbone.vit.norm.*`` (TransReID's own ``base.blocks.{depth-1}``
and ``base.norm`` are unused with JPM) and the local branch ``b2.0.*`` / ``b2.1.*`` is
``backbone.local_block.*`` / ``backbone.local_norm.*``; ``bottleneck{,_1.._k}`` are
``head.necks.{0..k}.bn.*`` and ``classifier{,_1.._k}.weight`` are ``head.classifiers.{0..k}.fc.weight``.

Without JPM (``jpm=False``) the model is TransReID's plain ``build_transformer``: the
final-normed class token with one BNNeck and classifier.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
from torch import nn

from reidkit.errors import ReIDError
from reidkit.models.backbones.vit import VisionTransformer
from reidkit.models.heads import BNNeck, build_classifier, check_choice


def shuffle_tokens(tokens: torch.Tensor, shift: int, groups: int) -> torch.Tensor:
    """TransReID's shift + patch shuffle of ``B x (1 + N) x C`` tokens -> ``B x N' x C`` patch tokens."""
    b, _, c = tokens.shape
    shift = max(int(shift), 1)
    x = torch.cat([tokens[:, shift:], tokens[:, 1:shift]], dim=1)
    n = x.shape[1]
    if n % groups:
        # TransReID pads by repeating the second-to-last token (exact for its 2-group default).
        pad = groups - n % groups
        x = torch.cat([x] + [x[:, -2:-1]] * pad, dim=1)
    return x.reshape(b, groups, -1, c).transpose(1, 2).reshape(b, -1, c)


class TransReIDTrunk(nn.Module):
    """ViT + the JPM copy of its last block; ``forward_features`` returns the branch features ``B x (k+1) x C``."""

    def __init__(
        self, vit: VisionTransformer, jpm: bool = True, groups: int = 4, shift: int = 5, shuffle_groups: int = 2
    ) -> None:
        super().__init__()
        if groups < 1 or shuffle_groups < 1:
            raise ReIDError(
                f"model.jpm_groups and model.jpm_shuffle_groups must be >= 1, got {groups}, {shuffle_groups}"
            )
        self.vit = vit
        self.jpm = bool(jpm)
        self.groups, self.shift, self.shuffle_groups = int(groups), int(shift), int(shuffle_groups)
        if self.jpm:
            self.local_block = copy.deepcopy(vit.blocks[-1])
            self.local_norm = copy.deepcopy(vit.norm)
        self.out_channels = vit.out_channels
        self.uses_camera = vit.uses_camera
        self.num_cameras = vit.num_cameras
        self.mean, self.std = vit.mean, vit.std

    @property
    def num_branches(self) -> int:
        """1 (global) + k local groups with JPM."""
        return 1 + (self.groups if self.jpm else 0)

    def forward_features(self, x: torch.Tensor, cams: torch.Tensor | None = None) -> torch.Tensor:
        """Class-token features of the global and the k local branches, ``B x (1 + k) x C``."""
        if not self.jpm:
            return cast(torch.Tensor, self.vit.norm(self.vit.forward_tokens(x, cams))[:, :1])
        tokens = self.vit.forward_tokens(x, cams, depth=len(self.vit.blocks) - 1)
        glob = self.vit.norm(self.vit.blocks[-1](tokens))[:, 0]
        cls = tokens[:, :1]
        patches = shuffle_tokens(tokens, self.shift, self.shuffle_groups)
        size = (tokens.shape[1] - 1) // self.groups
        if size < 1:
            raise ReIDError(
                f"model.jpm_groups: {self.groups} groups need at least as many patches, "
                f"the input gives {tokens.shape[1] - 1}"
            )
        locs = [
            self.local_norm(self.local_block(torch.cat([cls, patches[:, i * size : (i + 1) * size]], dim=1)))[:, 0]
            for i in range(self.groups)
        ]
        return torch.stack([glob] + locs, dim=1)


class TransReIDHead(nn.Module):
    """One BNNeck + classifier per branch; eval concatenates global and local / k features."""

    def __init__(
        self,
        dim: int,
        num_classes: int,
        branches: int,
        neck_feat: str = "after",
        classifier: str = "linear",
        cls_scale: float = 30.0,
        cls_margin: float = 0.35,
    ) -> None:
        super().__init__()
        self.branches = branches
        self.neck_feat = neck_feat
        self.necks = nn.ModuleList([BNNeck(dim) for _ in range(branches)])
        self.classifiers = nn.ModuleList(
            [build_classifier(classifier, dim, num_classes, cls_scale, cls_margin) for _ in range(branches)]
        )
        self.feat_dim = dim * branches

    def _check(self, feats: torch.Tensor) -> None:
        if not isinstance(feats, torch.Tensor) or feats.dim() != 3 or feats.shape[1] != self.branches:
            raise ReIDError(
                f"TransReID head: expected B x {self.branches} x C branch features, got "
                f"{tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__}"
            )

    def _concat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        k = self.branches - 1
        # TransReID divides the local features by k so the k of them weigh as much as the global one.
        return torch.cat([parts[0]] + [p / k for p in parts[1:]], dim=1)

    def forward_head(
        self, feats: torch.Tensor, which: str = "after", labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``"after"``/``"before"``: the concatenated (post-/pre-BN) feature; ``"logits"``: the global branch's."""
        check_choice("which", which, ("after", "before", "logits"))
        self._check(feats)
        raw = list(feats.unbind(1))
        if which == "before":
            return self._concat(raw)
        bn = [neck(f) for neck, f in zip(self.necks, raw)]
        if which == "logits":
            return cast(torch.Tensor, self.classifiers[0](bn[0], labels))
        return self._concat(bn)

    def forward(self, feats: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        """Training: ``{"feat", "logits", "feats", "logits_list", "branch_weights"}``; eval: ``B x feat_dim``."""
        self._check(feats)
        raw = list(feats.unbind(1))
        if not self.training:
            if self.neck_feat == "before":
                return self._concat(raw)
            return self._concat([neck(f) for neck, f in zip(self.necks, raw)])
        logits_list = [clf(neck(f), labels) for neck, clf, f in zip(self.necks, self.classifiers, raw)]
        out: dict[str, Any] = {"feat": torch.cat(raw, dim=1), "logits": logits_list[0]}
        if self.branches > 1:
            out["feats"] = raw
            out["logits_list"] = logits_list
            # TransReID weighs the global branch and the mean of the k local branches equally.
            k = self.branches - 1
            out["branch_weights"] = [0.5] + [0.5 / k] * k
        else:
            out["feat"] = raw[0]
        return out


def build_transreid_parts(cfg: Any, num_classes: int) -> tuple[TransReIDTrunk, TransReIDHead, list[float], list[float]]:
    """Trunk and head of the ``transreid`` arch from a ``ModelConfig`` (ViT backbones only)."""
    from reidkit.models.backbones import build_backbone, options_from_config

    options = options_from_config(cfg)
    vit = build_backbone(cfg.backbone, pretrained=cfg.pretrained, **_only_vit(cfg.backbone, options))
    if not isinstance(vit, VisionTransformer):
        raise ReIDError(
            f"model.arch=transreid needs a ViT backbone (vit_small_patch16, vit_base_patch16); got {cfg.backbone!r}"
        )
    trunk = TransReIDTrunk(
        vit, jpm=cfg.jpm, groups=cfg.jpm_groups, shift=cfg.jpm_shift, shuffle_groups=cfg.jpm_shuffle_groups
    )
    head = TransReIDHead(
        trunk.out_channels,
        int(num_classes),
        trunk.num_branches,
        neck_feat=cfg.neck_feat,
        classifier=cfg.classifier,
        cls_scale=cfg.cls_scale,
        cls_margin=cfg.cls_margin,
    )
    return trunk, head, list(vit.mean), list(vit.std)


def _only_vit(name: str, options: dict[str, Any]) -> dict[str, Any]:
    from reidkit.models.backbones import accepted_options

    accepted = accepted_options(name)
    if accepted is not None and "stride_size" not in accepted:
        raise ReIDError(
            f"model.arch=transreid needs a ViT backbone (vit_small_patch16, vit_base_patch16); got {name!r}"
        )
    return options
