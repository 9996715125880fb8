"""Supervised training on pytorch-ignite: one ``Engine`` whose process function is a single
optimisation step; scheduling, logging, evaluation, checkpoints and the NaN guard are handlers
attached to its events.

Learning-rate schedule: a factor of ``solver.base_lr`` computed from the training progress ``t``
in epochs. With ``solver.sched_unit = "epoch"`` (the BoT paper) ``t`` is the index of the current
epoch, so the lr changes at epoch boundaries; with ``"iter"`` it is fractional (iteration /
iterations per epoch), so warmup and cosine move every iteration. Multistep decays always happen
at the epoch boundaries named in ``solver.steps``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from reidkit.config import Config, load_config
from reidkit.engine.checkpoint import (
    RNGGuard,
    all_finite,
    load_training_checkpoint,
    rng_state,
    save_training_checkpoint,
    set_rng_state,
)
from reidkit.errors import ReIDError

log = logging.getLogger("reidkit.train")

METRIC_KEYS = ("mAP", "rank1", "rank5", "rank10", "mINP", "score")


# --------------------------------------------------------------------------------------------
# Learning-rate schedules


def lr_factor(cfg: Config, t: float) -> float:
    """Multiplier of `solver.base_lr` at training progress `t` (epochs since the start)."""
    s = cfg.solver
    epoch = math.floor(t + 1e-9)
    if s.sched_unit == "epoch":
        t = float(epoch)
    warm = s.warmup_epochs if s.scheduler in ("warmup_multistep", "warmup_cosine") else 0
    if warm > 0 and t < warm:
        warm_f = s.warmup_factor + (1.0 - s.warmup_factor) * t / warm
    else:
        warm_f = 1.0
    if s.scheduler == "warmup_multistep":
        decays = sum(1 for step in s.steps if epoch >= step)
        return warm_f * s.gamma**decays
    # Cosine from 1 down to min_lr_factor over the epochs after warmup.
    span = max(s.max_epochs - warm, 1)
    progress = min(max(t - warm, 0.0) / span, 1.0)
    cos = s.min_lr_factor + (1.0 - s.min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return warm_f * cos if t < warm else cos


def build_optimizer(cfg: Config, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD over the parameter groups (each group keeps its own lr and decay)."""
    s = cfg.solver
    if s.optimizer == "adam":
        return torch.optim.Adam(groups, lr=s.base_lr, weight_decay=s.weight_decay)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=s.base_lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(groups, lr=s.base_lr, momentum=s.momentum, weight_decay=s.weight_decay)


