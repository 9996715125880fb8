"""Memory-based contrastive methods: cluster contrast (Dai et al., 2021) and HHCL (Hu et al., 2021).

Each round a memory is initialised from the L2-normalised cluster centroids of the current
features; the loss is the memory's contrastive cross-entropy of the batch features and the memory
moves by momentum with them (under DDP through the context's all-gather, so every rank's memory
sees the whole batch). Cluster contrast's ``usl.memory`` picks the memory: ``cluster`` (one entry
per cluster, mean or hard update), ``hybrid`` or ``instance`` (SpCL-style: one entry per image,
targets by cluster); HHCL always uses the hybrid memory (hard + mean terms, ``usl.hard_weight``).
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

    #: the memory kind (None: ``usl.memory``)
    memory_kind: str | None = None

    def build_memory(self, glob: torch.Tensor, labels: Any) -> Any:
        """This round's memory, initialised from the features ``glob`` and pseudo labels."""
        from reidkit.losses.memory import ClusterMemory, HybridMemory, InstanceMemory

        usl = self.usl
        kind = self.memory_kind or usl.memory
        n, dim = int(labels.max()) + 1, glob.shape[1]
        common: dict[str, Any] = dict(temp=usl.temperature, momentum=usl.momentum, gather=self.ctx.gather)
        if kind == "hybrid":
            mem: Any = HybridMemory(dim, n, weight=usl.hard_weight, **common)
            mem.reset(glob, torch.as_tensor(labels))
        elif kind == "cluster":
            mem = ClusterMemory(dim, n, mode=usl.memory_update, **common)
            mem.reset(glob, torch.as_tensor(labels))
        else:
            mem = InstanceMemory(dim, len(labels), **common)
            mem.reset(glob, labels)
        return mem

    def prepare(self, rnd: Round, feats: dict[str, torch.Tensor]) -> None:
        self.memory = self.build_memory(feats["global"], rnd.labels).to(self.device)
        self.pseudo = torch.as_tensor(rnd.labels, device=self.device)

    def loss(self, feats: dict[str, torch.Tensor], idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        kind = self.memory_kind or self.usl.memory
        labels = idx if kind == "instance" else self.pseudo[idx]
        total = self.memory(feats["global"].float(), labels)
        return total, {"contrast": float(total.detach())}


@register_usl_method("hhcl")
class HHCL(ClusterContrast):
    """HHCL: the hybrid memory (hard + mean entries per cluster, weighted by ``usl.hard_weight``)."""

    memory_kind = "hybrid"
