"""Python API of the training engine: ``reidkit.train``, ``reidkit.train_usl``, ``reidkit.test``, the trainers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reidkit.config import Config, load_config
from reidkit.engine.supervised import SupervisedTrainer
from reidkit.engine.usl import ClusterTrainer
from reidkit.engine.usl import train_usl as _train_usl
from reidkit.errors import ReIDError
from reidkit.utils.progress import console_progress

Trainer = SupervisedTrainer

__all__ = ["ClusterTrainer", "SupervisedTrainer", "Trainer", "test", "train", "train_usl"]


def train(cfg_or_path: Config | str | Path | dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """Train a model from a config (object, recipe path/name or dict) and return its metrics.

    Overrides are keyword arguments: ``solver__base_lr=1e-4`` (``__`` for the dots) or whole
    sections as dicts (``solver={"max_epochs": 5}``).
    """
    with console_progress():
        return SupervisedTrainer(cfg_or_path, **overrides).fit()


def train_usl(cfg_or_path: Config | str | Path | dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """Unsupervised / UDA training from a recipe (see :func:`train`); returns its metrics."""
    with console_progress():
        return _train_usl(cfg_or_path, **overrides)


def test(
    cfg_or_path: Config | str | Path | dict[str, Any],
    weights: str | Path,
    out_dir: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    fmt: str | None = None,
) -> dict[str, Any]:
    """Evaluate saved weights (reidkit's, or another toolkit's: ``fmt`` or detected) with ``test.*``.

    Writes ``metrics.json`` (per dataset and mean) into `out_dir` (default: ``<output_dir>/test``,
    never over the training run's own metrics.json) and returns the same dict.
    """
    from reidkit.engine.data import load_training_data
    from reidkit.engine.validation import evaluate_sets, prepare_val_sets
    from reidkit.models.loading import load_model
    from reidkit.utils.io import ensure_dir, write_json
    from reidkit.utils.runtime import resolve_device

    cfg = load_config(cfg_or_path, overrides)
    device = resolve_device(cfg.device)
    model = load_model(weights, device=device, fmt=fmt)
    _, val_sets = load_training_data(cfg.data)
    if not val_sets:
        raise ReIDError("test: no validation datasets (data.val is empty); name datasets with a query/gallery split")
    # The checkpoint knows its input size and normalisation; explicit input.mean/std win.
    size = tuple(int(v) for v in getattr(model, "input_size", cfg.data.size))
    if cfg.input.mean is not None:
        model.mean = list(cfg.input.mean)
    if cfg.input.std is not None:
        model.std = list(cfg.input.std)
    out = Path(out_dir) if out_dir is not None else Path(cfg.output_dir) / "test"
    ensure_dir(out, "out")
    with console_progress():
        prepared = prepare_val_sets(val_sets, (size[0], size[1]), cfg.data.cache_dir)
        result = evaluate_sets(model, prepared, cfg.test, device, out_dir=out)
    result = {"weights": str(weights), "rerank": cfg.test.rerank, "flip": cfg.test.flip, **result}
    write_json(out / "metrics.json", result)
    return result
