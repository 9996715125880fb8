"""Procedural pedestrian generator that writes Market-1501-format folders, so every loader,
trainer and benchmark can run offline.

People are drawn with PIL at twice the output resolution and downsampled. An identity is a
fixed set of attributes (body shape, skin, hair, garments, colours, textures, accessories);
an image of it varies the view (front/back/left/right), walking phase, camera style,
background, occluders and detector-box jitter. Identities come in small groups sharing
clothing colours (hard negatives), so details such as texture, shoes, hair or a backpack
are what tells them apart.

Randomness is keyed, never sequential: an identity by (seed, domain, pid), an image by
(seed, domain, pid, image index), a camera by (seed, domain, camera). The bytes written are
therefore the same whatever the number of worker processes.

The package: ``identity`` (palettes, ``keyed_rng``, ``sample_identity``, ``GROUP_SIZE``), ``camera``
(``camera_style``, ``camera_background``, ``photometric``), ``painter`` (``draw_person`` and its parts),
``render`` (``render_crop``: one crop, and the worker); this module plans the set and writes it
(``generate``, ``generate_report``, ``read_marker``). The names in ``__all__`` are the public parts; a
generator of your own (``reidkit.data.scene`` is one) composes them::

    dom = DOMAINS["A"]
    idt = sample_identity(seed, dom, key)                       # the same person for the same key
    img = camera_background(seed, dom, cam, h, w).copy()        # cached: copy before drawing
    draw_person(img, idt, "front", phase, cx, feet, height, light)
    img = photometric(img, camera_style(seed, dom, cam), keyed_rng(seed, dom, MY_TAG, cam, frame))
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.errors import ReIDError

# The public parts: data/scene.py and your own generators use these.
from reidkit.data.synthetic.identity import (
    DOMAINS,  # domain letter -> domain index (the camera-style family)
    GENERATOR_VERSION,
    GROUP_SIZE,  # identities per hard-negative group (keys 1..3, 4..6, ... share clothing colours)
    MARKER_NAME,
    MARKET_DIR,
    SPLITS,
    colour,  # an RGB array -> a PIL colour tuple, clipped to 0..255
    keyed_rng,  # (*int keys) -> a numpy Generator for exactly those keys
    sample_identity,  # (seed, domain index, key) -> the attributes of one person
)
from reidkit.data.synthetic.camera import (
    camera_background,  # (seed, domain index, camera, h, w) -> that camera's background strip
    camera_style,  # (seed, domain index, camera) -> that camera's style
    photometric,  # (image, camera style, rng) -> the image as that camera sees it
)
from reidkit.data.synthetic.painter import draw_person  # draw an identity into an image (view, phase, position)
from reidkit.data.synthetic.render import Job, render_crop  # one crop: (job, seed, domain index, size) -> image
from reidkit.data.synthetic.identity import _DISTRACTOR_KEY, _JUNK_KEY, _T_PLAN
from reidkit.data.synthetic.render import _render_chunk

__all__ = [
    "DOMAINS",
    "GENERATOR_VERSION",
    "GROUP_SIZE",
    "MARKER_NAME",
    "MARKET_DIR",
    "SPLITS",
    "GenerationReport",
    "Job",
    "camera_background",
    "camera_style",
    "colour",
    "draw_person",
    "generate",
    "generate_report",
    "keyed_rng",
    "photometric",
    "read_marker",
    "render_crop",
    "sample_identity",
]


# ----------------------------------------------------------------------------- the plan
def _plan(
    ids: int, images_per_id: int, cams: int, seed: int, dom: int, distractors: int, junk: int
) -> tuple[list[Job], dict]:
    """Decide every file (name, split, identity, camera) up front, in the parent process."""
    r = keyed_rng(seed, dom, _T_PLAN)
    pids = np.arange(1, ids + 1)
    n_train = (ids + 1) // 2  # Market: 751 train / 750 test identities
    perm = r.permutation(pids)
    train_ids = set(int(p) for p in perm[:n_train])
    jobs: list[Job] = []
    used: set[str] = set()
    counts = {"train_images": 0, "query": 0, "gallery": 0, "distractors": 0, "junk": 0}
    max_cams = min(cams, max(2, images_per_id // 2))  # leaves gallery matches for every query camera

    def name(pid: int, cam: int, seq: int, frame: int, det: int) -> str:
        prefix = "-1" if pid < 0 else f"{pid:04d}"
        while True:
            n = f"{prefix}_c{cam + 1}s{seq}_{frame:06d}_{det:02d}.jpg"
            if n not in used:
                used.add(n)
                return n
            frame += 1

    for pid_value in pids:
        pid = int(pid_value)
        n_c = int(r.integers(2, max_cams + 1))
        pcams = np.sort(r.choice(cams, n_c, replace=False))
        share = r.dirichlet(np.ones(n_c) * 2.0)
        alloc = np.ones(n_c, dtype=int) + r.multinomial(images_per_id - n_c, share)
        split = "bounding_box_train" if pid in train_ids else "bounding_box_test"
        idx = 0
        for cam, n in zip(pcams, alloc):
            cam = int(cam)
            cview = camera_style(seed, dom, cam)["views"]
            view = int(r.choice(4, p=cview))
            seq = int(r.integers(1, 7))
            frame = int(r.integers(0, 150000))
            query_at = int(r.integers(n)) if split == "bounding_box_test" else -1
            for k in range(int(n)):
                frame += int(r.integers(3, 60))
                fname = name(pid, cam, seq, frame, int(r.integers(1, 4)))
                sp = "query" if k == query_at else split
                jobs.append(Job(f"{sp}/{fname}", pid, idx, cam, "person", view))
                counts["train_images" if sp == "bounding_box_train" else "query" if sp == "query" else "gallery"] += 1
                idx += 1
    for k in range(distractors):
        cam = int(r.integers(cams))
        kind = "distractor" if r.random() < 0.55 else "background"
        fname = name(0, cam, int(r.integers(1, 7)), int(r.integers(0, 200000)), int(r.integers(1, 9)))
        jobs.append(Job(f"bounding_box_test/{fname}", _DISTRACTOR_KEY + k, 0, cam, kind, int(r.integers(4))))
    for k in range(junk):
        cam = int(r.integers(cams))
        # junk is bad crops of the test people themselves (as in Market) or of passers-by
        test_ids = sorted(set(range(1, ids + 1)) - train_ids)
        key = int(r.choice(test_ids)) if r.random() < 0.5 else _JUNK_KEY + k
        fname = name(-1, cam, int(r.integers(1, 7)), int(r.integers(0, 200000)), int(r.integers(1, 9)))
        jobs.append(Job(f"bounding_box_test/{fname}", key, 100000 + k, cam, "junk", int(r.integers(4))))
    counts["distractors"], counts["junk"] = distractors, junk
    counts["gallery"] += distractors + junk
    counts["train_ids"] = n_train
    counts["test_ids"] = ids - n_train
    counts["images"] = len(jobs)
    return jobs, counts


# ----------------------------------------------------------------------------- public API
@dataclass
class GenerationReport:
    """What `generate_report` did: the tree's root, its counts, and whether it was skipped."""

    root: Path
    counts: dict
    params: dict
    skipped: bool
    seconds: float = 0.0
    images_per_s: float = 0.0
    workers: int = 1
    marker: dict = field(default_factory=dict)


