"""Optimisation: learning-rate schedules, optimisers, and the one step object both trainers use.

``OptimStep.update(loss)`` is the whole parameter update behind one call (as mmengine's
``OptimWrapper.update_params``): zero the gradients, backward (scaled by a GradScaler under fp16
autocast), post-backward hooks (e.g. averaging gradients of modules outside DDP), unscale and
clip, step the main optimiser and the extra ones (the center loss's own SGD with its gradient
rescale), update the scaler. A non-finite loss is refused before anything moves: ``update``
returns False and the NaN guard handler stops the run.

Learning-rate schedule: a factor of ``solver.base_lr`` computed from the training progress ``t``
in epochs. With ``solver.sched_unit = "epoch"`` (the BoT paper) ``t`` is the index of the current
epoch, so the lr changes at epoch boundaries; with ``"iter"`` it is fractional (iteration /
iterations per epoch), so warmup and cosine move every iteration. Multistep decays always happen
at the epoch boundaries named in ``solver.steps``.

fast-reid's (detectron2's) form, for its recipes: ``solver.warmup_iters > 0`` warms up linearly
per iteration over that many iterations (from ``warmup_factor``), whatever ``sched_unit``; with
``solver.steps_after_warmup`` the multistep milestones count the epochs finished after the one
in which the warmup ended (fast-reid steps its MultiStepLR only from then on), so milestone m
takes effect at epoch index ``m + ceil(warmup_iters / epoch_length) - 1``.
``solver.sched_epoch_offset`` (reid-strong-baseline: 1) runs the schedule that many epochs ahead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reidkit.config.schema import SolverConfig
from reidkit.errors import ReIDError

__all__ = [
    "ExtraOptimizer",
    "OptimStep",
    "amp_dtype",
    "build_optimizer",
    "build_scheduler",
    "lr_factor",
    "param_groups",
    "solver_param_groups",
]


def lr_factor(solver: SolverConfig | Any, t: float, epoch_length: int | None = None) -> float:
    """Multiplier of `solver.base_lr` at training progress `t` (epochs since the start).

    ``solver`` is the ``solver`` section (a whole Config is accepted for older callers);
    ``epoch_length`` (iterations per epoch) is needed by ``solver.warmup_iters``.
    """
    s = getattr(solver, "solver", solver)
    # reid-strong-baseline steps its epoch scheduler at every epoch start after the constructor's
    # own step, so its epoch k (1-based) already runs with the schedule's epoch k: offset 1.
    t = t + float(getattr(s, "sched_epoch_offset", 0) or 0)
    epoch = math.floor(t + 1e-9)
    warmup_iters = int(getattr(s, "warmup_iters", 0) or 0)
    if warmup_iters > 0 and s.scheduler == "warmup_multistep":
        if not epoch_length:
            raise ReIDError("config key 'solver.warmup_iters' needs the epoch length (iterations per epoch)")
        it = min(round(t * epoch_length), warmup_iters)
        alpha = it / warmup_iters
        warm_f = s.warmup_factor * (1.0 - alpha) + alpha
        offset = math.ceil(warmup_iters / epoch_length) - 1 if getattr(s, "steps_after_warmup", False) else 0
        decays = sum(1 for step in s.steps if epoch >= step + offset)
        return warm_f * s.gamma**decays
    if s.sched_unit == "epoch":
        t = float(epoch)
    warm = s.warmup_epochs if s.scheduler in ("warmup_multistep", "warmup_cosine") else 0
    if warm > 0 and t < warm:
        warm_f = s.warmup_factor + (1.0 - s.warmup_factor) * t / warm
    else:
        warm_f = 1.0
    if s.scheduler == "warmup_multistep":
        decays = sum(1 for step in s.steps if epoch >= step)
        return warm_f * s.gamma**decays
    # Cosine from 1 down to min_lr_factor over the epochs after warmup.
    span = max(s.max_epochs - warm, 1)
    progress = min(max(t - warm, 0.0) / span, 1.0)
    cos = s.min_lr_factor + (1.0 - s.min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return warm_f * cos if t < warm else cos


def build_optimizer(solver: SolverConfig | Any, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD over the parameter groups (each group keeps its own lr and decay)."""
    s = getattr(solver, "solver", solver)
    betas = tuple(getattr(s, "adam_betas", (0.9, 0.999)))
    if s.optimizer == "adam":
        return torch.optim.Adam(groups, lr=s.base_lr, weight_decay=s.weight_decay, amsgrad=s.amsgrad, betas=betas)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=s.base_lr, weight_decay=s.weight_decay, amsgrad=s.amsgrad, betas=betas)
    return torch.optim.SGD(groups, lr=s.base_lr, momentum=s.momentum, weight_decay=s.weight_decay)


def build_scheduler(
    solver: SolverConfig, optimizer: torch.optim.Optimizer, epoch_length: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration LambdaLR following :func:`lr_factor` (``epoch_length`` iterations per epoch)."""
    length = max(int(epoch_length), 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(solver, it / length, length))


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``solver.amp`` on ``device`` (fp16 is refused off CUDA)."""
    if amp == "fp16" and device.type != "cuda":
        raise ReIDError(
            "config key 'solver.amp' is 'fp16', which needs a CUDA device (fp16 autocast and the "
            f"grad scaler do not run on {device.type}); use solver.amp=bf16 or none on CPU"
        )
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)


