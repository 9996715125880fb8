"""Validation during training and for ``reidkit test``: decode query/gallery once, extract, evaluate."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reidkit.config.schema import TestConfig
from reidkit.errors import ReIDError

__all__ = ["METRIC_KEYS", "ValSet", "evaluate_sets", "extract_val_features", "mean_metrics", "prepare_val_sets"]

log = logging.getLogger("reidkit.train")

METRIC_KEYS = ("mAP", "rank1", "rank5", "rank10", "mINP", "score")


class ValSet:
    """A validation dataset with its query and gallery images decoded once (uint8 N x H x W x 3)."""

    def __init__(
        self, name: str, dataset: Any, query_images: np.ndarray, gallery_images: np.ndarray, skipped: int = 0
    ) -> None:
        self.name = name
        self.dataset = dataset
        self.query_images = query_images
        self.gallery_images = gallery_images
        self.skipped = skipped


def _named(datasets: list[Any]) -> list[tuple[str, Any]]:
    seen: dict[str, int] = {}
    out = []
    for ds in datasets:
        name = ds.name
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name}_{seen[name]}", ds))
    return out


def prepare_val_sets(datasets: list[Any], size: tuple[int, int], cache_dir: str | None = None) -> list[ValSet]:
    """Decode each validation set's query and gallery once; unreadable images are dropped, counted and logged."""
    from reidkit.data.pipeline import ImageCache

    out = []
    for name, ds in _named(datasets):
        parts = {}
        skipped = 0
        for split in ("query", "gallery"):
            records = list(getattr(ds, split))
            cache = ImageCache.build(
                [r.path for r in records],
                size=size,
                cache_dir=cache_dir,
                step_name=f"evaluation {name} decoding {split}",
            )
            valid = np.asarray(cache.valid, dtype=bool)
            if not valid.any():
                raise ReIDError(f"validation set {name!r}: none of the {len(records)} {split} images could be read")
            if not valid.all():
                skipped += int((~valid).sum())
                log.warning("validation set %s: %d unreadable %s images skipped", name, int((~valid).sum()), split)
            kept = [r for r, v in zip(records, valid) if v]
            parts[split] = (kept, np.ascontiguousarray(np.asarray(cache.images)[valid]))
        if dataclasses.is_dataclass(ds) and not isinstance(ds, type):
            ds = dataclasses.replace(ds, query=parts["query"][0], gallery=parts["gallery"][0])
        out.append(ValSet(name, ds, parts["query"][1], parts["gallery"][1], skipped))
    return out


def extract_val_features(
    net: nn.Module,
    vs: ValSet,
    test: TestConfig | Any,
    device: torch.device,
    distributed: bool = False,
    step_name: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and gallery features of `net` with the ``test`` settings (flip TTA, neck_feat, cameras).

    ``step_name``: the name of the two steps (``<step_name> query``, ``<step_name> gallery``)."""
    from reidkit.inference import FeatureExtractor

    test = getattr(test, "test", test)
    fx = FeatureExtractor.from_model(net, device=device, size=vs.query_images.shape[1:3])
    kw: dict[str, Any] = dict(
        batch_size=test.batch_size, flip=test.flip, normalize=False, neck_feat=test.neck_feat, distributed=distributed
    )
    cams = fx.uses_camera
    with torch.no_grad():
        qf = fx.embed_tensor(
            vs.query_images,
            camids=[r.camid for r in vs.dataset.query] if cams else None,
            step_name=step_name and f"{step_name} query",
            **kw,
        )
        gf = fx.embed_tensor(
            vs.gallery_images,
            camids=[r.camid for r in vs.dataset.gallery] if cams else None,
            step_name=step_name and f"{step_name} gallery",
            **kw,
        )
    return qf, gf


def evaluate_sets(
    net: nn.Module,
    val_sets: list[ValSet],
    test: TestConfig | Any,
    device: torch.device,
    rerank: bool | None = None,
    out_dir: Path | None = None,
    distributed: bool = False,
) -> dict[str, Any]:
    """Evaluate `net` on each prepared set with the ``test`` settings: ``{"datasets", "mean"}`` (percent).

    Under ``distributed`` every rank must call this (features are extracted shard by shard);
    the metrics are computed on each rank from the gathered features. Each step (query and
    gallery features, ranking) shows a bar on a terminal and logs one line when done.
    """
    from reidkit.evaluation.evaluator import evaluate
    from reidkit.utils.progress import step

    t = getattr(test, "test", test)
    per: dict[str, dict[str, float]] = {}
    was_training = net.training
    try:
        for vs in val_sets:
            name = f"evaluation {vs.name}"
            qf, gf = extract_val_features(net, vs, t, device, distributed=distributed, step_name=name)
            reranked = t.rerank if rerank is None else rerank
            with step(f"{name} ranking" + (" (re-ranked)" if reranked else ""), len(vs.dataset.query), "queries"):
                res = evaluate(
                    {"query": qf, "gallery": gf},
                    vs.dataset,
                    flip=t.flip,
                    metric=t.metric,
                    rerank=reranked,
                    k1=t.k1,
                    k2=t.k2,
                    lambda_value=t.lambda_value,
                    device=device,
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
