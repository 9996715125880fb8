"""What a USL method is: its feature spaces, what a re-clustering round produces, and its loss.

The cluster trainer runs the shared loop (features -> pseudo labels -> sampler -> steps); a
method sees only a narrow :class:`USLContext` (its config and options, the device, a function for
the current features, the clustering round with the run's settings, the all-gather for memories
under DDP) and plugs in through this small interface:

- ``spaces()``: the feature spaces clustered and trained (global, or SSG's global/upper/lower);
- ``setup()``: one-time state built from the initial model (DEC's cluster centres);
- ``cluster(epoch, feats)``: pseudo labels of the round on rank 0 (default: ``ctx.cluster``, the
  pure :func:`reidkit.cluster.rounds.cluster_round` with the run's settings) -> :class:`Round`;
- ``prepare(round, feats)``: per-round training state on every rank (a memory, targets);
- ``loss(feats, idx)``: the loss of a batch from its space features and training-set indices;
- ``state_dict()/load_state_dict()``: what a checkpoint must carry to resume exactly.

A new method is one file with a subclass and one ``@register_usl_method("name")`` line; its own
options are a dataclass named by ``options = MyOptions`` (read from ``usl.<name>.*``, in
``self.opts``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from reidkit.cluster.rounds import Round

if TYPE_CHECKING:
    from reidkit.config.usl import UnsupervisedConfig

__all__ = ["Gather", "Round", "USLContext", "USLMethod"]

#: all-gather of (features, labels) across ranks (a memory's momentum update sees every rank's batch)
Gather = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass
class USLContext:
    """What a method may use of the run: nothing else of the trainer reaches it."""

    usl: "UnsupervisedConfig"
    options: Any  # the method's options dataclass (None: none declared)
    device: torch.device
    feat_dim: int
    seed: int
    features: Callable[[], dict[str, torch.Tensor]]  # current features per space (every rank takes part)
    cluster: Callable[..., Round]  # (epoch, feats, spaces) -> Round, the run's settings
    dataset_eps: float | None  # the DBSCAN eps of the run's dataset (None: rho rule)
    gather: Gather | None = None  # set under DDP: memories pass it to their update
    true_labels: np.ndarray | None = None  # for cluster reports only, never for training


class USLMethod:
    """Base of the unsupervised methods (see the module docstring)."""

    #: the options dataclass of this method (``usl.<name>.*``), or None
    options: type | None = None
    #: P x K batches over the pseudo labels (False: uniform random batches)
    pk_batches = True
    #: fewest pseudo identities a round needs to train
    min_clusters = 1

    def __init__(self, ctx: USLContext) -> None:
        self.ctx = ctx
        self.usl = ctx.usl
        self.opts = ctx.options
        self.device = ctx.device

    @classmethod
    def check_config(cls, usl: "UnsupervisedConfig") -> None:
        """Method-specific checks of the ``usl`` section (ReIDError naming the key)."""

    def spaces(self) -> list[str]:
        """Feature spaces this method clusters and trains."""
        return ["global"]

    def setup(self) -> None:
        """One-time state from the initial model (after the model is built, before the optimiser)."""

    def extra_modules(self) -> list[nn.Module]:
        """Modules outside the model that the optimiser trains (e.g. DEC's centres)."""
        return []

    def cluster(self, epoch: int, feats: dict[str, torch.Tensor]) -> Round:
        """Pseudo labels of this round (rank 0): DBSCAN in every space, outliers handled by ``usl.outliers``."""
        return self.ctx.cluster(epoch, feats, self.spaces())

    def prepare(self, rnd: Round, feats: dict[str, torch.Tensor]) -> None:
        """Per-round training state on every rank (memory, targets) from the round's labels."""

    def loss(self, feats: dict[str, torch.Tensor], idx: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, float]]:
        """The loss of a batch: its space features and training-set indices -> (total or None, parts)."""
        raise NotImplementedError

    def after_update(self, iteration: int) -> None:
        """Called after each parameter update."""

    def state_dict(self) -> dict[str, Any]:
        """State a checkpoint carries (beyond what ``prepare`` rebuilds each epoch)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
