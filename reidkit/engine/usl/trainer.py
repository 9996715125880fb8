"""Unsupervised and domain-adaptive training: the shared lifecycle, re-clustering at every epoch start.

Each epoch (``usl.iters_per_epoch`` iterations):

1. features of the cached training images (eval mode, no flip, as the originals), extracted
   shard by shard across torchrun ranks and gathered in order;
2. on rank 0, the method's pseudo labels: k-reciprocal Jaccard distance (on camera-centred
   features with ``usl.camera_norm``; mixed with a source-domain term with ``usl.source.enabled``)
   + DBSCAN, outliers dropped (or kept as one noise class / singletons, ``usl.outliers``): the
   pure :func:`reidkit.cluster.rounds.cluster_round`; the labels are broadcast to every rank;
3. the method's per-round state on every rank (a cluster / hybrid / instance memory, per-space
   labels, DEC targets) and the batches: P x K over the pseudo labels (uniform for DEC);
4. the steps: the method's loss, through the same optimisation step, AMP, handlers, checkpoints,
   validation and resume as supervised training.

True training labels are only used for ``cluster_report`` (purity / NMI / ARI in the log and in
``metrics.json``), never for training. A round with too few usable clusters stops the run with
an error naming the setting to change.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Iterator, cast

import numpy as np
import torch
from torch import nn

from reidkit.cluster.rounds import Round, RoundSettings, camera_centred, cluster_round
from reidkit.config import Config, UnsupervisedConfig
from reidkit.engine.base import BaseTrainer
from reidkit.engine.data import build_augment
from reidkit.engine.usl.methods import USL_METHODS
from reidkit.engine.usl.methods.base import USLContext
from reidkit.engine.usl.spaces import SpaceModel, extract_spaces
from reidkit.errors import ReIDError

__all__ = ["ClusterTrainer", "RandomBatches", "camera_centred", "dataset_eps", "load_usl_config", "train_usl"]

log = logging.getLogger("reidkit.train")

_PART_SPACES = ("upper", "lower")


def load_usl_config(source: Any = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Load a recipe (path, packaged name, dict or Config) and check its ``usl`` section and method."""
    return ClusterTrainer.load_config(source, overrides)


def dataset_eps(usl: UnsupervisedConfig, dataset_name: str) -> float | None:
    """The DBSCAN eps for a dataset: ``usl.eps``, else ``usl.eps_by_dataset``, else None (rho rule)."""
    if usl.eps is not None:
        return float(usl.eps)
    table = {str(k).lower(): float(v) for k, v in usl.eps_by_dataset.items()}
    name = dataset_name.lower()
    if name in table:
        return table[name]
    return table.get("default")


class RandomBatches:
    """Uniform random batches over the usable indices (DEC needs no P x K structure)."""

    def __init__(
        self, usable: np.ndarray, batch_size: int, epoch_batches: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.usable = np.asarray(usable, dtype=np.int64)
        self.batch_size = min(int(batch_size), len(self.usable))
        self.epoch_batches = int(epoch_batches)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (the draw is seeded by (seed, epoch, rank))."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.epoch_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, 7, self.rank])
        for _ in range(self.epoch_batches):
            yield rng.choice(self.usable, size=self.batch_size, replace=False).tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state.get("epoch", 0))


