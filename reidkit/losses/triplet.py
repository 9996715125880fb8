"""Triplet losses: batch-hard (Hermans et al. 2017) with margin/soft-margin, the d_ap+ variant,
and "batch hardest" (one triplet per batch: the farthest positive pair and the nearest negative
pair over the whole batch, the harder mining of the project's experiment log)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reidkit.errors import ReIDError

DISTANCES = ("euclidean", "cosine")
VARIANTS = ("standard", "ap_plus", "batch_hardest")


def pairwise_distance(x: torch.Tensor, distance: str = "euclidean") -> torch.Tensor:
    """All-pairs distance ``B x B``: Euclidean (NaN-free gradient at 0) or 1 - cosine."""
    if distance == "cosine":
        xn = F.normalize(x, dim=1)
        return 1.0 - xn @ xn.t()
    sq = x.pow(2).sum(dim=1, keepdim=True)
    d2 = sq + sq.t() - 2.0 * (x @ x.t())
    # Clamp before sqrt: rounding can make d2 slightly negative, and sqrt'(0) is infinite;
    # clamped entries get zero gradient instead of NaN.
    return d2.clamp(min=1e-12).sqrt()


def triplet_loss(
    feats: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.3,
    soft: bool = False,
    distance: str = "euclidean",
    variant: str = "standard",
    normalize: bool = False,
) -> torch.Tensor:
    """Triplet loss of a batch: batch-hard averaged over valid anchors, or one "batch hardest" triplet.

    Per anchor a: d_ap = distance to its farthest positive (same label, not itself), d_an = to
    its nearest negative; loss [d_ap - d_an + margin]_+, or log(1 + exp(d_ap - d_an)) when
    ``soft``; ``variant="ap_plus"`` adds d_ap. ``variant="batch_hardest"``: a single triplet,
    d_ap = the largest distance of any positive pair in the batch and d_an = the smallest of any
    negative pair (the two pairs need not share an anchor). Anchors without a positive (a single image of
    their identity) or without a negative (one identity in the batch) are left out of the
    mean. Raises ReIDError when no anchor is valid (e.g. all labels distinct, or all equal).
    """
    if distance not in DISTANCES:
        raise ReIDError(f"loss.triplet_distance: unknown {distance!r}; expected one of {', '.join(DISTANCES)}")
    if variant not in VARIANTS:
        raise ReIDError(f"loss.triplet_variant: unknown {variant!r}; expected one of {', '.join(VARIANTS)}")
    if feats.dim() != 2 or feats.shape[0] != labels.shape[0]:
        raise ReIDError(
            f"triplet_loss: feats must be B x D matching {labels.shape[0]} labels, got {tuple(feats.shape)}"
        )
    x = feats.float()
    if normalize:
        x = F.normalize(x, dim=1)
    dist = pairwise_distance(x, distance)
    same = labels.view(-1, 1) == labels.view(1, -1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos = same & ~eye
    neg = ~same
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not bool(valid.any()):
        raise ReIDError(
            "triplet_loss: no valid anchor in the batch: every anchor needs another image of its "
            "identity and an image of another identity (use a P x K sampler with P >= 2, K >= 2)"
        )
    if variant == "batch_hardest":
        d_ap = dist.masked_fill(~pos, float("-inf")).amax()
        d_an = dist.masked_fill(~neg, float("inf")).amin()
        gap = d_ap - d_an
        return F.softplus(gap) if soft else F.relu(gap + margin)
    d_ap = dist.masked_fill(~pos, float("-inf")).amax(dim=1)[valid]
    d_an = dist.masked_fill(~neg, float("inf")).amin(dim=1)[valid]
    gap = d_ap - d_an
    per_anchor = F.softplus(gap) if soft else F.relu(gap + margin)
    if variant == "ap_plus":
        per_anchor = per_anchor + d_ap
    return per_anchor.mean()
