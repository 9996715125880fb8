"""Pseudo-labelling the unlabeled test set (a competition trick, NAIC 2019): label, add, retrain.

With a trained model: (1) de-duplicate the queries by agglomerative clustering of their features
(cosine distance, average linkage, a distance threshold): queries of one person form one group;
(2) attach each gallery image to the group whose normalised mean query feature it is most similar
to, when that cosine similarity passes ``threshold``. The default threshold, ``"auto"``, follows
the model's own scale: cosine similarities are not comparable across models (a BNNeck model's
features are centred, so even one person's images may stay below 0.6), so the threshold is the
99th percentile of the similarities between queries of *different* groups, mostly different
people: a gallery image joins a group only when it is closer to it than 99 % of such pairs; (3) every group with at least ``min_size``
images becomes a pseudo-identity, written as a train-only CSV manifest
(``load_dataset("csv", path)``); (4) retrain on the original training set plus the manifest; the
new model can label again (``iterations``). When the test set carries true identities, the
precision of the pseudo labels is reported (it is never used for labelling). The setting is
transductive: the retrained model is evaluated on the same test set whose images it was trained on
(with pseudo labels), so its mAP is not a held-out result; the summary says so.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from reidkit.errors import ReIDError

if TYPE_CHECKING:
    from reidkit.models.build import ReIDModel

__all__ = [
    "group_queries",
    "associate_gallery",
    "auto_threshold",
    "pseudo_identities",
    "label_precision",
    "write_manifest",
    "run_pseudo_label",
]

AUTO_QUANTILE = 0.99  # of the similarities between queries of different groups (the "auto" threshold)
_AUTO_MAX_QUERIES = 2000  # queries sampled for that quantile (the pairs grow quadratically)

log = logging.getLogger("reidkit.pseudo_label")


def _normalized(x: np.ndarray | torch.Tensor) -> np.ndarray:
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if x.ndim != 2:
        raise ReIDError(f"features: expected an N x D array, got shape {x.shape}")
    return np.asarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))


def group_queries(qf: np.ndarray | torch.Tensor, distance_threshold: float = 0.3) -> np.ndarray:
    """Group ids (0..G-1) of the queries: average-linkage clustering on cosine distance, cut at the threshold."""
    from sklearn.cluster import AgglomerativeClustering

    x = _normalized(qf)
    if len(x) == 0:
        raise ReIDError("pseudo-label: the query set is empty")
    if not 0 < distance_threshold <= 2:
        raise ReIDError(f"pseudo-label: dedup threshold must be a cosine distance in (0, 2], got {distance_threshold}")
    if len(x) == 1:
        return np.zeros(1, dtype=np.int64)
    model = AgglomerativeClustering(
        n_clusters=None, distance_threshold=float(distance_threshold), metric="cosine", linkage="average"
    )
    return np.asarray(model.fit_predict(x)).astype(np.int64)  # sklearn is untyped


def associate_gallery(
    qf: np.ndarray | torch.Tensor, gf: np.ndarray | torch.Tensor, groups: np.ndarray, threshold: float = 0.7
) -> np.ndarray:
    """Per gallery image: the query group whose mean feature is most similar (cosine >= threshold), else -1."""
    q, g = _normalized(qf), _normalized(gf)
    groups = np.asarray(groups, dtype=np.int64)
    n_groups = int(groups.max()) + 1
    cent = np.zeros((n_groups, q.shape[1]))
    np.add.at(cent, groups, q)
    cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    sims = g @ cent.T
    best = sims.argmax(1)
    return np.where(sims[np.arange(len(g)), best] >= threshold, best, -1).astype(np.int64)


def auto_threshold(
    qf: np.ndarray | torch.Tensor, groups: np.ndarray, quantile: float = AUTO_QUANTILE, seed: int = 0
) -> float:
    """The association threshold on this model's scale: the `quantile` of cosine similarities between
    queries of different groups (mostly different people); 0.7 when there are no two groups."""
    q = _normalized(qf)
    groups = np.asarray(groups, dtype=np.int64)
    if len(q) > _AUTO_MAX_QUERIES:
        pick = np.sort(np.random.default_rng(seed).choice(len(q), _AUTO_MAX_QUERIES, replace=False))
        q, groups = q[pick], groups[pick]
    other = groups[:, None] != groups[None, :]
    if not other.any():
        return 0.7
    return float(np.quantile((q @ q.T)[other], quantile))


def resolve_threshold(threshold: float | str, qf: np.ndarray | torch.Tensor, groups: np.ndarray) -> float:
    """A cosine similarity in [-1, 1] as given, or ``"auto"``: :func:`auto_threshold`."""
    if isinstance(threshold, str):
        if threshold.strip().lower() != "auto":
            try:
                threshold = float(threshold)
            except ValueError:
                raise ReIDError(
                    f"pseudo-label: threshold is a cosine similarity in [-1, 1] or 'auto', got {threshold!r}"
                ) from None
        else:
            return auto_threshold(qf, groups)
    if not -1 <= float(threshold) <= 1:
        raise ReIDError(f"pseudo-label: threshold is a cosine similarity in [-1, 1] or 'auto', got {threshold}")
    return float(threshold)


def pseudo_identities(
    qf: np.ndarray | torch.Tensor,
    gf: np.ndarray | torch.Tensor,
    dedup_threshold: float = 0.3,
    threshold: float | str = "auto",
    min_size: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """(query labels, gallery labels): pseudo-identity ids 0..K-1, -1 for images left unlabelled.

    ``threshold``: the cosine similarity a gallery image needs to join a query group, or "auto"
    (:func:`auto_threshold`)."""
    qg = group_queries(qf, dedup_threshold)
    gg = associate_gallery(qf, gf, qg, resolve_threshold(threshold, qf, qg))
    sizes = np.bincount(qg, minlength=qg.max() + 1) + np.bincount(gg[gg >= 0], minlength=qg.max() + 1)
    ok = np.flatnonzero(sizes >= min_size)
    remap = np.full(len(sizes), -1, dtype=np.int64)
    remap[ok] = np.arange(len(ok))
    return remap[qg], np.where(gg >= 0, remap[np.maximum(gg, 0)], -1)


def label_precision(pseudo: Sequence[int] | np.ndarray, true: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """How right the pseudo labels are: majority precision and pairwise precision/recall.

    ``pseudo``: -1 = unlabelled. ``true``: identities; <= 0 (distractor/junk) never matches anyone.
    Majority precision: share of labelled images carrying their group's most common identity.
    Pair precision: share of same-pseudo-label pairs that are the same person; pair recall: share
    of same-person pairs among the *labelled* images that got the same pseudo label.
    """
    p = np.asarray(pseudo, dtype=np.int64)
    t = np.asarray(true, dtype=np.int64).copy()
    if p.shape != t.shape:
        raise ReIDError(f"label_precision: {p.size} pseudo labels for {t.size} true labels")
    bad = t <= 0
    t[bad] = -1 - np.arange(int(bad.sum()))  # every distractor is its own nobody
    lab = p >= 0
    out: dict[str, Any] = {"labelled": int(lab.sum()), "total": int(p.size), "identities": int(len(np.unique(p[lab])))}
    if not lab.any():
        out.update(precision=None, pair_precision=None, pair_recall=None)
        return out
    pl, tl = p[lab], t[lab]
    correct = 0
    for g in np.unique(pl):
        _, counts = np.unique(tl[pl == g], return_counts=True)
        correct += int(counts.max())
    out["precision"] = correct / int(lab.sum())
    same_p = pl[:, None] == pl[None, :]
    same_t = tl[:, None] == tl[None, :]
    iu = np.triu_indices(len(pl), 1)
    sp, st = same_p[iu], same_t[iu]
    out["pair_precision"] = float((sp & st).sum() / sp.sum()) if sp.any() else None
    out["pair_recall"] = float((sp & st).sum() / st.sum()) if st.any() else None
    return out


def write_manifest(
    path: str | Path, records: Sequence[Any], labels: Sequence[int] | np.ndarray, pid_offset: int = 1
) -> Path:
    """A train-only CSV manifest (path,pid,camid,split) of the labelled records; pid = label + offset."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from reidkit.utils.io import atomic_write

    with atomic_write(path, "w") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "pid", "camid", "split"])
        for rec, lab in zip(records, labels):
            if lab >= 0:
                w.writerow([rec.path, int(lab) + pid_offset, rec.camid, "train"])
    return path


