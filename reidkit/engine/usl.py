"""Unsupervised and domain-adaptive training: one loop that re-clusters the unlabeled set every epoch.

Each epoch (an ignite ``Engine`` epoch of ``usl.iters_per_epoch`` iterations):

1. extract features of the cached training images (eval mode, no flip, as the originals);
2. k-reciprocal Jaccard distance (on camera-centred features with ``usl.camera_norm``) + DBSCAN
   pseudo labels (``reidkit.cluster``); outliers dropped
   (or kept as one noise class / singletons, ``usl.outliers``);
3. method-specific state: a cluster / hybrid / instance memory initialised from the normalised
   cluster centroids (cluster contrast, HHCL), per-space labels (SSG: global, upper half, lower
   half; an image that is an outlier in any space is left out), or DEC's Student-t targets;
4. ``iters_per_epoch`` P x K batches sampled over the pseudo labels, the method's loss;
5. evaluation on query/gallery with the true labels every ``solver.eval_period`` epochs, a
   checkpoint (``last.pt``; ``resume=true`` continues it) and ``metrics.json``.

True training labels are only used for ``cluster_report`` (purity / NMI / ARI in the log and in
``metrics.json``), never for training.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reidkit.errors import ReIDError

if TYPE_CHECKING:  # config.py imports this module; keep the import one-way at runtime
    from reidkit.config import Config

__all__ = [
    "UnsupervisedConfig", "ClusterTrainer", "train_usl", "load_usl_config", "resolve_eps", "extract_spaces",
    "prepare_val", "evaluate_prepared", "SPACES",
]

log = logging.getLogger("reidkit.usl")

METHODS = ("cluster_contrast", "hhcl", "ssg", "dec")
SPACES = ("global", "upper", "lower")


@dataclass
class UnsupervisedConfig:
    """Unsupervised / domain-adaptive training (the ``usl`` section of a recipe)."""

    method: Literal["cluster_contrast", "hhcl", "ssg", "dec"] = "cluster_contrast"
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
    fix_eps: bool = True  # SSG: eps from the rho rule is computed once, at the first round
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
    # SSG: feature spaces clustered separately and one triplet loss each
    spaces: list[str] = field(default_factory=lambda: ["global"])
    triplet_margin: float = 0.5
    triplet_normalize: bool = False
    # SSG/UDAP source term: d = (1 - source_lambda) * Jaccard + source_lambda * (d_s(i) + d_s(j)),
    # d_s = mean distance to the `source_k` nearest source-train features (needs `source`).
    use_source: bool = False
    source: list[dict[str, Any]] = field(default_factory=list)
    source_lambda: float = 0.1
    source_k: int = 6
    # DEC: k clusters (null: the number DBSCAN finds on the initial features), Student-t alpha,
    # target refresh every `dec_update_period` iterations (0: once per epoch)
    dec_clusters: int | None = None
    dec_alpha: float = 1.0
    dec_update_period: int = 0
    # evaluate the initial model (before any training) as epoch 0
    eval_initial: bool = False

    def validate(self) -> None:
        """Raise ReIDError naming the first bad ``usl.*`` key."""
        if self.method not in METHODS:
            raise ReIDError(f"config key 'usl.method': expected one of {', '.join(METHODS)}, got {self.method!r}")
        for key in ("k1", "k2", "min_samples", "batch_size", "num_instances", "iters_per_epoch", "source_k"):
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
        bad = [s for s in self.spaces if s not in SPACES]
        if not self.spaces or bad or len(set(self.spaces)) != len(self.spaces) or "global" not in self.spaces:
            raise ReIDError(
                f"config key 'usl.spaces': expected distinct names from {', '.join(SPACES)} including "
                f"'global', got {self.spaces}"
            )
        if self.method != "ssg" and self.spaces != ["global"]:
            raise ReIDError(f"config key 'usl.spaces': only method ssg uses part spaces, got {self.spaces}")
        if self.use_source and not self.source:
            raise ReIDError("config key 'usl.source': use_source=true needs source dataset specs "
                            "([{name, root, options}])")
        if not 0 <= self.source_lambda <= 1:
            raise ReIDError(f"config key 'usl.source_lambda' must be in [0, 1], got {self.source_lambda}")
        if self.dec_clusters is not None and self.dec_clusters < 2:
            raise ReIDError(f"config key 'usl.dec_clusters' must be >= 2 or null, got {self.dec_clusters}")
        if not self.dec_alpha > 0:
            raise ReIDError(f"config key 'usl.dec_alpha' must be > 0, got {self.dec_alpha}")
        if self.dec_update_period < 0:
            raise ReIDError(f"config key 'usl.dec_update_period' must be >= 0, got {self.dec_update_period}")


# --------------------------------------------------------------------------------------------
# Config loading


def load_usl_config(
    source: "Config | str | Path | dict[str, Any] | None" = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> "Config":
    """Load a recipe (path, packaged name, dict or Config) and check its ``usl`` section."""
    from reidkit.config import load_config

    cfg = load_config(source, overrides)
    cfg.usl.validate()
    return cfg


def resolve_eps(usl: UnsupervisedConfig, dataset_name: str) -> float | None:
    """The DBSCAN eps for a dataset: ``usl.eps``, else ``usl.eps_by_dataset``, else None (rho rule)."""
    if usl.eps is not None:
        return float(usl.eps)
    table = {str(k).lower(): float(v) for k, v in usl.eps_by_dataset.items()}
    name = dataset_name.lower()
    if name in table:
        return table[name]
    return table.get("default")


# --------------------------------------------------------------------------------------------
# Features of the model's spaces


def _space_feats(net: nn.Module, fmap: torch.Tensor, spaces: list[str], neck_after: bool) -> dict[str, torch.Tensor]:
    """Features of each space from a backbone feature map (global: pool + neck, parts: pooled halves)."""
    head = net.head
    out: dict[str, torch.Tensor] = {}
    pooled = head.pool(fmap)
    if head.neck_type == "embedding" or (neck_after and head.neck_type == "bnneck"):
        out["global"] = head.neck(pooled)
    else:
        out["global"] = pooled
    h = fmap.shape[2]
    if "upper" in spaces or "lower" in spaces:
        # Rounding the split towards the top gives the lower half the odd row, as SSG's slicing.
        mid = max(1, h // 2)
        if "upper" in spaces:
            out["upper"] = head.pool(fmap[:, :, :mid])
        if "lower" in spaces:
            out["lower"] = head.pool(fmap[:, :, mid:] if h > 1 else fmap)
    return out


@torch.no_grad()
def extract_spaces(
    net: nn.Module, images: np.ndarray, spaces: list[str], device: torch.device, mean: list[float],
    std: list[float], neck_after: bool = True, batch_size: int = 128,
) -> dict[str, torch.Tensor]:
    """L2-normalised N x D features of each space for uint8 NHWC images (eval mode, no flip)."""
    was = net.training
    net.eval()
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in spaces}
    try:
        for a in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[a : a + batch_size])).to(device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0).sub_(m).div_(s)
            feats = _space_feats(net, net.backbone.forward_features(x), spaces, neck_after)
            for k in spaces:
                parts[k].append(F.normalize(feats[k].float(), dim=1).cpu())
    finally:
        net.train(was)
    return {k: torch.cat(v) for k, v in parts.items()}


def prepare_val(
    datasets: list[Any], size: tuple[int, int], cache_dir: str | None = None
) -> list[tuple[str, Any, np.ndarray, np.ndarray]]:
    """(name, dataset with readable query/gallery records, query images, gallery images) per set."""
    from reidkit.data.pipeline import ImageCache

    out = []
    seen: dict[str, int] = {}
    for ds in datasets:
        seen[ds.name] = seen.get(ds.name, 0) + 1
        name = ds.name if seen[ds.name] == 1 else f"{ds.name}_{seen[ds.name]}"
        parts = {}
        for split in ("query", "gallery"):
            records = list(getattr(ds, split))
            cache = ImageCache.build([r.path for r in records], size=size, cache_dir=cache_dir)
            valid = np.asarray(cache.valid, dtype=bool)
            if not valid.any():
                raise ReIDError(f"validation set {name!r}: none of the {len(records)} {split} images could be read")
            parts[split] = ([r for r, v in zip(records, valid) if v], np.ascontiguousarray(np.asarray(cache.images)[valid]))
        kept = dataclasses.replace(ds, query=parts["query"][0], gallery=parts["gallery"][0])
        out.append((name, kept, parts["query"][1], parts["gallery"][1]))
    return out


def evaluate_prepared(
    net: nn.Module, prepared: list[tuple[str, Any, np.ndarray, np.ndarray]], cfg: "Config",
    device: torch.device, mean: list[float], std: list[float],
) -> dict[str, Any]:
    """mAP / rank-k / mINP / score (percent) per prepared set and their mean, with ``cfg.test``."""
    from reidkit.engine.trainer import METRIC_KEYS
    from reidkit.evaluation.evaluator import evaluate
    from reidkit.evaluation.features import extract_features

    t = cfg.test
    per: dict[str, dict[str, float]] = {}
    was = net.training
    try:
        for name, ds, q_img, g_img in prepared:
            kw = dict(batch_size=t.batch_size, flip=t.flip, device=device, mean=mean, std=std,
                      normalize=False, neck_feat=t.neck_feat)
            feats = {"query": extract_features(net, q_img, **kw), "gallery": extract_features(net, g_img, **kw)}
            res = evaluate(feats, ds, flip=t.flip, metric=t.metric, rerank=t.rerank, k1=t.k1, k2=t.k2,
                           lambda_value=t.lambda_value, device=device)
            per[name] = {k: float(res[k]) for k in METRIC_KEYS}
    finally:
        net.train(was)
    mean_m = {k: float(np.mean([m[k] for m in per.values()])) for k in METRIC_KEYS} if per else {}
    return {"datasets": per, "mean": mean_m}


def _safe_triplet(feats: torch.Tensor, labels: torch.Tensor, margin: float, normalize: bool) -> torch.Tensor | None:
    """Batch-hard triplet, or None when no anchor has both a positive and a negative."""
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


class _RandomBatches:
    """Uniform random batches over the usable indices (DEC needs no P x K structure)."""

    def __init__(self, usable: np.ndarray, batch_size: int, epoch_batches: int, seed: int) -> None:
        self.usable = np.asarray(usable, dtype=np.int64)
        self.batch_size = min(int(batch_size), len(self.usable))
        self.epoch_batches = int(epoch_batches)
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (the draw is seeded by (seed, epoch))."""
        self.epoch, self.position = int(epoch), 0

    def __len__(self) -> int:
        return self.epoch_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        for _ in range(self.epoch_batches):
            self.position += 1
            yield rng.choice(self.usable, size=self.batch_size, replace=False).tolist()
        self.position = 0


