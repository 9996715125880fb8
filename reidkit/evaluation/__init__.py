"""Evaluation: distances, rank metrics, re-ranking, pictures, and ``evaluate`` (features by inference's batch loop,
``reidkit.inference.features``, then distances and metrics).

Pure functions on arrays/tensors; submodules are imported lazily so `import reidkit.evaluation`
stays cheap.
"""

from __future__ import annotations

from reidkit._lazy import lazy_module

# Deprecated: the batch loop moved to inference (reidkit.extract_features is the public name).
_MOVED = {"extract_features": "reidkit.inference.features.extract_features"}

__all__, __getattr__ = lazy_module(
    __name__,
    {
        "reidkit.evaluation.metrics": ["evaluate_rank"],
        "reidkit.evaluation.distance": ["compute_distance", "query_expansion"],
        "reidkit.evaluation.rerank": ["re_ranking", "re_ranking_features"],
        "reidkit.evaluation.evaluator": ["evaluate"],
        "reidkit.evaluation.visualize": ["visualize_ranked", "plot_cmc", "plot_distance_hist"],
    },
    _MOVED,
)
