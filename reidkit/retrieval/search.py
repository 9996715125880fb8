"""Search over one snapshot of a gallery's store (reidkit.retrieval.gallery.Gallery.search_features): the
store's filtered nearest neighbours, then optional k-reciprocal re-ranking of the top candidates with their
stored vectors (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017);
and the error that names a filter value no entry has, listing the values that exist."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.retrieval.backends import SearchFilter, StoreSnapshot
from reidkit.retrieval.store import ENTRY_FIELDS, KINDS
from reidkit.utils.validate import check_positive

__all__ = [
    "LISTED_NAMES",
    "SearchOptions",
    "name_list",
    "per_row",
    "rerank_candidates",
    "search_snapshot",
    "unknown_filter",
]


def per_row(value: Any, n: int) -> list[Any]:
    """`value` as one item per query row (a list or tuple is already that)."""
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


LISTED_NAMES = 20  # an unknown-filter error lists at most this many existing names


def name_list(names: Sequence[str], limit: int = LISTED_NAMES) -> str:
    """`a, b, c` of at most `limit` names, then `... and N more`; `none` when empty."""
    names = list(names)
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f", ... and {len(names) - limit} more" if len(names) > limit else "")


def unknown_filter(param: str, value: str, snap: StoreSnapshot) -> OptionError | None:
    """An OptionError listing the values that exist when no entry has `value` in field `param`, else None."""
    existing = sorted({str(e[param]) for e in snap.entries() if e.get(param) is not None})
    if value in existing:
        return None
    what = {"camera": "cameras", "tracklet": "tracklets", "path": "paths"}.get(param, f"{param} values")
    return OptionError(param, f"no entry has {param} {value!r}; the gallery's {what}: {name_list(existing)}")


@dataclass(frozen=True)
class SearchOptions:
    """What a search asks (Gallery.search_features documents each), in the order of its parameters."""

    k: int = 20
    rerank: bool = False
    exclude_camid: Sequence[int | None] | int | None = None
    nprobe: int | None = None
    rerank_topm: int = 100
    exclude_camera: Sequence[str | None] | str | None = None
    kind: str | None = None
    camera: str | None = None
    t_min: float | None = None
    t_max: float | None = None


def search_snapshot(
    snap: StoreSnapshot, feat_dim: int, feats: np.ndarray, options: SearchOptions
) -> list[list[dict[str, Any]]]:
    """Batched search of unit-norm (B, D) features in `snap` (a gallery of `feat_dim`-d features); one result
    list per row."""
    o = options
    k, rerank, nprobe, kind, camera = o.k, o.rerank, o.nprobe, o.kind, o.camera
    feats = np.ascontiguousarray(np.atleast_2d(feats), dtype=np.float32)
    if feats.shape[1] != feat_dim:
        raise ReIDError(f"query: feature dim {feats.shape[1]} != gallery dim {feat_dim}")
    check_positive("k", int(k))
    check_positive("nprobe", nprobe)
    if kind is not None and kind not in KINDS:
        raise ReIDError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    excl = per_row(o.exclude_camid, len(feats))
    excl_cam = per_row(o.exclude_camera, len(feats))
    filters = [
        SearchFilter(exclude_camid=e, exclude_camera=c, camera=camera, kind=kind, t_min=o.t_min, t_max=o.t_max).check()
        for e, c in zip(excl, excl_cam)
    ]
    n = snap.count
    if n == 0:
        return [[] for _ in feats]
    k = min(int(k), n)
    need = min(max(k, int(o.rerank_topm)) if rerank else k, n)
    found = snap.search(feats, need, filters, nprobe=nprobe)
    if camera is not None and not any(len(cid) for cid, _ in found):
        err = unknown_filter("camera", str(camera), snap)  # `cam3` of a gallery whose cameras are `c3`
        if err is not None:
            raise err
    results = []
    for b, (cid, csc) in enumerate(found):
        dist = None
        if rerank and len(cid) > 1:
            order, dist = rerank_candidates(snap, feats[b], cid)
            cid, csc, dist = cid[order], csc[order], dist[order]
        cid, csc = cid[:k], csc[:k]
        recs = snap.rows(cid.tolist())
        rows = []
        for j, (i, s) in enumerate(zip(cid.tolist(), csc.tolist())):
            rec = recs.get(i)
            if rec is None:  # cannot happen within one snapshot; never serve an empty path
                continue
            # float32 dot products of unit vectors can land a hair outside [-1, 1]
            row = {
                "id": int(i),
                "path": rec["path"],
                "score": float(np.clip(s, -1.0, 1.0)),
                **{f: rec[f] for f in ENTRY_FIELDS if f not in ("id", "path")},
            }
            if dist is not None:
                row["rerank_distance"] = float(dist[j])
            rows.append(row)
        results.append(rows)
    return results


def rerank_candidates(snap: StoreSnapshot, q: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """k-reciprocal re-ranking of the query against its M candidates (section 5 defaults, clipped to M)."""
    from reidkit.evaluation.rerank import re_ranking_features

    g = snap.vectors(cand.tolist())
    m = len(cand)
    dist = re_ranking_features(q[None], g, k1=min(20, m), k2=min(6, m + 1), lambda_value=0.3, device="cpu")[0]
    return np.argsort(dist, kind="stable"), dist
