"""Supervised training: identity labels, P x K batches, the criterion (ID + metric + center losses)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from reidkit.engine.base import BaseTrainer
from reidkit.engine.data import build_augment, build_sampler
from reidkit.engine.optim import ExtraOptimizer

__all__ = ["SupervisedTrainer", "to_float"]

log = logging.getLogger("reidkit.train")


def to_float(outputs: Any) -> Any:
    """Model outputs cast to fp32: losses run in fp32 even under autocast (softmax/triplet distances)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, dict):
        return {k: to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(to_float(v) for v in outputs)
    return outputs


class SupervisedTrainer(BaseTrainer):
    """A supervised ReID run: ``SupervisedTrainer(cfg).fit() -> metrics`` (also ``reidkit.Trainer``)."""

    kind = "supervised"

    def build_data(self) -> None:
        from reidkit.data.datasets import train_labels

        records = self.load_train_records()
        labels, self.label_map = train_labels(records)
        self.num_classes = len(self.label_map)
        self.train_records = records
        self.train_labels_np = labels
        # SIE models learn one embedding per camera
        self.train_cams = self.camera_ids(records)
        self.num_cameras = int(self.train_cams.max()) + 1

    def build_model(self) -> None:
        import dataclasses

        from reidkit.losses.criterion import build_criterion
        from reidkit.models.build import build_model

        cfg = self.cfg
        model_cfg = cfg.model
        if getattr(model_cfg, "num_cameras", None) == 0:
            model_cfg = dataclasses.replace(model_cfg, num_cameras=self.num_cameras)
            self.cfg.model = model_cfg
        self.net = build_model(model_cfg, self.num_classes)
        self.criterion = build_criterion(cfg.loss, self.num_classes, self.net.feat_dim).to(self.device)

    def ddp_find_unused(self) -> bool:
        # Without an ID loss the classifier gets no gradient: DDP must be told.
        return "softmax" not in self.cfg.loss.names or self.cfg.solver.freeze_backbone

    def build_loader(self) -> None:
        from reidkit.data import pipeline
        from reidkit.data.augment import BatchAugment

        cfg = self.cfg
        labels = self.train_labels_np.copy()
        paths = [r.path for r in self.train_records]
        aug_kwargs = build_augment(cfg.input, self.size, self.mean, self.std, self.device)
        # Augmentation randomness is seeded by the loaders from (seed, epoch, batch): a resumed
        # run replays the same draws. Ranks get different seeds so their augmentations differ.
        aug_seed = cfg.seed * 1000 + self.rank
        if cfg.data.loader == "cached":
            cache = pipeline.ImageCache.build(
                paths, size=self.size, cache_dir=cfg.data.cache_dir, step_name="decoding training images"
            )
            # Images that could not be decoded are never sampled.
            labels[~np.asarray(cache.valid, dtype=bool)] = -1
            self.record_skipped("train", list(cache.skipped))
            self.sampler = build_sampler(cfg.sampler, self.train_records, labels, cfg.seed, self.rank, self.world_size)
            self.loader = pipeline.CachedBatchLoader(
                cache,
                labels,
                self.sampler,
                BatchAugment(**aug_kwargs),
                device=self.device,
                seed=aug_seed,
                channels_last=cfg.data.channels_last,
            )
        else:
            self.sampler = build_sampler(cfg.sampler, self.train_records, labels, cfg.seed, self.rank, self.world_size)
            self.loader = pipeline.PILBatchLoader(
                paths,
                labels,
                self.sampler,
                aug_kwargs,
                num_workers=cfg.data.num_workers,
                device=self.device,
                seed=aug_seed,
                channels_last=cfg.data.channels_last,
            )
        self.epoch_length = len(self.sampler)
        self.train_cams_dev = torch.as_tensor(self.train_cams, device=self.device)
        used = int((labels >= 0).sum())
        log.info(
            "training on %s: %d images, %d identities, %d cameras",
            self.joint.name,
            used,
            self.num_classes,
            self.num_cameras,
        )

    def extra_modules(self) -> list[nn.Module]:
        # learnable loss weights and any registered loss with parameters (the centres have their own SGD)
        return list(self.criterion.trainable_modules())

    def extra_optimizers(self) -> list[ExtraOptimizer]:
        if self.criterion.center is None:
            return []
        # Centres move by their own plain SGD at a fixed lr (BoT: 0.5), outside the schedule.
        opt = torch.optim.SGD(self.criterion.center.parameters(), lr=self.cfg.loss.center_lr)
        return [ExtraOptimizer(opt, self.criterion.rescale_center_grad)]

    @property
    def center_optimizer(self) -> torch.optim.Optimizer | None:
        """The center loss's SGD (None without a center loss)."""
        extras = self.optim.extras if hasattr(self, "optim") else []
        return extras[0].optimizer if extras else None

    def after_backward_hooks(self) -> list[Any]:
        if self.world_size <= 1:
            return []
        return [self._allreduce_criterion_grads]

    def _allreduce_criterion_grads(self) -> None:
        # The criterion (centres, learnable weights) is outside DDP: average its gradients by hand.
        import torch.distributed as dist

        for p in self.criterion.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world_size)

    def compute_loss(self, engine: Any, batch: Any) -> tuple[torch.Tensor, dict[str, float], int]:
        images, labels, idx = batch
        images = images.to(self.device, non_blocking=True)
        labels = torch.as_tensor(labels).to(self.device, non_blocking=True).long()
        kwargs = {}
        if getattr(self.net, "uses_camera", False):
            kwargs["cams"] = self.train_cams_dev[torch.as_tensor(idx).to(self.device)]
        with self.optim.autocast():
            outputs = self.model(images, labels, **kwargs)
        total, parts = self.criterion(to_float(outputs), labels)
        return total, parts, int(images.shape[0])

    def extra_state(self) -> dict[str, Any]:
        return {"criterion": self.criterion.state_dict(), "sampler": self.sampler.state_dict()}

    def load_extra_state(self, ckpt: dict[str, Any], path: Any) -> None:
        if ckpt.get("criterion") is not None:
            self.criterion.load_state_dict(ckpt["criterion"])
        self.sampler.load_state_dict(ckpt["sampler"])
