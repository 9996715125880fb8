"""BatchNorm folded into the preceding convolution, for inference.

In eval mode a BatchNorm is an affine map per channel, ``y = (x - mu) / sqrt(var + eps) * g + b``,
so a convolution followed directly by it equals one convolution with rescaled weights and a new
bias (Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-
Only Inference", CVPR 2018, section 3.2). Which BN follows which convolution is read from one
forward pass on an example input (forward hooks: the BN's input must be the very tensor the
convolution returned), not from attribute names, so any backbone folds; the folded model's output is
checked against the original on that input and the original is kept when they differ.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["fold_batchnorm", "conv_bn_pairs"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _example(model: nn.Module) -> torch.Tensor:
    info = getattr(model, "info", None)
    h, w = info.input_size if info is not None else (256, 128)
    return torch.randn(2, 3, int(h), int(w), generator=torch.Generator().manual_seed(0))


def conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) pairs where the BN (in eval mode) consumes exactly that conv's output."""
    return _trace(model, example)[0]


def _trace(model: nn.Module, example: torch.Tensor) -> tuple[list[tuple[str, str]], Any]:
    """The conv -> BN pairs and the model's output on ``example`` (one forward pass gives both)."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # hold the outputs so their ids are not reused during the pass
    pairs: list[tuple[str, str]] = []
    used: set[str] = set()

    def conv_hook(mod: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            keep.append(out)
            produced[id(out)] = names[mod]

    def bn_hook(mod: nn.Module, args: Any) -> None:
        src = produced.get(id(args[0])) if args and isinstance(args[0], torch.Tensor) else None
        if src is not None and src not in used and not mod.training and mod.track_running_stats:
            pairs.append((src, names[mod]))
            used.add(src)

    handles = []
    for mod in model.modules():
        if isinstance(mod, _CONVS):
            handles.append(mod.register_forward_hook(conv_hook))
        elif (
            isinstance(mod, _BNS) and type(mod) in _BNS and mod.running_mean is not None and mod.running_var is not None
        ):
            # subclasses (ghost BN) may do more; a BN without running statistics normalises by the batch's
            handles.append(mod.register_forward_pre_hook(bn_hook))
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for h in handles:
            h.remove()
    return pairs, out


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None, atol: float = 1e-4) -> nn.Module:
    """A copy of ``model`` in eval mode with every conv -> BatchNorm pair folded into one conv.

    Pure: ``model`` is not changed. The copy is for inference only (its BN layers are gone). When
    the folded copy's output on ``example`` (default: a random batch at the model's input size)
    differs from the original's by more than ``atol`` relative to the feature scale, an unfolded
    eval copy is returned with a warning.
    """
    net = copy.deepcopy(model).eval()
    x = _example(model) if example is None else example
    try:
        pairs, ref = _trace(net, x)
    except Exception as exc:  # noqa: BLE001 - a model that does not run on the example stays as it is
        warnings.warn(f"fold_batchnorm: cannot trace {type(model).__name__} ({exc}); kept unfolded", stacklevel=2)
        return net
    if not pairs:
        return net
    for conv_name, bn_name in pairs:
        conv, bn = net.get_submodule(conv_name), net.get_submodule(bn_name)
        # as _trace paired them: a conv and a BatchNorm with running statistics
        assert isinstance(conv, _CONVS) and isinstance(bn, _BNS)
        assert bn.running_mean is not None and bn.running_var is not None
        # `net` is already a copy: the conv takes the folded weights in place (no second copy of it)
        conv.weight, conv.bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        _set(net, bn_name, nn.Identity())
    with torch.no_grad():
        got = net(x)
    # written so that a NaN difference (folded weights that are not finite) also keeps the original
    if (
        not isinstance(ref, torch.Tensor)
        or got.shape != ref.shape
        or not float((got - ref).abs().max()) <= atol * max(1.0, float(ref.abs().max()))
    ):
        warnings.warn(
            f"fold_batchnorm: folded {type(model).__name__} differs from the original; kept unfolded", stacklevel=2
        )
        return copy.deepcopy(model).eval()
    return net