# --------------------------------------------------------------------------------------------
# The trainer


class ClusterTrainer:
    """Unsupervised / UDA training run: ``ClusterTrainer(cfg).fit() -> metrics``.

    ``cfg``: a Config with a ``usl`` section, a recipe path/name or a dict; keyword overrides as
    in the supervised ``Trainer`` (``usl__eps=0.5`` or ``usl={"eps": 0.5}``).
    """

    def __init__(self, cfg: "Config | str | Path | dict[str, Any]", **overrides: Any) -> None:
        self.cfg = load_usl_config(cfg, overrides or None)
        self.usl: UnsupervisedConfig = self.cfg.usl
        self.out = Path(self.cfg.output_dir)
        self.history: list[dict[str, Any]] = []
        self.clusters: list[dict[str, Any]] = []
        self.best_score = -math.inf
        self.best_epoch = 0
        self.last_metrics: dict[str, Any] = {}
        self.fixed_eps: dict[str, float] = {}
        self.loader: Any = None
        self._val: list[tuple[str, Any, np.ndarray, np.ndarray]] | None = None
        self._ready = False

    # ---------------------------------------------------------------- setup
    def setup(self) -> "ClusterTrainer":
        """Data, model, optimiser and the ignite engine (idempotent)."""
        if self._ready:
            return self
        from reidkit.engine.trainer import resolve_device, seed_everything

        cfg = self.cfg
        if cfg.model.arch != "baseline":
            raise ReIDError(f"config key 'model.arch': unsupervised training needs 'baseline', got {cfg.model.arch!r}")
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(self.out / "config.yaml")
        self._setup_logging()
        self._setup_data()
        self._setup_model()
        self._setup_optim()
        self._build_engine()
        self._ready = True
        return self

    def _setup_logging(self) -> None:
        log.setLevel(logging.INFO)
        self._log_handler = logging.FileHandler(self.out / "train.log")
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(self._log_handler)

    def _setup_data(self) -> None:
        from reidkit.data.datasets import train_labels
        from reidkit.data.pipeline import ImageCache
        from reidkit.engine.trainer import load_training_data

        cfg = self.cfg
        self.joint, self.val_sets = load_training_data(cfg)
        records = list(self.joint.train)
        if not records:
            raise ReIDError(f"training set {self.joint.name!r} has no images")
        self.size = (int(cfg.data.size[0]), int(cfg.data.size[1]))
        cache = ImageCache.build([r.path for r in records], size=self.size, cache_dir=cfg.data.cache_dir)
        valid = np.asarray(cache.valid, dtype=bool)
        self.records = [r for r, ok in zip(records, valid) if ok]
        imgs = np.asarray(cache.images)
        self.images = imgs if valid.all() else np.ascontiguousarray(imgs[valid])
        # Only for cluster_report: never reaches the loss.
        self.true_labels, _ = train_labels(self.records)
        # one id per (dataset, camera): cameras of different datasets are different cameras
        self.camids = np.unique([(r.dataset, r.camid) for r in self.records], axis=0, return_inverse=True)[1]
        self.camids = np.asarray(self.camids, dtype=np.int64).ravel()
        self.dataset_name = cfg.data.datasets[0].name
        self.source_images: np.ndarray | None = None
        if self.usl.use_source:
            from reidkit.data.datasets import load_datasets

            src = load_datasets([{"name": s["name"], "root": s.get("root", "data"), **dict(s.get("options", {}))}
                                 for s in self.usl.source])
            sc = ImageCache.build([r.path for r in src.train], size=self.size, cache_dir=cfg.data.cache_dir)
            self.source_images = np.ascontiguousarray(np.asarray(sc.images)[np.asarray(sc.valid, dtype=bool)])
        log.info("unsupervised training (%s) on %s: %d images (labels unused)", self.usl.method,
                 self.joint.name, len(self.records))

    def _setup_model(self) -> None:
        from reidkit.models.build import build_model, load_model

        cfg, usl = self.cfg, self.usl
        model_cfg = cfg.model
        init = None
        if usl.init_weights:
            init = load_model(usl.init_weights, device="cpu")
            model_cfg = dataclasses.replace(cfg.model, pretrained=False)
        self.net = build_model(model_cfg, 1).to(self.device)
        if init is not None:
            own = self.net.state_dict()
            # The source classifier has the source identities: everything else carries over.
            state = {k: v for k, v in init.state_dict().items()
                     if k in own and own[k].shape == v.shape and not k.startswith("head.classifier")}
            missing = [k for k in own if k not in state and not k.startswith("head.classifier")]
            if missing:
                raise ReIDError(
                    f"config key 'usl.init_weights': {usl.init_weights} does not match model "
                    f"{cfg.model.backbone} (e.g. missing {missing[0]}); set model.* as in the source run"
                )
            self.net.load_state_dict(state, strict=False)
            self.net.mean, self.net.std = list(init.mean), list(init.std)
            log.info("initialised from %s", usl.init_weights)
        self.mean = list(cfg.input.mean) if cfg.input.mean is not None else list(self.net.mean)
        self.std = list(cfg.input.std) if cfg.input.std is not None else list(self.net.std)
        self.net.mean, self.net.std = list(self.mean), list(self.std)
        self.neck_after = (cfg.test.neck_feat or cfg.model.neck_feat) == "after"
        self.feat_dim = int(self.net.feat_dim)
        self.dec_head = None
        if usl.method == "dec":
            self._setup_dec()

    def _setup_dec(self) -> None:
        """DEC centres: k (given, or DBSCAN's count) by k-means on the initial features."""
        from reidkit.cluster import pseudo_labels
        from reidkit.losses.dec import DECHead

        usl = self.usl
        feats = self.features()["global"]
        k = usl.dec_clusters
        if k is None:
            labels = pseudo_labels(feats, eps=resolve_eps(usl, self.dataset_name), k1=usl.k1, k2=usl.k2,
                                   min_samples=usl.min_samples, rho=usl.rho, outliers="drop",
                                   include_self_in_k1=usl.include_self_in_k1, search=usl.search)
            k = int(labels.max()) + 1
            if k < 2:
                raise ReIDError(
                    f"usl.dec_clusters is null and DBSCAN found {k} cluster(s) on the initial features; "
                    "set usl.dec_clusters (the number of identities expected)"
                )
            log.info("DEC: %d clusters (DBSCAN on the initial features)", k)
        if k > len(feats):
            raise ReIDError(f"config key 'usl.dec_clusters' ({k}) exceeds the {len(feats)} training images")
        self.dec_head = DECHead(k, self.feat_dim, usl.dec_alpha).to(self.device)
        self.dec_head.init_centres(feats.numpy(), seed=self.cfg.seed)

    def _setup_optim(self) -> None:
        from reidkit.engine.trainer import build_optimizer, lr_factor
        from reidkit.models.build import param_groups

        cfg, s = self.cfg, self.cfg.solver
        extra = [self.dec_head] if self.dec_head is not None else []
        groups = param_groups(
            self.net, s.base_lr, s.weight_decay, backbone_lr_factor=s.backbone_lr_factor,
            head_lr_factor=s.head_lr_factor, bias_lr_factor=s.bias_lr_factor,
            no_decay_norm=s.no_decay_norm, extra_modules=extra,
        )
        self.optimizer = build_optimizer(cfg, groups)
        length = self.usl.iters_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: lr_factor(cfg, it / length))

    # ---------------------------------------------------------------- clustering
    def _space_names(self) -> list[str]:
        return list(self.usl.spaces) if self.usl.method == "ssg" else ["global"]

    def features(self) -> dict[str, torch.Tensor]:
        """Current normalised features of the training images, per space."""
        return extract_spaces(self.net, self.images, self._space_names(), self.device, self.mean, self.std,
                              self.neck_after, batch_size=self.cfg.test.batch_size)

    def _source_term(self, feats: torch.Tensor) -> np.ndarray:
        """Per target image: mean distance (2 - 2 cos) to its source_k nearest source features."""
        assert self.source_images is not None
        src = extract_spaces(self.net, self.source_images, ["global"], self.device, self.mean, self.std,
                             self.neck_after, batch_size=self.cfg.test.batch_size)["global"]
        k = min(self.usl.source_k, len(src))
        out = []
        for a in range(0, len(feats), 4096):
            sims = feats[a : a + 4096] @ src.T
            out.append((2.0 - 2.0 * sims.topk(k, dim=1).values).mean(1))
        return torch.cat(out).numpy().astype(np.float64)

    def _camera_centred(self, feats: torch.Tensor) -> torch.Tensor:
        """Features minus their camera's mean feature, L2-normalised (``usl.camera_norm``)."""
        cams = torch.as_tensor(self.camids, dtype=torch.long)
        n_cams = int(cams.max()) + 1
        sums = torch.zeros(n_cams, feats.shape[1], dtype=feats.dtype).index_add_(0, cams, feats)
        counts = torch.bincount(cams, minlength=n_cams).clamp(min=1).to(feats.dtype)
        return F.normalize(feats - (sums / counts[:, None])[cams], dim=1)

    def _cluster_space(self, name: str, feats: torch.Tensor, outliers: str) -> tuple[np.ndarray, float]:
        """Pseudo labels of one space (and the eps used)."""
        from reidkit.cluster import jaccard_distance, pseudo_labels

        usl = self.usl
        raw = feats
        if usl.camera_norm:
            feats = self._camera_centred(feats)
        eps = resolve_eps(usl, self.dataset_name)
        if eps is None and usl.fix_eps and name in self.fixed_eps:
            eps = self.fixed_eps[name]
        common = dict(eps=eps, k1=usl.k1, k2=usl.k2, min_samples=usl.min_samples, rho=usl.rho,
                      outliers=outliers, include_self_in_k1=usl.include_self_in_k1, search=usl.search,
                      return_eps=True)
        if usl.use_source and usl.source_lambda > 0:
            dist = jaccard_distance(feats, usl.k1, usl.k2, search=usl.search,
                                    include_self_in_k1=usl.include_self_in_k1).tocoo()
            ds = self._source_term(raw)
            lam = usl.source_lambda
            vals = (1.0 - lam) * dist.data + lam * (ds[dist.row] + ds[dist.col])
            vals[dist.row == dist.col] = 0.0
            import scipy.sparse as sp

            mixed = sp.coo_matrix((vals.astype(np.float32), (dist.row, dist.col)), shape=dist.shape).tocsr()
            labels, used = pseudo_labels(None, dist=mixed, **common)
        else:
            labels, used = pseudo_labels(feats, **common)
        if eps is None and usl.fix_eps:
            self.fixed_eps.setdefault(name, float(used))
        return np.asarray(labels, dtype=np.int64), float(used)

    def recluster(self, epoch: int) -> dict[str, Any]:
        """Features -> pseudo labels -> memory / targets -> sampler and loader for this epoch."""
        from reidkit.cluster import cluster_report

        usl = self.usl
        t0 = time.perf_counter()
        feats = self.features()
        t_feat = time.perf_counter() - t0
        if usl.method == "dec":
            return self._recluster_dec(epoch, feats["global"], t_feat)
        # Outliers are handled here (noise class / singletons), from DBSCAN's "drop" labels.
        labels: dict[str, np.ndarray] = {}
        eps_used: dict[str, float] = {}
        for name in self._space_names():
            labels[name], eps_used[name] = self._cluster_space(name, feats[name], "drop")
        keep = np.all(np.stack([lab >= 0 for lab in labels.values()]), axis=0)
        glob = labels["global"].copy()
        n_clusters = int(glob.max()) + 1 if (glob >= 0).any() else 0
        if usl.outliers == "noise" and (glob < 0).any():
            glob[glob < 0] = n_clusters
            keep = np.ones_like(keep)
        elif usl.outliers == "singleton" and (glob < 0).any():
            out = glob < 0
            glob[out] = n_clusters + np.arange(int(out.sum()))
            keep = np.ones_like(keep)
        train_labels = np.where(keep, glob, -1)
        report: dict[str, Any] = {"epoch": epoch, "eps": eps_used["global"], "kept": int(keep.sum())}
        report.update(cluster_report(labels["global"], self.true_labels))
        for name in self._space_names():
            if name != "global":
                rep = cluster_report(labels[name], self.true_labels)
                report[name] = {"eps": eps_used[name], **{k: rep[k] for k in ("n_clusters", "n_outliers", "purity", "nmi", "ari")}}
        report["time_s"] = round(time.perf_counter() - t0, 2)
        report["feature_time_s"] = round(t_feat, 2)
        self._log_report(report)
        ids = np.unique(train_labels[train_labels >= 0])
        self.loader = None
        if len(ids) < (2 if usl.method == "ssg" else 1):
            log.warning("epoch %d: only %d pseudo identities; skipping training this epoch "
                        "(lower usl.min_samples or raise usl.eps)", epoch, len(ids))
            return report
        # Contiguous ids for the memory (noise/singleton ids are already contiguous after clusters).
        remap = np.full(int(train_labels.max()) + 1, -1, dtype=np.int64)
        remap[ids] = np.arange(len(ids))
        train_labels = np.where(train_labels >= 0, remap[np.maximum(train_labels, 0)], -1)
        self.pseudo = torch.as_tensor(train_labels, device=self.device)
        self.space_labels = {
            k: torch.as_tensor(np.where(keep, v, -1), device=self.device) for k, v in labels.items()
        }
        if usl.method in ("cluster_contrast", "hhcl"):
            self._build_memory(feats["global"], train_labels, len(ids))
        self._make_loader(train_labels, epoch, pk=True)
        return report

    def _build_memory(self, feats: torch.Tensor, labels: np.ndarray, n: int) -> None:
        from reidkit.losses.memory import ClusterMemory, HybridMemory, InstanceMemory

        usl, dim = self.usl, feats.shape[1]
        kind = usl.memory
        if kind == "hybrid":
            mem: nn.Module = HybridMemory(dim, n, temp=usl.temperature, momentum=usl.momentum, weight=usl.hard_weight)
            mem.reset(feats, torch.as_tensor(labels))
        elif kind == "cluster":
            mem = ClusterMemory(dim, n, temp=usl.temperature, momentum=usl.momentum, mode=usl.memory_update)
            mem.reset(feats, torch.as_tensor(labels))
        else:
            mem = InstanceMemory(dim, len(labels), temp=usl.temperature, momentum=usl.momentum)
            mem.reset(feats, labels)
        self.memory = mem.to(self.device)

    def _make_loader(self, labels: np.ndarray, epoch: int, pk: bool) -> None:
        from reidkit.data.augment import BatchAugment
        from reidkit.data.pipeline import CachedBatchLoader
        from reidkit.data.samplers import PKSampler

        usl, icfg = self.usl, self.cfg.input
        n_ids = len(np.unique(labels[labels >= 0]))
        if pk:
            # A round with fewer clusters than P still trains, on smaller batches.
            p = max(1, min(usl.batch_size // usl.num_instances, n_ids))
            sampler: Any = PKSampler(labels, p=p, k=usl.num_instances, epoch_batches=usl.iters_per_epoch,
                                     seed=self.cfg.seed)
        else:
            sampler = _RandomBatches(np.flatnonzero(labels >= 0), usl.batch_size, usl.iters_per_epoch, self.cfg.seed)
        sampler.set_epoch(epoch)
        aug = BatchAugment(
            size=self.size, pad=icfg.pad, flip_p=icfg.flip_p, erase_p=icfg.erase_p,
            erase_area=tuple(icfg.erase_area), erase_aspect=tuple(icfg.erase_aspect),
            erase_fill=icfg.erase_fill, patch_p=icfg.patch_p, jitter=icfg.jitter,
            mean=self.mean, std=self.std, device=self.device,
        )
        # The loader labels are the indices themselves: the step looks labels up per space.
        self.loader = CachedBatchLoader(self.images, labels.clip(min=-1), sampler, aug, device=self.device,
                                        seed=self.cfg.seed * 1000)

    def _recluster_dec(self, epoch: int, feats: torch.Tensor, t_feat: float) -> dict[str, Any]:
        from reidkit.cluster import cluster_report

        t0 = time.perf_counter()
        self._refresh_dec_targets(feats)
        labels = self.dec_target.argmax(1).cpu().numpy().astype(np.int64)
        report: dict[str, Any] = {"epoch": epoch, "eps": None, "kept": int(len(labels))}
        report.update(cluster_report(labels, self.true_labels))
        report["time_s"] = round(time.perf_counter() - t0 + t_feat, 2)
        report["feature_time_s"] = round(t_feat, 2)
        self._log_report(report)
        self._make_loader(labels, epoch, pk=False)
        return report

    @torch.no_grad()
    def _refresh_dec_targets(self, feats: torch.Tensor | None = None) -> None:
        """DEC's sharpened targets P over the whole training set from the current assignments."""
        from reidkit.losses.dec import target_distribution

        if feats is None:
            feats = self.features()["global"]
        q = self.dec_head(feats.to(self.device))
        self.dec_target = target_distribution(q)

    def _log_report(self, rep: dict[str, Any]) -> None:
        self.clusters.append(rep)
        eps = "-" if rep.get("eps") is None else f"{rep['eps']:.4f}"
        msg = (f"epoch {rep['epoch']} clusters: eps {eps} | {rep['n_clusters']} clusters, "
               f"{rep['n_outliers']} outliers of {rep['n_samples']} | purity {rep['purity']:.3f} "
               f"NMI {rep['nmi']:.3f} ARI {rep['ari']:.3f} (true labels, report only) | {rep['time_s']:.1f} s")
        for name in SPACES[1:]:
            if name in rep:
                r = rep[name]
                msg += f" | {name}: {r['n_clusters']} clusters, {r['n_outliers']} outliers, NMI {r['nmi']:.3f}"
        log.info(msg)

    # ---------------------------------------------------------------- the step
    def _step(self, engine: Any, batch: Any) -> dict[str, Any]:
        if batch is None:  # an epoch without usable clusters
            return {"loss": float("nan"), "n": 0}
        images, _, idx = batch
        self.net.train()
        fmap = self.net.backbone.forward_features(images)
        feats = _space_feats(self.net, fmap, self._space_names(), self.neck_after)
        usl = self.usl
        parts: dict[str, float] = {}
        if usl.method == "ssg":
            terms = []
            for name in self._space_names():
                t = _safe_triplet(feats[name].float(), self.space_labels[name][idx], usl.triplet_margin,
                                  usl.triplet_normalize)
                if t is not None:
                    terms.append(t)
                    parts[f"triplet_{name}"] = float(t.detach())
            if not terms:
                return {"loss": float("nan"), "n": 0}
            total = torch.stack(terms).sum()
        elif usl.method == "dec":
            from reidkit.losses.dec import dec_loss

            q = self.dec_head(F.normalize(feats["global"].float(), dim=1))
            total = dec_loss(q, self.dec_target[idx])
            parts["kl"] = float(total.detach())
        else:
            labels = idx if usl.memory == "instance" else self.pseudo[idx]
            total = self.memory(feats["global"].float(), labels)
            parts["contrast"] = float(total.detach())
        if not bool(torch.isfinite(total)):
            raise ReIDError(
                f"training diverged: the loss is {float(total)} at iteration {engine.state.iteration}; "
                f"lower solver.base_lr or check usl.temperature. {self.out / 'last.pt'} is left intact."
            )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.cfg.solver.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.solver.grad_clip)
        self.optimizer.step()
        period = usl.dec_update_period
        if usl.method == "dec" and period > 0 and engine.state.iteration % period == 0:
            self._refresh_dec_targets()
        return {"loss": float(total.detach()), "parts": parts, "n": int(images.shape[0])}

    # ---------------------------------------------------------------- engine and handlers
    def _stream(self) -> Iterator[Any]:
        while True:
            loader = self.loader
            if loader is None:
                yield None
            else:
                # One loader pass is exactly one epoch (iters_per_epoch batches).
                yield from loader

    def _build_engine(self) -> None:
        from ignite.engine import Engine, Events

        self.engine = Engine(self._step)
        eng = self.engine
        eng.add_event_handler(Events.EPOCH_STARTED, lambda e: self.recluster(e.state.epoch))
        eng.add_event_handler(Events.EPOCH_STARTED, self._on_epoch_started)
        eng.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration)
        eng.add_event_handler(Events.EPOCH_COMPLETED, self._on_epoch_completed)
        eng.add_event_handler(Events.EPOCH_COMPLETED, self._maybe_evaluate)
        eng.add_event_handler(Events.EPOCH_COMPLETED, self._checkpoint)

    def _on_epoch_started(self, engine: Any) -> None:
        self._t_epoch = time.perf_counter()
        self._n_epoch = 0
        self._losses: list[float] = []

    def _on_iteration(self, engine: Any) -> None:
        self.scheduler.step()
        out = engine.state.output
        self._n_epoch += out["n"]
        if out["n"]:
            self._losses.append(out["loss"])
        it = (engine.state.iteration - 1) % self.usl.iters_per_epoch + 1
        if out["n"] and it % self.cfg.solver.log_period == 0:
            parts = " ".join(f"{k} {v:.4f}" for k, v in out.get("parts", {}).items())
            log.info("epoch %d iter %d/%d loss %.4f (%s) lr %.3g", engine.state.epoch, it,
                     self.usl.iters_per_epoch, out["loss"], parts, self.optimizer.param_groups[0]["lr"])

    def _on_epoch_completed(self, engine: Any) -> None:
        dt = time.perf_counter() - self._t_epoch
        loss = float(np.mean(self._losses)) if self._losses else None
        if self.clusters:
            self.clusters[-1]["train_loss"] = loss
            self.clusters[-1]["epoch_time_s"] = round(dt, 2)
        log.info("epoch %d done in %.1f s, mean loss %s, %.0f img/s", engine.state.epoch, dt,
                 "-" if loss is None else f"{loss:.4f}", self._n_epoch / max(dt, 1e-9))

    def _maybe_evaluate(self, engine: Any) -> None:
        epoch, last = engine.state.epoch, engine.state.max_epochs
        if not self.val_sets or (epoch % self.cfg.solver.eval_period and epoch != last):
            return
        self._record(epoch, self.validate())

    def validate(self) -> dict[str, Any]:
        """Evaluate the current model on the validation sets (true labels) with ``cfg.test``."""
        from reidkit.engine.checkpoint import RNGGuard

        if self._val is None:
            self._val = prepare_val(self.val_sets, self.size, self.cfg.data.cache_dir)
        with RNGGuard():
            return evaluate_prepared(self.net, self._val, self.cfg, self.device, self.mean, self.std)

    def _record(self, epoch: int, metrics: dict[str, Any]) -> None:
        from reidkit.engine.trainer import METRIC_KEYS

        self.last_metrics = {"epoch": epoch, **metrics}
        self.history.append({"epoch": epoch, **{k: metrics["mean"][k] for k in METRIC_KEYS}})
        msg = " | ".join(f"{n}: mAP {m['mAP']:.2f} rank-1 {m['rank1']:.2f}" for n, m in metrics["datasets"].items())
        log.info("validation epoch %d: %s", epoch, msg)
        score = metrics["mean"]["score"]
        if epoch > 0 and score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            self._save_weights(self.out / "best.pt")

    def _save_weights(self, path: Path) -> None:
        from reidkit.engine.checkpoint import all_finite
        from reidkit.models.build import save_model

        if not all_finite(self.net):
            raise ReIDError(f"refusing to write {path}: the model has NaN/inf weights (training diverged)")
        save_model(path, self.net, self.cfg.model, 1, list(self.size))

    def _checkpoint(self, engine: Any) -> None:
        from reidkit.engine.checkpoint import rng_state, save_training_checkpoint

        epoch = engine.state.epoch
        if epoch % self.cfg.solver.checkpoint_period and epoch != engine.state.max_epochs:
            return
        state = {
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "clusters": self.clusters,
            "last_metrics": self.last_metrics,
            "fixed_eps": self.fixed_eps,
            "dec_head": None if self.dec_head is None else self.dec_head.state_dict(),
            "config": self.cfg.to_dict(),
        }
        save_training_checkpoint(self.out / "last.pt", model=self.net, model_cfg=self.cfg.model, num_classes=1,
                                 input_size=list(self.size), state=state)

    def _resume(self) -> int:
        from reidkit.engine.checkpoint import load_training_checkpoint, set_rng_state

        r = self.cfg.resume
        if r is False or r == "":
            return 0
        path = self.out / "last.pt" if r is True else Path(str(r))
        if not path.is_file():
            raise ReIDError(f"resume: no checkpoint at {path}; train without resume=true first")
        ckpt = load_training_checkpoint(path, self.device)
        self.net.load_state_dict(ckpt["model"])
        if ckpt.get("dec_head") is not None and self.dec_head is not None:
            self.dec_head.load_state_dict(ckpt["dec_head"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        self.best_score = float(ckpt.get("best_score", -math.inf))
        self.best_epoch = int(ckpt.get("best_epoch", 0))
        self.history = list(ckpt.get("history", []))
        self.clusters = list(ckpt.get("clusters", []))
        self.last_metrics = dict(ckpt.get("last_metrics", {}))
        self.fixed_eps = dict(ckpt.get("fixed_eps", {}))
        log.info("resumed from %s after epoch %d", path, int(ckpt["epoch"]))
        return int(ckpt["epoch"])

    # ---------------------------------------------------------------- run
    def fit(self) -> dict[str, Any]:
        """Train ``solver.max_epochs`` re-clustering epochs (continuing last.pt when resuming)."""
        from reidkit.engine.trainer import write_json

        self.setup()
        max_epochs = self.cfg.solver.max_epochs
        t0 = time.perf_counter()
        try:
            done = self._resume()
            if done > max_epochs:
                raise ReIDError(f"resume: checkpoint is at epoch {done}, beyond solver.max_epochs={max_epochs}")
            if done == 0 and self.usl.eval_initial and self.val_sets:
                self._record(0, self.validate())
            if done:
                self.engine.load_state_dict({"epoch": done, "max_epochs": max_epochs,
                                             "epoch_length": self.usl.iters_per_epoch})
            if done < max_epochs:
                self.engine.run(self._stream(), max_epochs=max_epochs, epoch_length=self.usl.iters_per_epoch)
            self._save_weights(self.out / "model.pt")
            result = self._result(time.perf_counter() - t0)
            write_json(self.out / "metrics.json", result)
        except Exception as exc:
            log.error("training stopped: %s", exc)
            raise
        finally:
            self.close()
        return result

    def _result(self, elapsed: float) -> dict[str, Any]:
        return {
            "method": self.usl.method,
            "epoch": self.last_metrics.get("epoch", self.cfg.solver.max_epochs),
            "datasets": self.last_metrics.get("datasets", {}),
            "mean": self.last_metrics.get("mean", {}),
            "best": {"epoch": self.best_epoch, "score": None if self.best_score == -math.inf else self.best_score},
            "history": self.history,
            "clusters": self.clusters,
            "train": {"time_s": round(elapsed, 2)},
            "output_dir": str(self.out),
        }

    def close(self) -> None:
        """Release the log file."""
        handler = getattr(self, "_log_handler", None)
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
            self._log_handler = None


def train_usl(cfg_or_path: "Config | str | Path | dict[str, Any]", **overrides: Any) -> dict[str, Any]:
    """Run unsupervised / UDA training from a recipe and return its metrics."""
    return ClusterTrainer(cfg_or_path, **overrides).fit()
