"""What a USL method is: its feature spaces, what a re-clustering round produces, and its loss.

The cluster trainer runs the shared loop (features -> pseudo labels -> sampler -> steps); a
method plugs in through this small interface:

- ``spaces()``: the feature spaces clustered and trained (global, or SSG's global/upper/lower);
- ``setup()``: one-time state built from the initial model (DEC's cluster centres);
- ``cluster(epoch, feats)``: pseudo labels of the round on rank 0 (default: Jaccard + DBSCAN in
  every space, an image that is an outlier in any space left out) -> :class:`Round`;
- ``prepare(round, feats)``: per-round training state on every rank (a memory, targets);
- ``loss(feats, idx)``: the loss of a batch from its space features and training-set indices;
- ``state_dict()/load_state_dict()``: what a checkpoint must carry to resume exactly.

A new method is one file with a subclass and one ``@register_usl_method("name")`` line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from reidkit.errors import ReIDError

if TYPE_CHECKING:
    from reidkit.config.schema import UnsupervisedConfig
    from reidkit.engine.usl.trainer import ClusterTrainer

__all__ = ["Round", "USLMethod"]


@dataclass
class Round:
    """One re-clustering round: training labels (-1: not trained on), per-space labels, its report."""

    labels: np.ndarray
    space_labels: dict[str, np.ndarray] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


class USLMethod:
    """Base of the unsupervised methods (see the module docstring)."""

    #: the method may cluster part spaces (``usl.spaces`` beyond ``["global"]``)
    part_spaces = False
    #: P x K batches over the pseudo labels (False: uniform random batches)
    pk_batches = True
    #: fewest pseudo identities a round needs to train
    min_clusters = 1

    def __init__(self, trainer: "ClusterTrainer") -> None:
        self.trainer = trainer
        self.usl = trainer.usl
        self.device = trainer.device

    @classmethod
    def check_config(cls, usl: "UnsupervisedConfig") -> None:
        """Method-specific checks of the ``usl`` section (ReIDError naming the key)."""
        if usl.spaces != ["global"] and not cls.part_spaces:
            raise ReIDError(f"config key 'usl.spaces': method {usl.method!r} uses only the global space, "
                            f"got {usl.spaces} (part spaces are for ssg)")

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
        return self.trainer.cluster_spaces(epoch, feats, self.spaces())

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
