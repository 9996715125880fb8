"""The ``usl`` section: what every unsupervised method shares, plus each method's own options.

Shared keys (the clustering round and the contrastive memory) are fields of
:class:`UnsupervisedConfig`; a method's own keys live under its name (``usl.dec.*``, ``usl.ssg.*``,
or ``usl.<your_method>.*`` for a method registered with ``options=``), read against that method's
options dataclass. The source-domain term of the clustering round is ``usl.source.*``.

Keys of the flat layout of reidkit 0.1 (``usl.dec_clusters``, ``usl.spaces``, ``usl.use_source``,
...) are still read for one release, with a warning naming the new key.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from reidkit.config.options import register_options
from reidkit.errors import ReIDError

__all__ = ["DECOptions", "MOVED_KEYS", "SPACES", "SSGOptions", "SourceConfig", "UnsupervisedConfig"]

SPACES = ("global", "upper", "lower")


@dataclass
class DECOptions:
    """``usl.dec.*``: DEC's k clusters, Student-t alpha and target refresh period."""

    # k (null: the number DBSCAN finds on the initial features)
    clusters: int | None = field(
        default=None, metadata={"help": "k centres (null: DBSCAN's count on the initial features)"}
    )
    alpha: float = field(default=1.0, metadata={"help": "Student-t degrees of freedom"})
    update_period: int = field(default=0, metadata={"help": "refresh the targets every N iterations (0: every epoch)"})

    def check(self) -> None:
        """Raise ReIDError naming the first bad ``usl.dec.*`` key."""
        if self.clusters is not None and self.clusters < 2:
            raise ReIDError(f"config key 'usl.dec.clusters' must be >= 2 or null, got {self.clusters}")
        if not self.alpha > 0:
            raise ReIDError(f"config key 'usl.dec.alpha' must be > 0, got {self.alpha}")
        if self.update_period < 0:
            raise ReIDError(f"config key 'usl.dec.update_period' must be >= 0, got {self.update_period}")


@dataclass
class SSGOptions:
    """``usl.ssg.*``: the feature spaces SSG clusters and its per-space triplet loss."""

    spaces: list[str] = field(
        default_factory=lambda: list(SPACES), metadata={"help": "spaces clustered separately (global, upper, lower)"}
    )
    triplet_margin: float = field(default=0.5, metadata={"help": "margin of the per-space triplet loss"})
    triplet_normalize: bool = field(default=False, metadata={"help": "triplet on L2-normalised features"})

    def check(self) -> None:
        """Raise ReIDError naming the first bad ``usl.ssg.*`` key."""
        bad = [s for s in self.spaces if s not in SPACES]
        if not self.spaces or bad or len(set(self.spaces)) != len(self.spaces) or "global" not in self.spaces:
            raise ReIDError(
                f"config key 'usl.ssg.spaces': expected distinct names from {', '.join(SPACES)} including "
                f"'global', got {self.spaces}"
            )
        if self.triplet_margin < 0:
            raise ReIDError(f"config key 'usl.ssg.triplet_margin' must be >= 0, got {self.triplet_margin}")


# The built-in methods' options, known without importing the engine (the methods name them too).
register_options("usl", "dec", DECOptions)
register_options("usl", "ssg", SSGOptions)


@dataclass
class SourceConfig:
    """``usl.source.*``: the source-domain term of the clustering distance (SSG / UDAP).

    d = (1 - weight) * Jaccard + weight * (d_s(i) + d_s(j)), d_s = mean distance to the ``k``
    nearest source-train features of ``datasets``.
    """

    enabled: bool = False
    datasets: list[dict[str, Any]] = field(default_factory=list)
    weight: float = 0.1
    k: int = 6

    def check(self) -> None:
        """Raise ReIDError naming the first bad ``usl.source.*`` key."""
        if self.enabled and not self.datasets:
            raise ReIDError(
                "config key 'usl.source.datasets': usl.source.enabled=true needs source dataset "
                "specs ([{name, root, options}])"
            )
        if not 0 <= self.weight <= 1:
            raise ReIDError(f"config key 'usl.source.weight' must be in [0, 1], got {self.weight}")
        if int(self.k) < 1:
            raise ReIDError(f"config key 'usl.source.k' must be >= 1, got {self.k}")


# old flat key -> its key now (under usl.)
MOVED_KEYS = {
    "dec_clusters": "dec.clusters",
    "dec_alpha": "dec.alpha",
    "dec_update_period": "dec.update_period",
    "spaces": "ssg.spaces",
    "triplet_margin": "ssg.triplet_margin",
    "triplet_normalize": "ssg.triplet_normalize",
    "use_source": "source.enabled",
    "source_lambda": "source.weight",
    "source_k": "source.k",
}


