"""Backbones: registry, shapes, published parameter counts, IBN/SE structure, pretrained loading."""

from __future__ import annotations

import logging
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from reidkit.errors import ReIDError
from reidkit.models.backbones import BACKBONES, build_backbone
from reidkit.models.backbones.resnet import IBN
from reidkit.models.pretrained import load_pretrained

NAMES = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext101_32x8d",
    "se_resnet50",
    "se_resnet101",
    "resnet50_ibn_a",
    "resnet101_ibn_a",
    "resnet50_ibn_b",
    "resnet101_ibn_b",
    "se_resnet50_ibn_a",
    "se_resnet101_ibn_a",
    "se_resnet50_ibn_b",
    "se_resnet101_ibn_b",
    "resnext101_32x8d_ibn_a",
    "se_resnext101_32x8d",
    "se_resnext101_32x8d_ibn_a",
    "efficientnet_lite0",
    "mobilenetv2",
]
CHANNELS = {
    n: 512 if n in ("resnet18", "resnet34") else 1280 if n in ("efficientnet_lite0", "mobilenetv2") else 2048
    for n in NAMES
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _meta(name: str, last_stride: int = 1) -> nn.Module:
    with torch.device("meta"):
        return build_backbone(name, last_stride=last_stride)


def _nparams(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _nbuffers(m: nn.Module) -> int:
    return sum(b.numel() for b in m.buffers())


# The field's later backbones (own test files: test_osnet.py, test_vit.py, test_swin.py).
NEWER = [
    "osnet_x1_0",
    "osnet_x0_75",
    "osnet_x0_5",
    "osnet_x0_25",
    "osnet_ain_x1_0",
    "vit_small_patch16",
    "vit_base_patch16",
    "swin_tiny",
    "swin_small",
    "swin_base",
]


def test_registry_has_exactly_the_documented_names():
    assert sorted(BACKBONES) == sorted(NAMES + NEWER)


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ReIDError, match="resnet50_ibn_a") as err:
        build_backbone("resnet51")
    assert "'resnet51'" in str(err.value) and "mobilenetv2" in str(err.value)


def test_bad_last_stride_rejected():
    with pytest.raises(ReIDError, match="last_stride"):
        build_backbone("resnet18", last_stride=3)


@pytest.mark.parametrize("name", NAMES)
def test_real_forward_on_reid_batch(name):
    model = build_backbone(name).eval()
    # real numbers at a quarter of the 256x128 pixels (the same layers; 256x128 itself on meta below)
    x = torch.randn(2, 3, 128, 64)
    with torch.inference_mode():
        y = model(x)
    # Default last_stride=1: overall stride 16, so 128x64 -> 8x4 (last_stride=2 on meta below).
    assert y.shape == (2, CHANNELS[name], 8, 4)
    assert model.out_channels == CHANNELS[name]
    assert model.last_stride == 1
    assert torch.isfinite(y).all() and y.abs().sum() > 0
    assert len(model.mean) == 3 and len(model.std) == 3


@pytest.mark.parametrize("name", NAMES)
def test_last_stride_2_halves_the_map_meta(name):
    # Shape inference only (the real forward above covers last_stride=1 at 128x64): 256x128 -> 8x4.
    model = _meta(name, last_stride=2)
    assert model.last_stride == 2
    y = model.forward_features(torch.empty(2, 3, 256, 128, device="meta"))
    assert tuple(y.shape) == (2, CHANNELS[name], 8, 4)


def test_last_stride_sets_layer4_first_block_and_downsample():
    for s in (1, 2):
        m = _meta("resnet50", s)
        assert m.layer4[0].conv2.stride == (s, s)
        assert m.layer4[0].downsample[0].stride == (s, s)
        assert m.layer3[0].conv2.stride == (2, 2)


def test_resnet_keeps_torchvision_layout():
    sd = _meta("resnet50").state_dict()
    # torchvision's resnet50 state dict has 320 entries; 2 of them are fc.weight / fc.bias.
    assert len(sd) == 318
    for key, shape in {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_var": (64,),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.weight": (256,),
        "layer3.5.conv2.weight": (256, 256, 3, 3),
        "layer4.2.bn3.weight": (2048,),
    }.items():
        assert tuple(sd[key].shape) == shape
    m = _meta("resnet50")
    for attr in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        assert hasattr(m, attr)
    # ResNeXt-101 32x8d: grouped 3x3 with 32 groups of 8 channels (width 256 in layer1), as torchvision.
    x = _meta("resnext101_32x8d")
    assert tuple(x.layer1[0].conv2.weight.shape) == (256, 8, 3, 3) and x.layer1[0].conv2.groups == 32
    assert tuple(x.layer4[0].conv1.weight.shape) == (2048, 1024, 1, 1)


def test_parameter_counts_match_published_architectures():
    # torchvision totals minus the ImageNet fc layer (2048*1000+1000 = 2,049,000; 512*1000+1000 = 513,000).
    published = {
        "resnet18": 11_689_512 - 513_000,
        "resnet34": 21_797_672 - 513_000,
        "resnet50": 25_557_032 - 2_049_000,
        "resnet101": 44_549_160 - 2_049_000,
        "resnet152": 60_192_808 - 2_049_000,
        "resnext101_32x8d": 88_791_336 - 2_049_000,
        # torchvision mobilenet_v2 3,504,872 minus its classifier 1280*1000+1000.
        "mobilenetv2": 3_504_872 - 1_281_000,
    }
    for name, n in published.items():
        assert _nparams(_meta(name)) == n, name
    assert _nparams(_meta("resnet50")) == 23_508_032


def test_ibn_a_parameter_count_and_buffers():
    r50, ibn = _meta("resnet50"), _meta("resnet50_ibn_a")
    # IBN(planes) = IN(planes/2, affine) + BN(planes/2): 2*planes affine params, exactly what BN(planes)
    # had, so IBN-Net50-a has ResNet-50's 23,508,032 parameters. Only running stats shrink: the IN half
    # keeps none, in 13 blocks of layer1-3 (3 x 32 + 4 x 64 + 6 x 128 = 1120 channels, mean and var).
    assert _nparams(ibn) == 23_508_032
    assert _nbuffers(r50) - _nbuffers(ibn) == 2 * (3 * 32 + 4 * 64 + 6 * 128) == 2240


def test_ibn_b_and_se_parameter_counts():
    # IBN-b: stem BN(64) -> IN(64) (same affine count) plus IN(256) after layer1 and IN(512) after
    # layer2: 2 * (256 + 512) = 1536 extra parameters.
    assert _nparams(_meta("resnet50_ibn_b")) == 23_508_032 + 1536
    # SE (bias-free, reduction 16) per bottleneck: 2 * C * C/16 for C = 256 x3, 512 x4, 1024 x6, 2048 x3.
    se = sum(n * 2 * c * (c // 16) for c, n in ((256, 3), (512, 4), (1024, 6), (2048, 3)))
    assert se == 2_514_944
    assert _nparams(_meta("se_resnet50")) == 23_508_032 + se


def test_ibn_a_placement_follows_ibn_net():
    m = _meta("resnet50_ibn_a")
    for li in (1, 2, 3):
        for block in getattr(m, f"layer{li}"):
            assert isinstance(block.bn1, IBN)
            assert block.bn1.in_planes == block.conv1.out_channels // 2
            assert block.IN is None
    assert all(isinstance(b.bn1, nn.BatchNorm2d) for b in m.layer4)
    assert isinstance(m.bn1, nn.BatchNorm2d)
    # Key names of the IBN-Net release, so resnet50_ibn_a-d9d0bb7b.pth loads by name.
    sd = m.state_dict()
    assert tuple(sd["layer1.0.bn1.IN.weight"].shape) == (32,)
    assert tuple(sd["layer1.0.bn1.BN.running_mean"].shape) == (32,)
    assert tuple(sd["layer3.5.bn1.IN.weight"].shape) == (128,)
    assert "layer4.0.bn1.running_mean" in sd


def test_ibn_b_placement_follows_ibn_net():
    m = _meta("resnet50_ibn_b")
    assert isinstance(m.bn1, nn.InstanceNorm2d) and m.bn1.affine
    with_in = [(li, i) for li in (1, 2, 3, 4) for i, b in enumerate(getattr(m, f"layer{li}")) if b.IN is not None]
    assert with_in == [(1, 2), (2, 3)]
    assert all(isinstance(b.bn1, nn.BatchNorm2d) for li in (1, 2, 3, 4) for b in getattr(m, f"layer{li}"))
    sd = m.state_dict()
    assert tuple(sd["layer2.3.IN.weight"].shape) == (512,)
    assert "bn1.running_mean" not in sd  # the stem IN keeps no running stats


def test_se_layout_and_gate():
    m = _meta("se_resnet101_ibn_a")
    sd = m.state_dict()
    assert tuple(sd["layer1.0.se.fc.0.weight"].shape) == (16, 256)
    assert tuple(sd["layer4.2.se.fc.2.weight"].shape) == (2048, 128)
    se = build_backbone("se_resnet50").layer1[0].se
    x = torch.randn(2, 256, 4, 4)
    gate = se(x) / x
    # One sigmoid gate per (sample, channel), constant over space, in (0, 1).
    assert torch.allclose(gate, gate[:, :, :1, :1].expand_as(gate), atol=1e-5)
    assert (gate > 0).all() and (gate < 1).all()


def test_ibn_normalises_first_half_per_instance():
    ibn = IBN(8).train()
    x = torch.randn(4, 8, 6, 5) * 3 + 2
    y = ibn(x)
    first = y[:, :4].flatten(2)
    assert torch.allclose(first.mean(-1), torch.zeros(4, 4), atol=1e-5)
    # The BN half is normalised over the batch, not per instance.
    second = y[:, 4:].transpose(0, 1).flatten(1)
    assert torch.allclose(second.mean(-1), torch.zeros(4), atol=1e-5)
    assert not torch.allclose(y[:, 4:].flatten(2).mean(-1), torch.zeros(4, 4), atol=1e-2)


# ---------------------------------------------------------------- pretrained loading


def _tv_layout_checkpoint(model: nn.Module) -> dict[str, torch.Tensor]:
    """A checkpoint as DataParallel + torchvision would save it: module. prefix, ImageNet fc."""
    sd = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    sd["module.fc.weight"] = torch.randn(1000, 512)
    sd["module.fc.bias"] = torch.randn(1000)
    return sd


def test_checkpoint_round_trip_through_local_file(tmp_path):
    src = build_backbone("resnet18")
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "resnet18.pth"
    torch.save({"epoch": 3, "state_dict": _tv_layout_checkpoint(src)}, path)

    dst = build_backbone("resnet18", pretrained=str(path))
    report = dst.pretrained_report
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert sorted(report.dropped) == ["fc.bias", "fc.weight"]
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    x = torch.randn(1, 3, 64, 32)
    src.eval(), dst.eval()
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    sd = build_backbone("resnet18").state_dict()
    sd["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    model = build_backbone("resnet18")
    with pytest.raises(ReIDError, match=r"layer2\.0\.conv1\.weight") as err:
        load_pretrained(model, str(path))
    assert "(128, 64, 5, 5)" in str(err.value) and "(128, 64, 3, 3)" in str(err.value)
    report = load_pretrained(model, str(path), strict_shapes=False)
    assert report.mismatched == [("layer2.0.conv1.weight", (128, 64, 5, 5), (128, 64, 3, 3))]


def test_missing_and_unexpected_keys_reported_and_logged(tmp_path, caplog):
    sd = build_backbone("resnet18").state_dict()
    del sd["layer1.0.bn1.weight"]
    sd["head.extra.weight"] = torch.zeros(3)
    sd["last_linear.weight"] = torch.zeros(1000, 512)
    model = build_backbone("resnet18")
    with caplog.at_level(logging.WARNING, logger="reidkit.models.pretrained"):
        report = load_pretrained(model, sd)
    assert report.missing == ["layer1.0.bn1.weight"]
    assert report.unexpected == ["head.extra.weight"]
    assert report.dropped == ["last_linear.weight"]
    assert "layer1.0.bn1.weight" in caplog.text and "head.extra.weight" in caplog.text


def test_wrapper_prefix_and_key_map():
    src = build_backbone("resnet18")
    sd = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    report = load_pretrained(build_backbone("resnet18"), sd)
    assert report.missing == [] and report.unexpected == []
    renamed = {k.replace("layer", "stage"): v for k, v in src.state_dict().items()}
    report = load_pretrained(build_backbone("resnet18"), renamed, key_map={"stage": "layer"})
    assert report.missing == [] and report.unexpected == []
    with pytest.raises(ReIDError, match="no key matches"):
        load_pretrained(build_backbone("resnet18"), {"foo.weight": torch.zeros(1)})


def test_unreachable_url_says_how_to_pass_a_local_file(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ReIDError) as err:
        build_backbone("resnet18", pretrained=True)
    msg = str(err.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert "model.pretrained=/path/to/resnet18-f37072fd.pth" in msg


def test_default_weight_sources():
    assert BACKBONES["resnet50"].weights.url.startswith("https://download.pytorch.org/models/resnet50-")
    assert BACKBONES["resnet50_ibn_a"].weights.url.endswith(
        "IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth"
    )
    assert BACKBONES["resnet101_ibn_b"].weights.url.endswith("resnet101_ibn_b-c55f6dba.pth")
    assert BACKBONES["se_resnet50"].weights is None


def test_pretrained_true_without_default_weights():
    with pytest.raises(ReIDError, match="se_resnet50.*no default pretrained weights.*model.pretrained=/path"):
        build_backbone("se_resnet50", pretrained=True)


def test_missing_local_file_names_path(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(ReIDError, match="nope.pth"):
        build_backbone("resnet18", pretrained=str(missing))
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ReIDError, match="garbage.pth"):
        build_backbone("resnet18", pretrained=str(bad))


# ---------------------------------------------------------------- real offline ImageNet weights


def _center_crop_224(img: np.ndarray, mean, std) -> torch.Tensor:
    im = Image.fromarray(img)
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.BILINEAR)
    w, h = im.size
    left, top = (w - 224) // 2, (h - 224) // 2
    im = im.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]


@pytest.fixture(scope="module")
def lite0():
    model = build_backbone("efficientnet_lite0", pretrained=True, last_stride=2).eval()
    return model


@pytest.fixture(scope="module")
def test_images():
    skdata = pytest.importorskip("skimage.data")
    return {"coffee": skdata.coffee(), "chelsea": skdata.chelsea()}


COFFEE = {504, 967, 968}  # coffee mug, espresso, cup
CAT = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_efficientnet_lite0_loads_all_shipped_weights(lite0):
    report = lite0.pretrained_report
    assert report.missing == [] and report.unexpected == [] and report.dropped == []
    assert len(report.loaded) == 296
    assert _nparams(lite0) == 4_652_008
    # The ImageNet classifier is kept for `classify` but frozen, so ReID training never updates it.
    assert not any(p.requires_grad for p in lite0._fc.parameters())


def test_efficientnet_lite0_classifies_imagenet_images(lite0, test_images):
    for name, classes in (("coffee", COFFEE), ("chelsea", CAT)):
        with torch.no_grad():
            logits = lite0.classify(_center_crop_224(test_images[name], lite0.mean, lite0.std))
        assert logits.shape == (1, 1000)
        top5 = set(logits[0].topk(5).indices.tolist())
        assert top5 & classes, (name, top5)
        assert logits[0].argmax().item() in classes, name


def test_efficientnet_lite0_normalisation_is_the_tf_one(lite0, test_images):
    # The weights are TF-converted: (x - 127) / 128 gives more probability to the true classes than
    # the ImageNet mean/std, on both images.
    assert lite0.mean == pytest.approx((127 / 255,) * 3) and lite0.std == pytest.approx((128 / 255,) * 3)
    for name, classes in (("coffee", COFFEE), ("chelsea", CAT)):
        probs = []
        for mean, std in ((lite0.mean, lite0.std), (IMAGENET_MEAN, IMAGENET_STD)):
            with torch.no_grad():
                p = lite0.classify(_center_crop_224(test_images[name], mean, std)).softmax(1)[0]
            probs.append(p[sorted(classes)].sum().item())
        assert probs[0] > probs[1], (name, probs)


def test_mobilenetv2_loads_deep_sort_weights_without_missing_keys(test_images):
    model = build_backbone("mobilenetv2", pretrained=True, last_stride=2).eval()
    report = model.pretrained_report
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == 312
    assert model.mean == IMAGENET_MEAN and model.std == IMAGENET_STD
    # Pretrained BN statistics are in place (a fresh BN has running_var == 1).
    assert not torch.allclose(model.features[0][1].running_var, torch.ones(32))
    with torch.no_grad():
        f = model(_center_crop_224(test_images["coffee"], model.mean, model.std))
    assert f.shape == (1, 1280, 7, 7)
    assert torch.isfinite(f).all() and f.min() >= 0 and f.max() <= 6