def _features(model: ReIDModel, records: list[Any], cfg: Any, device: torch.device) -> np.ndarray:
    from reidkit.data.pipeline import ImageCache
    from reidkit.inference.features import extract_features

    h, w = (int(v) for v in getattr(model, "input_size", cfg.data.size))
    cache = ImageCache.build(
        [r.path for r in records], size=(h, w), cache_dir=cfg.data.cache_dir, step_name="pseudo-label: decoding"
    )
    if not np.asarray(cache.valid).all():
        raise ReIDError(f"pseudo-label: unreadable images, first {cache.skipped[0]}")
    mean = cfg.input.mean if cfg.input.mean is not None else model.mean
    std = cfg.input.std if cfg.input.std is not None else model.std
    f = extract_features(
        model,
        np.asarray(cache.images),
        batch_size=cfg.test.batch_size,
        flip=cfg.test.flip,
        device=device,
        mean=mean,
        std=std,
        neck_feat=cfg.test.neck_feat,
        step_name="pseudo-label: features",
    )
    return np.asarray(f.numpy())


def run_pseudo_label(
    config: Any,
    weights: str | Path,
    threshold: float | str = "auto",
    dedup_threshold: float = 0.3,
    iterations: int = 1,
    min_size: int = 2,
    out_dir: str | Path | None = None,
    retrain: bool = True,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Label the first dataset's query+gallery with `weights`, write manifests, retrain on the union.

    Writes ``<out>/iter_<k>/pseudo.csv`` and (with ``retrain``) a training run in
    ``<out>/iter_<k>/train``; returns and writes ``<out>/pseudo_label.json`` with per-iteration
    counts, the threshold used (``"auto"`` is resolved per iteration, on that model's features),
    precision (when true identities exist) and the retrained model's metrics.
    """
    from reidkit.config import load_config
    from reidkit.data.datasets import load_dataset
    from reidkit.models.loading import load_model
    from reidkit.utils.io import write_json
    from reidkit.utils.runtime import resolve_device

    if iterations < 1:
        raise ReIDError(f"pseudo-label: --iterations must be >= 1, got {iterations}")
    # a bad value is refused before any work; a number given as text becomes a number
    threshold = (
        "auto"
        if isinstance(threshold, str) and threshold.strip().lower() == "auto"
        else resolve_threshold(threshold, np.eye(2), np.arange(2))
    )
    cfg = load_config(config, overrides)
    out = Path(out_dir if out_dir is not None else Path(cfg.output_dir) / "pseudo_label")
    from reidkit.utils.io import ensure_dir

    ensure_dir(out, "out")
    device = resolve_device(cfg.device)
    spec = cfg.data.datasets[0]
    target = load_dataset(spec.name, spec.root, **dict(spec.options))
    if not target.query or not target.gallery:
        raise ReIDError(f"pseudo-label: dataset {target.name!r} has no query/gallery images to label")
    records = list(target.query) + list(target.gallery)
    nq = len(target.query)
    true = np.array([r.pid for r in records])
    has_truth = bool((true > 0).any())
    orig_specs = [{"name": s.name, "root": s.root, "options": dict(s.options)} for s in cfg.data.datasets]
    val_specs = (
        orig_specs
        if cfg.data.val is None
        else [{"name": s.name, "root": s.root, "options": dict(s.options)} for s in cfg.data.val]
    )
    rows: list[dict[str, Any]] = []
    current = Path(weights)
    for it in range(1, iterations + 1):
        model = load_model(current, device=device)
        feats = _features(model, records, cfg, device)
        used = resolve_threshold(threshold, feats[:nq], group_queries(feats[:nq], dedup_threshold))
        ql, gl = pseudo_identities(feats[:nq], feats[nq:], dedup_threshold, used, min_size)
        labels = np.concatenate([ql, gl])
        d = out / f"iter_{it}"
        manifest = write_manifest(d / "pseudo.csv", records, labels)
        row: dict[str, Any] = {
            "iteration": it,
            "weights": str(current),
            "manifest": str(manifest),
            "threshold": round(used, 4),
            "query_groups": int(len(np.unique(ql[ql >= 0]))),
            "labelled_query": int((ql >= 0).sum()),
            "labelled_gallery": int((gl >= 0).sum()),
        }
        if has_truth:
            row["precision"] = label_precision(labels, true)
        if not (labels >= 0).any():
            row["why"] = _why_nothing(feats[:nq], feats[nq:], dedup_threshold, used, min_size)
        log.info("pseudo-label iteration %d: %s", it, row)
        if retrain and (labels >= 0).any():
            from reidkit.engine.api import Trainer

            tree = cfg.to_dict()
            tree["data"]["datasets"] = orig_specs + [
                {"name": "csv", "root": str(manifest), "options": {"dataset_name": "pseudo"}}
            ]
            tree["data"]["val"] = val_specs
            tree["output_dir"] = str(d / "train")
            tree["resume"] = False
            result = Trainer(load_config(tree)).fit()
            row["metrics"] = result.get("mean", {})
            current = d / "train" / "model.pt"
        rows.append(row)
    # final_weights: a model this command trained; None when it trained none (never the input weights)
    final = str(current) if current != Path(weights) else None
    summary = {
        "threshold": threshold,
        "dedup_threshold": dedup_threshold,
        "min_size": min_size,
        "retrain": retrain,
        "dataset": target.name,
        "iterations": rows,
        "weights": str(weights),
        "final_weights": final,
    }
    write_json(out / "pseudo_label.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """One line per iteration: labelled images, identities, precision and retrained metrics."""
    lines = []
    for r in summary["iterations"]:
        auto = " (auto)" if summary["threshold"] == "auto" else ""
        s = (
            f"iteration {r['iteration']}: threshold {r['threshold']:.2f}{auto}: {r['query_groups']} query groups, "
            f"{r['labelled_query']} queries + {r['labelled_gallery']} gallery images labelled"
        )
        p = r.get("precision")
        if p and p.get("precision") is not None:
            s += f"; precision {100 * p['precision']:.1f}%"
            if p.get("pair_precision") is not None:
                s += f", pair precision {100 * p['pair_precision']:.1f}%"
        m = r.get("metrics")
        if m:
            s += f"; retrained mAP {m['mAP']:.1f} rank-1 {m['rank1']:.1f} (on the same test set)"
        s += f" -> {r['manifest']}"
        lines.append(s)
        if r.get("why"):
            lines.append(f"  nothing labelled: {r['why']}")
    if summary["final_weights"] is None:
        why = "nothing labelled" if summary.get("retrain", True) else "--no-retrain"
        lines.append(f"no model retrained ({why}): no new weights")
    else:
        lines.append(f"final weights: {summary['final_weights']}")
    lines.append(TRANSDUCTIVE_NOTE)
    return "\n".join(lines)


TRANSDUCTIVE_NOTE = (
    "note: transductive setting: pseudo-label labels the test set's own images (queries and "
    "gallery) and reports mAP on that same test set, so its numbers are not comparable with a "
    "model evaluated on images it never saw"
)


def _why_nothing(qf: np.ndarray, gf: np.ndarray, dedup_threshold: float, threshold: float, min_size: int) -> str:
    """Why no image was labelled, and the settings that would label some."""
    groups = group_queries(qf, dedup_threshold)
    sizes = np.bincount(groups)
    q, g = _normalized(qf), _normalized(gf)
    cent = np.zeros((len(sizes), q.shape[1]))
    np.add.at(cent, groups, q)
    cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    best = (g @ cent.T).max(1) if len(g) else np.zeros(0)
    top = float(np.quantile(best, 0.9)) if len(best) else float("nan")
    return (
        f"{len(q)} queries formed {len(sizes)} group(s) (largest {int(sizes.max())} images, --min-size "
        f"{min_size}); no gallery image reached --threshold {threshold} (best similarity {float(best.max()):.2f}, "
        f"90th percentile {top:.2f}): lower --threshold (e.g. {top:.2f}) or raise --dedup-threshold"
    )
