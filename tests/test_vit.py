"""ViT backbones (TransReID options): parameter counts, grids, SIE, position-embedding resizing, timm-layout loading."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import meta_params

from reidkit.errors import ReIDError
from reidkit.models.backbones import build_backbone
from reidkit.models.backbones.vit import VisionTransformer, grid_size, resize_pos_embed

# timm's vit_base_patch16_224 has 86,567,656 parameters; its 1000-way head holds 768 * 1000 + 1000.
TIMM_VIT_B_224 = 86_567_656
TIMM_VIT_B_224_NO_HEAD = TIMM_VIT_B_224 - (768 * 1000 + 1000)  # 85,798,656


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_vit_b_parameter_count_matches_timm_up_to_the_position_grid():
    """ViT-B/16 without head = 85,798,656 at 224x224 (197 tokens); only pos_embed changes with the grid.

    At 256x128 with stride 16 the grid is 16 x 8 (129 tokens): 68 tokens fewer, 68 * 768 = 52,224
    parameters less. With stride 12 it is 21 x 10 (211 tokens): 14 * 768 = 10,752 more.
    """
    assert TIMM_VIT_B_224_NO_HEAD == 85_798_656
    assert meta_params("vit_base_patch16", img_size=(224, 224)) == 85_798_656
    assert meta_params("vit_base_patch16") == 85_798_656 - (197 - 129) * 768 == 85_746_432
    assert meta_params("vit_base_patch16", stride_size=12) == 85_798_656 + (211 - 197) * 768 == 85_809_408
    # SIE adds one 768-d vector per camera.
    assert meta_params("vit_base_patch16", sie=True, num_cameras=6) == 85_746_432 + 6 * 768


def test_vit_s_parameter_count():
    """timm vit_small_patch16_224: 22,050,664 with the 384 * 1000 + 1000 head; 129 instead of 197 tokens here."""
    assert meta_params("vit_small_patch16") == 22_050_664 - 385_000 - (197 - 129) * 384


@pytest.mark.parametrize("stride,grid", [(16, (16, 8)), (12, (21, 10))])
def test_forward_shapes_at_256x128(stride, grid):
    m = build_backbone("vit_small_patch16", stride_size=stride).eval()
    assert m.grid == grid == grid_size((256, 128), 16, stride)
    x = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        tokens = m.forward_tokens(x)
        feat = m.forward_features(x)
    assert tokens.shape == (2, 1 + grid[0] * grid[1], 384)
    assert feat.shape == (2, 384, 1, 1) and m.out_channels == 384
    # forward_features is the final-normed class token.
    assert torch.allclose(feat[:, :, 0, 0], m.norm(tokens)[:, 0], atol=1e-6)


def test_timm_parameter_names():
    keys = set(build_backbone("vit_small_patch16").state_dict())
    for k in (
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "cls_token",
        "pos_embed",
        "blocks.0.norm1.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.qkv.bias",
        "blocks.0.attn.proj.weight",
        "blocks.0.norm2.bias",
        "blocks.0.mlp.fc1.weight",
        "blocks.11.mlp.fc2.bias",
        "norm.weight",
        "norm.bias",
    ):
        assert k in keys, k


def test_attention_equals_softmax_attention_written_out():
    m = build_backbone("vit_small_patch16").eval()
    attn = m.blocks[0].attn
    x = torch.randn(2, 7, 384)
    b, n, c = x.shape
    h = attn.num_heads
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = [t.reshape(b, n, h, c // h).transpose(1, 2) for t in qkv.split(c, dim=-1)]
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // h), dim=-1)
    ref = (w @ v).transpose(1, 2).reshape(b, n, c) @ attn.proj.weight.T + attn.proj.bias
    assert torch.allclose(attn(x), ref, atol=1e-5)


def test_sie_changes_the_feature_with_the_camera():
    torch.manual_seed(0)
    m = build_backbone("vit_small_patch16", sie=True, num_cameras=3).eval()
    assert m.uses_camera and m.sie_embed.shape == (3, 1, 384) and m.sie_lambda == 3.0
    x = torch.randn(1, 3, 64, 32).expand(3, -1, -1, -1)
    with torch.no_grad():
        f = m.forward_features(x, torch.tensor([0, 1, 0]))[:, :, 0, 0]
        # The embedding enters as lambda * sie_embed[cam] on every token: check against that.
        tokens = m.forward_tokens(x[:1], None, depth=0)
        manual = tokens + 3.0 * m.sie_embed[1]
        for blk in m.blocks:
            manual = blk(manual)
        manual = m.norm(manual)[:, 0]
    assert torch.allclose(f[0], f[2], atol=1e-6)
    assert (f[0] - f[1]).abs().max() > 1e-3
    assert torch.allclose(f[1], manual[0], atol=1e-5)
    with pytest.raises(ReIDError, match="camera ids must be in"):
        m.forward_features(x[:1], torch.tensor([3]))
    with pytest.raises(ReIDError, match="num_cameras"):
        build_backbone("vit_small_patch16", sie=True, num_cameras=0)
    assert not build_backbone("vit_small_patch16").uses_camera


def _bicubic_1d(n_in: int, n_out: int) -> np.ndarray:
    """Literal interpolation matrix of PyTorch's bicubic (A = -0.75, half-pixel centres, clamped edges)."""
    a = -0.75

    def k(t: float) -> float:
        t = abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        if t < 2:
            return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
        return 0.0

    mat = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = (o + 0.5) * n_in / n_out - 0.5
        base = math.floor(src)
        for i in range(base - 1, base + 3):
            mat[o, min(max(i, 0), n_in - 1)] += k(src - i)
    return mat


