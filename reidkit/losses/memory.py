"""Contrastive memories for unsupervised ReID: cluster contrast, HHCL's hybrid, SpCL's instances.

Every memory keeps L2-normalised entries in a buffer and offers

* ``update(features, labels)``: the momentum update alone (no gradient), testable by itself;
* ``forward(features, labels) -> loss``: the contrastive loss on the normalised features. With
  ``update_in_backward=True`` (default, as the original methods do) the update runs inside the
  backward pass, after the gradient has been taken against the entries the forward used; with
  ``False`` the trainer calls ``update(features.detach(), labels)`` after the optimiser step.

Momentum convention (Cluster Contrast, Dai et al. 2021, Eq. 4, and its code):
``M[y] <- normalise(m * M[y] + (1 - m) * f)``: the momentum multiplies the *old entry*, so with
the default m = 0.1 an entry moves 90 % of the way toward the new feature. HHCL and SpCL use
the same form (m = 0.1 and m = 0.2).

A trainer calls ``reset(features, labels)`` once per epoch, after clustering, with the
re-extracted features and the pseudo labels.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reidkit.errors import ReIDError

__all__ = ["ClusterMemory", "HybridMemory", "InstanceMemory", "cluster_centroids"]


def _as_long(labels: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(
        np.asarray(labels) if not torch.is_tensor(labels) else labels, dtype=torch.long, device=device
    )


def cluster_centroids(
    features: torch.Tensor, labels: torch.Tensor | np.ndarray, num_clusters: int | None = None
) -> torch.Tensor:
    """L2-normalised mean of the (normalised) features of each cluster id >= 0 (C x D)."""
    features = F.normalize(torch.as_tensor(features).float(), dim=1)
    labels = _as_long(labels, features.device)
    keep = labels >= 0
    c = int(labels[keep].max()) + 1 if num_clusters is None else int(num_clusters)
    sums = torch.zeros(c, features.shape[1], device=features.device)
    sums.index_add_(0, labels[keep], features[keep])
    return F.normalize(sums, dim=1)


def _occurrence_rank(labels: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions carry the same label (0, 1, 2, ...)."""
    lab = labels.cpu().numpy()
    order = np.argsort(lab, kind="stable")
    s = lab[order]
    start = np.concatenate(([True], s[1:] != s[:-1]))
    group_start = np.maximum.accumulate(np.where(start, np.arange(len(s)), 0))
    rank = np.empty(len(s), dtype=np.int64)
    rank[order] = np.arange(len(s)) - group_start
    return torch.from_numpy(rank).to(labels.device)


def _hardest(features: torch.Tensor, labels: torch.Tensor, entries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per label in the batch: (label, index of its least similar instance to entries[label])."""
    sim = (features * entries[labels]).sum(1).cpu().numpy()
    lab = labels.cpu().numpy()
    order = np.lexsort((sim, lab))  # by label, then similarity; stable, so ties keep batch order
    first = np.concatenate(([True], lab[order][1:] != lab[order][:-1]))
    pick = order[first]
    dev = labels.device
    return torch.from_numpy(lab[pick]).to(dev), torch.from_numpy(pick).to(dev)


class _UpdateInBackward(torch.autograd.Function):
    """Identity in forward; in backward, hands the saved features to ``memory.update``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, labels: torch.Tensor, memory: _Memory) -> torch.Tensor:  # noqa: D401
        ctx.memory = memory
        ctx.save_for_backward(x.detach(), labels)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        x, labels = ctx.saved_tensors
        # Every use of the entries in this graph comes after this node in forward, so their
        # gradients are already taken; the forward also used a snapshot of the entries.
        gather = ctx.memory.gather
        ctx.memory.update(*(gather(x, labels) if gather is not None else (x, labels)))
        return grad, None, None


