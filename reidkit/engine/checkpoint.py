"""Training checkpoints: everything needed to continue a run bit-for-bit, written atomically.

A training checkpoint is the inference checkpoint of :func:`reidkit.models.build.save_model`
(``model``, ``model_cfg``, ``num_classes``, ``input_size``, ``mean``, ``std``) plus the optimiser(s),
scheduler, grad scaler, sampler, RNG states, epoch and best score, so ``load_model`` reads either.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reidkit.errors import ReIDError

CHECKPOINT_VERSION = 1


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Snapshot of the python, numpy, torch (and CUDA) random states, plus an optional generator."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_to_python_state(state["python"]))
    np.random.set_state(_numpy_state_tuple(state["numpy"]))
    torch.set_rng_state(_as_byte_tensor(state["torch"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([_as_byte_tensor(s) for s in cuda])
    if generator is not None and state.get("generator") is not None:
        generator.set_state(_as_byte_tensor(state["generator"]))


def _numpy_state() -> dict[str, Any]:
    """numpy's global MT19937 state as a tensor and plain numbers, so last.pt loads with weights_only."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": str(name),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _numpy_state_tuple(state: Any) -> tuple:
    """What np.random.set_state takes, from :func:`_numpy_state` or an older checkpoint's tuple."""
    if isinstance(state, dict):
        keys = np.asarray(torch.as_tensor(state["keys"]).cpu().numpy(), dtype=np.uint32)
        return (state["name"], keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"]))
    return tuple(state)


def _as_byte_tensor(t: Any) -> torch.Tensor:
    # torch.load with map_location may move states to another device; RNG setters want CPU uint8.
    return torch.as_tensor(t).to("cpu", torch.uint8)


def _to_python_state(state: Any) -> tuple:
    # random.setstate needs tuples; a round trip through some serialisers gives lists.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


class RNGGuard:
    """Context manager that restores all RNG states on exit (evaluation must not change training draws)."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator
        self._state: dict[str, Any] | None = None

    def __enter__(self) -> "RNGGuard":
        self._state = rng_state(self.generator)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._state is not None
        set_rng_state(self._state, self.generator)


def all_finite(module: torch.nn.Module) -> bool:
    """True when every parameter and buffer of `module` is finite."""
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return False
    return True


def save_training_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    model_cfg: Any,
    num_classes: int,
    input_size: list[int],
    state: dict[str, Any],
) -> Path:
    """Write model + training `state` atomically; refuses a model with NaN/inf weights."""
    from reidkit.models.build import save_model

    inner = getattr(model, "module", None)  # unwrap DDP / DataParallel
    net = inner if isinstance(inner, torch.nn.Module) else model
    if not all_finite(net):
        # Never replace a good checkpoint with a diverged model.
        raise ReIDError(f"refusing to write {path}: the model has NaN/inf weights (training diverged)")
    extra = {"version": CHECKPOINT_VERSION, **state}
    return save_model(path, net, model_cfg, num_classes, input_size, extra=extra)


def load_training_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint written by :func:`save_training_checkpoint`."""
    from reidkit.models.build import read_checkpoint

    ckpt = read_checkpoint(path, device)  # weights_only: reidkit's own state is tensors and plain values
    for key in ("model", "epoch", "optim" if "optim" in ckpt else "optimizer"):
        if key not in ckpt:
            raise ReIDError(
                f"checkpoint {path} is not a training checkpoint (no '{key}'); "
                "resume needs the last.pt a training run writes"
            )
    return ckpt
