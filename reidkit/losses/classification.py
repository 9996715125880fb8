"""Identity (classification) losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reidkit.errors import ReIDError


SMOOTH_FORMS = ("uniform", "others")


def cross_entropy_ls(
    logits: torch.Tensor, labels: torch.Tensor, eps: float = 0.1, form: str = "uniform"
) -> torch.Tensor:
    """Cross-entropy with label smoothing, batch mean.

    ``form="uniform"`` (BoT, torchreid, Szegedy et al.): q = (1 - eps) one-hot + eps / N;
    ``form="others"`` (fast-reid): q = 1 - eps on the target and eps / (N - 1) on each other class.
    """
    if not 0.0 <= eps < 1.0:
        raise ReIDError(f"loss.label_smooth: must be in [0, 1), got {eps}")
    if form not in SMOOTH_FORMS:
        raise ReIDError(f"loss.label_smooth_form: unknown {form!r}; expected one of {', '.join(SMOOTH_FORMS)}")
    if logits.dim() != 2:
        raise ReIDError(f"cross_entropy_ls: logits must be B x N, got shape {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    log_probs = F.log_softmax(logits.float(), dim=1)
    one_hot = F.one_hot(labels.long(), num_classes).to(log_probs.dtype)
    if form == "others" and num_classes > 1:
        targets = (1.0 - eps) * one_hot + eps / (num_classes - 1) * (1.0 - one_hot)
    else:
        targets = (1.0 - eps) * one_hot + eps / num_classes
    return -(targets * log_probs).sum(dim=1).mean()