class _Memory(nn.Module):
    features: torch.Tensor  # a buffer (register_buffer): the memory entries, N x D

    def __init__(
        self,
        num_features: int,
        num_entries: int,
        temp: float,
        momentum: float,
        update_in_backward: bool,
        gather: Any = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ReIDError(f"momentum: expected a value in [0, 1), got {momentum!r}")
        if not temp > 0:
            raise ReIDError(f"temp: expected a positive temperature, got {temp!r}")
        self.num_features = int(num_features)
        self.temp = float(temp)
        self.momentum = float(momentum)
        self.update_in_backward = bool(update_in_backward)
        # Data-parallel training passes a function that all-gathers (features, labels) of every
        # rank's batch, so the momentum update sees the whole batch and every rank's memory stays equal.
        self.gather: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = gather
        self.register_buffer("features", torch.zeros(int(num_entries), self.num_features))

    def _mix(self, rows: torch.Tensor, new: torch.Tensor) -> None:
        m = self.momentum
        self.features[rows] = F.normalize(m * self.features[rows] + (1.0 - m) * new, dim=1)

    def _prepare(
        self, features: torch.Tensor, labels: torch.Tensor | np.ndarray, num_classes: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ReIDError(f"features: expected B x {self.num_features}, got {tuple(features.shape)}")
        labels = _as_long(labels, features.device)
        if labels.numel() != features.shape[0]:
            raise ReIDError(f"labels: expected {features.shape[0]} labels, got {labels.numel()}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ReIDError(
                f"labels: expected ids in [0, {num_classes}) (drop outliers first), got "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        x = F.normalize(features.float(), dim=1)
        if self.update_in_backward and torch.is_grad_enabled() and x.requires_grad:
            x = _UpdateInBackward.apply(x, labels, self)
        return x, labels


class ClusterMemory(_Memory):
    """Cluster contrast memory (Dai et al., 2021): one entry per cluster.

    loss = CE(f . M^T / temp, y). ``mode="mean"``: every sample updates its cluster's entry in
    batch order (the original code's loop); ``"hard"``: each cluster in the batch is updated
    once, toward its least similar in-batch instance.
    """

    def __init__(
        self,
        num_features: int,
        num_clusters: int,
        temp: float = 0.05,
        momentum: float = 0.1,
        mode: str = "mean",
        update_in_backward: bool = True,
        gather: Any = None,
    ):
        super().__init__(num_features, num_clusters, temp, momentum, update_in_backward, gather)
        if mode not in ("mean", "hard"):
            raise ReIDError(f"mode: expected 'mean' or 'hard', got {mode!r}")
        self.mode = mode

    @property
    def num_clusters(self) -> int:
        """Number of clusters (memory entries)."""
        return self.features.shape[0]

    @torch.no_grad()
    def reset(self, features: torch.Tensor, labels: torch.Tensor | np.ndarray) -> None:
        """Re-initialise from L2-normalised cluster centroids (labels < 0 are ignored)."""
        cent = cluster_centroids(torch.as_tensor(features), labels)
        self.features = cent.to(self.features.device)

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor | np.ndarray) -> None:
        """Momentum update of the entries of the batch's clusters (see the class docstring)."""
        f = F.normalize(features.detach().float(), dim=1)
        labels = _as_long(labels, f.device)
        if self.mode == "hard":
            ids, pick = _hardest(f, labels, self.features)
            self._mix(ids, f[pick])
            return
        rank = _occurrence_rank(labels)
        # samples with distinct labels are independent, so each round of "t-th occurrence"
        # reproduces the sequential per-sample loop exactly
        for t in range(int(rank.max()) + 1 if rank.numel() else 0):
            sel = rank == t
            self._mix(labels[sel], f[sel])

    def forward(self, features: torch.Tensor, labels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Contrastive loss CE(f . M^T / temp, labels) of L2-normalised features."""
        x, labels = self._prepare(features, labels, self.num_clusters)
        logits = x @ self.features.clone().T / self.temp
        return F.cross_entropy(logits, labels)


class HybridMemory(_Memory):
    """HHCL's hybrid memory (Hu et al.): 2C entries, [hard entries; mean entries].

    Entry y is updated toward the hardest (least similar) in-batch instance of cluster y;
    entry C + y toward the batch mean of cluster y's instances. loss = w * CE_hard +
    (1 - w) * CE_mean, each CE over its own C entries.
    """

    def __init__(
        self,
        num_features: int,
        num_clusters: int,
        temp: float = 0.05,
        momentum: float = 0.1,
        weight: float = 0.5,
        update_in_backward: bool = True,
        gather: Any = None,
    ):
        super().__init__(num_features, 2 * num_clusters, temp, momentum, update_in_backward, gather)
        if not 0.0 <= weight <= 1.0:
            raise ReIDError(f"weight: expected a value in [0, 1], got {weight!r}")
        self.weight = float(weight)

    @property
    def num_clusters(self) -> int:
        """Number of clusters (half the memory entries)."""
        return self.features.shape[0] // 2

    @torch.no_grad()
    def reset(self, features: torch.Tensor, labels: torch.Tensor | np.ndarray) -> None:
        """Initialise both halves from L2-normalised cluster centroids."""
        cent = cluster_centroids(torch.as_tensor(features), labels)
        self.features = torch.cat([cent, cent]).to(self.features.device)

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor | np.ndarray) -> None:
        """Hard half toward each cluster's hardest instance, mean half toward the batch mean."""
        f = F.normalize(features.detach().float(), dim=1)
        labels = _as_long(labels, f.device)
        c = self.num_clusters
        ids, pick = _hardest(f, labels, self.features[:c])
        self._mix(ids, f[pick])
        sums = torch.zeros(c, f.shape[1], device=f.device).index_add_(0, labels, f)
        counts = torch.bincount(labels, minlength=c).to(f.dtype)
        self._mix(ids + c, sums[ids] / counts[ids, None])

    def forward(self, features: torch.Tensor, labels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """w * CE(hard logits) + (1 - w) * CE(mean logits) on L2-normalised features."""
        x, labels = self._prepare(features, labels, self.num_clusters)
        logits = x @ self.features.clone().T / self.temp
        hard, mean = logits.chunk(2, dim=1)
        # The paper's weighting. The released HHCL code computes
        # w * (CE_hard + (1 - w) * CE_mean), which is not the published loss.
        w = self.weight
        return w * F.cross_entropy(hard, labels) + (1.0 - w) * F.cross_entropy(mean, labels)


class InstanceMemory(_Memory):
    """SpCL-style instance memory (Ge et al., 2020): one entry per training instance.

    The loss contrasts each feature with cluster centroids computed from the instance entries
    (the unnormalised mean of a cluster's entries, as SpCL's averaged similarities); outliers
    are their own classes. ``forward``/``update`` take the *instance indexes* of the batch.
    SpCL's epsilon-padded masked softmax is replaced by the exact log-softmax over the
    (contiguous, hence non-empty) classes.
    """

    labels: torch.Tensor  # a buffer (register_buffer): each instance's cluster label

    def __init__(
        self,
        num_features: int,
        num_samples: int,
        temp: float = 0.05,
        momentum: float = 0.2,
        update_in_backward: bool = True,
        gather: Any = None,
    ):
        super().__init__(num_features, num_samples, temp, momentum, update_in_backward, gather)
        self.register_buffer("labels", torch.arange(int(num_samples)))

    @property
    def num_classes(self) -> int:
        """Number of classes (clusters plus singleton outliers)."""
        return int(self.labels.max()) + 1 if self.labels.numel() else 0

    @torch.no_grad()
    def reset(self, features: torch.Tensor | None = None, labels: torch.Tensor | np.ndarray | None = None) -> None:
        """Set the instance entries (normalised features) and/or the per-instance labels.

        Labels < 0 (outliers) become singleton classes; ids are made contiguous.
        """
        if features is not None:
            f = F.normalize(torch.as_tensor(features).float(), dim=1)
            if f.shape != self.features.shape:
                raise ReIDError(f"features: expected {tuple(self.features.shape)}, got {tuple(f.shape)}")
            self.features.copy_(f)
        if labels is not None:
            lab = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels).astype(np.int64)
            if lab.shape != (self.features.shape[0],):
                raise ReIDError(f"labels: expected {self.features.shape[0]} labels, got {lab.shape}")
            out = lab < 0
            lab[out] = lab.max(initial=-1) + 1 + np.arange(int(out.sum()))
            lab = np.unique(lab, return_inverse=True)[1]
            self.labels = torch.from_numpy(lab.astype(np.int64)).to(self.features.device)

    def centroids(self) -> torch.Tensor:
        """Mean of the instance entries of each class (num_classes x D, not renormalised)."""
        c = self.num_classes
        sums = torch.zeros(c, self.num_features, device=self.features.device)
        sums.index_add_(0, self.labels, self.features)
        counts = torch.bincount(self.labels, minlength=c).to(sums.dtype)
        return sums / counts[:, None]

    @torch.no_grad()
    def update(self, features: torch.Tensor, indexes: torch.Tensor | np.ndarray) -> None:
        """Per sample, in batch order: M[idx] <- normalise(m * M[idx] + (1 - m) * f)."""
        f = F.normalize(features.detach().float(), dim=1)
        indexes = _as_long(indexes, f.device)
        rank = _occurrence_rank(indexes)
        for t in range(int(rank.max()) + 1 if rank.numel() else 0):
            sel = rank == t
            self._mix(indexes[sel], f[sel])

    def forward(self, features: torch.Tensor, indexes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """CE over class centroids of the instance memory; targets = labels[indexes]."""
        x, indexes = self._prepare(features, indexes, self.features.shape[0])
        logits = x @ self.centroids().T / self.temp
        return F.cross_entropy(logits, self.labels[indexes])
