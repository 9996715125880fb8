"""Ghost BatchNorm: BatchNorm statistics over N groups of the batch, so one GPU matches N.

Recipes tuned on N GPUs with plain DDP (no SyncBN) normalise each GPU's sub-batch with its
own mean and variance (Hoffer et al. 2017, "Train longer, generalize better", call this ghost
batch norm). Cluster-contrast-style USL recipes depend on it: the same batch normalised as
one group trains a different (worse) model. ``GhostBatchNorm1d/2d`` reproduce the N-GPU
forward on one device: in training the batch is cut into N equal contiguous groups and each is
normalised with its own statistics, exactly as N separate BatchNorm layers would (outputs and
gradients; the shared weight and bias receive the sum of the N groups' gradients, as DDP's
all-reduce sums the replicas' gradients of a loss that is the mean over the whole batch).

Running statistics. Under DDP each replica updates its own running mean/var from its
sub-batch and rank 0's copy is the one saved. Here every group's update starts from the same
running value, and the stored value is the mean of the N group updates:
``r <- (1 - m) r + m * mean_g(stat_g)``. Because the update is linear, this is exactly the mean
of the N replicas' running statistics; rank 0's own copy differs from it only by which
random sub-batches it happened to see (an equally distributed estimate with more noise), so
the mean is the faithful equivalent with lower variance. The variance uses each group's
unbiased estimate, as BatchNorm's does per replica.

Eval mode is plain BatchNorm with the running statistics. A training batch whose size is not
a multiple of N raises ``ReIDError`` naming ``model.bn_groups`` (a P x K sampler's batch is
fixed, so make it a multiple of N); so does a BatchNorm1d group of a single sample, which has
no variance. The swap keeps the parameter and buffer names (``weight``, ``bias``,
``running_mean``, ``running_var``, ``num_batches_tracked``), so checkpoints load either way.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reidkit.errors import ReIDError

__all__ = ["GhostBatchNorm1d", "GhostBatchNorm2d", "convert_ghost_bn", "ghost_batch_norm"]


def ghost_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, groups: int) -> torch.Tensor:
    """Training-mode BatchNorm of ``x`` over ``groups`` equal slices of its batch (running stats: mean update)."""
    b, c = int(x.shape[0]), int(x.shape[1])
    if b % groups:
        raise ReIDError(
            f"model.bn_groups={groups}: the training batch of {b} samples does not split into {groups} "
            f"equal groups; make the batch size a multiple of {groups}"
        )
    per = b // groups
    spatial = tuple(x.shape[2:])
    if per * math.prod(spatial) < 2:
        raise ReIDError(
            f"model.bn_groups={groups}: a group of {per} sample(s) of size {spatial or (1,)} has no "
            f"variance for BatchNorm; use a larger batch or fewer groups"
        )
    # (B, C, *S) -> (B/N, N*C, *S): channel g*C + c holds channel c of group g, so one fused
    # batch_norm call computes all N x C statistics without a Python loop over the groups.
    folded = x.reshape(groups, per, c, *spatial).transpose(0, 1).reshape(per, groups * c, *spatial)
    weight = bn.weight.repeat(groups) if bn.weight is not None else None
    bias = bn.bias.repeat(groups) if bn.bias is not None else None
    mean, var, count = bn.running_mean, bn.running_var, bn.num_batches_tracked
    factor, run_mean, run_var = 0.0, None, None
    if bn.track_running_stats and mean is not None and var is not None and count is not None:
        count.add_(1)
        factor = (1.0 / float(count)) if bn.momentum is None else float(bn.momentum)
        run_mean, run_var = mean.repeat(groups), var.repeat(groups)
    out = F.batch_norm(folded, run_mean, run_var, weight, bias, True, factor, bn.eps)
    if mean is not None and var is not None and run_mean is not None and run_var is not None:
        with torch.no_grad():
            mean.copy_(run_mean.view(groups, c).mean(0))
            var.copy_(run_var.view(groups, c).mean(0))
    out = out.reshape(per, groups, c, *spatial).transpose(0, 1).reshape(x.shape)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)  # keep the layout the next conv expects
    return out


class _GhostMixin(nn.modules.batchnorm._BatchNorm):
    """Forward that uses ghost statistics in training when ``groups > 1`` (mixed in before
    BatchNorm1d/2d, whose input check and plain forward it calls)."""

    groups: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Ghost BN in training (``groups`` > 1), plain BatchNorm otherwise."""
        self._check_input_dim(x)
        if self.training and self.groups > 1:
            return ghost_batch_norm(self, x, self.groups)
        return super().forward(x)

    def extra_repr(self) -> str:
        """BatchNorm's repr plus the group count."""
        return f"{super().extra_repr()}, groups={self.groups}"


class GhostBatchNorm1d(_GhostMixin, nn.BatchNorm1d):
    """BatchNorm1d with ghost statistics over ``groups`` slices of the batch in training."""

    def __init__(self, num_features: int, groups: int = 1, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        self.groups = int(groups)


class GhostBatchNorm2d(_GhostMixin, nn.BatchNorm2d):
    """BatchNorm2d with ghost statistics over ``groups`` slices of the batch in training."""

    def __init__(self, num_features: int, groups: int = 1, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        self.groups = int(groups)


_SWAP: dict[type[nn.Module], type[GhostBatchNorm1d] | type[GhostBatchNorm2d]] = {
    nn.BatchNorm1d: GhostBatchNorm1d,
    nn.BatchNorm2d: GhostBatchNorm2d,
}


def _ghost_of(bn: nn.modules.batchnorm._BatchNorm, groups: int) -> nn.Module:
    cls = _SWAP[type(bn)]
    new = cls(
        bn.num_features,
        groups=groups,
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
    )
    # The same Parameter and buffer objects move over: requires_grad (BNNeck's frozen bias),
    # optimiser references and the device all stay as they were.
    for name, p in bn.named_parameters(recurse=False):
        setattr(new, name, p)
    for name, buf in bn.named_buffers(recurse=False):
        new.register_buffer(name, buf)
    new.train(bn.training)
    return new


def convert_ghost_bn(model: nn.Module, groups: int) -> nn.Module:
    """Swap every BatchNorm1d/2d in ``model`` for its ghost version with ``groups`` groups (in place).

    ``groups <= 1`` leaves the model as it is. Existing ghost layers get the new group count.
    SyncBatchNorm and other subclasses are left alone (they have their own statistics rule).
    """
    groups = int(groups)
    if groups < 1:
        raise ReIDError(f"model.bn_groups: must be >= 1, got {groups}")
    for mod in model.modules():
        if isinstance(mod, _GhostMixin):
            mod.groups = groups
    if groups == 1:
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in _SWAP and isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, _ghost_of(child, groups))
    return model
