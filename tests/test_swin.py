"""Swin-T/S/B: parameter counts vs timm, shapes at 256x128, window locality, SOLIDER semantic weight, loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from factories import assert_loss_goes_down, meta_params, train_recipe
from reidkit.errors import ReIDError
from reidkit.models.backbones import build_backbone
from reidkit.models.backbones.swin import SwinTransformer, relative_position_index, shift_mask

# timm swin_tiny_patch4_window7_224: 28,288,354 parameters with its 768 * 1000 + 1000 head.
TIMM_SWIN_T = 28_288_354


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_swin_t_parameter_count_matches_timm_without_head():
    m = build_backbone("swin_tiny")
    assert n_params(m) == TIMM_SWIN_T - (768 * 1000 + 1000) == 27_519_354
    # SOLIDER's semantic layers: per stage two Linear(2, C) with C = 192, 384, 768, 768.
    ms = build_backbone("swin_tiny", semantic_weight=0.2)
    assert n_params(ms) == 27_519_354 + 2 * 3 * (192 + 384 + 768 + 768)
    assert all(not p.requires_grad for n, p in ms.named_parameters() if n.startswith("semantic_embed"))


def test_swin_names_are_timms():
    keys = set(build_backbone("swin_tiny", semantic_weight=0.2).state_dict())
    for k in (
        "patch_embed.proj.weight",
        "patch_embed.norm.weight",
        "layers.0.blocks.0.norm1.weight",
        "layers.0.blocks.1.attn.qkv.weight",
        "layers.2.blocks.5.attn.relative_position_bias_table",
        "layers.1.blocks.0.attn.proj.bias",
        "layers.3.blocks.1.norm2.weight",
        "layers.3.blocks.1.mlp.fc1.weight",
        "layers.3.blocks.1.mlp.fc2.bias",
        "layers.0.downsample.reduction.weight",
        "layers.2.downsample.norm.bias",
        "norm.weight",
        "semantic_embed_w.0.weight",
        "semantic_embed_b.3.bias",
    ):
        assert k in keys, k
    assert not any(k.endswith("relative_position_index") for k in keys)
    assert "layers.3.downsample.reduction.weight" not in keys


@pytest.mark.parametrize("size,grid", [((256, 128), (8, 4)), ((384, 128), (12, 4))])
def test_forward_shape(size, grid):
    m = build_backbone("swin_tiny", semantic_weight=0.2).eval()
    with torch.no_grad():
        out = m.forward_features(torch.randn(1, 3, *size))
    assert out.shape == (1, 768, *grid) and m.out_channels == 768


def test_relative_position_index_written_out():
    w = 3
    idx = relative_position_index(w)
    for a in range(w * w):
        for b in range(w * w):
            dy, dx = a // w - b // w, a % w - b % w
            assert idx[a, b] == (dy + w - 1) * (2 * w - 1) + (dx + w - 1)


def test_shift_mask_separates_regions():
    m = shift_mask(4, 4, 2, 1)  # 2x2 windows of a 4x4 map, shift 1
    assert m.shape == (4, 4, 4)
    assert torch.all(m[0] == 0)  # the top-left window holds one region only
    # The bottom-right window mixes 4 regions: only each token with itself is allowed.
    assert torch.equal(m[3] == 0, torch.eye(4, dtype=torch.bool))


def test_window_attention_is_local_and_padding_keeps_the_map():
    torch.manual_seed(0)
    m = SwinTransformer(embed_dim=16, depths=(2,), num_heads=(2,), window=7).eval()
    blk = m.layers[0].blocks[0]  # no shift
    x = torch.randn(1, 14 * 14, 16)
    y = x.clone()
    y[0, 0] += torch.randn(16)  # token (0, 0); not a constant, which LayerNorm would remove
    with torch.no_grad():
        d = (blk(x, (14, 14)) - blk(y, (14, 14))).abs().sum(-1).reshape(14, 14)
    assert d[:7, :7].min() > 0 and d[7:].max() == 0 and d[:, 7:].max() == 0
    # 16 x 8 is padded to 21 x 14 inside the block and cropped back.
    with torch.no_grad():
        out = m.layers[0].blocks[1](torch.randn(2, 16 * 8, 16), (16, 8))
    assert out.shape == (2, 128, 16)


def test_semantic_weight_modulates_the_features_like_solider():
    torch.manual_seed(0)
    m = build_backbone("swin_tiny", semantic_weight=0.2).eval()
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        base = m.forward_features(x)
        assert torch.allclose(base, m.forward_features(x, 0.2), atol=1e-6)
        assert torch.allclose(base, m.forward_features(x, torch.tensor([[0.2, 0.8]])), atol=1e-6)
        assert (base - m.forward_features(x, 0.8)).abs().max() > 1e-4
        # The last stage's modulation does not reach the output (SOLIDER norms the unmodulated map).
        m.semantic_embed_w[3].weight.add_(1.0)
        assert torch.allclose(base, m.forward_features(x), atol=1e-6)
        m.semantic_embed_w[0].weight.add_(1.0)
        assert (base - m.forward_features(x)).abs().max() > 1e-4
    plain = build_backbone("swin_tiny")
    assert not hasattr(plain, "semantic_embed_w")
    with pytest.raises(ReIDError, match="semantic_weight"):
        build_backbone("swin_tiny", semantic_weight=1.5)


def test_original_and_timm09_layouts_load_by_key(tmp_path: Path):
    torch.manual_seed(0)
    src = build_backbone("swin_tiny")
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    extra = {
        "head.weight": torch.randn(1000, 768),
        "head.bias": torch.zeros(1000),
        "layers.0.blocks.1.attn_mask": torch.zeros(64, 49, 49),
        "layers.0.blocks.0.attn.relative_position_index": relative_position_index(7),
    }
    torch.save({"model": {**sd, **extra}}, tmp_path / "orig.pth")
    # timm >= 0.9: stage i's merging lives at the start of stage i + 1, the head under head.fc.
    shifted = {}
    for k, v in sd.items():
        if ".downsample." in k:
            i = int(k.split(".")[1])
            k = k.replace(f"layers.{i}.downsample.", f"layers.{i + 1}.downsample.")
        shifted[k] = v
    shifted["head.fc.weight"] = torch.randn(1000, 768)
    torch.save(shifted, tmp_path / "timm09.pth")
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        ref = src.eval().forward_features(x)
    for name in ("orig.pth", "timm09.pth"):
        m = build_backbone("swin_tiny", pretrained=str(tmp_path / name)).eval()
        rep = m.pretrained_report
        assert rep.missing == [] and rep.unexpected == [], (name, rep.summary())
        with torch.no_grad():
            assert torch.allclose(m.forward_features(x), ref, atol=1e-5)


def test_swin_small_and_base_build():
    for name, width in (("swin_small", 768), ("swin_base", 1024)):
        with torch.device("meta"):
            m = build_backbone(name)
        assert m.out_channels == width
    # timm: swin_small 49,606,258 and swin_base 87,768,224 including the 1000-way head.
    assert meta_params("swin_small") == 49_606_258 - (768 * 1000 + 1000)
    assert meta_params("swin_base") == 87_768_224 - (1024 * 1000 + 1000)


def test_swin_solider_recipe_trains_and_the_loss_goes_down():
    trainer, losses = train_recipe("swin_t_solider.yaml")
    assert trainer.cfg.model.semantic_weight == 0.2
    assert_loss_goes_down(losses)
