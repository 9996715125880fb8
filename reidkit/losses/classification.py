"""Identity (classification) losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from reidkit.errors import ReIDError


def cross_entropy_ls(logits: torch.Tensor, labels: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Cross-entropy with label smoothing (BoT): target q = (1 - eps) one-hot + eps / N, batch mean."""
    if not 0.0 <= eps < 1.0:
        raise ReIDError(f"loss.label_smooth: must be in [0, 1), got {eps}")
    if logits.dim() != 2:
        raise ReIDError(f"cross_entropy_ls: logits must be B x N, got shape {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    log_probs = F.log_softmax(logits.float(), dim=1)
    targets = F.one_hot(labels.long(), num_classes).to(log_probs.dtype)
    targets = (1.0 - eps) * targets + eps / num_classes
    return -(targets * log_probs).sum(dim=1).mean()