# --------------------------------------------------------------------------------------------
# Distributed helpers


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment (1 process when unset)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the local CUDA device when there is one, else CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ReIDError(f"config key 'device': expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ReIDError(f"config key 'device' is {name!r} but no CUDA device is available; use device=cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def console_logging(show_iterations: bool | None = None) -> logging.Handler:
    """Echo the training log on stderr (per-iteration lines only without a progress bar)."""
    if show_iterations is None:
        show_iterations = not sys.stderr.isatty()
    for old in [h for h in log.handlers if getattr(h, "_reidkit_console", False)]:
        log.removeHandler(old)  # one console echo, however often a command runs in a process
    handler = logging.StreamHandler(sys.stderr)
    handler._reidkit_console = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(message)s"))
    if not show_iterations:
        handler.addFilter(lambda record: not getattr(record, "per_iteration", False))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Data: datasets, labels, the batch loader


class EpochStream:
    """Endless iterable of training batches, epoch after epoch, for ignite's ``Engine.run``.

    Ignite is given ``epoch_length`` batches per epoch and never sees the end of this stream, so
    the sampler's epoch is set here, from the engine's epoch count when iteration starts (a
    resumed run continues with the sampler epoch it would have reached uninterrupted).
    """

    def __init__(self, loader: Any, sampler: Any, first_epoch: Callable[[], int]) -> None:
        self.loader = loader
        self.sampler = sampler
        self.first_epoch = first_epoch

    def __iter__(self) -> Iterator[Any]:
        epoch = self.first_epoch()
        while True:
            self.sampler.set_epoch(epoch)
            yield from self.loader
            epoch += 1


def _spec_dict(spec: Any) -> dict[str, Any]:
    return {"name": spec.name, "root": spec.root, **dict(spec.options)}


def load_training_data(cfg: Config) -> tuple[Any, list[Any]]:
    """(joint training dataset, validation datasets) from ``cfg.data``."""
    from reidkit.data.datasets import load_dataset, load_datasets

    joint = load_datasets([_spec_dict(s) for s in cfg.data.datasets])
    if cfg.data.val is None:
        val = list(joint.parts)
    else:
        val = [load_dataset(s.name, s.root, **dict(s.options)) for s in cfg.data.val]
    for ds in val:
        if not ds.query or not ds.gallery:
            raise ReIDError(
                f"validation dataset {ds.name!r} has no query/gallery images; "
                "set data.val to datasets with a test split or data.val=[] to skip validation"
            )
    return joint, val


def build_sampler(cfg: Config, records: list[Any], labels: np.ndarray, rank: int, world: int) -> Any:
    """The P x K sampler named by ``sampler.type`` (pk, camera-balanced or dataset-balanced)."""
    from reidkit.data import samplers

    common = dict(p=cfg.sampler.p, k=cfg.sampler.k, epoch_batches=cfg.sampler.epoch_batches,
                  seed=cfg.seed, rank=rank, world_size=world)
    if cfg.sampler.type == "pk":
        return samplers.PKSampler(labels, **common)
    if cfg.sampler.type == "camera":
        return samplers.CameraBalancedPKSampler(labels, np.array([r.camid for r in records]), **common)
    names = sorted({r.dataset for r in records})
    ds_ids = np.array([names.index(r.dataset) for r in records])
    return samplers.DatasetBalancedPKSampler(labels, ds_ids, **common)


# --------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """A supervised ReID training run: ``Trainer(cfg).fit() -> metrics``.

    ``cfg`` is a :class:`Config`, a recipe path/name or a dict; keyword overrides use dotted keys
    with ``__`` (``solver__base_lr=1e-4``) or nested dicts (``solver={"base_lr": 1e-4}``).
    """

    def __init__(self, cfg: Config | str | Path | dict[str, Any], **overrides: Any) -> None:
        self.cfg = cfg if isinstance(cfg, Config) and not overrides else load_config(cfg, overrides or None)
        self.rank, self.world_size, self.local_rank = dist_env()
        self.is_main = self.rank == 0
        self.out = Path(self.cfg.output_dir)
        self.history: list[dict[str, Any]] = []
        self.best_score = -math.inf
        self.best_epoch = 0
        self.last_metrics: dict[str, Any] = {}
        self.train_stats: dict[str, float] = {}
        self._ready = False
        # Test hook: called as hook(trainer, total_loss) inside the step, e.g. to inject a NaN.
        self.loss_hook: Callable[["Trainer", torch.Tensor], torch.Tensor] | None = None

    # ---------------------------------------------------------------- setup
    def setup(self) -> "Trainer":
        """Build data, model, losses, optimisers and the ignite engine (idempotent)."""
        if self._ready:
            return self
        cfg = self.cfg
        self._init_distributed()
        self.device = resolve_device(cfg.device, self.local_rank)
        self._check_amp()
        seed_everything(cfg.seed)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.to_yaml(self.out / "config.yaml")
        self._setup_logging()
        self._setup_data()
        self._setup_model()
        self._setup_optim()
        self._build_engine()
        self._ready = True
        return self

    def _init_distributed(self) -> None:
        if self.world_size <= 1:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            self._owns_process_group = True
            backend = "nccl" if (torch.cuda.is_available() and self.cfg.device != "cpu") else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend=backend)

    def _check_amp(self) -> None:
        amp = self.cfg.solver.amp
        if amp == "fp16" and self.device.type != "cuda":
            raise ReIDError(
                "config key 'solver.amp' is 'fp16', which needs a CUDA device (fp16 autocast and the "
                f"grad scaler do not run on {self.device.type}); use solver.amp=bf16 or none on CPU"
            )
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def _setup_logging(self) -> None:
        self._log_handler: logging.Handler | None = None
        log.setLevel(logging.INFO)
        if self.is_main:
            handler = logging.FileHandler(self.out / "train.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            self._log_handler = handler
        self.writer = None
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.out / "tb"))

    def _setup_data(self) -> None:
        from reidkit.data.datasets import train_labels

        cfg = self.cfg
        self.joint, self.val_sets = load_training_data(cfg)
        self.val_prepared: list[ValSet] | None = None  # decoded on first validation, rank 0 only
        records = list(self.joint.train)
        if not records:
            raise ReIDError(f"training set {self.joint.name!r} has no images")
        labels, self.label_map = train_labels(records)
        self.num_classes = len(self.label_map)
        self.size = (int(cfg.data.size[0]), int(cfg.data.size[1]))
        self.train_records = records
        self.train_labels_np = labels
        log.info("training on %s: %d images, %d identities", self.joint.name, len(records), self.num_classes)
        # The sampler and loader are built once the model (and hence the normalisation) is known.

    def _make_loader(self) -> None:
        from reidkit.data import pipeline
        from reidkit.data.augment import BatchAugment

        cfg = self.cfg
        labels = self.train_labels_np.copy()
        paths = [r.path for r in self.train_records]
        icfg = cfg.input
        aug_kwargs = dict(
            size=self.size, pad=icfg.pad, flip_p=icfg.flip_p, erase_p=icfg.erase_p,
            erase_area=tuple(icfg.erase_area), erase_aspect=tuple(icfg.erase_aspect),
            erase_fill=icfg.erase_fill, patch_p=icfg.patch_p, jitter=icfg.jitter,
            mean=self.mean, std=self.std, device=self.device,
        )
        # Augmentation randomness is seeded by the loaders from (seed, epoch, batch): a resumed
        # run replays the same draws. Ranks get different seeds so their augmentations differ.
        aug_seed = cfg.seed * 1000 + self.rank
        if cfg.data.loader == "cached":
            cache = pipeline.ImageCache.build(paths, size=self.size, cache_dir=cfg.data.cache_dir)
            # Images that could not be decoded are never sampled.
            labels[~np.asarray(cache.valid, dtype=bool)] = -1
            self.sampler = build_sampler(cfg, self.train_records, labels, self.rank, self.world_size)
            self.loader = pipeline.CachedBatchLoader(
                cache, labels, self.sampler, BatchAugment(**aug_kwargs), device=self.device, seed=aug_seed,
                channels_last=cfg.data.channels_last,
            )
        else:
            self.sampler = build_sampler(cfg, self.train_records, labels, self.rank, self.world_size)
            self.loader = pipeline.PILBatchLoader(
                paths, labels, self.sampler, aug_kwargs, num_workers=cfg.data.num_workers,
                device=self.device, seed=aug_seed, channels_last=cfg.data.channels_last,
            )
        self.epoch_length = len(self.sampler)

    def _setup_model(self) -> None:
        from reidkit.losses.criterion import build_criterion
        from reidkit.models.build import build_model

        cfg = self.cfg
        self.net = build_model(cfg.model, self.num_classes).to(self.device)
        if cfg.data.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.mean = list(cfg.input.mean) if cfg.input.mean is not None else list(self.net.mean)
        self.std = list(cfg.input.std) if cfg.input.std is not None else list(self.net.std)
        # The saved model carries the normalisation it was trained with.
        self.net.mean, self.net.std = list(self.mean), list(self.std)
        self.criterion = build_criterion(cfg.loss, self.num_classes, self.net.feat_dim).to(self.device)
        self.model: nn.Module = self.net
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # Without an ID loss the classifier gets no gradient: DDP must be told.
            self.model = DDP(self.net, device_ids=ids, find_unused_parameters="softmax" not in cfg.loss.names)
        if cfg.compile:
            self.model = torch.compile(self.model)  # type: ignore[assignment]
        self._make_loader()

    def _setup_optim(self) -> None:
        from reidkit.models.build import param_groups

        cfg, s = self.cfg, self.cfg.solver
        extra = [self.criterion.weighting] if getattr(self.criterion, "weighting", None) is not None else []
        groups = param_groups(
            self.net, s.base_lr, s.weight_decay, backbone_lr_factor=s.backbone_lr_factor,
            head_lr_factor=s.head_lr_factor, bias_lr_factor=s.bias_lr_factor,
            no_decay_norm=s.no_decay_norm, extra_modules=extra,
        )
        self.optimizer = build_optimizer(cfg, groups)
        self.center_optimizer = None
        if self.criterion.center is not None:
            # Centres move by their own plain SGD at a fixed lr (BoT: 0.5), outside the schedule.
            self.center_optimizer = torch.optim.SGD(self.criterion.center.parameters(), lr=cfg.loss.center_lr)
        length = self.epoch_length
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: lr_factor(cfg, it / length)
        )
        self.scaler = torch.amp.GradScaler("cuda") if s.amp == "fp16" else None

    # ---------------------------------------------------------------- the step
    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _step(self, engine: Any, batch: Any) -> dict[str, Any]:
        images, labels, _ = batch
        images = images.to(self.device, non_blocking=True)
        labels = torch.as_tensor(labels).to(self.device, non_blocking=True).long()
        self.model.train()
        with self._autocast():
            outputs = self.model(images, labels)
        outputs = _to_float(outputs)
        total, parts = self.criterion(outputs, labels)
        if self.loss_hook is not None:
            total = self.loss_hook(self, total)
        if not bool(torch.isfinite(total)):
            raise ReIDError(
                f"training diverged: the loss is {float(total.detach())} at iteration {engine.state.iteration} "
                f"(epoch {engine.state.epoch}); stopped before updating the weights. The last good "
                f"checkpoint {self.out / 'last.pt'} is left intact. Lower solver.base_lr, set "
                "solver.grad_clip, or check the data."
            )
        lr = max(g["lr"] for g in self.optimizer.param_groups)
        self.optimizer.zero_grad(set_to_none=True)
        if self.center_optimizer is not None:
            self.center_optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
        else:
            total.backward()
        if self.world_size > 1:
            self._allreduce_criterion_grads()
        clip = self.cfg.solver.grad_clip
        if clip > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
        else:
            self.optimizer.step()
        if self.center_optimizer is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.center_optimizer)
            self.criterion.rescale_center_grad()
            if self.scaler is not None:
                self.scaler.step(self.center_optimizer)
            else:
                self.center_optimizer.step()
        if self.scaler is not None:
            self.scaler.update()
        return {"loss": total.detach(), "parts": parts, "n": int(images.shape[0]), "lr": lr}

    def _allreduce_criterion_grads(self) -> None:
        # The criterion (centres, learnable weights) is outside DDP: average its gradients by hand.
        import torch.distributed as dist

        for p in self.criterion.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world_size)

    # ---------------------------------------------------------------- engine and handlers
    def _build_engine(self) -> None:
        from ignite.engine import Engine, Events

        self.engine = Engine(self._step)
        eng = self.engine
        eng.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration)
        eng.add_event_handler(Events.EPOCH_STARTED, self._on_epoch_started)
        # Order matters: the scheduler has stepped, then evaluate, then checkpoint (with the best score).
        eng.add_event_handler(Events.EPOCH_COMPLETED, self._on_epoch_completed)
        eng.add_event_handler(Events.EPOCH_COMPLETED, self._maybe_evaluate)
        eng.add_event_handler(Events.EPOCH_COMPLETED, self._maybe_checkpoint)
        eng.add_event_handler(Events.COMPLETED, self._on_completed)

    def _on_epoch_started(self, engine: Any) -> None:
        self._epoch_t0 = time.perf_counter()
        self._window_t0 = self._epoch_t0
        self._window_n = 0
        self._epoch_n = 0
        self._loss_sum = 0.0
        self._loss_count = 0
        self._pbar = None
        if self.is_main:
            from tqdm.auto import tqdm

            # disable=None: a bar on terminals, nothing in logs and pipes.
            self._pbar = tqdm(
                total=self.epoch_length, desc=f"epoch {engine.state.epoch}/{engine.state.max_epochs}",
                leave=False, disable=None, dynamic_ncols=True, file=sys.stderr,
            )

    def _on_iteration(self, engine: Any) -> None:
        self.scheduler.step()
        out = engine.state.output
        self._window_n += out["n"]
        self._epoch_n += out["n"]
        it = engine.state.iteration
        period = self.cfg.solver.log_period
        need_value = self._pbar is not None or it % period == 0
        if not need_value:
            return
        loss = float(out["loss"])
        self._loss_sum += loss
        self._loss_count += 1
        now = time.perf_counter()
        ips = self._window_n * self.world_size / max(now - self._window_t0, 1e-9)
        if self._pbar is not None:
            self._pbar.update(1)
            self._pbar.set_postfix(loss=f"{loss:.3f}", img_s=f"{ips:.0f}", refresh=False)
        if it % period == 0 and self.is_main:
            lr = out["lr"]
            parts = {k: float(v) for k, v in out["parts"].items()}
            log.info(
                "epoch %d iter %d/%d loss %.4f (%s) lr %.3g %.0f img/s",
                engine.state.epoch, (it - 1) % self.epoch_length + 1, self.epoch_length, loss,
                " ".join(f"{k} {v:.4f}" for k, v in parts.items()), lr, ips, extra={"per_iteration": True},
            )
            if self.writer is not None:
                self.writer.add_scalar("train/loss", loss, it)
                for k, v in parts.items():
                    self.writer.add_scalar(f"train/{k}", v, it)
                self.writer.add_scalar("train/lr", lr, it)
                self.writer.add_scalar("train/images_per_s", ips, it)
            self._window_t0, self._window_n = now, 0

    def _on_epoch_completed(self, engine: Any) -> None:
        if self._pbar is not None:
            self._pbar.close()
        dt = time.perf_counter() - self._epoch_t0
        ips = self._epoch_n * self.world_size / max(dt, 1e-9)
        self.train_stats = {"epoch_time_s": dt, "images_per_s": ips}
        if self.is_main:
            log.info("epoch %d done in %.1f s (%.0f img/s)", engine.state.epoch, dt, ips)
            if self.writer is not None:
                self.writer.add_scalar("train/epoch_images_per_s", ips, engine.state.epoch)

    def _maybe_evaluate(self, engine: Any) -> None:
        epoch, last = engine.state.epoch, engine.state.max_epochs
        if not self.val_sets or (epoch % self.cfg.solver.eval_period and epoch != last):
            return
        if self.is_main:
            metrics = self.validate()
            self._record(epoch, metrics)
        self._barrier()

    def _record(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.last_metrics = {"epoch": epoch, **metrics}
        score = metrics["mean"]["score"]
        self.history.append({"epoch": epoch, **{k: metrics["mean"][k] for k in METRIC_KEYS}})
        msg = " | ".join(
            f"{name}: mAP {m['mAP']:.4f} rank-1 {m['rank1']:.4f} mINP {m['mINP']:.4f}"
            for name, m in metrics["datasets"].items()
        )
        log.info("validation epoch %d: %s | mean score %.4f", epoch, msg, score)
        if self.writer is not None:
            for name, m in metrics["datasets"].items():
                for k in METRIC_KEYS:
                    self.writer.add_scalar(f"val/{name}/{k}", m[k], epoch)
            self.writer.add_scalar("val/mean_score", score, epoch)
        if score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            self._save_weights(self.out / "best.pt")
            log.info("new best score %.4f at epoch %d -> %s", score, epoch, self.out / "best.pt")

    def _maybe_checkpoint(self, engine: Any) -> None:
        epoch = engine.state.epoch
        if epoch % self.cfg.solver.checkpoint_period and epoch != engine.state.max_epochs:
            return
        if self.is_main:
            self.save_checkpoint(self.out / "last.pt", epoch)
        self._barrier()

    def _on_completed(self, engine: Any) -> None:
        if self.is_main:
            self._save_weights(self.out / "model.pt")

    def _barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    # ---------------------------------------------------------------- evaluation
    def validate(self, rerank: bool | None = None, out_dir: Path | None = None) -> dict[str, Any]:
        """Evaluate the current model on every validation set: per-dataset metrics (percent) and their mean."""
        if self.val_prepared is None:
            self.val_prepared = prepare_val_sets(self.val_sets, self.size, self.cfg.data.cache_dir)
        # Evaluation must not move the training random streams, or resume != uninterrupted.
        with RNGGuard():
            return evaluate_sets(self.net, self.val_prepared, self.cfg, self.device, rerank=rerank, out_dir=out_dir)

    # ---------------------------------------------------------------- checkpoints
    def _save_weights(self, path: Path) -> None:
        from reidkit.models.build import save_model

        if not all_finite(self.net):
            raise ReIDError(f"refusing to write {path}: the model has NaN/inf weights (training diverged)")
        save_model(path, self.net, self.cfg.model, self.num_classes, list(self.size))

    def save_checkpoint(self, path: Path, epoch: int) -> None:
        """Write the full training state after `epoch` (atomically)."""
        state = {
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "center_optimizer": self.center_optimizer.state_dict() if self.center_optimizer else None,
            "criterion": self.criterion.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "last_metrics": self.last_metrics,
            "world_size": self.world_size,
            "config": self.cfg.to_dict(),
        }
        save_training_checkpoint(
            path, model=self.net, model_cfg=self.cfg.model, num_classes=self.num_classes,
            input_size=list(self.size), state=state,
        )

    def load_checkpoint(self, path: Path) -> int:
        """Restore the training state from `path`; returns the epochs already done."""
        ckpt = load_training_checkpoint(path, self.device)
        if int(ckpt.get("num_classes", -1)) != self.num_classes:
            raise ReIDError(
                f"cannot resume from {path}: it has {ckpt.get('num_classes')} identities, "
                f"this training set {self.num_classes}"
            )
        if int(ckpt.get("world_size", 1)) != self.world_size:
            raise ReIDError(
                f"cannot resume from {path}: written by {ckpt.get('world_size')} processes, "
                f"now {self.world_size}; the sampler sequence would differ"
            )
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.center_optimizer is not None and ckpt.get("center_optimizer"):
            self.center_optimizer.load_state_dict(ckpt["center_optimizer"])
        if ckpt.get("criterion") is not None:
            self.criterion.load_state_dict(ckpt["criterion"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.sampler.load_state_dict(ckpt["sampler"])
        set_rng_state(ckpt["rng"])
        self.best_score = float(ckpt.get("best_score", -math.inf))
        self.best_epoch = int(ckpt.get("best_epoch", 0))
        self.history = list(ckpt.get("history", []))
        self.last_metrics = dict(ckpt.get("last_metrics", {}))
        return int(ckpt["epoch"])

    def _resume_path(self) -> Path | None:
        r = self.cfg.resume
        if r is False or r == "":
            return None
        if r == "auto":
            path = self.out / "last.pt"
            return path if path.is_file() else None
        path = self.out / "last.pt" if r is True else Path(str(r))
        if not path.is_file():
            raise ReIDError(f"resume: no checkpoint at {path}; train without resume=true first")
        return path

    # ---------------------------------------------------------------- run
    def fit(self) -> dict[str, Any]:
        """Train for ``solver.max_epochs`` epochs (continuing a checkpoint when resuming); return metrics."""
        self.setup()
        max_epochs = self.cfg.solver.max_epochs
        done = 0
        path = self._resume_path()
        if path is not None:
            done = self.load_checkpoint(path)
            log.info("resumed from %s after epoch %d", path, done)
            if done > max_epochs:
                raise ReIDError(f"resume: {path} is at epoch {done}, beyond solver.max_epochs={max_epochs}")
            self.engine.load_state_dict(
                {"epoch": done, "max_epochs": max_epochs, "epoch_length": self.epoch_length}
            )
        stream = EpochStream(self.loader, self.sampler, lambda: self.engine.state.epoch)
        t0 = time.perf_counter()
        try:
            if done < max_epochs:
                self.engine.run(stream, max_epochs=max_epochs, epoch_length=self.epoch_length)
            elif self.is_main and self.val_sets and not self.last_metrics:
                self._record(done, self.validate())
        except Exception as exc:
            if self.is_main:
                log.error("training stopped: %s", exc)
            self.close()
            raise
        result = self._result(time.perf_counter() - t0)
        if self.is_main:
            write_json(self.out / "metrics.json", result)
        self.close()
        return result

    def _result(self, elapsed: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "epoch": self.last_metrics.get("epoch", self.cfg.solver.max_epochs),
            "datasets": self.last_metrics.get("datasets", {}),
            "mean": self.last_metrics.get("mean", {}),
            "best": {"epoch": self.best_epoch, "score": None if self.best_score == -math.inf else self.best_score},
            "history": self.history,
            "train": {"time_s": round(elapsed, 2), **{k: round(v, 2) for k, v in self.train_stats.items()}},
            "output_dir": str(self.out),
        }
        return out

    def close(self) -> None:
        """Flush and release the log file and tensorboard writer."""
        if getattr(self, "writer", None) is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
        handler = getattr(self, "_log_handler", None)
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
            self._log_handler = None
        pbar = getattr(self, "_pbar", None)
        if pbar is not None:
            pbar.close()
        if getattr(self, "_owns_process_group", False):
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._owns_process_group = False


# --------------------------------------------------------------------------------------------
# Small helpers


def _to_float(outputs: Any) -> Any:
    # Losses run in fp32 even under autocast: softmax/triplet distances are precision-sensitive.
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, dict):
        return {k: _to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_to_float(v) for v in outputs)
    return outputs


def _named(datasets: list[Any]) -> list[tuple[str, Any]]:
    seen: dict[str, int] = {}
    out = []
    for ds in datasets:
        name = ds.name
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name}_{seen[name]}", ds))
    return out


class ValSet:
    """A validation dataset with its query and gallery images decoded once (uint8 N x H x W x 3)."""

    def __init__(self, name: str, dataset: Any, query_images: np.ndarray, gallery_images: np.ndarray) -> None:
        self.name = name
        self.dataset = dataset
        self.query_images = query_images
        self.gallery_images = gallery_images


def prepare_val_sets(datasets: list[Any], size: tuple[int, int], cache_dir: str | None = None) -> list[ValSet]:
    """Decode each validation set's query and gallery once; unreadable images are dropped (and logged)."""
    import dataclasses

    from reidkit.data.pipeline import ImageCache

    out = []
    for name, ds in _named(datasets):
        parts = {}
        for split in ("query", "gallery"):
            records = list(getattr(ds, split))
            cache = ImageCache.build([r.path for r in records], size=size, cache_dir=cache_dir)
            valid = np.asarray(cache.valid, dtype=bool)
            if not valid.any():
                raise ReIDError(f"validation set {name!r}: none of the {len(records)} {split} images could be read")
            if not valid.all():
                log.warning("validation set %s: %d unreadable %s images skipped", name, int((~valid).sum()), split)
            parts[split] = ([r for r, v in zip(records, valid) if v], np.asarray(cache.images)[valid])
        if dataclasses.is_dataclass(ds):
            kept = dataclasses.replace(ds, query=parts["query"][0], gallery=parts["gallery"][0])
        else:
            kept = ds
        out.append(ValSet(name, kept, parts["query"][1], parts["gallery"][1]))
    return out


def extract_val_features(
    net: nn.Module, vs: ValSet, cfg: Config, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and gallery features of `net` with the ``cfg.test`` settings (flip TTA, neck_feat)."""
    from reidkit.evaluation.features import extract_features

    t = cfg.test
    kw = dict(batch_size=t.batch_size, flip=t.flip, device=device, normalize=False, neck_feat=t.neck_feat)
    with torch.no_grad():
        qf = extract_features(net, vs.query_images, **kw)
        gf = extract_features(net, vs.gallery_images, **kw)
    return qf, gf


def evaluate_sets(
    net: nn.Module,
    val_sets: list[ValSet],
    cfg: Config,
    device: torch.device,
    rerank: bool | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Evaluate `net` on each prepared set with the ``cfg.test`` settings: ``{"datasets", "mean"}`` (percent)."""
    from reidkit.evaluation.evaluator import evaluate

    t = cfg.test
    per: dict[str, dict[str, float]] = {}
    was_training = net.training
    try:
        for vs in val_sets:
            qf, gf = extract_val_features(net, vs, cfg, device)
            res = evaluate(
                {"query": qf, "gallery": gf}, vs.dataset, flip=t.flip, metric=t.metric,
                rerank=t.rerank if rerank is None else rerank, k1=t.k1, k2=t.k2,
                lambda_value=t.lambda_value, device=device,
                out_dir=None if out_dir is None else out_dir / vs.name,
            )
            per[vs.name] = {k: float(res[k]) for k in METRIC_KEYS}
    finally:
        net.train(was_training)
    return {"datasets": per, "mean": mean_metrics(per)}


def mean_metrics(per: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the validation sets (the selection score is the mean of scores)."""
    if not per:
        return {}
    return {k: float(np.mean([m[k] for m in per.values()])) for k in METRIC_KEYS}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
