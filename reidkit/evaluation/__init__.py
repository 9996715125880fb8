"""Evaluation: distances, rank metrics, re-ranking, pictures, and ``evaluate`` (features by inference's batch loop,
``reidkit.inference.features``, then distances and metrics).

Pure functions on arrays/tensors; submodules are imported lazily so `import reidkit.evaluation`
stays cheap.
"""

from __future__ import annotations

from reidkit._lazy import lazy_getattr

_LAZY = {
    "evaluate_rank": "reidkit.evaluation.metrics",
    "compute_distance": "reidkit.evaluation.distance",
    "query_expansion": "reidkit.evaluation.distance",
    "re_ranking": "reidkit.evaluation.rerank",
    "re_ranking_features": "reidkit.evaluation.rerank",
    "evaluate": "reidkit.evaluation.evaluator",
    "visualize_ranked": "reidkit.evaluation.visualize",
    "plot_cmc": "reidkit.evaluation.visualize",
    "plot_distance_hist": "reidkit.evaluation.visualize",
}

# Deprecated: the batch loop moved to inference (reidkit.extract_features is the public name).
_MOVED = {"extract_features": "reidkit.inference.features.extract_features"}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY, _MOVED)