def _check(
    ids: int,
    images_per_id: int,
    cams: int,
    seed: int,
    domain: str,
    size: Any,
    distractors: int | None,
    junk: int | None,
) -> tuple[tuple[int, int], int, int]:
    if not isinstance(ids, (int, np.integer)) or ids < 2:
        raise ReIDError(f"synthetic: ids must be an integer >= 2 (half train, half test), got {ids!r}")
    if not isinstance(cams, (int, np.integer)) or cams < 2:
        raise ReIDError(
            f"synthetic: cams must be an integer >= 2 (queries need a match in another camera), got {cams!r}"
        )
    if not isinstance(images_per_id, (int, np.integer)) or images_per_id < 3:
        raise ReIDError(f"synthetic: images_per_id must be an integer >= 3, got {images_per_id!r}")
    if cams > 9:
        raise ReIDError(f"synthetic: cams must be <= 9 (Market names hold one camera digit), got {cams!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ReIDError(f"synthetic: seed must be a non-negative integer, got {seed!r}")
    if domain not in DOMAINS:
        raise ReIDError(f"synthetic: domain must be one of {sorted(DOMAINS)}, got {domain!r}")
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ReIDError(f"synthetic: size must be (height, width), got {size!r}") from None
    if h < 16 or w < 8 or h > 1024 or w > 512:
        raise ReIDError(f"synthetic: size must be between (16, 8) and (1024, 512), got {size!r}")
    total = ids * images_per_id
    nd = round(0.08 * total) + 1 if distractors is None else distractors  # Market: ~8.5% distractors
    nj = round(0.05 * total) + 1 if junk is None else junk
    for key, v in (("distractors", nd), ("junk", nj)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ReIDError(f"synthetic: {key} must be a non-negative integer, got {v!r}")
    return (h, w), int(nd), int(nj)


def read_marker(root: str | os.PathLike) -> dict | None:
    """The metadata of a generated tree (`<root>/synthetic.json`), or None if absent/unreadable/not an object."""
    p = Path(root) / MARKER_NAME
    try:
        marker = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None  # e.g. a list: not a marker this module wrote


def generate_report(
    out: str | os.PathLike,
    ids: int = 100,
    images_per_id: int = 16,
    cams: int = 6,
    seed: int = 0,
    domain: str = "A",
    size: tuple[int, int] = (128, 64),
    workers: int | None = None,
    distractors: int | None = None,
    junk: int | None = None,
    force: bool = False,
) -> GenerationReport:
    """Generate (or reuse) a synthetic Market-1501 tree and report counts and speed.

    A tree already at ``out`` with the same parameters is reused; one with other parameters raises
    ReIDError naming both unless ``force`` (then it is replaced).
    """
    (h, w), nd, nj = _check(ids, images_per_id, cams, seed, domain, size, distractors, junk)
    params = {
        "ids": int(ids),
        "images_per_id": int(images_per_id),
        "cams": int(cams),
        "seed": int(seed),
        "domain": domain,
        "size": [h, w],
        "distractors": nd,
        "junk": nj,
        "version": GENERATOR_VERSION,
    }
    out = Path(out)
    root = out / MARKET_DIR
    if out.exists() and not out.is_dir():
        raise ReIDError(f"synthetic: output path {out} exists and is not a directory")
    marker = read_marker(root)
    if root.exists():
        if marker is None or marker.get("generator") != "reidkit.synthetic":
            if any(root.iterdir()):
                raise ReIDError(
                    f"synthetic: {root} exists and is not a reidkit synthetic set; choose another output folder"
                )
        elif marker.get("params") == params and not force:
            return GenerationReport(root, marker["counts"], params, True, marker=marker)
        elif not force:
            # Never replace a set the user generated without being asked to.
            have = marker.get("params") or {}
            differ = {k: v for k, v in params.items() if have.get(k) != v}
            raise ReIDError(
                f"synthetic: {root} already holds a set generated with "
                f"{ {k: have.get(k) for k in params} }; the requested "
                f"{', '.join(f'{k}={v!r}' for k, v in differ.items())} differ(s); choose another output "
                f"folder, or replace it with --regenerate (force=True)"
            )
    dom = DOMAINS[domain]
    jobs, counts = _plan(int(ids), int(images_per_id), int(cams), int(seed), dom, nd, nj)
    n_workers = max(1, int(workers if workers is not None else (os.cpu_count() or 1)))
    # Write into a sibling temp folder and rename at the end: an interrupted run leaves no
    # half tree that a loader could mistake for a finished one.
    _remove_stale_partials(out)
    tmp = out / f".{MARKET_DIR}.partial-{os.getpid()}"  # per process: concurrent callers don't collide
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        for s in SPLITS:
            (tmp / s).mkdir(parents=True)
    except OSError as exc:
        raise ReIDError(f"synthetic: cannot write into {out}: {exc.strerror or exc}") from None
    t0 = time.perf_counter()
    chunk = max(1, min(32, math.ceil(len(jobs) / (4 * n_workers))))  # small sets still spread over workers
    tasks = [(jobs[i : i + chunk], int(seed), dom, (h, w), str(tmp)) for i in range(0, len(jobs), chunk)]
    if n_workers == 1 or len(tasks) == 1:
        for t in tasks:
            _render_chunk(t)
    else:
        # fork avoids re-importing the caller's __main__; the workers only use numpy and PIL
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(min(n_workers, len(tasks))) as pool:
            for _ in pool.imap_unordered(_render_chunk, tasks):
                pass
    seconds = time.perf_counter() - t0
    ips = len(jobs) / max(seconds, 1e-9)
    marker = {
        "generator": "reidkit.synthetic",
        "format": "market1501",
        "params": params,
        "counts": counts,
        "seconds": round(seconds, 3),
        "images_per_s": round(ips, 1),
        "workers": n_workers,
    }
    (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True))
    current = read_marker(root)
    if current is not None and current.get("params") == params:  # another process finished first
        shutil.rmtree(tmp)
        return GenerationReport(root, current["counts"], params, True, marker=current)
    if root.exists():
        shutil.rmtree(root)  # an older synthetic set with other parameters (checked above)
    os.replace(tmp, root)
    return GenerationReport(root, counts, params, False, seconds, ips, n_workers, marker)


def _remove_stale_partials(out: Path) -> None:
    """Delete temp trees left by generator processes that no longer run (killed runs)."""
    if not out.is_dir():
        return
    for p in out.glob(f".{MARKET_DIR}.partial-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(p, ignore_errors=True)


def generate(out: str | os.PathLike, **options: Any) -> Path:
    """Write a synthetic Market-1501 tree under `out`; returns `<out>/Market-1501-v15.09.15`.

    `options`: those of :func:`generate_report` (ids, images_per_id, cams, seed, domain, size, workers,
    distractors, junk, force)."""
    return generate_report(out, **options).root
