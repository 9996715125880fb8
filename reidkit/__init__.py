"""reidkit: person re-identification, end to end."""

from __future__ import annotations

from importlib import metadata as _metadata

from reidkit._lazy import lazy_getattr

from reidkit.errors import ReIDError

try:  # the one version is pyproject.toml's, as installed
    __version__ = _metadata.version("reidkit")
except _metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

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
    "load_model": "reidkit.models.loading",
    "train": "reidkit.engine.api",
    "train_usl": "reidkit.engine.api",
    "test": "reidkit.engine.api",
    "Trainer": "reidkit.engine.api",
    "SupervisedTrainer": "reidkit.engine.api",
    "ClusterTrainer": "reidkit.engine.api",
    "extract_features": "reidkit.inference.features",
    "Gallery": "reidkit.retrieval.gallery",
    "Embedder": "reidkit.video.embedder",
    "FeatureExtractor": "reidkit.inference",
    # registries: add a part from your own code, no edit of the package
    "register_backbone": "reidkit.models.backbones",
    "register_dataset": "reidkit.data.datasets",
    "register_loss": "reidkit.losses",
    "register_usl_method": "reidkit.engine.usl.methods",
    "USLMethod": "reidkit.engine.usl.methods",
    "register_tracker": "reidkit.video.trackers",
    "register_detector": "reidkit.video.detectors",
    "register_backend": "reidkit.retrieval.backends",
}

__all__ = ["ReIDError", "__version__", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY)
