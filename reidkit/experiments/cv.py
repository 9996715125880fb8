"""k-fold cross-validation split by identity (the NAIC 2019 team's protocol).

The training identities are shuffled (seeded) and cut into ``folds`` identity-disjoint parts
(query-eligible identities spread evenly over the folds).
Fold k trains on the other parts and validates on part k: one query image per identity (drawn
with the seed), the rest of its images in the gallery. Identities with fewer than ``min_images``
images are never queries (their images stay in the gallery), nor are identities seen by one
camera only (the protocol removes same-camera matches, so such a query could not be scored).
The dataset's own query and gallery images join every fold's gallery as distractors (pid 0).
Each fold is written as a CSV manifest and trained by the supervised engine; the per-fold and
mean metrics go to ``cv.md`` and ``cv.json``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from reidkit.errors import ReIDError

__all__ = ["make_folds", "write_fold_manifest", "run_cv", "format_cv_table"]

log = logging.getLogger("reidkit.cv")


def make_folds(
    records: Sequence[Any], folds: int = 4, seed: int = 0, min_images: int = 2
) -> list[dict[str, list[Any]]]:
    """Identity-disjoint folds: per fold ``{"train", "query", "gallery"}`` record lists."""
    if folds < 2:
        raise ReIDError(f"cv: --folds must be >= 2, got {folds}")
    if min_images < 2:
        raise ReIDError(f"cv: min_images must be >= 2 (a query needs a match), got {min_images}")
    by_id: dict[tuple[str, int], list[Any]] = {}
    for r in records:
        by_id.setdefault((r.dataset, r.pid), []).append(r)
    keys = sorted(by_id)
    if len(keys) < folds:
        raise ReIDError(f"cv: {len(keys)} training identities cannot make {folds} folds")
    rng = np.random.default_rng(seed)
    usable = np.array([len(by_id[k]) >= min_images and len({r.camid for r in by_id[k]}) >= 2 for k in keys])
    # Query-eligible and other identities are spread over the folds separately, so every fold
    # gets its share of queries.
    elig = rng.permutation(np.flatnonzero(usable))
    rest = rng.permutation(np.flatnonzero(~usable))
    parts = [np.concatenate([a, b]) for a, b in zip(np.array_split(elig, folds), np.array_split(rest, folds))]
    out = []
    for k in range(folds):
        held = {keys[i] for i in parts[k]}
        train = [r for r in records if (r.dataset, r.pid) not in held]
        query: list[Any] = []
        gallery: list[Any] = []
        for i in parts[k]:
            imgs = by_id[keys[i]]
            cams = {r.camid for r in imgs}
            if len(imgs) < min_images or len(cams) < 2:
                gallery.extend(imgs)
                continue
            q = int(rng.integers(len(imgs)))
            query.append(imgs[q])
            gallery.extend(r for j, r in enumerate(imgs) if j != q)
        if not query:
            raise ReIDError(
                f"cv: fold {k + 1} has no usable query (every held-out identity has fewer than "
                f"{min_images} images or one camera); use fewer folds or a lower min_images"
            )
        out.append({"train": train, "query": query, "gallery": gallery})
    return out


def write_fold_manifest(
    path: str | Path,
    fold: dict[str, list[Any]],
    distractors: Sequence[Any] = (),
    pid_map: dict[tuple[str, int], int] | None = None,
) -> Path:
    """CSV manifest (path,pid,camid,split) of a fold; distractors go to the gallery with pid 0."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if pid_map is None:
        keys = sorted({(r.dataset, r.pid) for s in ("train", "query", "gallery") for r in fold[s]})
        pid_map = {key: i + 1 for i, key in enumerate(keys)}
    from reidkit.utils.io import atomic_write

    with atomic_write(path, "w") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "pid", "camid", "split"])
        for split in ("train", "query", "gallery"):
            for r in fold[split]:
                w.writerow([r.path, pid_map[(r.dataset, r.pid)], r.camid, split])
        for r in distractors:
            w.writerow([r.path, 0, r.camid, "gallery"])
    return path


