"""Foreign checkpoints (fast-reid, torchreid, reid-strong-baseline, TransReID, SOLIDER-REID).

Each test writes a checkpoint in the foreign layout (random weights under the foreign names),
loads it through ``load_model`` and compares the features with a literal, functional
re-implementation of that project's inference forward, which reads the tensors by the foreign
names (cosine >= 0.9999 and allclose).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reidkit.errors import ReIDError
from reidkit.models.backbones.resnet import build_resnet, spec
from reidkit.models.loading import load_model
from reidkit.models.interop import FORMATS, detect_format, load_foreign


def _randomize(sd: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random values for every float tensor (BN statistics positive), so no layer is an identity."""
    out = {}
    for k, v in sd.items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=gen) + 0.5
        elif k.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "running_mean")) or ".BN." in k or ".IN." in k:
            out[k] = torch.randn(v.shape, generator=gen) * 0.1 + (0 if "mean" in k or k.endswith("bias") else 1)
        else:
            out[k] = v.clone() + torch.randn(v.shape, generator=gen) * 0.02
    return out


def _bn_params(dim: int, gen: torch.Generator, prefix: str) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.rand(dim, generator=gen) + 0.5,
        f"{prefix}.bias": torch.randn(dim, generator=gen) * 0.1,
        f"{prefix}.running_mean": torch.randn(dim, generator=gen) * 0.1,
        f"{prefix}.running_var": torch.rand(dim, generator=gen) + 0.5,
        f"{prefix}.num_batches_tracked": torch.tensor(7),
    }


def _cos_ok(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    cos = F.cosine_similarity(a, b, dim=1)
    assert float(cos.min()) >= 0.9999, cos
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()))


# ----------------------------------------------------------------------------- literal ResNet forward


def _bn(x, sd, p):
    return F.batch_norm(
        x,
        sd[f"{p}.running_mean"].reshape(-1),
        sd[f"{p}.running_var"].reshape(-1),
        sd[f"{p}.weight"].reshape(-1),
        sd[f"{p}.bias"].reshape(-1),
        False,
        0.0,
        1e-5,
    )


def _norm1(x, sd, p):
    if f"{p}.IN.weight" in sd:  # IBN-a: IN on the first half of the channels, BN on the rest
        half = sd[f"{p}.IN.weight"].numel()
        a = F.instance_norm(x[:, :half], weight=sd[f"{p}.IN.weight"], bias=sd[f"{p}.IN.bias"], eps=1e-5)
        return torch.cat([a, _bn(x[:, half:], sd, f"{p}.BN")], 1)
    return _bn(x, sd, p)


