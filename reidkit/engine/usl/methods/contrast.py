"""Memory-based contrastive methods: cluster contrast (Dai et al., 2021) and HHCL (Hu et al., 2021).

Each round a memory is initialised from the L2-normalised cluster centroids of the current
features; the loss is the memory's contrastive cross-entropy of the batch features and the memory
moves by momentum with them. ``usl.memory`` picks the memory: ``cluster`` (one entry per cluster,
mean or hard update), ``hybrid`` (HHCL: hard + mean terms weighted by ``usl.hard_weight``) or
``instance`` (SpCL-style: one entry per image, targets by cluster).
"""
from __future__ import annotations

from typing import Any

import torch

from reidkit.engine.usl.methods import register_usl_method
from reidkit.engine.usl.methods.base import Round, USLMethod

__all__ = ["ClusterContrast", "HHCL"]


@register_usl_method("cluster_contrast")
class ClusterContrast(USLMethod):
    """Cluster contrast: a cluster-level memory, contrastive loss of the batch against it."""

    def prepare(self, rnd: Round, feats: dict[str, torch.Tensor]) -> None:
        from reidkit.losses.memory import ClusterMemory, HybridMemory, InstanceMemory

        usl, labels = self.usl, rnd.labels
        glob = feats["global"]
        n = int(labels.max()) + 1
        dim = glob.shape[1]
        if usl.memory == "hybrid":
            mem: Any = HybridMemory(dim, n, temp=usl.temperature, momentum=usl.momentum, weight=usl.hard_weight)
            mem.reset(glob, torch.as_tensor(labels))
        elif usl.memory == "cluster":
            mem = ClusterMemory(dim, n, temp=usl.temperature, momentum=usl.momentum, mode=usl.memory_update)
            mem.reset(glob, torch.as_tensor(labels))
        else:
            mem = InstanceMemory(dim, len(labels), temp=usl.temperature, momentum=usl.momentum)
            mem.reset(glob, labels)
        self.memory = mem.to(self.device)
        self.trainer.sync_memory(self.memory)
        self.pseudo = torch.as_tensor(labels, device=self.device)

    def loss(self, feats: dict[str, torch.Tensor], idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        labels = idx if self.usl.memory == "instance" else self.pseudo[idx]
        total = self.memory(feats["global"].float(), labels)
        return total, {"contrast": float(total.detach())}


@register_usl_method("hhcl")
class HHCL(ClusterContrast):
    """HHCL: the same loop with the hybrid (hard + mean) memory set by its recipe (``usl.memory=hybrid``)."""