@dataclass
class UnsupervisedConfig:
    """Unsupervised / domain-adaptive training (the ``usl`` section of a recipe)."""

    PART_KIND = "usl"

    method: str = "cluster_contrast"  # a name in the USL method registry
    # Jaccard distance (k1=30,k2=6 in cluster contrast / HHCL; 20/6 in SSG)
    k1: int = 30
    k2: int = 6
    include_self_in_k1: bool = False
    search: Literal["faiss", "torch"] = "faiss"
    # DBSCAN radius: a number; or null -> eps_by_dataset[dataset name] (or its "default");
    # failing both, the SSG rule (mean of the smallest `rho` fraction of pair distances).
    eps: float | None = 0.6
    eps_by_dataset: dict[str, float] = field(default_factory=dict)
    rho: float = 1.6e-3
    fix_eps: bool = True  # eps from the rho rule is computed once, at the first round
    min_samples: int = 4
    outliers: Literal["drop", "noise", "singleton"] = "drop"
    # Camera-aware clustering: subtract each camera's mean feature (and re-normalise) before the
    # Jaccard distance, so that a camera's style does not make its own clusters. Uses the camera
    # ids of the records (metadata, not identities); the memory and the loss see the raw features.
    camera_norm: bool = False
    # contrastive memory (cluster contrast: cluster; HHCL: hybrid; SpCL-style: instance)
    memory: Literal["cluster", "hybrid", "instance"] = "cluster"
    memory_update: Literal["mean", "hard"] = "mean"
    momentum: float = 0.1
    temperature: float = 0.05
    hard_weight: float = 0.5
    # batches: batch_size images = (batch_size // num_instances) clusters x num_instances
    batch_size: int = 256
    num_instances: int = 16
    iters_per_epoch: int = 200
    # UDA: weights of a source-trained model to start from (model.pt / best.pt of `reidkit train`)
    init_weights: str | None = None
    source: SourceConfig = field(default_factory=SourceConfig)
    # evaluate the initial model (before any training) as epoch 0
    eval_initial: bool = False
    # each method's own options, by method name (``usl.dec``, ``usl.ssg``, ...)
    parts: dict[str, Any] = field(default_factory=dict, repr=False, metadata={"parts": True})

    @classmethod
    def migrate(cls, values: dict[str, Any], prefix: str = "usl") -> dict[str, Any]:
        """Rewrite the flat keys of reidkit 0.1 to their owners' keys, warning once per key."""
        prefix = prefix or "usl"
        if isinstance(values.get("source"), list):
            values["source"] = {"datasets": values["source"]}
            _warn_moved(f"{prefix}.source (a list)", f"{prefix}.source.datasets")
        method = values.get("method", cls.method)
        for old, new in MOVED_KEYS.items():
            if old not in values:
                continue
            value = values.pop(old)
            if old == "spaces" and method != "ssg" and value != ["global"]:
                raise ReIDError(
                    f"config key '{prefix}.spaces': method {method!r} uses only the global space, "
                    f"got {value} (part spaces are {prefix}.ssg.spaces, for ssg)"
                )
            owner, key = new.split(".")
            section = values.setdefault(owner, {})
            if not isinstance(section, dict):
                raise ReIDError(f"config key '{prefix}.{owner}' must be a mapping, got {section!r}")
            section[key] = value  # written on purpose (the packaged recipes use the new keys)
            _warn_moved(f"{prefix}.{old}", f"{prefix}.{new}")
        return values

    def options(self, name: str | None = None) -> Any:
        """The options of method ``name`` (default: ``usl.method``); defaults when not set; None: it has none."""
        from reidkit.config.options import read_options

        name = name or self.method
        return self.parts[name] if name in self.parts else read_options("usl", name, {})

    def check(self) -> None:
        """Raise ReIDError naming the first bad ``usl.*`` key."""
        # The method name and what it accepts are checked by the USL method registry when the
        # engine loads the recipe: this module imports no engine code.
        if not isinstance(self.method, str) or not self.method:
            raise ReIDError(f"config key 'usl.method' must be a method name, got {self.method!r}")
        for key in ("k1", "k2", "min_samples", "batch_size", "num_instances", "iters_per_epoch"):
            if int(getattr(self, key)) < 1:
                raise ReIDError(f"config key 'usl.{key}' must be >= 1, got {getattr(self, key)}")
        if self.batch_size < self.num_instances:
            raise ReIDError(
                f"config key 'usl.batch_size' ({self.batch_size}) must be >= usl.num_instances ({self.num_instances})"
            )
        if self.eps is not None and not self.eps > 0:
            raise ReIDError(f"config key 'usl.eps' must be > 0 or null, got {self.eps}")
        if not 0 < self.rho <= 1:
            raise ReIDError(f"config key 'usl.rho' must be in (0, 1], got {self.rho}")
        if not 0 <= self.momentum < 1:
            raise ReIDError(f"config key 'usl.momentum' must be in [0, 1), got {self.momentum}")
        if not self.temperature > 0:
            raise ReIDError(f"config key 'usl.temperature' must be > 0, got {self.temperature}")
        if not 0 <= self.hard_weight <= 1:
            raise ReIDError(f"config key 'usl.hard_weight' must be in [0, 1], got {self.hard_weight}")
        self.source.check()


def _warn_moved(old: str, new: str) -> None:
    warnings.warn(
        f"config key '{old}' has moved to '{new}'; the old key is read until reidkit 0.3", FutureWarning, stacklevel=4
    )