def _block(x, sd, p, stride):
    if f"{p}.conv3.weight" in sd:
        out = F.relu(_norm1(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
        out = F.relu(_bn(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1), sd, f"{p}.bn2"))
        out = _bn(F.conv2d(out, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
    else:
        out = F.relu(_norm1(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1), sd, f"{p}.bn1"))
        out = _bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
    if f"{p}.downsample.0.weight" in sd:
        x = _bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
    return F.relu(out + x)


def _nonlocal(x, sd, p):
    b, _, h, w = x.shape
    g = F.conv2d(x, sd[f"{p}.g.weight"], sd[f"{p}.g.bias"]).flatten(2)
    theta = F.conv2d(x, sd[f"{p}.theta.weight"], sd[f"{p}.theta.bias"]).flatten(2)
    phi = F.conv2d(x, sd[f"{p}.phi.weight"], sd[f"{p}.phi.bias"]).flatten(2)
    f = torch.einsum("bcn,bcm->bnm", theta, phi) / phi.shape[-1]
    y = torch.einsum("bnm,bcm->bcn", f, g).reshape(b, -1, h, w)
    return x + _bn(F.conv2d(y, sd[f"{p}.W.0.weight"], sd[f"{p}.W.0.bias"]), sd, f"{p}.W.1")


def _resnet(x, sd, pre, *, stem_relu=True, pool="torchvision", last_stride=1):
    x = _bn(F.conv2d(x, sd[f"{pre}conv1.weight"], stride=2, padding=3), sd, f"{pre}bn1")
    if stem_relu:
        x = F.relu(x)
    if pool == "fastreid":  # fast-reid: MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
        x = F.max_pool2d(x, 3, 2, 0, ceil_mode=True)
    elif pool == "transreid":  # TransReID's ResNet: MaxPool2d(kernel_size=2, stride=None, padding=0)
        x = F.max_pool2d(x, 2)
    else:
        x = F.max_pool2d(x, 3, 2, 1)
    for stage in range(1, 5):
        n = 0
        while f"{pre}layer{stage}.{n}.conv1.weight" in sd:
            n += 1
        nl = 0
        while f"{pre}NL_{stage}.{nl}.g.weight" in sd:
            nl += 1
        nl_idx = sorted(n - (i + 1) for i in range(nl))
        for i in range(n):
            stride = (1 if stage == 1 else 2 if stage < 4 else last_stride) if i == 0 else 1
            x = _block(x, sd, f"{pre}layer{stage}.{i}", stride)
            if i in nl_idx:
                x = _nonlocal(x, sd, f"{pre}NL_{stage}.{nl_idx.index(i)}")
    return x


def _resnet_state(depth: int, gen: torch.Generator, **kw) -> dict[str, torch.Tensor]:
    return _randomize(build_resnet(spec(depth, **kw)).state_dict(), gen)


# ----------------------------------------------------------------------------- fast-reid


def _fastreid_ckpt(gen, depth=18, ibn=None, nl=(0, 0, 0, 0), gem=True, embed=0, pixel=True, prefix=""):
    sd = {f"backbone.{k}": v for k, v in _resnet_state(depth, gen, ibn=ibn).items()}
    widths = [c * (4 if depth >= 50 else 1) for c in (64, 128, 256, 512)]
    for s, count in enumerate(nl, start=1):
        for j in range(count):
            c, inter = widths[s - 1], (1 if j == 0 else 8)  # fast-reid's own blocks have 1 inner channel
            p = f"backbone.NL_{s}.{j}"
            for name in ("g", "theta", "phi"):
                sd[f"{p}.{name}.weight"] = torch.randn(inter, c, 1, 1, generator=gen) * 0.05
                sd[f"{p}.{name}.bias"] = torch.randn(inter, generator=gen) * 0.05
            sd[f"{p}.W.0.weight"] = torch.randn(c, inter, 1, 1, generator=gen) * 0.1
            sd[f"{p}.W.0.bias"] = torch.randn(c, generator=gen) * 0.1
            sd.update(_bn_params(c, gen, f"{p}.W.1"))
    dim = widths[3]
    if gem:
        sd["heads.pool_layer.p"] = torch.tensor([3.3])
    idx = 0
    if embed:
        sd["heads.bottleneck.0.weight"] = torch.randn(embed, dim, 1, 1, generator=gen) * 0.05
        dim, idx = embed, 1
    sd.update({k: v.reshape(-1) for k, v in _bn_params(dim, gen, f"heads.bottleneck.{idx}").items()})
    sd["heads.weight"] = torch.randn(11, dim, generator=gen)
    if pixel:
        sd["pixel_mean"] = torch.tensor([120.0, 110.0, 100.0]).view(1, 3, 1, 1)
        sd["pixel_std"] = torch.tensor([60.0, 55.0, 50.0]).view(1, 3, 1, 1)
    sd = {prefix + k: v for k, v in sd.items()}
    return {"model": sd, "iteration": 10, "optimizer": {}}


def _fastreid_reference(img255, sd, embed=False):
    """fast-reid eval: (img - pixel_mean) / pixel_std -> ResNet (+NL) -> GeM/avg -> bottleneck -> post-BN."""
    mean = sd.get("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1))
    std = sd.get("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1))
    fmap = _resnet((img255 - mean) / std, sd, "backbone.", pool="fastreid")
    if "heads.pool_layer.p" in sd:
        p = sd["heads.pool_layer.p"]
        pooled = F.adaptive_avg_pool2d(fmap.clamp(min=1e-6).pow(p), 1).pow(1.0 / p)
    else:
        pooled = F.adaptive_avg_pool2d(fmap, 1)
    idx = 0
    if embed:
        pooled = F.conv2d(pooled, sd["heads.bottleneck.0.weight"])
        idx = 1
    return _bn(pooled, sd, f"heads.bottleneck.{idx}")[..., 0, 0]


def _norm_input(img255, model):
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    return (img255 / 255.0 - mean) / std


def test_fastreid_agw_ibn_gem_nonlocal(tmp_path):
    gen = torch.Generator().manual_seed(1)
    ckpt = _fastreid_ckpt(gen, depth=50, ibn="a", nl=(0, 2, 1, 0))
    path = tmp_path / "agw.pth"
    torch.save(ckpt, path)
    model = load_model(path)
    assert model.source_format == "fastreid" and model.input_size == [256, 128]
    assert model.feat_dim == 2048 and model.source_arch == "resnet50_ibn_a_nl"
    # the 0-255 pixel buffers become [0, 1] mean/std
    assert model.mean == pytest.approx([120 / 255, 110 / 255, 100 / 255])
    assert model.std == pytest.approx([60 / 255, 55 / 255, 50 / 255])
    img = torch.rand(2, 3, 64, 32, generator=gen) * 255
    with torch.no_grad():
        ours = model(_norm_input(img, model))
        ref = _fastreid_reference(img, ckpt["model"])
    _cos_ok(ours, ref)


def test_fastreid_embedding_avgpool_module_prefix_default_pixels(tmp_path):
    gen = torch.Generator().manual_seed(2)
    ckpt = _fastreid_ckpt(gen, depth=18, gem=False, embed=32, pixel=False, prefix="module.")
    path = tmp_path / "bot.pth"
    torch.save(ckpt, path)
    model = load_model(path, input_size=(128, 64))
    assert model.input_size == [128, 64] and model.feat_dim == 32
    assert model.mean == pytest.approx([0.485, 0.456, 0.406], abs=1e-6)
    img = torch.rand(2, 3, 64, 32, generator=gen) * 255
    sd = {k[len("module.") :]: v for k, v in ckpt["model"].items()}
    with torch.no_grad():
        _cos_ok(model(_norm_input(img, model)), _fastreid_reference(img, sd, embed=True))


def test_fastreid_unsupported_part_is_named(tmp_path):
    gen = torch.Generator().manual_seed(3)
    ckpt = _fastreid_ckpt(gen, depth=18)
    ckpt["model"]["heads.attention.weight"] = torch.zeros(3)
    with pytest.raises(ReIDError, match=r"heads\.attention\.weight"):
        load_foreign(ckpt)
    ckpt = _fastreid_ckpt(gen, depth=18)
    ckpt["model"] = {
        ("backbone.conv1.0.weight" if k == "backbone.conv1.weight" else k): v
        for k, v in ckpt["model"].items()
        if not k.startswith("backbone.layer")
    }
    with pytest.raises(ReIDError, match="only ResNet-family"):
        load_foreign(ckpt, fmt="fastreid")


# ----------------------------------------------------------------------------- reid-strong-baseline


def test_strong_baseline_no_stem_relu_neck_feat(tmp_path):
    gen = torch.Generator().manual_seed(4)
    sd = {f"base.{k}": v for k, v in _resnet_state(18, gen).items()}
    sd.update({k: v for k, v in _bn_params(512, gen, "bottleneck").items()})
    sd["classifier.weight"] = torch.randn(7, 512, generator=gen)
    path = tmp_path / "resnet18_model_120.pth"
    torch.save(sd, path)
    assert detect_format(sd) == "strong_baseline"
    img = torch.rand(2, 3, 64, 32, generator=gen)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (img - mean) / std
    # strong-baseline's plain ResNet: no ReLU after the stem BN, max pool padding 1, last stride 1.
    pooled = F.adaptive_avg_pool2d(_resnet(x, sd, "base.", stem_relu=False), 1).flatten(1)
    after = _bn(pooled, sd, "bottleneck")
    model = load_model(path)
    before_model = load_model(path, neck_feat="before")
    with torch.no_grad():
        _cos_ok(model(_norm_input(img * 255, model)), after)
        _cos_ok(before_model(x), pooled)
    assert model.source_format == "strong_baseline" and model.feat_dim == 512


def test_transreid_resnet50_baseline_by_name(tmp_path):
    gen = torch.Generator().manual_seed(11)
    sd = {f"base.{k}": v for k, v in _resnet_state(18, gen).items()}
    sd.update(_bn_params(512, gen, "bottleneck"))
    sd["classifier.weight"] = torch.randn(7, 512, generator=gen)
    path = tmp_path / "resnet50_120.pth"
    torch.save(sd, path)
    x = torch.randn(2, 3, 64, 32, generator=gen)
    model = load_model(path, fmt="transreid")
    with torch.no_grad():
        pooled = F.adaptive_avg_pool2d(_resnet(x, sd, "base.", stem_relu=False, pool="transreid"), 1).flatten(1)
        _cos_ok(model(x), _bn(pooled, sd, "bottleneck"))
        # detected (no name) it is reid-strong-baseline, whose stem pool differs
        other = load_model(path)(x)
    assert other.shape == (2, 512) and not torch.allclose(other, model(x).detach())


# ----------------------------------------------------------------------------- torchreid


def test_torchreid_resnet_fc512_and_plain(tmp_path):
    gen = torch.Generator().manual_seed(5)
    backbone = _resnet_state(18, gen)
    sd = dict(backbone)
    sd["fc.0.weight"] = torch.randn(64, 512, generator=gen) * 0.05
    sd["fc.0.bias"] = torch.randn(64, generator=gen) * 0.05
    sd.update(_bn_params(64, gen, "fc.1"))
    sd["classifier.weight"] = torch.randn(9, 64, generator=gen)
    sd["classifier.bias"] = torch.randn(9, generator=gen)
    path = tmp_path / "model.pth.tar-60"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 60, "rank1": 0.9}, path)
    model = load_model(path)
    assert model.source_format == "torchreid" and model.feat_dim == 64
    img = torch.rand(2, 3, 64, 32, generator=gen)
    x = _norm_input(img * 255, model)
    with torch.no_grad():
        # torchreid eval: v = relu(bn(fc(avgpool(resnet(x))))); resnet50_fc512 uses last stride 1
        v = F.adaptive_avg_pool2d(_resnet(x, sd, "", last_stride=1), 1).flatten(1)
        v = F.relu(_bn(F.linear(v, sd["fc.0.weight"], sd["fc.0.bias"]), sd, "fc.1"))
        _cos_ok(model(x), v)
    # plain torchreid resnet: the pooled map, last stride 2
    plain = dict(
        backbone, **{"classifier.weight": torch.randn(9, 512, generator=gen), "classifier.bias": torch.zeros(9)}
    )
    model = load_foreign(plain)
    with torch.no_grad():
        ref = F.adaptive_avg_pool2d(_resnet(x, plain, "", last_stride=2), 1).flatten(1)
        _cos_ok(model(x), ref)


@pytest.mark.parametrize("variant", ["x0_25", "ain_x1_0"])
def test_torchreid_osnet(tmp_path, variant):
    from reidkit.models.backbones.osnet import osnet, osnet_ain_x1_0

    gen = torch.Generator().manual_seed(6)
    net = osnet_ain_x1_0() if variant == "ain_x1_0" else osnet(variant)
    width = net.out_channels
    sd = _randomize(net.state_dict(), gen)
    net.load_state_dict(sd)
    net.eval()
    sd["fc.0.weight"] = torch.randn(512, width, generator=gen) * 0.05
    sd["fc.0.bias"] = torch.randn(512, generator=gen) * 0.05
    sd.update(_bn_params(512, gen, "fc.1"))
    sd["classifier.weight"] = torch.randn(5, 512, generator=gen)
    sd["classifier.bias"] = torch.zeros(5)
    path = tmp_path / f"osnet_{variant}.pth"
    torch.save(sd, path)
    model = load_model(path)
    assert model.source_arch == f"osnet_{variant}" and model.feat_dim == 512
    x = torch.randn(2, 3, 64, 32, generator=gen)
    with torch.no_grad():
        # torchreid OSNet eval: v = fc(global_avgpool(conv5 map)), fc = Linear -> BN1d -> ReLU (512-d)
        v = net.forward_features(x).mean(dim=(2, 3))
        v = F.relu(_bn(F.linear(v, sd["fc.0.weight"], sd["fc.0.bias"]), sd, "fc.1"))
        _cos_ok(model(x), v)


# ----------------------------------------------------------------------------- TransReID


def _ln(x, sd, p):
    return F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-6)


def _vit_block(x, sd, p, heads):
    b, n, c = x.shape
    h = _ln(x, sd, f"{p}.norm1")
    qkv = F.linear(h, sd[f"{p}.attn.qkv.weight"], sd.get(f"{p}.attn.qkv.bias")).reshape(b, n, 3, heads, c // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-2, -1) * (c // heads) ** -0.5).softmax(-1)
    x = x + F.linear(
        (attn @ v).transpose(1, 2).reshape(b, n, c), sd[f"{p}.attn.proj.weight"], sd[f"{p}.attn.proj.bias"]
    )
    h = F.gelu(F.linear(_ln(x, sd, f"{p}.norm2"), sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"]))
    return x + F.linear(h, sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])


def _shuffle_unit(features, shift, group, begin=1):
    """TransReID's shuffle_unit, literally: shift, then patch shuffle in ``group`` groups."""
    b, _, dim = features.shape
    x = torch.cat([features[:, begin - 1 + shift :], features[:, begin : begin - 1 + shift]], dim=1)
    try:
        x = x.view(b, group, -1, dim)
    except RuntimeError:
        x = torch.cat([x, x[:, -2:-1, :]], dim=1).view(b, group, -1, dim)
    return torch.transpose(x, 1, 2).contiguous().view(b, -1, dim)


def _transreid_reference(img, sd, cams, heads, stride, neck_feat, lam=3.0):
    x = (img - 0.5) / 0.5
    t = F.conv2d(x, sd["base.patch_embed.proj.weight"], sd["base.patch_embed.proj.bias"], stride=stride)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd["base.cls_token"].expand(t.shape[0], -1, -1), t], 1)
    t = t + sd["base.pos_embed"] + lam * sd["base.sie_embed"][cams]
    depth = sum(1 for k in sd if k.startswith("base.blocks.") and k.endswith(".norm1.weight"))
    for i in range(depth - 1):
        t = _vit_block(t, sd, f"base.blocks.{i}", heads)
    glob = _ln(_vit_block(t, sd, "b1.0", heads), sd, "b1.1")[:, 0]
    length = (t.shape[1] - 1) // 4
    token = t[:, 0:1]
    xs = _shuffle_unit(t, 5, 2)
    locs = [
        _ln(_vit_block(torch.cat([token, xs[:, i * length : (i + 1) * length]], 1), sd, "b2.0", heads), sd, "b2.1")[
            :, 0
        ]
        for i in range(4)
    ]
    if neck_feat == "before":
        return torch.cat([glob] + [f / 4 for f in locs], 1)
    bns = [_bn(glob, sd, "bottleneck")] + [_bn(f, sd, f"bottleneck_{i + 1}") / 4 for i, f in enumerate(locs)]
    return torch.cat(bns, 1)


def _transreid_state(gen, dim=384, depth=3, cams=3, grid=(5, 2)):
    from reidkit.models.backbones.vit import VisionTransformer

    vit = VisionTransformer(
        embed_dim=dim, depth=depth, num_heads=6, img_size=(64, 32), stride_size=12, sie=True, num_cameras=cams
    )
    assert vit.grid == grid
    base = {f"base.{k}": v for k, v in _randomize(vit.state_dict(), gen).items()}
    base["base.fc.weight"] = torch.randn(1000, dim, generator=gen)
    base["base.fc.bias"] = torch.zeros(1000)
    block = {
        k[len(f"base.blocks.{depth - 1}.") :]: v for k, v in base.items() if k.startswith(f"base.blocks.{depth - 1}.")
    }
    sd = dict(base)
    for b in ("b1", "b2"):
        sd.update({f"{b}.0.{k}": v + torch.randn(v.shape, generator=gen) * 0.02 for k, v in block.items()})
        sd[f"{b}.1.weight"] = torch.rand(dim, generator=gen) + 0.5
        sd[f"{b}.1.bias"] = torch.randn(dim, generator=gen) * 0.1
    for i, suffix in enumerate(["", "_1", "_2", "_3", "_4"]):
        sd.update(_bn_params(dim, gen, f"bottleneck{suffix}"))
        sd[f"classifier{suffix}.weight"] = torch.randn(13, dim, generator=gen)
    return sd


def test_transreid_jpm_sie(tmp_path):
    gen = torch.Generator().manual_seed(7)
    sd = _transreid_state(gen)
    path = tmp_path / "transformer_120.pth"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    assert detect_format(sd) == "transreid"
    img = torch.rand(3, 3, 64, 32, generator=gen)
    cams = torch.tensor([0, 2, 1])
    for neck_feat in ("before", "after"):
        model = load_model(path, input_size=(64, 32), neck_feat=neck_feat)
        assert model.uses_camera and model.feat_dim == 5 * 384 and model.input_size == [64, 32]
        with torch.no_grad():
            ours = model((img - 0.5) / 0.5, cams=cams)
            ref = _transreid_reference(img, sd, cams, heads=6, stride=12, neck_feat=neck_feat)
        _cos_ok(ours, ref)
    assert "stride 12" in model.source_arch and "JPM" in model.source_arch


def test_transreid_plain_vit_without_sie_or_jpm(tmp_path):
    from reidkit.models.backbones.vit import VisionTransformer

    gen = torch.Generator().manual_seed(12)
    vit = VisionTransformer(embed_dim=384, depth=2, num_heads=6, img_size=(64, 32), stride_size=16)
    sd = {f"base.{k}": v for k, v in _randomize(vit.state_dict(), gen).items()}
    sd.update(_bn_params(384, gen, "bottleneck"))
    sd["classifier.weight"] = torch.randn(4, 384, generator=gen)
    img = torch.rand(2, 3, 64, 32, generator=gen)
    model = load_foreign(sd, input_size=(64, 32), neck_feat="after")
    assert not model.uses_camera and model.feat_dim == 384
    t = F.conv2d((img - 0.5) / 0.5, sd["base.patch_embed.proj.weight"], sd["base.patch_embed.proj.bias"], stride=16)
    t = torch.cat([sd["base.cls_token"].expand(2, -1, -1), t.flatten(2).transpose(1, 2)], 1) + sd["base.pos_embed"]
    for i in range(2):
        t = _vit_block(t, sd, f"base.blocks.{i}", 6)
    ref = _bn(_ln(t, sd, "base.norm")[:, 0], sd, "bottleneck")
    with torch.no_grad():
        _cos_ok(model((img - 0.5) / 0.5), ref)


# ----------------------------------------------------------------------------- SOLIDER-REID


def _solider_state(gen, sw=0.2):
    from reidkit.models.backbones.swin import SwinTransformer
    from reidkit.models.interop.solider import _CELL_ORDER

    net = SwinTransformer(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), semantic_weight=sw)
    own = _randomize(net.state_dict(), gen)
    net.load_state_dict(own)
    inv = [_CELL_ORDER.index(i) for i in range(4)]

    def to_unfold(t):  # original cell-major (k, c) order -> unfold channel-major (c, k) order
        c = t.shape[-1] // 4
        return t.reshape(*t.shape[:-1], 4, c)[..., inv, :].transpose(-1, -2).reshape(t.shape)

    sd = {}
    for k, v in own.items():
        k2 = (
            k.replace("patch_embed.proj", "patch_embed.projection")
            .replace("layers.", "stages.")
            .replace(".attn.", ".attn.w_msa.")
            .replace("mlp.fc1", "ffn.layers.0.0")
            .replace("mlp.fc2", "ffn.layers.1")
        )
        if ".downsample." in k:
            v = to_unfold(v)
        if k.startswith("norm."):
            k2 = k.replace("norm.", "norm3.")
        sd[f"base.{k2}"] = v
    for i, c in enumerate((16, 32, 64)):
        sd[f"base.norm{i}.weight"] = torch.ones(c)
        sd[f"base.norm{i}.bias"] = torch.zeros(c)
    sd["base.stages.0.blocks.0.attn.w_msa.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    sd["fcneck.weight"] = torch.randn(24, 128, generator=gen) * 0.1
    sd.update(_bn_params(24, gen, "bottleneck"))
    sd["classifier.weight"] = torch.randn(6, 24, generator=gen)
    return sd, net


def _solider_reference(img, sd, net, sw, neck_feat):
    """SOLIDER-REID eval with SOLIDER's unfold patch merging and semantic modulation (blocks: reidkit's Swin blocks)."""
    x = (img - 0.5) / 0.5
    x = F.conv2d(x, sd["base.patch_embed.projection.weight"], sd["base.patch_embed.projection.bias"], stride=4)
    hw = x.shape[2:]
    x = F.layer_norm(
        x.flatten(2).transpose(1, 2), (16,), sd["base.patch_embed.norm.weight"], sd["base.patch_embed.norm.bias"]
    )
    w = torch.tensor([[sw, 1 - sw]]).expand(x.shape[0], 2)
    for i in range(4):
        for blk in net.layers[i].blocks:
            x = blk(x, tuple(hw))
        out = x
        if i < 3:
            d = f"base.stages.{i}.downsample"
            m = F.unfold(x.transpose(1, 2).reshape(x.shape[0], -1, *hw), 2, stride=2).transpose(1, 2)
            m = F.layer_norm(m, m.shape[-1:], sd[f"{d}.norm.weight"], sd[f"{d}.norm.bias"])
            x = F.linear(m, sd[f"{d}.reduction.weight"])
            hw = (hw[0] // 2, hw[1] // 2)
        x = x * F.softplus(
            F.linear(w, sd[f"base.semantic_embed_w.{i}.weight"], sd[f"base.semantic_embed_w.{i}.bias"])
        ).unsqueeze(1) + F.linear(
            w, sd[f"base.semantic_embed_b.{i}.weight"], sd[f"base.semantic_embed_b.{i}.bias"]
        ).unsqueeze(1)
    out = F.layer_norm(out, out.shape[-1:], sd["base.norm3.weight"], sd["base.norm3.bias"])
    glob = F.linear(out.mean(1), sd["fcneck.weight"])
    return glob if neck_feat == "before" else _bn(glob, sd, "bottleneck")


def test_solider_swin_semantic(tmp_path):
    gen = torch.Generator().manual_seed(8)
    sd, net = _solider_state(gen)
    path = tmp_path / "swin_tiny_market.pth"
    torch.save(sd, path)
    assert detect_format(sd) == "solider"
    img = torch.rand(2, 3, 64, 32, generator=gen)
    for neck_feat in ("before", "after"):
        model = load_model(path, neck_feat=neck_feat, input_size=(64, 32))
        assert model.source_format == "solider" and model.feat_dim == 24
        with torch.no_grad():
            _cos_ok(model((img - 0.5) / 0.5), _solider_reference(img, sd, net, 0.2, neck_feat))


# ----------------------------------------------------------------------------- errors and plumbing


def test_unknown_and_corrupt_checkpoints(tmp_path):
    unknown = tmp_path / "mystery.pth"
    torch.save({"encoder.stem.weight": torch.zeros(2), "decoder.w": torch.zeros(1)}, unknown)
    with pytest.raises(ReIDError) as err:
        load_model(unknown)
    msg = str(err.value)
    assert "mystery.pth" in msg and "encoder.stem.weight" in msg
    assert all(name in msg for name in FORMATS.names())
    corrupt = tmp_path / "broken.pth"
    corrupt.write_bytes(b"\x00garbage, not a zip or pickle")
    with pytest.raises(ReIDError, match="broken.pth"):
        load_foreign(corrupt)
    with pytest.raises(ReIDError, match="did you mean 'fastreid'"):
        load_foreign({"a": torch.zeros(1)}, fmt="fastreidd")
    with pytest.raises(ReIDError, match="no ResNet backbone"):
        load_foreign({"conv.weight": torch.zeros(1), "classifier.weight": torch.zeros(1, 1)}, fmt="strong_baseline")


def test_fmt_forces_format_and_detection_order():
    gen = torch.Generator().manual_seed(9)
    sd = _fastreid_ckpt(gen, depth=18)
    assert detect_format(sd) == "fastreid"
    model = load_foreign(sd, fmt="fastreid", last_stride=2)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 32)).shape == (1, 512)
    with pytest.raises(ReIDError, match="unknown option"):
        load_foreign(sd, bogus=1)
    # a torchreid-layout file named as strong_baseline fails with a clear error, not a wrong model
    with pytest.raises(ReIDError, match="strong_baseline"):
        load_foreign(
            {"conv1.weight": torch.zeros(64, 3, 7, 7), "classifier.weight": torch.zeros(3, 512)}, fmt="strong_baseline"
        )


