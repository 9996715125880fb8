"""Training engine: the supervised and cluster trainers (pytorch-ignite), their lifecycle, checkpoints and handlers.

Experiments that drive the trainers (ablations, cross-validation, pseudo-labelling, the demo, tables of
papers reproduced) live in ``reidkit.experiments``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Trainer", "train"]


def __getattr__(name: str) -> Any:
    # Lazy: `import reidkit.engine` stays light; torch/ignite load when a trainer is used.
    if name in __all__:
        from reidkit.engine import api

        return getattr(api, name)
    raise AttributeError(f"module 'reidkit.engine' has no attribute {name!r}")
