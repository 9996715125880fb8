"""Your own crops: one folder per identity, cameras by regex, a seeded identity-disjoint split."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.errors import ReIDError
from reidkit.utils.io import is_image_file, list_images

from reidkit.data.datasets.core import SPLITS, Record, ReIDDataset
from reidkit.data.datasets.layout import listing, root_dir


# ----------------------------------------------------------------------------- folder

FOLDER_LAYOUT = "ROOT/<identity>/<image> (train only) or ROOT/{train,query,gallery}/<identity>/<image>"


def _identity_images(split_dir: Path, dataset: str) -> dict[str, list[str]]:
    """{identity folder name: sorted image paths relative to it (searched recursively)}."""
    out: dict[str, list[str]] = {}
    with os.scandir(split_dir) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            if is_image_file(entry.name):
                raise ReIDError(f"{dataset}: image {entry.path} lies directly in {split_dir}; expected {FOLDER_LAYOUT}")
            continue
        # The one lister: symlinked folders once, loops / broken links / non-UTF-8 names skipped and logged.
        images = [p.relative_to(entry.path).as_posix() for p in list_images(entry.path)]
        if images:
            out[entry.name] = images
    return out


def _folder_split(
    images: dict[str, list[tuple[str, int]]], split_test: float, seed: int, has_cameras: bool
) -> tuple[set[str], dict[str, tuple[list[int], list[int]]]]:
    """Choose test identities and, inside each, query / gallery image indices."""
    names = sorted(images)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    n_test = min(max(int(round(split_test * len(names))), 1), len(names) - 1)
    test = sorted(names[i] for i in order[:n_test])
    chosen: dict[str, tuple[list[int], list[int]]] = {}
    for name in test:
        items = images[name]
        if has_cameras:
            by_cam: dict[int, list[int]] = {}
            for idx, (_, cam) in enumerate(items):
                by_cam.setdefault(cam, []).append(idx)
            groups = [by_cam[c] for c in sorted(by_cam)]
        else:
            groups = [list(range(len(items)))]
        query: list[int] = []
        for group in groups:
            pick = group[int(rng.integers(len(group)))]
            trial = query + [pick]
            gallery_cams = {items[i][1] for i in range(len(items)) if i not in trial}
            # Keep a pick only if every query still has a true match in another camera, so no
            # query is made useless by the same-pid-same-camera removal of evaluation.
            if all(gallery_cams - {items[q][1]} for q in trial):
                query = trial
        chosen[name] = (sorted(query), [i for i in range(len(items)) if i not in query])
    return set(test), chosen


def load_folder(
    root: str | os.PathLike[str],
    *,
    cam_regex: str | None = None,
    split_test: float = 0.5,
    seed: int = 0,
    dataset_name: str = "folder",
) -> ReIDDataset:
    """A user's own crops: ``ROOT/<identity>/<image>`` or ``ROOT/{train,query,gallery}/<identity>/<image>``.

    Identities are folder names (the same name in two splits is the same person); pids are
    1..N over the sorted names (``meta["identities"][pid - 1]`` gives the name back). Images may
    sit in subfolders of an identity. ``cam_regex`` (one group, searched in the image path
    relative to its identity folder, e.g. ``r"c(\\d+)"``) gives cameras, numbered 0..C-1 in
    sorted order; without it every image gets its own camera, so same-camera removal at
    evaluation never removes a true match.

    Without a query/gallery split, ``split_test`` (default 0.5, 0 = train only) of the
    identities, drawn by a permutation seeded by ``seed``, become test identities (at least one,
    and at least one identity stays in train); the others are train. From each test identity
    one image per camera (one image when there are no cameras), drawn with the same seed,
    becomes a query, the rest gallery; a pick is kept only while every query of the identity
    still has a gallery image of it from another camera, so test identities with a single
    image (or seen by one camera only) stay in the gallery only. ``dataset_name`` sets
    ``Record.dataset`` (give two folders different names to train on both jointly).
    """
    dataset = str(dataset_name)
    top = root_dir(root, dataset, FOLDER_LAYOUT)
    if not top.is_dir():
        raise ReIDError(f"{dataset}: root {top} is not a folder; expected {FOLDER_LAYOUT}")
    rx = None
    if cam_regex:
        try:
            rx = re.compile(cam_regex)
        except re.error as exc:
            raise ReIDError(f"{dataset}: option cam_regex={cam_regex!r} is not a valid regex ({exc})") from None
        if rx.groups != 1:
            raise ReIDError(
                f"{dataset}: option cam_regex={cam_regex!r} must have exactly one group (the camera), e.g. r'c(\\d+)'"
            )
    try:
        split_test, seed = float(split_test), int(seed)
    except (TypeError, ValueError):
        raise ReIDError(
            f"{dataset}: options split_test={split_test!r} and seed={seed!r} must be a number in [0, 1) and an integer"
        ) from None
    if not 0 <= split_test < 1:
        raise ReIDError(f"{dataset}: option split_test={split_test!r} must be in [0, 1)")

    subdirs = sorted(e.name for e in os.scandir(top) if e.is_dir() and not e.name.startswith("."))
    present = [s for s in SPLITS if s in subdirs]
    if present == ["train"] and subdirs == ["train"]:
        split_dirs = {"train": top / "train"}
    elif present:
        if "query" not in present or "gallery" not in present or len(present) != len(subdirs):
            raise ReIDError(
                f"{dataset}: {top} mixes split folders ({', '.join(present)}) with "
                f"others ({', '.join(s for s in subdirs if s not in SPLITS) or 'none'}); "
                f"expected {FOLDER_LAYOUT} with both query and gallery"
            )
        split_dirs = {s: top / s for s in present}
    else:
        split_dirs = {"train": top}
    per_split = {s: _identity_images(d, dataset) for s, d in split_dirs.items()}
    if not any(per_split.values()):
        raise ReIDError(f"{dataset}: no images under {top} (found: {listing(top)}); expected {FOLDER_LAYOUT}")

    # Cameras are numbered over all splits at once so query and gallery agree.
    raw_cams: dict[tuple[str, str, str], str] = {}
    if rx is not None:
        for split, ids in per_split.items():
            for ident, rels in ids.items():
                for rel in rels:
                    m = rx.search(rel)
                    if m is None or m.group(1) is None:
                        raise ReIDError(
                            f"{dataset}: cam_regex {cam_regex!r} does not match {split_dirs[split] / ident / rel}"
                        )
                    raw_cams[(split, ident, rel)] = m.group(1)
        values = set(raw_cams.values())
        numeric = all(v.isdigit() for v in values)
        ordered = sorted(values, key=(lambda v: int(v)) if numeric else None)
        cam_index = {v: i for i, v in enumerate(ordered)}
    identities = sorted({ident for ids in per_split.values() for ident in ids})
    pid_of = {ident: i + 1 for i, ident in enumerate(identities)}

    next_cam = 0
    out: dict[str, list[Record]] = {s: [] for s in SPLITS}
    items_of: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for split, ids in per_split.items():
        for ident, rels in ids.items():
            items = []
            for rel in rels:
                if rx is not None:
                    cam = cam_index[raw_cams[(split, ident, rel)]]
                else:
                    cam, next_cam = next_cam, next_cam + 1
                items.append((str(split_dirs[split] / ident / rel), cam))
            items_of[(split, ident)] = items

    meta: dict[str, Any] = {"identities": identities, "has_cameras": rx is not None}
    if set(split_dirs) == {"train"} and split_test > 0:
        if len(identities) < 2:
            raise ReIDError(
                f"{dataset}: split_test={split_test} needs at least 2 identities "
                f"under {split_dirs['train']}, found {len(identities)}"
            )
        images = {ident: items_of[("train", ident)] for ident in identities}
        test, chosen = _folder_split(images, float(split_test), int(seed), rx is not None)
        for ident in identities:
            items = images[ident]
            if ident not in test:
                out["train"] += [Record(p, pid_of[ident], c, dataset) for p, c in items]
                continue
            q_idx, g_idx = chosen[ident]
            out["query"] += [Record(items[i][0], pid_of[ident], items[i][1], dataset) for i in q_idx]
            out["gallery"] += [Record(items[i][0], pid_of[ident], items[i][1], dataset) for i in g_idx]
        meta["split_test"] = {"fraction": float(split_test), "seed": int(seed), "test_identities": sorted(test)}
    else:
        for (split, ident), items in items_of.items():
            out[split] += [Record(p, pid_of[ident], c, dataset) for p, c in items]
    ds = ReIDDataset(dataset, out["train"], out["query"], out["gallery"], str(top), meta=meta)
    train_only = set(split_dirs) == {"train"} and split_test == 0
    if set(split_dirs) == {"train"} and split_test > 0 and not ds.query:
        raise ReIDError(
            f"{dataset}: empty query set after split_test={split_test} under {top}: "
            f"no test identity has images in two cameras (or, without cameras, "
            f"two images) to give a query with a true match"
        )
    if "query" in split_dirs and not ds.query:
        raise ReIDError(f"{dataset}: empty query set: no images under {top / 'query'}; expected {FOLDER_LAYOUT}")
    if "gallery" in split_dirs and not ds.gallery:
        raise ReIDError(f"{dataset}: empty gallery split: no images under {top / 'gallery'}; expected {FOLDER_LAYOUT}")
    if train_only and not ds.train:
        raise ReIDError(f"{dataset}: no images under {top}; expected {FOLDER_LAYOUT}")
    return ds
