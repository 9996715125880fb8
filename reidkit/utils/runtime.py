"""Process environment: torchrun ranks, device resolution, seeding."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from reidkit.errors import ReIDError

__all__ = ["dist_env", "resolve_device", "seed_everything"]


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment (1 process when unset)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def resolve_device(
    name: str | torch.device | None = "auto", local_rank: int | None = None, key: str = "device"
) -> torch.device:
    """``auto``/None -> the local CUDA device when there is one, else CPU; checks explicit names.

    ``key`` names the setting in errors (``device`` in configs, ``--device`` on the command line).
    """
    if local_rank is None:
        local_rank = dist_env()[2]
    if isinstance(name, torch.device):
        name = str(name)
    if name is None or name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ReIDError(f"{key}: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ReIDError(f"{key} is {name!r} but no CUDA device is available; use {key}=cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