def test_resize_pos_embed_is_bicubic_on_the_grid_and_keeps_the_class_token():
    torch.manual_seed(0)
    pe = torch.randn(1, 1 + 14 * 14, 8)
    out = resize_pos_embed(pe, (21, 10))
    assert out.shape == (1, 1 + 21 * 10, 8)
    assert torch.equal(out[:, 0], pe[:, 0])
    grid = pe[0, 1:].reshape(14, 14, 8).numpy()
    ref = np.einsum("hi,wj,ijc->hwc", _bicubic_1d(14, 21), _bicubic_1d(14, 10), grid)
    assert np.allclose(out[0, 1:].reshape(21, 10, 8).numpy(), ref, atol=1e-5)
    # Same grid: the identity (to float precision), so a 224 model keeps its output.
    assert torch.allclose(resize_pos_embed(pe, (14, 14)), pe, atol=1e-6)
    # Non-square stored grids need old_grid.
    with pytest.raises(ReIDError, match="old_grid"):
        resize_pos_embed(torch.randn(1, 1 + 21 * 10, 8), (16, 8))
    assert resize_pos_embed(torch.randn(1, 1 + 21 * 10, 8), (16, 8), old_grid=(21, 10)).shape == (1, 129, 8)


def test_resizing_to_the_same_grid_keeps_a_224_models_output():
    torch.manual_seed(0)
    m = VisionTransformer(embed_dim=64, depth=2, num_heads=4, img_size=(224, 224)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        before = m.forward_features(x)
        m.pos_embed.copy_(resize_pos_embed(m.pos_embed, (14, 14)))
        after = m.forward_features(x)
    assert torch.allclose(before, after, atol=1e-5)


def test_timm_layout_checkpoint_loads_by_key_with_resized_pos_embed(tmp_path: Path):
    """A 224x224 checkpoint in timm layout (+ its 1000-way head, DeiT's {"model": ...} wrapper) loads fully."""
    torch.manual_seed(0)
    src = build_backbone("vit_small_patch16", img_size=(224, 224))
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    assert sd["pos_embed"].shape == (1, 197, 384)
    sd["head.weight"], sd["head.bias"] = torch.randn(1000, 384), torch.zeros(1000)
    path = tmp_path / "vit_s_224.pth"
    torch.save({"model": sd}, path)
    for stride, grid in ((16, (16, 8)), (12, (21, 10))):
        m = build_backbone("vit_small_patch16", pretrained=str(path), stride_size=stride)
        rep = m.pretrained_report
        assert rep.missing == [] and rep.mismatched == [], rep.summary()
        assert "pos_embed" in rep.loaded and not any(k.startswith("head") for k in rep.loaded)
        assert torch.equal(m.pos_embed, resize_pos_embed(sd["pos_embed"], grid))
        assert torch.equal(m.blocks[3].attn.qkv.weight, sd["blocks.3.attn.qkv.weight"])
    # A 224 model reloaded at 224: exactly the same function.
    m224 = build_backbone("vit_small_patch16", pretrained=str(path), img_size=(224, 224)).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(m224.forward_features(x), src.eval().forward_features(x), atol=1e-6)


def test_input_of_another_size_interpolates_the_embeddings():
    m = build_backbone("vit_small_patch16").eval()  # learned for 16 x 8
    with torch.no_grad():
        out = m.forward_tokens(torch.randn(1, 3, 64, 32))
    assert out.shape == (1, 1 + 4 * 2, 384)


def test_drop_path_is_stochastic_in_training_only():
    m = build_backbone("vit_small_patch16", drop_path=0.5)
    rates = [blk.drop_path.p for blk in m.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.5) and rates == sorted(rates)
    x = torch.randn(2, 3, 64, 32)
    m.train()
    torch.manual_seed(1)
    a = m.forward_features(x)
    torch.manual_seed(2)
    b = m.forward_features(x)
    assert not torch.allclose(a, b)
    m.eval()
    assert torch.equal(m.forward_features(x), m.forward_features(x))
    with pytest.raises(ReIDError, match="drop_path"):
        build_backbone("vit_small_patch16", drop_path=1.0)


def test_baseline_arch_with_vit_and_sie_passes_cameras():
    from reidkit.models.build import ModelConfig, build_model

    m = build_model(
        ModelConfig(backbone="vit_small_patch16", pretrained=False, stride_size=12, sie=True, num_cameras=2), 5
    ).eval()
    assert m.uses_camera and m.feat_dim == 384
    x = torch.randn(1, 3, 64, 32).expand(2, -1, -1, -1)
    with torch.no_grad():
        f = m(x, cams=torch.tensor([0, 1]))
    assert f.shape == (2, 384) and (f[0] - f[1]).abs().max() > 1e-4
    with pytest.raises(ReIDError, match="model.sie does not apply"):
        build_model(ModelConfig(backbone="resnet18", pretrained=False, sie=True, num_cameras=2), 5)


def test_default_weights_name_the_url_and_fail_clearly_offline(monkeypatch):
    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ReIDError, match="jx_vit_base_p16_224-80ecf9dd.pth"):
        build_backbone("vit_base_patch16", pretrained=True)


def test_interpolate_mode_is_float32_safe_in_bf16():
    pe = torch.randn(1, 1 + 14 * 14, 4).to(torch.bfloat16)
    out = resize_pos_embed(pe, (14, 14))
    assert out.dtype == torch.bfloat16 and torch.equal(out, pe)
