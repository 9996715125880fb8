"""The training lifecycle shared by every trainer (supervised, cluster/USL).

``BaseTrainer(cfg).fit()`` owns: the process group under torchrun, the device, the seed, the
output folder (config.yaml, train.log, TensorBoard events), the ignite ``Engine`` and its
handlers (LR stepping, progress, NaN guard, validation + best, checkpoints, all attached with
event filters), resume (``resume=true``, ``"auto"`` or a path), atomic checkpoints (``last.pt``
with the whole training state, ``best.pt``, and the final ``model.pt``), metrics.json and close.

A subclass says only what differs: how it builds its data (:meth:`build_data`), its model
(:meth:`build_model`), its loss for a batch (:meth:`compute_loss`), what happens when an epoch
starts (:meth:`on_epoch_started`: the cluster trainer re-clusters), and what extra state its
checkpoint carries (:meth:`extra_state` / :meth:`load_extra_state`).

Final weights: ``model.pt`` holds the best validated weights when validation ran
(``solver.final_weights=best``, the default), else the last epoch's; the log and metrics.json
(``final_weights``) say which. ``last.pt`` always holds the last epoch's full training state.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from reidkit.engine.handlers import NanGuard, Progress, attach_lr_schedule, attach_periodic
from reidkit.engine.optim import ExtraOptimizer, OptimStep, amp_dtype, build_optimizer, build_scheduler
from reidkit.engine.optim import solver_param_groups
from reidkit.engine.validation import METRIC_KEYS, ValSet, evaluate_sets, prepare_val_sets
from reidkit.errors import ReIDError
from reidkit.utils.io import clean_stale_temps, ensure_dir, link_or_copy, write_json
from reidkit.utils.runtime import dist_env, resolve_device, seed_everything

if TYPE_CHECKING:
    from reidkit.data.pipeline import CachedBatchLoader, PILBatchLoader
    from reidkit.models.build import ReIDModel

__all__ = ["BaseTrainer"]

log = logging.getLogger("reidkit.train")


class BaseTrainer:
    """One training run: ``Trainer(cfg).fit() -> metrics``.

    ``cfg`` is a :class:`Config`, a recipe path/name or a dict; keyword overrides use dotted keys
    with ``__`` (``solver__base_lr=1e-4``) or nested dicts (``solver={"base_lr": 1e-4}``).
    """

    kind = "base"
    # set by each trainer's build_model / build_loader
    net: ReIDModel
    loader: CachedBatchLoader | PILBatchLoader
    epoch_length: int

    def __init__(self, cfg: Config | str | Path | dict[str, Any], **overrides: Any) -> None:
        self.cfg = self.load_config(cfg, overrides or None)
        self.rank, self.world_size, self.local_rank = dist_env()
        self.is_main = self.rank == 0
        self.out = Path(self.cfg.output_dir)
        self.history: list[dict[str, Any]] = []
        self.best_score = -math.inf
        self.best_epoch = 0
        self.last_metrics: dict[str, Any] = {}
        self.train_stats: dict[str, float] = {}
        self.val_sets: list[Any] = []
        self.val_prepared: list[ValSet] | None = None
        self.skipped_images: dict[str, Any] = {"train": 0, "validation": 0, "files": []}
        self.final_weights: dict[str, Any] = {}
        self.writer: Any = None
        self._log_handler: logging.Handler | None = None
        self._ready = False
        # Test hook: called as hook(trainer, total_loss) inside the step, e.g. to inject a NaN.
        self.loss_hook: Any = None

    @classmethod
    def load_config(cls, cfg: Any, overrides: Any = None) -> Config:
        """The checked Config of a run (subclasses add their own checks)."""
        if isinstance(cfg, Config) and not overrides:
            cfg.check()
            return cfg
        return load_config(cfg, overrides)

    # ------------------------------------------------------------------ subclass hooks
    def build_data(self) -> None:
        """Load datasets; set ``self.val_sets`` and whatever the step needs."""
        raise NotImplementedError

    def build_model(self) -> None:
        """Set ``self.net`` (the bare model) and, for the loss, whatever else the step needs."""
        raise NotImplementedError

    def build_loader(self) -> None:
        """Set ``self.loader`` and ``self.epoch_length`` (after the model: normalisation is known)."""
        raise NotImplementedError

    def compute_loss(self, engine: Any, batch: Any) -> tuple[torch.Tensor | None, dict[str, float], int]:
        """(total loss or None to skip the batch, named parts, images in the batch)."""
        raise NotImplementedError

    def extra_modules(self) -> list[nn.Module]:
        """Modules outside the model whose parameters the main optimiser also trains."""
        return []

    def extra_optimizers(self) -> list[ExtraOptimizer]:
        """Optimisers outside the schedule (e.g. the center loss's SGD)."""
        return []

    def after_backward_hooks(self) -> list[Any]:
        """Callables run after backward, before clipping (e.g. averaging criterion grads under DDP)."""
        return []

    def on_epoch_started(self, engine: Any) -> None:
        """Called at the start of every epoch (the cluster trainer re-clusters here)."""

    def after_update(self, engine: Any) -> None:
        """Called after each parameter update (e.g. DEC's periodic target refresh)."""

    def before_training(self) -> None:
        """Called once before the first epoch of a fresh (not resumed) run."""

    def extra_state(self) -> dict[str, Any]:
        """The subclass's part of the training checkpoint."""
        return {}

    def load_extra_state(self, ckpt: dict[str, Any], path: Path) -> None:
        """Restore :meth:`extra_state` from a checkpoint."""

    def result_extra(self) -> dict[str, Any]:
        """Extra keys of metrics.json."""
        return {}

    @property
    def num_classes_saved(self) -> int:
        """The classifier size written with the weights."""
        return int(getattr(self, "num_classes", 1))

    # ------------------------------------------------------------------ setup
    def setup(self) -> "BaseTrainer":
        """Process group, device, seed, output folder, logging, data, model, optimiser, engine (idempotent)."""
        if self._ready:
            return self
        cfg = self.cfg
        self._init_distributed()
        self.device = resolve_device(cfg.device, self.local_rank)
        amp_dtype(cfg.solver.amp, self.device)  # fp16 off CUDA: the clear error, before any data loads
        seed_everything(cfg.seed)
        if self.is_main:
            ensure_dir(self.out, "output_dir")
            removed = clean_stale_temps(self.out)
            cfg.to_yaml(self.out / "config.yaml")
        self._setup_logging()
        if self.is_main and removed:
            log.info(
                "removed %d temp file(s) left by an interrupted write: %s",
                len(removed),
                ", ".join(p.name for p in removed),
            )
        self.build_data()
        self.build_model()
        self._prepare_model()
        self.build_loader()
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

    def _setup_logging(self) -> None:
        log.setLevel(logging.INFO)
        if not self.is_main:
            return
        handler = logging.FileHandler(self.out / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        self._log_handler = handler
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:  # an optional output: training goes on without it
            from reidkit.utils.extras import install_hint

            log.warning("no TensorBoard events (tb/): tensorboard is not installed; %s", install_hint("tensorboard"))
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.out / "tb"))

    def _prepare_model(self) -> None:
        """Normalisation, freezing, channels-last, DDP and compile around ``self.net``."""
        cfg = self.cfg
        self.net = self.net.to(self.device)
        self.mean = list(cfg.input.mean) if cfg.input.mean is not None else list(self.net.mean)
        self.std = list(cfg.input.std) if cfg.input.std is not None else list(self.net.std)
        # The saved model carries the normalisation it was trained with.
        self.net.mean, self.net.std = list(self.mean), list(self.std)
        if cfg.solver.freeze_backbone:
            for p in self.net.backbone.parameters():
                p.requires_grad_(False)
            log.info("backbone frozen: no gradients, BatchNorm statistics kept")
        if cfg.data.channels_last:
            # Module.to takes memory_format at run time (documented), its stubs' overloads do not
            self.net = self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model: nn.Module = self._wrap(self.train_module())

    def train_module(self) -> nn.Module:
        """The module whose forward the step calls (DDP and compile wrap it); the model itself by default."""
        return self.net

    def _wrap(self, module: nn.Module) -> nn.Module:
        out: nn.Module = module
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            out = DDP(module, device_ids=ids, find_unused_parameters=self.ddp_find_unused())
        if self.cfg.compile:
            # a Module in, an OptimizedModule (a Module) out; torch.compile's annotation is a callable union
            out = torch.compile(out)  # type: ignore[assignment]
        return out

    def ddp_find_unused(self) -> bool:
        """Whether DDP must look for parameters without gradients (e.g. no ID loss)."""
        return True

    def train_mode(self) -> None:
        """Training mode, with a frozen backbone kept in eval mode (its BN statistics do not move)."""
        self.net.train()
        if self.cfg.solver.freeze_backbone:
            self.net.backbone.eval()

    def _setup_optim(self) -> None:
        s = self.cfg.solver
        groups = solver_param_groups(self.net, s, self.extra_modules())
        groups = [
            g for g in ({**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups) if g["params"]
        ]
        self.optimizer = build_optimizer(s, groups)
        self.scheduler = build_scheduler(s, self.optimizer, self.epoch_length)
        self.optim = OptimStep(
            self.optimizer,
            self.device,
            amp=s.amp,
            grad_clip=s.grad_clip,
            clip_params=[p for p in self.net.parameters() if p.requires_grad],
            extras=self.extra_optimizers(),
            after_backward=self.after_backward_hooks(),
        )

    # ------------------------------------------------------------------ the step and the engine
    def _process(self, engine: Any, batch: Any) -> dict[str, Any]:
        self.train_mode()
        total, parts, n = self.compute_loss(engine, batch)
        lr = self.optim.lr
        if total is None:
            return {"loss": float("nan"), "parts": {}, "n": 0, "lr": lr}
        if self.loss_hook is not None:
            total = self.loss_hook(self, total)
        if self.optim.update(total):
            self.after_update(engine)
        return {"loss": total.detach(), "parts": parts, "n": n, "lr": lr}

    def _build_engine(self) -> None:
        from ignite.engine import Engine, Events

        self.engine = engine = Engine(self._process)
        # A failure reaches the user once, as the CLI's `error:` line (train.log keeps it): not also
        # through ignite's own "run is terminating due to exception" records on Python's last resort.
        engine.logger.propagate = False
        if not any(isinstance(h, logging.NullHandler) for h in engine.logger.handlers):
            engine.logger.addHandler(logging.NullHandler())
        engine.add_event_handler(Events.EPOCH_STARTED, self.on_epoch_started)
        NanGuard(self.out / "last.pt").attach(engine)
        attach_lr_schedule(engine, self.scheduler)
        self.progress = Progress(
            self.epoch_length, self.cfg.solver.log_period, self.world_size, self.writer, self.is_main
        )
        self.progress.attach(engine)
        # Order on EPOCH_COMPLETED: statistics, then validation (best.pt), then last.pt with the best score.
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_stats)
        if self.val_sets:
            attach_periodic(engine, self.cfg.solver.eval_period, self._validate_handler)
        attach_periodic(engine, self.cfg.solver.checkpoint_period, self._checkpoint_handler)

    def _epoch_stats(self, engine: Any) -> None:
        self.train_stats = dict(self.progress.stats)

    def _validate_handler(self, engine: Any) -> None:
        distributed = self.world_size > 1
        if self.is_main or distributed:
            metrics = self.validate(distributed=distributed)
            if self.is_main:
                self._record(engine.state.epoch, metrics)
        self._barrier()

    def _checkpoint_handler(self, engine: Any) -> None:
        if self.is_main:
            self.save_checkpoint(self.out / "last.pt", engine.state.epoch)
        self._barrier()

    def _barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    # ------------------------------------------------------------------ validation
    def validate(
        self, rerank: bool | None = None, out_dir: Path | None = None, distributed: bool = False
    ) -> dict[str, Any]:
        """Evaluate the current model on every validation set: per-dataset metrics (percent) and their mean."""
        if self.val_prepared is None:
            self.val_prepared = prepare_val_sets(self.val_sets, self.size, self.cfg.data.cache_dir)
            self.skipped_images["validation"] = sum(v.skipped for v in self.val_prepared)
        # Evaluation must not move the training random streams, or resume != uninterrupted.
        with RNGGuard():
            return evaluate_sets(
                self.net,
                self.val_prepared,
                self.cfg.test,
                self.device,
                rerank=rerank,
                out_dir=out_dir,
                distributed=distributed,
            )

    def _record(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.last_metrics = {"epoch": epoch, **metrics}
        score = metrics["mean"]["score"]
        self.history.append({"epoch": epoch, **{k: metrics["mean"][k] for k in METRIC_KEYS}})
        msg = " | ".join(
            f"{name}: mAP {m['mAP']:.2f} rank-1 {m['rank1']:.2f} mINP {m['mINP']:.2f}"
            for name, m in metrics["datasets"].items()
        )
        when = "before training (epoch 0)" if epoch == 0 else f"epoch {epoch}"
        log.info("validation %s: %s | mean score %.2f", when, msg, score)
        if self.writer is not None:
            for name, m in metrics["datasets"].items():
                for k in METRIC_KEYS:
                    self.writer.add_scalar(f"val/{name}/{k}", m[k], epoch)
            self.writer.add_scalar("val/mean_score", score, epoch)
        # Epoch 0 is the model before training (usl.eval_initial): a reference, never "best".
        if epoch > 0 and score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            self._save_weights(self.out / "best.pt")
            log.info("new best score %.2f at epoch %d -> %s", score, epoch, self.out / "best.pt")

    # ------------------------------------------------------------------ checkpoints
    def _save_weights(self, path: Path) -> None:
        from reidkit.models.build import save_model

        if not all_finite(self.net):
            raise ReIDError(f"refusing to write {path}: the model has NaN/inf weights (training diverged)")
        save_model(path, self.net, self.cfg.model, self.num_classes_saved, list(self.size))

    def save_checkpoint(self, path: Path, epoch: int) -> None:
        """Write the full training state after `epoch` (atomically)."""
        state = {
            "epoch": epoch,
            "optim": self.optim.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "last_metrics": self.last_metrics,
            "world_size": self.world_size,
            "trainer": self.kind,
            "config": self.cfg.to_dict(),
            **self.extra_state(),
        }
        save_training_checkpoint(
            path,
            model=self.net,
            model_cfg=self.cfg.model,
            num_classes=self.num_classes_saved,
            input_size=list(self.size),
            state=state,
        )

    def load_checkpoint(self, path: Path) -> int:
        """Restore the training state from `path`; returns the epochs already done."""
        ckpt = load_training_checkpoint(path, self.device)
        kind = ckpt.get("trainer", self.kind)
        if kind != self.kind:
            raise ReIDError(
                f"cannot resume from {path}: written by the {kind} trainer, this is the {self.kind} trainer"
            )
        if int(ckpt.get("num_classes", -1)) != self.num_classes_saved:
            raise ReIDError(
                f"cannot resume from {path}: it has {ckpt.get('num_classes')} identities, "
                f"this training set {self.num_classes_saved}"
            )
        if int(ckpt.get("world_size", 1)) != self.world_size:
            raise ReIDError(
                f"cannot resume from {path}: written by {ckpt.get('world_size')} processes, "
                f"now {self.world_size}; the sampler sequence would differ"
            )
        self.net.load_state_dict(ckpt["model"])
        if "optim" not in ckpt:
            raise ReIDError(
                f"cannot resume from {path}: it holds no optimiser state ('optim'); "
                "resume needs the last.pt of a reidkit training run"
            )
        self.optim.load_state_dict(ckpt["optim"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.load_extra_state(ckpt, path)
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

    def _write_final_weights(self) -> None:
        """model.pt: the best validated weights (solver.final_weights=best and validation ran) or the last."""
        target = self.out / "model.pt"
        best = self.out / "best.pt"
        if self.cfg.solver.final_weights == "best" and self.best_epoch > 0 and best.is_file():
            link_or_copy(best, target)  # one copy on disk: model.pt and best.pt are the same bytes
            self.final_weights = {
                "file": str(target),
                "weights": "best",
                "epoch": self.best_epoch,
                "score": self.best_score,
            }
            log.info(
                "model.pt = the best validated weights (epoch %d, score %.2f); last.pt holds epoch %d",
                self.best_epoch,
                self.best_score,
                self.cfg.solver.max_epochs,
            )
        else:
            self._save_weights(target)
            why = "solver.final_weights=last" if self.cfg.solver.final_weights == "last" else "no validation ran"
            self.final_weights = {"file": str(target), "weights": "last", "epoch": self.cfg.solver.max_epochs}
            log.info("model.pt = the weights of the final epoch %d (%s)", self.cfg.solver.max_epochs, why)

    # ------------------------------------------------------------------ run
    def fit(self) -> dict[str, Any]:
        """Train for ``solver.max_epochs`` epochs (continuing a checkpoint when resuming); return metrics."""
        from reidkit.engine.data import EpochStream

        t0 = time.perf_counter()
        try:
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
            else:
                self.before_training()
            if done < max_epochs:
                stream = EpochStream(lambda: self.loader, lambda: self.engine.state.epoch)
                self.engine.run(stream, max_epochs=max_epochs, epoch_length=self.epoch_length)
            elif self.is_main and self.val_sets and not self.last_metrics:
                self._record(done, self.validate())
            result = None
            if self.is_main:
                self._write_final_weights()
                result = self._result(time.perf_counter() - t0)
                write_json(self.out / "metrics.json", result)
            self._barrier()
        except Exception as exc:
            if self.is_main and self._log_handler is not None:
                # train.log keeps the reason; the console shows it once, as the CLI's `error:` line
                log.error("training stopped: %s", exc, extra={"file_only": True})
            self.close()
            raise
        self.close()
        return result if result is not None else self._result(time.perf_counter() - t0)

    def _result(self, elapsed: float) -> dict[str, Any]:
        return {
            "epoch": self.last_metrics.get("epoch", self.cfg.solver.max_epochs),
            "datasets": self.last_metrics.get("datasets", {}),
            "mean": self.last_metrics.get("mean", {}),
            "best": {"epoch": self.best_epoch, "score": None if self.best_score == -math.inf else self.best_score},
            "final_weights": self.final_weights,
            "history": self.history,
            "train": {
                "time_s": round(elapsed, 2),
                **{k: round(v, 4) for k, v in self.train_stats.items() if isinstance(v, float) and math.isfinite(v)},
            },
            "skipped_images": self.skipped_images,
            "output_dir": str(self.out),
            **self.result_extra(),
        }

    def close(self) -> None:
        """Flush and release the log file, the TensorBoard writer and an owned process group."""
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
        if self._log_handler is not None:
            log.removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
        progress = getattr(self, "progress", None)
        if progress is not None:
            progress.close()
        if getattr(self, "_owns_process_group", False):
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._owns_process_group = False

    # ------------------------------------------------------------------ shared helpers
    def load_train_records(self) -> list[Any]:
        """Training records of ``data.datasets`` (and ``self.val_sets``, ``self.size``); an empty set is an error."""
        from reidkit.engine.data import load_training_data

        self.joint, self.val_sets = load_training_data(self.cfg.data)
        records = list(self.joint.train)
        if not records:
            raise ReIDError(f"training set {self.joint.name!r} has no images")
        self.size = (int(self.cfg.data.size[0]), int(self.cfg.data.size[1]))
        return records

    @staticmethod
    def camera_ids(records: list[Any]) -> np.ndarray:
        """One 0-based camera id per (dataset, camera): cameras of different datasets differ."""
        pairs = [(r.dataset, r.camid) for r in records]
        uniq = {p: i for i, p in enumerate(sorted(set(pairs)))}
        return np.array([uniq[p] for p in pairs], dtype=np.int64)

    def record_skipped(self, split: str, paths: list[str]) -> None:
        """Count unreadable images of a split in train.log and metrics.json (a few names shown)."""
        if not paths:
            return
        self.skipped_images[split] = self.skipped_images.get(split, 0) + len(paths)
        self.skipped_images["files"] = (self.skipped_images.get("files", []) + list(paths))[:20]
        log.warning("%d unreadable %s image(s) skipped (e.g. %s)", len(paths), split, paths[0])
