"""Training engine: the supervised trainer (pytorch-ignite), checkpoints, ablations, the demo."""

from __future__ import annotations

from typing import Any

__all__ = ["Trainer", "train"]


def __getattr__(name: str) -> Any:
    # Lazy: `import reidkit.engine` stays light; torch/ignite load when a trainer is used.
    if name in __all__:
        from reidkit.engine import api

        return getattr(api, name)
    raise AttributeError(f"module 'reidkit.engine' has no attribute {name!r}")
