"""SOLIDER-REID checkpoints (tinyvision/SOLIDER-REID): Swin-T/S/B with the semantic weight.

Layout (model/make_model.py ``build_transformer``, a plain state dict): ``base.*`` is the Swin in
mmdet/mmcls names: ``patch_embed.projection`` / ``patch_embed.norm``,
``stages.i.blocks.j.{norm1, attn.w_msa.{qkv, proj, relative_position_bias_table,
relative_position_index}, norm2, ffn.layers.0.0, ffn.layers.1}``, ``stages.i.downsample.{norm,
reduction}`` (an ``nn.Unfold`` patch merging), ``norm0..norm3`` (one per output stage) and
``semantic_embed_w.i`` / ``semantic_embed_b.i``; then ``fcneck`` (optional, bias-free),
``bottleneck`` (BNNeck), ``classifier``.

Inference: Swin with the semantic modulation ``x * softplus(W s) + b`` after each stage
(s = (w, 1 - w), ``semantic_weight``; the ReID runs use 0.2, the loader's default), the last
stage's map normed by ``norm3`` and averaged, optional ``fcneck``, BNNeck; the released configs
evaluate with ``TEST.NECK_FEAT='before'`` (this loader's default). Preprocessing: [0, 1] RGB, mean
= std = 0.5, 384x128 (the released configs' size; ``input_size`` overrides).

Renaming into reidkit's Swin (timm/original names, ``reidkit.models.backbones.swin``): the
unfold patch merging orders its 4C inputs channel-major (c * 4 + k, k = 2 * row + col of the
2x2 cell) where the original orders them cell-major in the cells (0,0), (1,0), (0,1), (1,1): the
``reduction`` columns and the ``norm`` entries are permuted accordingly. ``norm0..norm2`` only feed
SOLIDER's multi-scale outputs, not the ReID feature, and are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from reidkit.errors import ReIDError
from reidkit.models.interop.common import (
    HALF_MEAN,
    HALF_STD,
    ForeignHead,
    KeyMap,
    SimplePool,
    batchnorm1d_from,
    bn_keys,
    linear_from,
    load_mapped,
)

DESCRIPTION = "SOLIDER-REID (tinyvision/SOLIDER-REID): base.* mmdet-named Swin, bottleneck.*, classifier.*"

# Unfold index k = 2 * row + col -> original cell order (0,0), (1,0), (0,1), (1,1).
_CELL_ORDER = [0, 2, 1, 3]


def detect(state: Mapping[str, Any]) -> bool:
    """SOLIDER-REID: base.patch_embed.projection and base.stages.* (mmdet Swin names)."""
    return "base.patch_embed.projection.weight" in state and any(k.startswith("base.stages.") for k in state)


def unfold_to_cells(t: torch.Tensor) -> torch.Tensor:
    """Reorder the last axis (4C, channel-major unfold order) into the original cell-major order."""
    c4 = t.shape[-1]
    c = c4 // 4
    lead = t.shape[:-1]
    return t.reshape(*lead, c, 4)[..., _CELL_ORDER].transpose(-1, -2).reshape(*lead, c4)


def build(
    state: Mapping[str, torch.Tensor],
    origin: str,
    input_size: tuple[int, int] = (384, 128),
    semantic_weight: float = 0.2,
    neck_feat: str = "before",
    **unused: Any,
) -> Any:
    """A reidkit model equal to SOLIDER-REID's eval forward on ``state``."""
    from reidkit.models.backbones.swin import SwinTransformer
    from reidkit.models.build import ReIDModel

    if unused:
        raise ReIDError(
            f"solider: unknown option(s) {', '.join(unused)} (accepted: input_size, semantic_weight, neck_feat)"
        )
    if neck_feat not in ("after", "before"):
        raise ReIDError(f"solider: neck_feat must be 'after' or 'before', got {neck_feat!r}")
    if "base.absolute_pos_embed" in state:
        raise ReIDError(
            f"solider checkpoint {origin}: absolute position embeddings (base.absolute_pos_embed, "
            "use_abs_pos_embed) are not supported"
        )
    km = KeyMap(state, "solider", origin)
    embed_dim = int(km.get("base.patch_embed.projection.weight").shape[0])
    patch = int(km.get("base.patch_embed.projection.weight").shape[-1])
    depths: list[int] = []
    heads: list[int] = []
    while any(k.startswith(f"base.stages.{len(depths)}.") for k in state):
        i = len(depths)
        n = 0
        while km.has(f"base.stages.{i}.blocks.{n}.norm1.weight"):
            n += 1
        depths.append(n)
        heads.append(int(km.get(f"base.stages.{i}.blocks.0.attn.w_msa.relative_position_bias_table").shape[1]))
    table = int(km.get("base.stages.0.blocks.0.attn.w_msa.relative_position_bias_table").shape[0])
    window = (int(round(table**0.5)) + 1) // 2
    has_sem = km.has("base.semantic_embed_w.0.weight")
    sw = float(semantic_weight) if has_sem else -1.0
    if has_sem and sw < 0:
        raise ReIDError(f"solider checkpoint {origin}: holds semantic embeddings; semantic_weight must be in [0, 1]")
    backbone = SwinTransformer(
        embed_dim=embed_dim,
        depths=tuple(depths),
        num_heads=tuple(heads),
        window=window,
        patch_size=patch,
        semantic_weight=sw,
    )
    backbone.mean, backbone.std = tuple(HALF_MEAN), tuple(HALF_STD)
    last = len(depths) - 1
    km.put("backbone.patch_embed.proj.weight", "base.patch_embed.projection.weight")
    km.put("backbone.patch_embed.proj.bias", "base.patch_embed.projection.bias")
    km.put_prefix("backbone.patch_embed.norm.", "base.patch_embed.norm.")
    block_map = {
        "attn.w_msa.": "attn.",
        "ffn.layers.0.0.": "mlp.fc1.",
        "ffn.layers.1.": "mlp.fc2.",
        "norm1.": "norm1.",
        "norm2.": "norm2.",
    }
    pat = re.compile(r"^base\.stages\.(\d+)\.blocks\.(\d+)\.(.*)$")
    for key in list(state):
        m = pat.match(key)
        if not m:
            continue
        rest = m.group(3)
        if rest.endswith(("relative_position_index", "attn_mask")):
            km.drop(key.__eq__)  # derived buffers, rebuilt by the module
            continue
        for src, dst in block_map.items():
            if rest.startswith(src):
                km.put(f"backbone.layers.{m.group(1)}.blocks.{m.group(2)}.{dst}{rest[len(src) :]}", key)
                break
    for i in range(last):
        d = f"base.stages.{i}.downsample"
        km.put(f"backbone.layers.{i}.downsample.reduction.weight", f"{d}.reduction.weight", unfold_to_cells)
        km.put(f"backbone.layers.{i}.downsample.norm.weight", f"{d}.norm.weight", unfold_to_cells)
        km.put(f"backbone.layers.{i}.downsample.norm.bias", f"{d}.norm.bias", unfold_to_cells)
    km.put_prefix("backbone.norm.", f"base.norm{last}.")
    km.drop(lambda k: re.match(r"^base\.norm\d+\.", k) is not None)  # multi-scale outputs only
    if has_sem:
        km.put_prefix("backbone.semantic_embed_w.", "base.semantic_embed_w.")
        km.put_prefix("backbone.semantic_embed_b.", "base.semantic_embed_b.")
    feat_dim = int(backbone.out_channels)
    embed: nn.Module | None = None
    if km.has("fcneck.weight"):
        embed = linear_from(km.get("fcneck.weight"))
        km.put("head.embed.weight", "fcneck.weight")
        feat_dim = int(km.get("fcneck.weight").shape[0])
    bn = batchnorm1d_from(km.get("bottleneck.weight"))
    bn_keys(km, "head.bn", "bottleneck")
    classifier = None
    if km.has("classifier.weight") and tuple(km.get("classifier.weight").shape[1:]) == (feat_dim,):
        classifier = linear_from(km.get("classifier.weight"))
        km.put("head.classifier.weight", "classifier.weight")
    km.drop(lambda k: k.startswith("classifier."))
    km.check_consumed("SOLIDER-REID parts outside the Swin + fcneck + bottleneck + classifier")
    head = ForeignHead(SimplePool("avg"), feat_dim, embed=embed, bn=bn, classifier=classifier, neck_feat=neck_feat)
    model = ReIDModel(backbone, head, HALF_MEAN, HALF_STD, arch="solider")
    load_mapped(model, km.out, "solider", origin)
    model.input_size = [int(v) for v in input_size]
    model.source_arch = f"swin dim {embed_dim} depths {depths}" + (f" semantic_weight {sw}" if has_sem else "")
    return model
