"""Ghost BatchNorm: N groups of one batch behave as N separate BatchNorm layers (one per GPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from reidkit.errors import ReIDError
from reidkit.models.ghost_bn import GhostBatchNorm1d, GhostBatchNorm2d, convert_ghost_bn


def _bn(kind: str, c: int = 4) -> nn.Module:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(c) if kind == "2d" else nn.BatchNorm1d(c)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    return bn


def _input(kind: str, b: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    shape = (b, 4, 3, 2) if kind == "2d" else (b, 4)
    # Each sample gets its own offset so the groups' statistics really differ.
    return torch.randn(*shape, generator=g) * 2.0 + torch.arange(b, dtype=torch.float32).view(
        b, *([1] * (len(shape) - 1))
    )


@pytest.mark.parametrize("kind", ["1d", "2d"])
@pytest.mark.parametrize("groups", [2, 4])
def test_ghost_equals_separate_bn_passes(kind: str, groups: int) -> None:
    """Outputs, input/weight/bias gradients and running stats against N literal BN copies."""
    ref = _bn(kind)
    ghost = convert_ghost_bn(nn.Sequential(copy.deepcopy(ref)), groups)[0]
    assert isinstance(ghost, GhostBatchNorm2d if kind == "2d" else GhostBatchNorm1d)
    copies = [copy.deepcopy(ref) for _ in range(groups)]
    x = _input(kind, 8)
    w = torch.randn_like(x, generator=torch.Generator().manual_seed(2))  # a non-trivial loss
    xa = x.clone().requires_grad_(True)
    out = ghost.train()(xa)
    (out * w).sum().backward()
    xb = x.clone().requires_grad_(True)
    parts = [bn.train()(chunk) for bn, chunk in zip(copies, xb.chunk(groups))]
    expect = torch.cat(parts)
    (expect * w).sum().backward()
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-5)
    # The shared affine parameters get the sum of the replicas' gradients (DDP all-reduce of a
    # loss that sums over the whole batch).
    torch.testing.assert_close(ghost.weight.grad, sum(c.weight.grad for c in copies), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ghost.bias.grad, sum(c.bias.grad for c in copies), atol=1e-5, rtol=1e-5)
    # Running stats: the mean of the N replicas' running stats (each updated from its sub-batch).
    torch.testing.assert_close(ghost.running_mean, torch.stack([c.running_mean for c in copies]).mean(0))
    torch.testing.assert_close(ghost.running_var, torch.stack([c.running_var for c in copies]).mean(0))
    assert int(ghost.num_batches_tracked) == 1
    # And by formula: group g's mean / unbiased variance over its samples (and spatial positions).
    dims = (0, 2, 3) if kind == "2d" else (0,)
    stats = [(c.mean(dims), c.var(dims, unbiased=True)) for c in x.chunk(groups)]
    m = ref.momentum
    torch.testing.assert_close(
        ghost.running_mean, (1 - m) * ref.running_mean + m * torch.stack([s[0] for s in stats]).mean(0)
    )
    torch.testing.assert_close(
        ghost.running_var, (1 - m) * ref.running_var + m * torch.stack([s[1] for s in stats]).mean(0)
    )


def test_ghost_differs_from_whole_batch_bn_and_eval_is_unchanged() -> None:
    ref = _bn("2d")
    ghost = convert_ghost_bn(nn.Sequential(copy.deepcopy(ref)), 2)[0]
    x = _input("2d", 8)
    assert not torch.allclose(ghost.train()(x), copy.deepcopy(ref).train()(x), atol=1e-3)
    ghost.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ghost.eval()(x), ref.eval()(x))


def test_cumulative_momentum_none() -> None:
    ref = _bn("1d")
    ref.momentum = None
    ghost = convert_ghost_bn(nn.Sequential(copy.deepcopy(ref)), 2)[0]
    copies = [copy.deepcopy(ref) for _ in range(2)]
    for step in range(2):
        x = _input("1d", 8) + step
        ghost.train()(x)
        for c, chunk in zip(copies, x.chunk(2)):
            c.train()(chunk)
    torch.testing.assert_close(ghost.running_mean, (copies[0].running_mean + copies[1].running_mean) / 2)


def test_indivisible_batch_and_single_sample_groups_raise() -> None:
    ghost = convert_ghost_bn(nn.Sequential(_bn("2d")), 4)[0].train()
    with pytest.raises(ReIDError, match=r"model.bn_groups=4.*batch of 6.*multiple of 4"):
        ghost(_input("2d", 6))
    ghost1d = convert_ghost_bn(nn.Sequential(_bn("1d")), 4)[0].train()
    with pytest.raises(ReIDError, match="no variance"):
        ghost1d(_input("1d", 4))
    ghost.eval()(_input("2d", 6))  # eval mode has no groups: any batch size
    with pytest.raises(ReIDError, match="bn_groups"):
        convert_ghost_bn(nn.Sequential(_bn("1d")), 0)


def test_model_swap_keeps_names_params_and_checkpoints() -> None:
    from reidkit.models.build import ModelConfig, build_model

    torch.manual_seed(0)
    plain = build_model(ModelConfig(backbone="resnet18", pretrained=False), 5)
    torch.manual_seed(0)
    ghost = build_model(ModelConfig(backbone="resnet18", pretrained=False, bn_groups=2), 5)
    assert set(plain.state_dict()) == set(ghost.state_dict())
    kinds = [type(m) for m in ghost.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert kinds and all(k in (GhostBatchNorm1d, GhostBatchNorm2d) for k in kinds)
    assert not ghost.head.neck.bn.bias.requires_grad  # BNNeck's frozen bias stays frozen
    ghost.load_state_dict(plain.state_dict())  # checkpoints move both ways
    plain.load_state_dict(ghost.state_dict())
    x = torch.randn(4, 3, 64, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ghost.eval()(x), plain.eval()(x))
        out = ghost.train()(x)
    assert out["feat"].shape == (4, 512)
    with pytest.raises(ReIDError, match="bn_groups"):
        build_model(ModelConfig(backbone="resnet18", pretrained=False, bn_groups=0), 5)


def test_model_with_ghost_bn_equals_two_half_batch_passes() -> None:
    """A whole ResNet in training: groups=2 on 8 images == the plain model on each half of 4."""
    from reidkit.models.build import ModelConfig, build_model

    torch.manual_seed(0)
    plain = build_model(ModelConfig(backbone="resnet18", pretrained=False), 5)
    ghost = build_model(ModelConfig(backbone="resnet18", pretrained=False, bn_groups=2), 5)
    ghost.load_state_dict(plain.state_dict())
    x = torch.randn(8, 3, 64, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = ghost.train()(x)["feat"]
        halves = torch.cat([plain.train()(h)["feat"] for h in x.chunk(2)])
    torch.testing.assert_close(got, halves, atol=1e-4, rtol=1e-4)


def test_channels_last_and_bf16_autocast() -> None:
    ref = _bn("2d")
    ghost = convert_ghost_bn(nn.Sequential(copy.deepcopy(ref)), 2)[0].train()
    x = _input("2d", 4)
    y = ghost(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    copies = [copy.deepcopy(ref).train() for _ in range(2)]
    torch.testing.assert_close(y, torch.cat([c(h) for c, h in zip(copies, x.chunk(2))]), atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = ghost(x.to(torch.bfloat16))
    assert z.dtype == torch.bfloat16 and torch.isfinite(z.float()).all()
