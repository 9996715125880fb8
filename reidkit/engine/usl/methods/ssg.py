"""SSG (Fu et al., ICCV 2019): self-similarity grouping in the global, upper and lower spaces.

Each space is clustered on its own; an image that is an outlier in any space is left out; the loss
is one batch-hard triplet per space on that space's pseudo labels. Options: ``usl.ssg.*``
(spaces, triplet_margin, triplet_normalize).
"""

from __future__ import annotations

import torch

from reidkit.config.usl import SSGOptions
from reidkit.engine.usl.methods import register_usl_method
from reidkit.engine.usl.methods.base import Round, USLMethod

__all__ = ["SSG", "safe_triplet"]


def safe_triplet(feats: torch.Tensor, labels: torch.Tensor, margin: float, normalize: bool) -> torch.Tensor | None:
    """Batch-hard triplet over the labelled rows, or None when no anchor has both a positive and a negative."""
    from reidkit.losses.triplet import triplet_loss

    keep = labels >= 0
    feats, labels = feats[keep], labels[keep]
    if labels.numel() < 2:
        return None
    same = labels.view(-1, 1) == labels.view(1, -1)
    pos = same.sum(1) > 1
    if not bool((pos & (~same).any(1)).any()):
        return None
    return triplet_loss(feats, labels, margin=margin, normalize=normalize)


@register_usl_method("ssg")
class SSG(USLMethod):
    """Self-similarity grouping: per-space DBSCAN labels and one triplet loss per space."""

    options = SSGOptions
    min_clusters = 2

    def spaces(self) -> list[str]:
        return list(self.opts.spaces)

    def prepare(self, rnd: Round, feats: dict[str, torch.Tensor]) -> None:
        keep = rnd.labels >= 0
        self.space_labels = {
            k: torch.as_tensor(v, device=self.device).masked_fill(torch.as_tensor(~keep, device=self.device), -1)
            for k, v in rnd.space_labels.items()
        }

    def loss(self, feats: dict[str, torch.Tensor], idx: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, float]]:
        terms, parts = [], {}
        for name in self.spaces():
            t = safe_triplet(
                feats[name].float(), self.space_labels[name][idx], self.opts.triplet_margin, self.opts.triplet_normalize
            )
            if t is not None:
                terms.append(t)
                parts[f"triplet_{name}"] = float(t.detach())
        if not terms:
            return None, {}
        return torch.stack(terms).sum(), parts