def test_foreign_checkpoints_export_with_parity(tmp_path):
    from reidkit.export import export_model, parity

    gen = torch.Generator().manual_seed(10)
    path = tmp_path / "fastreid_sbs.pth"
    torch.save(_fastreid_ckpt(gen, depth=18, nl=(0, 1, 0, 0)), path)
    onnx = export_model(path, "onnx", tmp_path / "sbs.onnx", size=(64, 32))
    with torch.no_grad():
        scale = float(load_model(path)(torch.randn(3, 3, 64, 32, generator=gen)).abs().max())
    assert parity(path, onnx) <= 1e-5 * max(scale, 1.0)  # relative to the feature magnitude
    tr = tmp_path / "transreid.pth"
    torch.save(_transreid_state(gen), tr)
    model = load_model(tr, input_size=(64, 32))
    ts = export_model(tr, "torchscript", tmp_path / "tr.ts", model=model)
    assert parity(tr, ts, model=model, trust=True) <= 1e-4


def test_foreign_weights_through_every_verb(tmp_path, capsys):
    """extract, index build, export and test take a fast-reid checkpoint as it is (--from or detected)."""
    import numpy as np
    from factories import synthetic_test_config
    from PIL import Image

    from reidkit.cli import main

    gen = torch.Generator().manual_seed(5)
    path = tmp_path / "sbs.pth"
    torch.save(_fastreid_ckpt(gen, depth=18), path)
    crops = tmp_path / "crops"
    crops.mkdir()
    for i in range(4):
        arr = (np.random.default_rng(i).random((64, 32, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(crops / f"{i + 1:04d}_c{i % 2 + 1}s1_{i:06d}_00.jpg")
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert (
        main(
            [
                "extract",
                "--weights",
                str(path),
                "--from",
                "fastreid",
                "--images",
                str(crops),
                "--out",
                str(a),
                "--size",
                "64",
                "32",
                "--no-flip",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "extract",
                "--weights",
                str(path),
                "--images",
                str(crops),
                "--out",
                str(b),
                "--size",
                "64",
                "32",
                "--no-flip",
            ]
        )
        == 0
    )
    fa, fb = np.load(a)["features"], np.load(b)["features"]
    assert fa.shape == (4, 512) and np.allclose(fa, fb)
    assert (
        main(
            [
                "index",
                "build",
                "--images",
                str(crops),
                "--db",
                str(tmp_path / "db"),
                "--weights",
                str(path),
                "--from",
                "fastreid",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "export",
                "--weights",
                str(path),
                "--from",
                "fastreid",
                "--format",
                "onnx",
                "--out",
                str(tmp_path / "m.onnx"),
            ]
        )
        == 0
    )
    assert "parity" in capsys.readouterr().out
    conf = synthetic_test_config(tmp_path)
    assert main(["test", "--config", str(conf), "--weights", str(path), "--from", "fastreid"]) == 0
    assert (tmp_path / "t" / "test" / "metrics.json").is_file()
    # a named format that does not fit the keys is one clear error
    assert (
        main(
            [
                "extract",
                "--weights",
                str(path),
                "--from",
                "solider",
                "--images",
                str(crops),
                "--out",
                str(tmp_path / "c.npz"),
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.count("error:") == 1
