"""TransReID checkpoints (damo-cv/TransReID): ViT-B/16 or DeiT-S/16 with SIE and JPM.

Layout (make_model.py, a plain state dict): ``base.*`` is the ViT in timm names
(``cls_token``, ``pos_embed`` learned for the training grid, ``patch_embed.proj`` with the
patch stride 16 or 12, ``blocks.N.*``, ``norm``, ``sie_embed`` when SIE was on, an unused
``fc``); ``bottleneck`` / ``classifier`` for the global branch. With JPM
(``build_transformer_local``) also ``b1.{0,1}`` (the global branch's last block + norm),
``b2.{0,1}`` (the shared local block + norm), ``bottleneck_1..4`` and ``classifier_1..4``;
``base.blocks.{last}`` and ``base.norm`` are then unused.

Inference: the ViT with the camera embedding ``lambda * sie_embed[cam]`` added to every token
(``sie_lambda``, SIE_COE = 3.0 in the released configs; pass ``cams`` to the model), then
without JPM the final-normed class token -> BNNeck; with JPM the global class token of ``b1``
and the four local class tokens of ``b2`` over the shifted/shuffled patch groups (shift 5,
2 shuffle groups, 4 groups), each through its BNNeck, concatenated as ``[global, local_i / 4]``.
The released configs evaluate with ``TEST.NECK_FEAT='before'`` (the pre-BN features), which is
this loader's default (``neck_feat="after"`` for the post-BN ones). Preprocessing: [0, 1] RGB,
mean = std = 0.5, the training size (256x128 in the released configs; 384x128 also used).
``reidkit.models.transreid`` implements the same computation; this module only renames.

The training grid and patch stride are inferred from ``pos_embed`` (tried: ``input_size`` if
given, else 256x128, 384x128, 384x192, 224x224; strides 16, 12, 14, 10, 8, 11, 13, 15).
Not supported (one clear error): TransReID's ``vit_small_patch16_224_TransReID`` (768 wide,
8 blocks, q-k scale 768^-0.5), hybrid backbones, and SIE over camera x view (vehicles): an
``sie_embed`` with C x V rows is read as C cameras.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from reidkit.errors import ReIDError
from reidkit.models.interop.common import HALF_MEAN, HALF_STD, KeyMap, bn_keys, load_mapped

DESCRIPTION = "TransReID (damo-cv/TransReID): base.* ViT (+ sie_embed), b1/b2 JPM, bottleneck*, classifier*"

_SIZES = ((256, 128), (384, 128), (384, 192), (224, 224))
_STRIDES = (16, 12, 14, 10, 8, 11, 13, 15)


def detect(state: Mapping[str, Any]) -> bool:
    """TransReID: a base.* ViT (cls_token, pos_embed, patch_embed.proj) with a bottleneck."""
    return (
        all(k in state for k in ("base.cls_token", "base.pos_embed", "base.patch_embed.proj.weight"))
        and "bottleneck.weight" in state
    )


def _grid(tokens: int, input_size: tuple[int, int] | None, origin: str) -> tuple[tuple[int, int], int]:
    sizes = (tuple(input_size),) if input_size is not None else _SIZES
    for size in sizes:
        for s in _STRIDES:
            gh, gw = (size[0] - 16) // s + 1, (size[1] - 16) // s + 1
            if gh * gw == tokens:
                return (int(size[0]), int(size[1])), s
    raise ReIDError(
        f"transreid checkpoint {origin}: base.pos_embed holds {tokens} patch positions, which fits no "
        f"input size {', '.join(f'{h}x{w}' for h, w in sizes)} with patch stride 8..16; pass "
        "input_size=(H, W) as trained"
    )


def build(
    state: Mapping[str, torch.Tensor],
    origin: str,
    input_size: tuple[int, int] | None = None,
    sie_lambda: float = 3.0,
    neck_feat: str | None = None,
    num_heads: int | None = None,
    **unused: Any,
) -> Any:
    """A reidkit ``transreid`` model equal to TransReID's eval forward on ``state``.

    ``neck_feat``: None = the released configs' choice ("before" for the ViTs; "after", the
    default config's, for TransReID's ResNet-50 baseline, which is routed to the strong-baseline
    loader with TransReID's 2x2 stem pooling).
    """
    from reidkit.models.backbones.vit import VisionTransformer
    from reidkit.models.build import ReIDModel
    from reidkit.models.transreid import TransReIDHead, TransReIDTrunk

    if "base.conv1.weight" in state and "base.cls_token" not in state:
        # TransReID's ResNet-50 baseline: reid-strong-baseline's layout with a 2x2 stem pool.
        from reidkit.models.interop import strong_baseline

        opts = dict(unused, neck_feat=neck_feat or "after")
        if input_size is not None:
            opts["input_size"] = input_size
        return strong_baseline.build(state, origin, stem_pool="transreid", **opts)
    if unused:
        raise ReIDError(
            f"transreid: unknown option(s) {', '.join(unused)} (accepted: input_size, sie_lambda, neck_feat, num_heads)"
        )
    neck_feat = neck_feat or "before"
    if neck_feat not in ("after", "before"):
        raise ReIDError(f"transreid: neck_feat must be 'after' or 'before', got {neck_feat!r}")
    km = KeyMap(state, "transreid", origin)
    dim = int(km.get("base.cls_token").shape[-1])
    depth = 0
    while km.has(f"base.blocks.{depth}.norm1.weight"):
        depth += 1
    if depth == 0:
        raise ReIDError(f"transreid checkpoint {origin}: no ViT blocks (base.blocks.0.*)")
    hidden = int(km.get("base.blocks.0.mlp.fc1.weight").shape[0])
    qkv_bias = km.has("base.blocks.0.attn.qkv.bias")
    if dim == 768 and depth == 8:
        raise ReIDError(
            f"transreid checkpoint {origin}: TransReID's vit_small_patch16_224_TransReID (768 wide, "
            "8 blocks, q-k scale 768^-0.5) is not supported; ViT-B/16 and DeiT-S/16 are"
        )
    heads = num_heads or {384: 6, 768: 12, 1024: 16}.get(dim)
    if heads is None:
        raise ReIDError(f"transreid checkpoint {origin}: unknown ViT width {dim}; pass num_heads=")
    if km.has("base.patch_embed.backbone.conv.weight") or any(
        k.startswith("base.patch_embed.backbone.") for k in state
    ):
        raise ReIDError(f"transreid checkpoint {origin}: hybrid (CNN + ViT) backbones are not supported")
    patch = int(km.get("base.patch_embed.proj.weight").shape[-1])
    if patch != 16:
        raise ReIDError(f"transreid checkpoint {origin}: patch size {patch} is not supported (16 only)")
    size, stride = _grid(int(km.get("base.pos_embed").shape[1]) - 1, input_size, origin)
    cams = int(km.get("base.sie_embed").shape[0]) if km.has("base.sie_embed") else 0
    vit = VisionTransformer(
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=hidden / dim,
        img_size=size,
        patch_size=16,
        stride_size=stride,
        sie=cams > 0,
        num_cameras=cams,
        sie_lambda=float(sie_lambda),
        qkv_bias=qkv_bias,
    )
    vit.mean, vit.std = tuple(HALF_MEAN), tuple(HALF_STD)
    jpm = km.has("b1.0.norm1.weight")
    groups = 0
    while km.has(f"bottleneck_{groups + 1}.weight"):
        groups += 1
    if jpm and groups < 1:
        raise ReIDError(f"transreid checkpoint {origin}: JPM branches b1/b2 without bottleneck_1..k")
    # TransReID's shift 5 / 2 shuffle groups are config values, never stored; its releases use these.
    trunk = TransReIDTrunk(vit, jpm=jpm, groups=groups if jpm else 4, shift=5, shuffle_groups=2)
    last = depth - 1
    km.drop(lambda k: k.startswith("base.fc."))
    if jpm:
        # The global branch runs b1 (a copy of the last block + norm): base's own last block and
        # norm are never used by TransReID's JPM forward.
        km.drop(lambda k: k.startswith((f"base.blocks.{last}.", "base.norm.")))
    for key in list(state):
        if key.startswith("base.") and key not in km.used:
            km.put("backbone.vit." + key[len("base.") :], key)
    if jpm:
        km.put_prefix(f"backbone.vit.blocks.{last}.", "b1.0.")
        km.put_prefix("backbone.vit.norm.", "b1.1.")
        km.put_prefix("backbone.local_block.", "b2.0.")
        km.put_prefix("backbone.local_norm.", "b2.1.")
    branches = trunk.num_branches
    clf_w = km.state.get("classifier.weight")
    num_classes = int(clf_w.shape[0]) if clf_w is not None else 1
    head = TransReIDHead(dim, num_classes, branches, neck_feat=neck_feat)
    for i in range(branches):
        suffix = "" if i == 0 else f"_{i}"
        bn_keys(km, f"head.necks.{i}.bn", f"bottleneck{suffix}")
        key = f"classifier{suffix}.weight"
        # Margin classifiers (arcface...) keep only the global weight; the others stay as built.
        if km.has(key) and tuple(km.get(key).shape) == (num_classes, dim):
            km.put(f"head.classifiers.{i}.fc.weight", key)
        else:
            km.out[f"head.classifiers.{i}.fc.weight"] = (
                head.get_parameter(f"classifiers.{i}.fc.weight").detach().clone()
            )
    km.drop(lambda k: re.fullmatch(r"classifier(_\d+)?\.(weight|bias|kernel)", k) is not None)
    km.check_consumed("TransReID parts outside base ViT + b1/b2 + bottleneck* + classifier*")
    model = ReIDModel(trunk, head, HALF_MEAN, HALF_STD, arch="transreid")
    load_mapped(model, km.out, "transreid", origin)
    model.input_size = list(size)
    model.source_arch = (
        f"vit_{'base' if dim == 768 else 'small'}_patch16 stride {stride}"
        + (" + SIE" if cams else "")
        + (" + JPM" if jpm else "")
    )
    return model
