"""reidkit: person re-identification, end to end."""
from __future__ import annotations

from reidkit._lazy import lazy_getattr

from reidkit.errors import ReIDError

__version__ = "0.1.0"

# Public API, imported lazily so `import reidkit` and the CLI start fast.
_LAZY = {
    "load_dataset": "reidkit.data.datasets",
    "load_datasets": "reidkit.data.datasets",
    "build_backbone": "reidkit.models.backbones",
    "build_model": "reidkit.models.build",
    "evaluate": "reidkit.evaluation.evaluator",
    "evaluate_rank": "reidkit.evaluation.metrics",
    "re_ranking": "reidkit.evaluation.rerank",
    "load_config": "reidkit.config",
    "train": "reidkit.engine.api",
    "Trainer": "reidkit.engine.api",
}

__all__ = ["ReIDError", "__version__", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY)