@dataclass
class ExtraOptimizer:
    """An optimiser outside the schedule (e.g. the center loss's SGD) and a hook run before its step."""

    optimizer: torch.optim.Optimizer
    before_step: Callable[[], None] | None = None


class OptimStep:
    """AMP (bf16, or fp16 with a GradScaler), clipping and extra optimisers behind ``update(loss)``."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        amp: str = "none",
        grad_clip: float = 0.0,
        clip_params: Iterable[torch.nn.Parameter] | None = None,
        extras: list[ExtraOptimizer] | None = None,
        after_backward: list[Callable[[], None]] | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.device = device
        self.dtype = amp_dtype(amp, device)
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        self.grad_clip = float(grad_clip)
        self.clip_params = (
            list(clip_params) if clip_params is not None else [p for g in optimizer.param_groups for p in g["params"]]
        )
        self.extras = list(extras or [])
        self.after_backward = list(after_backward or [])

    def autocast(self) -> Any:
        """The autocast context of the configured precision (a no-op for fp32)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @property
    def lr(self) -> float:
        """The largest learning rate of the main optimiser's groups."""
        return float(max(g["lr"] for g in self.optimizer.param_groups))

    def update(self, loss: torch.Tensor) -> bool:
        """One parameter update from ``loss``; False (nothing moved) when the loss is not finite."""
        if not bool(torch.isfinite(loss.detach())):
            return False
        optimizers = [self.optimizer, *(e.optimizer for e in self.extras)]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        for hook in self.after_backward:
            hook()
        if self.grad_clip > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.clip_params, self.grad_clip)
        self._step(self.optimizer)
        for extra in self.extras:
            if self.scaler is not None:
                self.scaler.unscale_(extra.optimizer)
            if extra.before_step is not None:
                extra.before_step()
            self._step(extra.optimizer)
        if self.scaler is not None:
            self.scaler.update()
        return True

    def _step(self, opt: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(opt)
        else:
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        """Optimiser, extra optimisers and scaler states (for checkpoints)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "extras": [e.optimizer.state_dict() for e in self.extras],
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.optimizer.load_state_dict(state["optimizer"])
        for extra, st in zip(self.extras, state.get("extras") or []):
            if st:
                extra.optimizer.load_state_dict(st)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


# ----------------------------------------------------------------------------- parameter groups

_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


def param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    backbone_lr_factor: float = 1.0,
    head_lr_factor: float = 1.0,
    bias_lr_factor: float = 1.0,
    no_decay_norm: bool = False,
    extra_modules: Iterable[nn.Module] = (),
) -> list[dict[str, Any]]:
    """Optimiser groups: backbone vs head lr factors, bias lr factor, optional no-decay norms/biases.

    Parameters under ``backbone.`` use ``backbone_lr_factor``; the rest of ``model`` and all of
    ``extra_modules`` (e.g. learnable loss weights) use ``head_lr_factor``. With
    ``no_decay_norm`` normalisation weights, biases and GeM's p get weight decay 0. Frozen
    parameters are skipped; every trainable parameter lands in exactly one group.
    """
    from reidkit.models.heads import GeM

    inner = getattr(model, "module", None)  # unwrap DDP / DataParallel
    net = inner if isinstance(inner, torch.nn.Module) else model
    no_decay_ids: set[int] = set()
    for mod in [net, *extra_modules]:
        for sub in mod.modules():
            if isinstance(sub, (*_NORM_TYPES, GeM)):
                no_decay_ids.update(id(p) for p in sub.parameters(recurse=False))
    named: list[tuple[str, str, nn.Parameter]] = [
        ("backbone" if n.startswith("backbone.") else "head", n, p) for n, p in net.named_parameters()
    ]
    for i, mod in enumerate(extra_modules):
        named.extend(("head", f"extra{i}.{n}", p) for n, p in mod.named_parameters())
    groups: dict[tuple[str, bool, bool], dict[str, Any]] = {}
    seen: set[int] = set()
    for part, name, p in named:
        if not p.requires_grad or id(p) in seen:  # frozen, or shared/tied parameter
            continue
        seen.add(id(p))
        is_bias = name.endswith("bias")
        decay = not (no_decay_norm and (is_bias or id(p) in no_decay_ids))
        key = (part, is_bias, decay)
        if key not in groups:
            lr = base_lr * (backbone_lr_factor if part == "backbone" else head_lr_factor)
            if is_bias:
                lr *= bias_lr_factor
            groups[key] = {
                "params": [],
                "lr": lr,
                "weight_decay": weight_decay if decay else 0.0,
                "name": f"{part}{'.bias' if is_bias else ''}{'' if decay else '.no_decay'}",
            }
        groups[key]["params"].append(p)
    return list(groups.values())


def solver_param_groups(
    model: nn.Module, solver: SolverConfig, extra_modules: Iterable[nn.Module] = ()
) -> list[dict[str, Any]]:
    """:func:`param_groups` with a recipe's `solver` settings (base lr, weight decay, lr factors, no-decay rule):
    the groups the trainers optimise."""
    s = solver
    return param_groups(
        model,
        s.base_lr,
        s.weight_decay,
        s.backbone_lr_factor,
        s.head_lr_factor,
        s.bias_lr_factor,
        s.no_decay_norm,
        extra_modules,
    )
