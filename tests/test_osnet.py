"""OSNet / OSNet-AIN: parameter counts from the architecture table, shapes, torchreid-layout loading, recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from factories import assert_loss_goes_down, meta_params, train_recipe
from reidkit.errors import ReIDError
from reidkit.models.backbones import build_backbone
from reidkit.models.backbones.osnet import WIDTHS


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def bn(c: int) -> int:
    return 2 * c


def os_block(cin: int, cout: int) -> int:
    """Parameters of one omni-scale block, counted from the paper's description."""
    mid = cout // 4
    light = mid * mid + 9 * mid + bn(mid)  # pointwise 1x1, depthwise 3x3, BN
    gate = mid * (mid // 16) + mid // 16 + (mid // 16) * mid + mid
    total = cin * mid + bn(mid) + 10 * light + gate + mid * cout + bn(cout)  # streams of 1+2+3+4 lite convs
    if cin != cout:
        total += cin * cout + bn(cout)
    return total


def osnet_count(c0: int, c1: int, c2: int, c3: int) -> int:
    stem = 3 * c0 * 49 + bn(c0)
    trans = lambda c: c * c + bn(c)  # noqa: E731 - 1x1 conv + BN before the 2x2 average pool
    return (
        stem
        + os_block(c0, c1)
        + os_block(c1, c1)
        + trans(c1)
        + os_block(c1, c2)
        + os_block(c2, c2)
        + trans(c2)
        + os_block(c2, c3)
        + os_block(c3, c3)
        + c3 * c3
        + bn(c3)
    )


@pytest.mark.parametrize("width", list(WIDTHS))
def test_parameter_count_matches_the_architecture_table(width):
    assert meta_params(f"osnet_{width}") == osnet_count(*WIDTHS[width])


def test_osnet_x1_0_is_the_published_2_2m_with_torchreids_fc():
    """torchreid/REFERENCE: ~2.2 M for x1_0, which includes its 512-d fc (Linear 512x512 + BN1d)."""
    backbone = meta_params("osnet_x1_0")
    assert backbone == 1_905_828
    with_fc = backbone + 512 * 512 + 512 + 2 * 512
    assert with_fc == 2_169_508 and round(with_fc / 1e6, 1) == 2.2
    # OSNet-AIN swaps BatchNorms for affine InstanceNorms: the same count.
    assert meta_params("osnet_ain_x1_0") == backbone


@pytest.mark.parametrize("name,channels", [("osnet_x1_0", 512), ("osnet_x0_25", 128), ("osnet_ain_x1_0", 512)])
def test_forward_shape_at_256x128(name, channels):
    m = build_backbone(name).eval()
    with torch.no_grad():
        out = m.forward_features(torch.randn(2, 3, 256, 128))
    assert out.shape == (2, channels, 16, 8) and m.out_channels == channels
    assert tuple(m.mean) == (0.485, 0.456, 0.406) and tuple(m.std) == (0.229, 0.224, 0.225)


def test_torchreid_names_and_ain_instance_norm_positions():
    keys = set(build_backbone("osnet_x1_0").state_dict())
    for k in (
        "conv1.conv.weight",
        "conv1.bn.running_mean",
        "conv2.0.conv1.conv.weight",
        "conv2.0.conv2a.conv1.weight",
        "conv2.0.conv2d.3.conv2.weight",
        "conv2.0.gate.fc1.weight",
        "conv2.0.gate.fc2.bias",
        "conv2.0.conv3.bn.weight",
        "conv2.0.downsample.conv.weight",
        "conv2.2.0.conv.weight",
        "conv3.2.0.bn.weight",
        "conv4.1.conv3.conv.weight",
        "conv5.conv.weight",
    ):
        assert k in keys, k
    ain = build_backbone("osnet_ain_x1_0")
    akeys = set(ain.state_dict())
    for k in (
        "conv1.bn.weight",
        "conv2.0.conv2.3.layers.3.conv2.weight",
        "pool2.0.conv.weight",
        "pool3.0.bn.weight",
        "conv2.0.IN.weight",
        "conv4.0.IN.bias",
    ):
        assert k in akeys, k
    assert isinstance(ain.conv1.bn, torch.nn.InstanceNorm2d)
    with_in = [[blk.IN is not None for blk in stage] for stage in (ain.conv2, ain.conv3, ain.conv4)]
    assert with_in == [[True, True], [False, True], [True, False]]
    # The IN blocks drop the BN of their expansion (an IN follows it instead).
    assert ain.conv2[0].conv3.bn is None and ain.conv3[0].conv3.bn is not None


def test_block_forward_equals_the_formula():
    m = build_backbone("osnet_x0_25").eval()
    blk = m.conv2[0]
    x = torch.randn(2, 16, 16, 8)
    with torch.no_grad():
        x1 = blk.conv1(x)
        streams = [blk.conv2a(x1), blk.conv2b(x1), blk.conv2c(x1), blk.conv2d(x1)]

        def gate(t):  # one shared gate: sigmoid(fc2(relu(fc1(mean))))
            g = t.mean(dim=(2, 3), keepdim=True)
            g = torch.nn.functional.conv2d(g, blk.gate.fc1.weight, blk.gate.fc1.bias).relu()
            return t * torch.sigmoid(torch.nn.functional.conv2d(g, blk.gate.fc2.weight, blk.gate.fc2.bias))

        ref = torch.relu(blk.conv3(sum(gate(s) for s in streams)) + blk.downsample(x))
        assert torch.allclose(blk(x), ref, atol=1e-5)


@pytest.mark.parametrize("name", ["osnet_x1_0", "osnet_ain_x1_0"])
def test_torchreid_checkpoint_loads_by_key(tmp_path: Path, name):
    """torchreid layout: {"state_dict": ...}, `module.` prefix, fc + classifier heads (dropped)."""
    torch.manual_seed(0)
    src = build_backbone(name)
    sd = {f"module.{k}": v.clone() + 0.5 for k, v in src.state_dict().items() if v.is_floating_point()}
    sd.update(
        {
            "module.fc.0.weight": torch.randn(512, 512),
            "module.fc.0.bias": torch.zeros(512),
            "module.fc.1.weight": torch.ones(512),
            "module.fc.1.bias": torch.zeros(512),
            "module.classifier.weight": torch.randn(1000, 512),
            "module.classifier.bias": torch.zeros(1000),
        }
    )
    path = tmp_path / "osnet.pth"
    torch.save({"state_dict": sd, "epoch": 250}, path)
    m = build_backbone(name, pretrained=str(path))
    rep = m.pretrained_report
    assert rep.missing == [] and rep.unexpected == [], rep.summary()
    assert sorted(rep.dropped) == [
        "classifier.bias",
        "classifier.weight",
        "fc.0.bias",
        "fc.0.weight",
        "fc.1.bias",
        "fc.1.weight",
    ]
    assert torch.equal(m.conv5.conv.weight, sd["module.conv5.conv.weight"])


def test_default_weights_point_to_the_model_zoo():
    with pytest.raises(ReIDError, match="osnet_x1_0_imagenet.pth"):
        build_backbone("osnet_x1_0", pretrained=True)


def test_osnet_recipe_trains_and_the_loss_goes_down():
    trainer, losses = train_recipe("osnet_x1_0.yaml", warmup=True)
    assert trainer.cfg.solver.amsgrad and trainer.cfg.loss.names == ["softmax"]
    assert_loss_goes_down(losses)