def run_cv(
    config: Any,
    folds: int = 4,
    min_images: int = 2,
    seed: int | None = None,
    out_dir: str | Path | None = None,
    distractors: bool = True,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every fold; write ``cv.md`` / ``cv.json`` in `out_dir`; return the summary."""
    from reidkit.config import load_config
    from reidkit.data.datasets import load_datasets
    from reidkit.engine.api import Trainer
    from reidkit.utils.io import write_json

    cfg = load_config(config, overrides)
    seed = cfg.seed if seed is None else int(seed)
    out = Path(out_dir if out_dir is not None else Path(cfg.output_dir) / "cv")
    from reidkit.utils.io import ensure_dir

    ensure_dir(out, "out")
    specs = [{"name": s.name, "root": s.root, **dict(s.options)} for s in cfg.data.datasets]
    joint = load_datasets(specs)
    records = list(joint.train)
    extra = [r for p in joint.parts for r in list(p.query) + list(p.gallery)] if distractors else []
    split = make_folds(records, folds, seed, min_images)
    name = "_".join(p.name for p in joint.parts)
    rows: list[dict[str, Any]] = []
    for k, fold in enumerate(split, 1):
        manifest = write_fold_manifest(out / f"fold{k}.csv", fold, extra)
        tree = cfg.to_dict()
        tree["data"]["datasets"] = [
            {"name": "csv", "root": str(manifest), "options": {"dataset_name": f"{name}_fold{k}"}}
        ]
        tree["data"]["val"] = None
        tree["output_dir"] = str(out / f"fold{k}")
        tree["resume"] = False
        log.info(
            "cv fold %d/%d: %d train images, %d queries, %d gallery (+%d distractors)",
            k,
            folds,
            len(fold["train"]),
            len(fold["query"]),
            len(fold["gallery"]),
            len(extra),
        )
        result = Trainer(load_config(tree)).fit()
        m = result.get("mean") or {}
        rows.append(
            {
                "fold": k,
                "train_ids": len({(r.dataset, r.pid) for r in fold["train"]}),
                "train_images": len(fold["train"]),
                "query": len(fold["query"]),
                "gallery": len(fold["gallery"]),
                "distractors": len(extra),
                **{key: m.get(key) for key in ("mAP", "rank1", "rank5", "mINP", "score")},
            }
        )
    summary = {
        "folds": folds,
        "seed": seed,
        "min_images": min_images,
        "rows": rows,
        "mean": _mean_row(rows),
        "std": _std_row(rows),
    }
    from reidkit.utils.io import write_text

    write_text(out / "cv.md", format_cv_table(summary) + "\n")
    write_json(out / "cv.json", summary)
    return summary


_METRICS = ("mAP", "rank1", "rank5", "mINP", "score")


def _mean_row(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    return {
        k: (float(np.mean([r[k] for r in rows])) if all(r.get(k) is not None for r in rows) else None) for k in _METRICS
    }


def _std_row(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    return {
        k: (float(np.std([r[k] for r in rows])) if all(r.get(k) is not None for r in rows) else None) for k in _METRICS
    }


def format_cv_table(summary: dict[str, Any]) -> str:
    """Markdown table: one row per fold, then mean and standard deviation (metrics in percent)."""
    head = "| fold | train ids | train images | query | gallery | distractors | mAP | rank-1 | rank-5 | mINP |"
    lines = [head, "|" + "---|" * 10]

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"

    for r in summary["rows"]:
        lines.append(
            f"| {r['fold']} | {r['train_ids']} | {r['train_images']} | {r['query']} | {r['gallery']} | "
            f"{r['distractors']} | {fmt(r['mAP'])} | {fmt(r['rank1'])} | {fmt(r['rank5'])} | {fmt(r['mINP'])} |"
        )
    m, s = summary["mean"], summary["std"]
    lines.append(f"| mean | | | | | | {fmt(m['mAP'])} | {fmt(m['rank1'])} | {fmt(m['rank5'])} | {fmt(m['mINP'])} |")
    lines.append(f"| std | | | | | | {fmt(s['mAP'])} | {fmt(s['rank1'])} | {fmt(s['rank5'])} | {fmt(s['mINP'])} |")
    return "\n".join(lines)
