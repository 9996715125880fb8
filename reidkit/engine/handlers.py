"""Ignite handlers of the training lifecycle, attached with event filters.

Each handler is a small object attached to an ignite ``Engine``:
- :func:`every_or_last`: the event filter "every N epochs, and always the last one";
- :class:`Progress`: per-iteration console/TensorBoard lines every ``log_period`` iterations, a
  tqdm bar on terminals, and one console line per epoch (time, images/s, mean loss);
- :class:`NanGuard`: stops the run with one clear error when a step's loss was not finite (the
  step has already refused to update the weights, so the last checkpoint stays good);
- :func:`attach_lr_schedule`, :func:`attach_periodic`: LR stepping per iteration, and validation /
  checkpoints on ``EPOCH_COMPLETED`` filtered by :func:`every_or_last`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from ignite.engine import Engine, Events

from reidkit.errors import ReIDError
from reidkit.utils.progress import bar, console_logging, log

__all__ = ["NanGuard", "Progress", "attach_lr_schedule", "attach_periodic", "console_logging", "every_or_last"]


def every_or_last(period: int) -> Callable[[Engine, int], bool]:
    """Event filter: true every ``period`` epochs and at the last epoch of the run."""
    period = max(int(period), 1)

    def keep(engine: Engine, epoch: int) -> bool:
        return epoch % period == 0 or epoch == engine.state.max_epochs

    return keep


def _output(engine: Engine) -> dict[str, Any]:
    """The training step's output dict (``loss``, ``n``, ``parts``, ``lr``); empty before the first step."""
    out = engine.state.output
    return out if isinstance(out, dict) else {}


def attach_lr_schedule(engine: Engine, scheduler: Any) -> None:
    """Step the per-iteration LambdaLR after every iteration."""
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda _: scheduler.step())


def attach_periodic(engine: Engine, period: int, fn: Callable[[Engine], Any]) -> None:
    """Run ``fn(engine)`` on EPOCH_COMPLETED every ``period`` epochs and at the last one."""
    engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=every_or_last(period)), fn)


class NanGuard:
    """Raise one ReIDError when the step reports a non-finite loss (it did not update the weights)."""

    def __init__(self, checkpoint: Any) -> None:
        self.checkpoint = checkpoint

    def attach(self, engine: Engine) -> None:
        """Check every iteration's output."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        out = _output(engine)
        loss = out.get("loss")
        if out.get("n", 1) and loss is not None and not math.isfinite(float(loss)):
            raise ReIDError(
                f"training diverged: the loss is {float(loss)} at iteration {engine.state.iteration} "
                f"(epoch {engine.state.epoch}); stopped before updating the weights. The last good "
                f"checkpoint {self.checkpoint} is left intact. Lower solver.base_lr, set "
                "solver.grad_clip, or check the data."
            )


class Progress:
    """Throughput, loss and learning rate: a tqdm bar, log lines every ``period`` iterations, epoch lines."""

    def __init__(
        self, epoch_length: int, period: int, world_size: int = 1, writer: Any = None, is_main: bool = True
    ) -> None:
        self.epoch_length = max(int(epoch_length), 1)
        self.period = max(int(period), 1)
        self.world_size = world_size
        self.writer = writer
        self.is_main = is_main
        self.pbar: Any = None
        self.stats: dict[str, float] = {}
        self._loss_sum: Any = 0.0
        self._loss_n = 0

    def attach(self, engine: Engine) -> None:
        """Register on EPOCH_STARTED, ITERATION_COMPLETED (every iteration and every ``period``), EPOCH_COMPLETED."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.period), self.log_line)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def epoch_started(self, engine: Engine) -> None:
        self._t0 = self._window_t0 = time.perf_counter()
        self._epoch_n = self._window_n = 0
        self._loss_sum = 0.0
        self._loss_n = 0
        self.close()
        if self.is_main:
            self.pbar = bar(self.epoch_length, f"epoch {engine.state.epoch}/{engine.state.max_epochs}")

    def iteration(self, engine: Engine) -> None:
        out = _output(engine)
        n = int(out.get("n", 0))
        self._window_n += n
        self._epoch_n += n
        if n:
            # every iteration counts in the epoch's mean loss (kept on the device: no sync per step)
            loss = out["loss"]
            self._loss_sum = self._loss_sum + (loss.detach() if hasattr(loss, "detach") else float(loss))
            self._loss_n += 1
        if n and self.pbar is not None and not self.pbar.disable:
            self.pbar.update(1)
            self.pbar.set_postfix(loss=f"{float(out['loss']):.3f}", refresh=False)

    def log_line(self, engine: Engine) -> None:
        out = _output(engine)
        now = time.perf_counter()
        ips = self._window_n * self.world_size / max(now - self._window_t0, 1e-9)
        self._window_t0, self._window_n = now, 0
        if not out.get("n") or not self.is_main:
            return
        loss = float(out["loss"])
        parts = {k: float(v) for k, v in (out.get("parts") or {}).items()}
        lr = float(out.get("lr", float("nan")))
        it = engine.state.iteration
        log.info(
            "epoch %d iter %d/%d loss %.4f (%s) lr %.3g %.0f img/s",
            engine.state.epoch,
            (it - 1) % self.epoch_length + 1,
            self.epoch_length,
            loss,
            " ".join(f"{k} {v:.4f}" for k, v in parts.items()),
            lr,
            ips,
            extra={"per_iteration": True},
        )
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, it)
            for k, v in parts.items():
                self.writer.add_scalar(f"train/{k}", v, it)
            self.writer.add_scalar("train/lr", lr, it)
            self.writer.add_scalar("train/images_per_s", ips, it)

    def epoch_completed(self, engine: Engine) -> None:
        self.close()
        dt = time.perf_counter() - self._t0
        ips = self._epoch_n * self.world_size / max(dt, 1e-9)
        mean_loss = float(self._loss_sum) / self._loss_n if self._loss_n else float("nan")
        self.stats = {"epoch_time_s": dt, "images_per_s": ips, "mean_loss": mean_loss}
        if self.is_main:
            loss_txt = "-" if math.isnan(mean_loss) else f"{mean_loss:.4f}"
            log.info(
                "epoch %d/%d done in %.1f s (%.0f img/s), mean loss %s",
                engine.state.epoch,
                engine.state.max_epochs,
                dt,
                ips,
                loss_txt,
            )
            if self.writer is not None:
                self.writer.add_scalar("train/epoch_images_per_s", ips, engine.state.epoch)
                if not math.isnan(mean_loss):
                    self.writer.add_scalar("train/epoch_loss", mean_loss, engine.state.epoch)

    def close(self) -> None:
        if self.pbar is not None:
            self.pbar.close()
            self.pbar = None
