"""End-to-end evaluation: features -> distances -> optional re-ranking -> rank metrics."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from reidkit.errors import ReIDError
from reidkit.evaluation.distance import compute_distance
from reidkit.inference.features import FeatureModel
from reidkit.evaluation.metrics import evaluate_rank

if TYPE_CHECKING:
    from reidkit.data.datasets.core import Record

__all__ = ["evaluate", "summarize"]


def summarize(result: dict, num_query: int, num_gallery: int) -> dict:
    """Percentages (not rounded) from an evaluate_rank result; score = (mAP + rank1) / 2."""
    cmc = np.asarray(result["cmc"])
    pick = lambda r: float(cmc[min(r, len(cmc)) - 1]) * 100.0  # noqa: E731
    out = {
        "mAP": result["mAP"] * 100.0,
        "rank1": pick(1),
        "rank5": pick(5),
        "rank10": pick(10),
        "mINP": result["mINP"] * 100.0,
    }
    out["score"] = (out["mAP"] + out["rank1"]) / 2.0
    out.update(num_query=int(num_query), num_gallery=int(num_gallery), num_valid=int(result["num_valid"]))
    return out


def _ids(records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([r.pid for r in records], dtype=np.int64), np.array([r.camid for r in records], dtype=np.int64))


def _extract(
    model: torch.nn.Module | FeatureModel,
    records: Sequence[Record],
    size: Sequence[int],
    batch_size: int,
    flip: bool,
    device: str | torch.device | None,
) -> tuple[torch.Tensor, list[Record]]:
    from reidkit.data.pipeline import ImageCache
    from reidkit.inference.features import extract_features

    cache = ImageCache.build([r.path for r in records], size=tuple(size))
    valid = np.asarray(cache.valid, dtype=bool)
    kept = [r for r, v in zip(records, valid) if v]
    if not kept:
        raise ReIDError(f"evaluate: none of the {len(records)} images could be read")
    images = np.asarray(cache.images)
    if images.shape[0] == len(records) and not valid.all():
        images = images[valid]
    camids = [r.camid for r in kept] if getattr(model, "uses_camera", False) else None
    feats = extract_features(
        model, images, batch_size=batch_size, flip=flip, device=device, normalize=False, camids=camids
    )
    return feats, kept


def evaluate(
    model_or_features: Any,
    dataset: Any,
    *,
    batch_size: int = 256,
    flip: bool = True,
    metric: str = "cosine",
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    device: str | torch.device | None = None,
    size: tuple[int, int] = (256, 128),
    out_dir: str | os.PathLike | None = None,
    visualize: bool = False,
    max_rank: int = 50,
) -> dict:
    """mAP, rank1/5/10, mINP and score (percentages) of a model or {"query", "gallery"} features.

    With ``out_dir``, writes ``metrics.json`` (percentages rounded to 2 decimals) and, with
    ``visualize``, ranked-list pictures, a CMC plot and a distance histogram.
    """
    if visualize and out_dir is not None:
        from reidkit.utils.extras import require

        require("matplotlib", "visualize (CMC and distance plots)")  # before any work
    query, gallery = list(dataset.query), list(dataset.gallery)
    if not query:
        raise ReIDError(f"dataset {getattr(dataset, 'name', '?')}: the query set is empty")
    if not gallery:
        raise ReIDError(f"dataset {getattr(dataset, 'name', '?')}: the gallery set is empty")
    if isinstance(model_or_features, dict):
        if set(model_or_features) < {"query", "gallery"}:
            raise ReIDError("features: expected a dict with keys 'query' and 'gallery'")
        qf = torch.as_tensor(np.asarray(model_or_features["query"]), dtype=torch.float32)
        gf = torch.as_tensor(np.asarray(model_or_features["gallery"]), dtype=torch.float32)
        if qf.shape[0] != len(query) or gf.shape[0] != len(gallery):
            raise ReIDError(
                f"features: {qf.shape[0]} query / {gf.shape[0]} gallery rows for a dataset with "
                f"{len(query)} / {len(gallery)} images"
            )
    elif isinstance(model_or_features, (torch.nn.Module, FeatureModel)):
        qf, query = _extract(model_or_features, query, size, batch_size, flip, device)
        gf, gallery = _extract(model_or_features, gallery, size, batch_size, flip, device)
    else:
        raise ReIDError(
            f"evaluate: expected a feature model (torch, ONNX, TorchScript) or a features dict, got {type(model_or_features).__name__}"
        )
    if metric == "cosine":
        # cosine ranking == squared Euclidean ranking of L2-normalised features; re-ranking uses those
        qf, gf = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    if rerank:
        from reidkit.evaluation.rerank import re_ranking_features

        distmat = re_ranking_features(qf, gf, k1=k1, k2=k2, lambda_value=lambda_value, device=device)
    else:
        distmat = compute_distance(qf, gf, metric=metric, device=device)
    q_pids, q_cams = _ids(query)
    g_pids, g_cams = _ids(gallery)
    raw = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank)
    result = summarize(raw, len(query), len(gallery))
    result.update(metric=metric, rerank=bool(rerank), flip=bool(flip))
    if out_dir is not None:
        from reidkit.utils.io import write_json

        out = Path(out_dir)
        payload = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()}
        payload["cmc"] = [round(float(c) * 100.0, 2) for c in raw["cmc"]]
        payload["units"] = "percent"
        write_json(out / "metrics.json", payload)  # atomic, unique temp name
        if visualize:
            from reidkit.evaluation.visualize import plot_cmc, plot_distance_hist, visualize_ranked

            visualize_ranked(distmat, query, gallery, out / "ranked", topk=10, max_queries=100)
            plot_cmc(raw["cmc"], out / "cmc.png")
            plot_distance_hist(distmat, q_pids, g_pids, out / "distance_hist.png")
    return result