class ClusterTrainer(BaseTrainer):
    """Unsupervised / UDA training run: ``ClusterTrainer(cfg).fit() -> metrics``.

    ``cfg``: a Config with a ``usl`` section, a recipe path/name or a dict; keyword overrides as
    in the supervised trainer (``usl__eps=0.5`` or ``usl={"eps": 0.5}``). The method is looked up
    in the USL method registry (``reidkit.register_usl_method`` adds one).
    """

    kind = "cluster"

    def __init__(self, cfg: Any, **overrides: Any) -> None:
        super().__init__(cfg, **overrides)
        self.usl: UnsupervisedConfig = self.cfg.usl
        self.clusters: list[dict[str, Any]] = []
        self.fixed_eps: dict[str, float] = {}

    @classmethod
    def load_config(cls, cfg: Any, overrides: Any = None) -> Config:
        out = super().load_config(cfg, overrides)
        USL_METHODS.get(out.usl.method).check_config(out.usl)
        if out.model.arch != "baseline":
            raise ReIDError(f"config key 'model.arch': unsupervised training needs 'baseline', got {out.model.arch!r}")
        return out

    # ------------------------------------------------------------------ data and model
    def build_data(self) -> None:
        from reidkit.data.datasets import load_datasets, train_labels
        from reidkit.data.pipeline import ImageCache

        cfg = self.cfg
        records = self.load_train_records()
        cache = ImageCache.build(
            [r.path for r in records],
            size=self.size,
            cache_dir=cfg.data.cache_dir,
            step_name="decoding training images",
        )
        valid = np.asarray(cache.valid, dtype=bool)
        self.record_skipped("train", list(cache.skipped))
        self.records = [r for r, ok in zip(records, valid) if ok]
        imgs = np.asarray(cache.images)
        self.images = imgs if valid.all() else np.ascontiguousarray(imgs[valid])
        # Only for cluster_report: never reaches the loss.
        self.true_labels, _ = train_labels(self.records)
        self.camids = self.camera_ids(self.records)
        self.dataset_name = cfg.data.datasets[0].name
        self.source_images: np.ndarray | None = None
        if self.usl.source.enabled:
            try:
                src = load_datasets(
                    [
                        {"name": s["name"], "root": s.get("root", "data"), **dict(s.get("options", {}))}
                        for s in self.usl.source.datasets
                    ]
                )
            except ReIDError as exc:  # name the key that chose the source set
                raise ReIDError(f"config key 'usl.source.datasets' (the source domain): {exc}") from None
            sc = ImageCache.build(
                [r.path for r in src.train],
                size=self.size,
                cache_dir=cfg.data.cache_dir,
                step_name="decoding source-domain images",
            )
            self.source_images = np.ascontiguousarray(np.asarray(sc.images)[np.asarray(sc.valid, dtype=bool)])
        log.info(
            "unsupervised training (%s) on %s: %d images (labels unused)",
            self.usl.method,
            self.joint.name,
            len(self.records),
        )

    def build_model(self) -> None:
        from reidkit.models.build import build_model
        from reidkit.models.loading import load_model

        cfg, usl = self.cfg, self.usl
        model_cfg = cfg.model
        init = None
        if usl.init_weights:
            init = load_model(usl.init_weights, device="cpu")
            model_cfg = dataclasses.replace(cfg.model, pretrained=False)
        net = build_model(model_cfg, 1)
        if init is not None:
            own = net.state_dict()
            # The source classifier has the source identities: everything else carries over.
            state = {
                k: v
                for k, v in init.state_dict().items()
                if k in own and own[k].shape == v.shape and not k.startswith("head.classifier")
            }
            missing = [k for k in own if k not in state and not k.startswith("head.classifier")]
            if missing:
                raise ReIDError(
                    f"config key 'usl.init_weights': {usl.init_weights} does not match model "
                    f"{cfg.model.backbone} (e.g. missing {missing[0]}); set model.* as in the source run"
                )
            net.load_state_dict(state, strict=False)
            net.mean, net.std = list(init.mean), list(init.std)
            log.info("initialised from %s", usl.init_weights)
        self.net = net
        self.neck_after = (cfg.test.neck_feat or cfg.model.neck_feat) == "after"
        self.feat_dim = int(net.feat_dim)

    def _prepare_model(self) -> None:
        usl = self.usl
        ctx = USLContext(
            usl=usl,
            options=usl.options(usl.method),
            device=self.device,
            feat_dim=self.feat_dim,
            seed=self.cfg.seed,
            features=self.features,
            cluster=self.cluster_round,
            dataset_eps=self.eps_for(),
            gather=self._memory_gather(),
            true_labels=self.true_labels,
        )
        self.method = USL_METHODS.get(usl.method)(ctx)
        super()._prepare_model()
        self.method.setup()

    def train_module(self) -> nn.Module:
        # The training forward maps images to space features: DDP and compile wrap that module.
        return SpaceModel(self.net, self.method.spaces(), self.neck_after)

    def ddp_find_unused(self) -> bool:
        return True

    def build_loader(self) -> None:
        from reidkit.data.augment import BatchAugment
        from reidkit.data.pipeline import CachedBatchLoader

        usl = self.usl
        self.epoch_length = usl.iters_per_epoch
        aug = BatchAugment(**build_augment(self.cfg.input, self.size, self.mean, self.std, self.device))
        # Labels are replaced and a sampler is built at each re-clustering; images stay on the device.
        self.loader = CachedBatchLoader(
            self.images,
            np.full(len(self.images), -1, dtype=np.int64),
            RandomBatches(np.arange(len(self.images)), 1, usl.iters_per_epoch, 0),
            aug,
            device=self.device,
            seed=self.cfg.seed * 1000 + self.rank,
            channels_last=self.cfg.data.channels_last,
        )

    def extra_modules(self) -> list[nn.Module]:
        return cast(list[nn.Module], self.method.extra_modules())  # USLMethod.extra_modules

    # ------------------------------------------------------------------ features and clustering
    def features(self) -> dict[str, torch.Tensor]:
        """Current normalised features of the training images, per space (all ranks take part)."""
        return extract_spaces(
            self.net,
            self.images,
            self.method.spaces(),
            self.device,
            self.mean,
            self.std,
            self.neck_after,
            batch_size=self.cfg.test.batch_size,
            distributed=self.world_size > 1,
            autocast=self.optim.autocast if hasattr(self, "optim") else None,
        )

    def eps_for(self) -> float | None:
        """The DBSCAN eps of the run's dataset (None: the rho rule)."""
        return dataset_eps(self.usl, self.dataset_name)

    def round_settings(self) -> RoundSettings:
        """The clustering round's numbers, from ``usl.*``."""
        usl = self.usl
        return RoundSettings(
            eps=self.eps_for(),
            rho=usl.rho,
            k1=usl.k1,
            k2=usl.k2,
            min_samples=usl.min_samples,
            outliers=usl.outliers,
            camera_norm=usl.camera_norm,
            include_self_in_k1=usl.include_self_in_k1,
            search=usl.search,
            source_weight=usl.source.weight if self.source_images is not None else 0.0,
            source_k=usl.source.k,
        )

    def cluster_round(self, epoch: int, feats: dict[str, torch.Tensor], spaces: list[str]) -> Round:
        """The pure clustering round with this run's settings, camera ids, source features and fixed eps."""
        settings = self.round_settings()
        source = None
        if self.source_images is not None and settings.source_weight > 0:
            source = extract_spaces(
                self.net,
                self.source_images,
                ["global"],
                self.device,
                self.mean,
                self.std,
                self.neck_after,
                batch_size=self.cfg.test.batch_size,
            )["global"]
        rnd = cluster_round(
            feats,
            settings,
            spaces=spaces,
            epoch=epoch,
            camids=self.camids,
            source=source,
            fixed_eps=self.fixed_eps if self.usl.fix_eps else None,
            true_labels=self.true_labels,
        )
        if settings.eps is None and self.usl.fix_eps:
            for name, used in rnd.eps.items():
                self.fixed_eps.setdefault(name, used)
        return rnd

    def _too_few_clusters(self, epoch: int, n_ids: int, rnd: Round) -> ReIDError:
        usl = self.usl
        need = self.method.min_clusters
        eps = rnd.report.get("eps")
        if usl.eps is not None:
            knob = f"raise usl.eps (now {usl.eps})"
        elif self.dataset_name.lower() in {str(k).lower() for k in usl.eps_by_dataset} or "default" in {
            str(k).lower() for k in usl.eps_by_dataset
        }:
            knob = f"raise usl.eps_by_dataset's value for {self.dataset_name!r} (now {eps})"
        else:
            knob = f"raise usl.rho (now {usl.rho}; the rho rule chose eps {eps})"
        return ReIDError(
            f"epoch {epoch}: clustering found {n_ids} usable pseudo identit{'y' if n_ids == 1 else 'ies'} "
            f"among {len(rnd.labels)} images (method {usl.method} needs at least {need}); {knob} "
            f"or lower usl.min_samples (now {usl.min_samples}); nothing was trained this epoch"
        )

    def recluster(self, epoch: int) -> dict[str, Any]:
        """Features -> pseudo labels (rank 0, broadcast) -> method state -> sampler for this epoch."""
        t0 = time.perf_counter()
        feats = self.features()
        t_feat = time.perf_counter() - t0
        rnd = self.method.cluster(epoch, feats) if self.is_main else None
        if self.world_size > 1:
            import torch.distributed as dist

            box = [rnd]
            dist.broadcast_object_list(box, src=0)
            rnd = box[0]
        assert rnd is not None
        rnd.report["time_s"] = round(time.perf_counter() - t0, 2)
        rnd.report["feature_time_s"] = round(t_feat, 2)
        self._log_report(rnd.report)
        n_ids = len(np.unique(rnd.labels[rnd.labels >= 0]))
        if n_ids < self.method.min_clusters:
            raise self._too_few_clusters(epoch, n_ids, rnd)
        self.method.prepare(rnd, feats)
        self._set_batches(rnd.labels, epoch)
        return cast(dict[str, Any], rnd.report)  # Round.report

    def _set_batches(self, labels: np.ndarray, epoch: int) -> None:
        from reidkit.data.samplers import PKSampler

        usl = self.usl
        n_ids = len(np.unique(labels[labels >= 0]))
        if self.method.pk_batches:
            # A round with fewer clusters than P still trains, on smaller batches.
            p = max(1, min(usl.batch_size // usl.num_instances, n_ids))
            sampler: Any = PKSampler(
                labels,
                p=p,
                k=usl.num_instances,
                epoch_batches=usl.iters_per_epoch,
                seed=self.cfg.seed,
                rank=self.rank,
                world_size=self.world_size,
            )
        else:
            sampler = RandomBatches(
                np.flatnonzero(labels >= 0),
                usl.batch_size,
                usl.iters_per_epoch,
                self.cfg.seed,
                self.rank,
                self.world_size,
            )
        sampler.set_epoch(epoch)
        # The loader labels are the indices' pseudo labels; the step looks labels up per space by index.
        self.loader.labels = torch.as_tensor(labels.clip(min=-1), device=self.device)
        self.loader.sampler = sampler
        self.sampler = sampler

    def _memory_gather(self) -> Any:
        """Under DDP, an all-gather of (features, labels) for the memories' momentum update; else None."""
        if self.world_size <= 1:
            return None
        import torch.distributed as dist

        # A group of its own: the gather runs inside backward, beside DDP's gradient all-reduce.
        group, world = dist.new_group(backend="gloo"), self.world_size

        def gather(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = features.detach().float().cpu().contiguous()
            lab = torch.as_tensor(labels).long().cpu().contiguous()
            fs = [torch.zeros_like(f) for _ in range(world)]
            ls = [torch.zeros_like(lab) for _ in range(world)]
            dist.all_gather(fs, f, group=group)
            dist.all_gather(ls, lab, group=group)
            return torch.cat(fs).to(features.device), torch.cat(ls).to(features.device)

        return gather

    def _log_report(self, rep: dict[str, Any]) -> None:
        self.clusters.append(rep)
        if not self.is_main:
            return
        eps = "-" if rep.get("eps") is None else f"{rep['eps']:.4f}"
        msg = (
            f"epoch {rep['epoch']} clusters: eps {eps} | {rep['n_clusters']} clusters, "
            f"{rep['n_outliers']} outliers of {rep['n_samples']} | purity {rep['purity']:.3f} "
            f"NMI {rep['nmi']:.3f} ARI {rep['ari']:.3f} (true labels, report only) | {rep['time_s']:.1f} s"
        )
        for name in _PART_SPACES:
            if name in rep:
                r = rep[name]
                msg += f" | {name}: {r['n_clusters']} clusters, {r['n_outliers']} outliers, NMI {r['nmi']:.3f}"
        log.info(msg)
        if self.writer is not None:
            for key in ("n_clusters", "n_outliers", "purity", "nmi", "ari"):
                self.writer.add_scalar(f"cluster/{key}", rep[key], rep["epoch"])

    # ------------------------------------------------------------------ lifecycle hooks
    def on_epoch_started(self, engine: Any) -> None:
        self.recluster(engine.state.epoch)

    def before_training(self) -> None:
        if self.usl.eval_initial and self.val_sets:
            if self.is_main:
                self._record(0, self.validate())
            self._barrier()

    def compute_loss(self, engine: Any, batch: Any) -> tuple[torch.Tensor | None, dict[str, float], int]:
        images, _, idx = batch
        with self.optim.autocast():
            feats = self.model(images)
        feats = {k: v.float() for k, v in feats.items()}
        total, parts = self.method.loss(feats, idx.to(self.device))
        return total, parts, int(images.shape[0]) if total is not None else 0

    def after_update(self, engine: Any) -> None:
        self.method.after_update(engine.state.iteration)

    def _epoch_stats(self, engine: Any) -> None:
        super()._epoch_stats(engine)
        if self.clusters:
            loss = self.train_stats.get("mean_loss")
            self.clusters[-1]["train_loss"] = None if loss is None or not np.isfinite(loss) else float(loss)
            self.clusters[-1]["epoch_time_s"] = round(self.train_stats.get("epoch_time_s", 0.0), 2)

    def extra_state(self) -> dict[str, Any]:
        return {"clusters": self.clusters, "fixed_eps": self.fixed_eps, "method": self.method.state_dict()}

    def load_extra_state(self, ckpt: dict[str, Any], path: Path) -> None:
        self.clusters = list(ckpt.get("clusters", []))
        self.fixed_eps = dict(ckpt.get("fixed_eps", {}))
        self.method.load_state_dict(ckpt.get("method") or {})

    def result_extra(self) -> dict[str, Any]:
        return {"method": self.usl.method, "clusters": self.clusters}


def train_usl(cfg_or_path: Any, **overrides: Any) -> dict[str, Any]:
    """Run unsupervised / UDA training from a recipe and return its metrics."""
    return ClusterTrainer(cfg_or_path, **overrides).fit()
