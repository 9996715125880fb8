"""Global identities of a tracklet gallery: `reidkit identities` and `reidkit identities export`.

``assign_identities(gallery, ...)`` reads every tracklet through the public Gallery API (entries of
kind "tracklet", their stored features = the mean of feature samples spread over the track, their camera and time span),
clusters them with ``reidkit.cluster.identities.cluster_identities`` and stores the result as the
gallery state ``"identities"`` in one commit (``add_entries`` with no entries), so it works on every
storage backend and a reader sees the old or the new assignment, never a mix::

    {"version": 1, "next_id": 12, "tracklets": {"<tracklet key>": 3, ...},
     "params": {"threshold": 0.8, "linkage": "complete", "rerank": false, "links": {...} | null, "max_gap": null,
                "camera_debias": 0.5, "stitch": {...} | null, "colour": 0.5, "seed_min": 1.0}}

A tracklet is compared by its feature (the model's, the mean of samples spread over the track) and,
where the gallery stores one for every tracklet (meta "colour", reidkit.video.colour), its colour
descriptor: the two unit vectors concatenated with weights ``sqrt(1 - colour)`` and ``sqrt(colour)``,
so the cosine of two tracklets is ``(1 - colour) cos_feature + colour cos_colour`` (early fusion of
a deep and a hand-made descriptor). The clustering (reidkit.cluster.identities) runs on the plain
distance ``2 - 2 cos`` with ``threshold``, no re-ranking (with a few tracklets per person the
k-reciprocal sets are mostly other people), complete linkage (two groups join only when every pair
of their tracklets is within the threshold, so one look-alike pair does not chain two people), and
tracklets shorter than ``seed_min`` seconds attach to an identity after it (its step 5). On scene A (benchmarks/bench_identities.py, seeds 0-4, gt /
gtn / motion boxes, 15 cells) the mean multi-camera IDF1 went from 80.0 (re-ranked distance at 0.6,
feature alone) to 87.3 (average linkage at 0.8: 86.7, equal or lower in every cell); without the
colour (average linkage) it is 81.2, with re-ranking (0.6 or 0.7) 83.9 / 83.6. ``seed_min`` changes
the mean by nothing (average linkage) and the identity counts of the motion rows from 9 / 9 / 15 /
11 / 17 to 8 / 9 / 10 / 11 / 8 (8 people).

Before clustering, each tracklet feature loses ``camera_debias`` times its camera's mean tracklet
feature (``camera_debias``; 0: off): a camera's lighting, colour cast and background shift every
feature it sees the same way, so without this two people in one camera look closer than one person
in two cameras (camera-based normalisation: Zhuang et al., "Rethinking the Distribution Gap of Person
Re-identification with Camera-based Batch Normalization", ECCV 2020; the per-camera feature means
subtracted by AI City Challenge multi-camera trackers). Half the mean, not all of it: a camera that
sees few people has a mean made of those few identities. On scene A (benchmarks/bench_identities.py,
the tracklets' features recomputed per crop) it raised the chance that a pair of one person is closer
than a pair of two people from 0.93 to 0.98 (gt boxes, seed 0) and from 0.81 to 0.85 (seed 1).

A later run keeps every stored assignment (ids are never renumbered; tracklets deleted from the
gallery are forgotten) and gives the tracklets ingested since then an old identity or a new one.
Parameters not given are the stored run's (so an incremental run uses the same threshold and
links), else the defaults; ``rebuild=True`` clusters everything anew from id 1.

``export_mot(gallery, out)`` writes ``OUT/<camera>.txt`` per camera in MOTChallenge form,
``frame,identity,x,y,w,h,conf,-1,-1,-1``, from each tracklet's stored boxes (1-based frames of its
video), ready for ``reidkit eval-tracks``; ``export_tracklets(gallery, out)`` writes the same files with
per-camera tracklet ids (each tracklet's gallery id) instead, so any tracker's tracklets are scored alike.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.video.stitch import Fragment, StitchParams, group_features, stitch

STATE_KEY = "identities"
CAMERA_DEBIAS = 0.5  # the share of a camera's mean feature taken off its tracklets' (module docstring)
COLOUR = 0.5  # the colour descriptor's share of a tracklet's cosine (module docstring)
THRESHOLD = 0.8  # the largest linkage distance 2 - 2 cos merged (module docstring)
LINKAGE = "complete"
RERANK = False
SEED_MIN = 1.0  # seconds: shorter new tracklets attach after the clustering (module docstring)
STATE_VERSION = 1
_CAMERA_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")

__all__ = [
    "assign_identities",
    "debias_cameras",
    "with_colour",
    "stored_identities",
    "identity_groups",
    "export_mot",
    "export_tracklets",
    "STATE_KEY",
]


def stored_identities(gallery: Any) -> dict[str, Any]:
    """The stored ``"identities"`` state (empty assignment when none)."""
    state = gallery.get_state(STATE_KEY)
    if not state:
        return {"version": STATE_VERSION, "next_id": 1, "tracklets": {}, "params": {}}
    if (
        not isinstance(state, dict)
        or state.get("version") != STATE_VERSION
        or not isinstance(state.get("tracklets"), dict)
    ):
        raise ReIDError(
            f"gallery {gallery.db}: the stored identities are not in a form this reidkit reads "
            f"(re-run `reidkit identities --db {gallery.db} --rebuild`)"
        )
    return state


def _tracklets(gallery: Any) -> list[dict[str, Any]]:
    rows = gallery.entries(kind="tracklet")
    bad = [
        r.get("tracklet") or r["id"]
        for r in rows
        if r.get("tracklet") is None or r.get("camera") is None or r.get("t_start") is None or r.get("t_end") is None
    ]
    if bad:
        raise ReIDError(
            f"gallery {gallery.db}: tracklet {bad[0]} has no key, camera or time span "
            f"({len(bad)} such); identities need all three"
        )
    return sorted(rows, key=lambda r: str(r["tracklet"]))


def assign_identities(
    gallery: Any,
    threshold: float | None = None,
    links: Any = None,
    max_gap: float | None = None,
    linkage: str | None = None,
    rerank: bool | None = None,
    rebuild: bool = False,
    stitch: StitchParams | dict[str, Any] | bool | None = None,
    camera_debias: float | None = None,
    colour: float | None = None,
    seed_min: float | None = None,
) -> dict[str, Any]:
    """Cluster the gallery's tracklets into global identities and store them (module docstring); returns a report.

    `stitch`: join one camera's fragments of one person first (reidkit.video.stitch): StitchParams or
    their fields as a dict (True: the defaults), False: off, None: the stored run's (else off).
    `camera_debias`: the share of each camera's mean feature taken off its tracklets' features (module
    docstring; None: the stored run's, else CAMERA_DEBIAS). `colour`: the colour descriptor's share (0..1) of the
    tracklet cosine, `seed_min`: seconds (module docstring; None: the stored run's, else COLOUR / SEED_MIN)."""
    from reidkit.cluster.identities import Links, cluster_identities, load_links, violations
    from reidkit.cluster.identities import impossible_pairs

    rows = _tracklets(gallery)
    if not rows:
        raise ReIDError(f"gallery {gallery.db} has no tracklets (ingest videos with `reidkit video` first)")
    old: dict[str, Any] = (
        {"version": STATE_VERSION, "next_id": 1, "tracklets": {}, "params": {}}
        if rebuild
        else stored_identities(gallery)
    )
    prev: dict[str, Any] = old.get("params") or {}
    if links is not None:
        lk = links if isinstance(links, Links) else load_links(links, max_gap=max_gap)
    elif max_gap is not None or prev.get("links") is not None:  # the stored windows (with a new max gap if given)
        lk = load_links(prev.get("links"), max_gap=max_gap)
    else:
        lk = Links({}, None)
    params: dict[str, Any] = {
        "threshold": float(threshold if threshold is not None else prev.get("threshold", THRESHOLD)),
        "linkage": linkage or prev.get("linkage", LINKAGE),
        "rerank": bool(rerank if rerank is not None else prev.get("rerank", RERANK)),
        "links": lk.to_dict() if (lk.windows or lk.max_gap is not None) else None,
        "camera_debias": _share(
            camera_debias if camera_debias is not None else prev.get("camera_debias", CAMERA_DEBIAS)
        ),
        "colour": _share(colour if colour is not None else prev.get("colour", COLOUR), "colour"),
        "seed_min": _seconds(seed_min if seed_min is not None else prev.get("seed_min", SEED_MIN)),
    }
    keys = [str(r["tracklet"]) for r in rows]
    known = old["tracklets"]
    fixed = np.asarray([int(known.get(k, -1)) for k in keys], dtype=np.int64)
    feats = gallery.features([int(r["id"]) for r in rows])
    cams = [str(r["camera"]) for r in rows]
    t0 = [float(r["t_start"]) for r in rows]
    t1 = [float(r["t_end"]) for r in rows]
    sp = _stitch_params(stitch, prev)
    params["stitch"] = None if sp is None else dict(vars(sp))
    groups = _stitch_rows(rows, feats, sp)
    dim = int(feats.shape[1])  # the gallery's feature size (the state commit below carries no features)
    feats, used_colour = with_colour(feats, rows, params["colour"])
    if sp is not None:  # a stitched fragment is compared across cameras by its whole chain's feature
        feats = group_features(feats, groups, [len((r.get("meta") or {}).get("boxes") or [0]) for r in rows])
    ids = cluster_identities(
        debias_cameras(feats, cams, params["camera_debias"]),
        cams,
        t0,
        t1,
        threshold=params["threshold"],
        links=lk,
        linkage=params["linkage"],
        fixed=fixed,
        next_id=int(old.get("next_id", 1)),
        rerank=params["rerank"],
        seed_min=params["seed_min"],
    )
    assert violations(ids, impossible_pairs(cams, t0, t1, lk)) == 0  # guaranteed by the clustering's split step
    next_id = int(max(int(old.get("next_id", 1)), int(ids.max()) + 1))
    state = {
        "version": STATE_VERSION,
        "next_id": next_id,
        "params": params,
        "tracklets": {k: int(i) for k, i in zip(keys, ids)},
    }
    gallery.add_entries(np.zeros((0, max(1, dim)), np.float32), [], state={STATE_KEY: state})
    per_cam: dict[str, int] = {}
    for c in cams:
        per_cam[c] = per_cam.get(c, 0) + 1
    cams_of: dict[int, set[str]] = {}
    for c, i in zip(cams, ids.tolist()):
        cams_of.setdefault(i, set()).add(c)
    old_ids = set(int(v) for v in known.values())
    return {
        "db": str(gallery.db),
        "tracklets": len(rows),
        "identities": len(cams_of),
        "new_tracklets": int((fixed < 0).sum()),
        "new_identities": len(set(cams_of) - old_ids),
        "multi_camera": sum(1 for s in cams_of.values() if len(s) > 1),
        "per_camera": dict(sorted(per_cam.items())),
        "stitched": int(len(rows) - len(set(groups.tolist()))),
        "colour": used_colour,
        "params": params,
    }


def _share(v: Any, name: str = "camera_debias") -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        x = float("nan")
    if not 0.0 <= x <= 1.0:
        raise OptionError(name, f"expected a number in [0, 1], got {v!r}")
    return x


def _seconds(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        x = float("nan")
    if not (x >= 0.0 and np.isfinite(x)):
        raise OptionError("seed_min", f"expected a finite number of seconds >= 0, got {v!r}")
    return x


def with_colour(features: Any, rows: Sequence[dict[str, Any]], share: float = COLOUR) -> tuple[np.ndarray, bool]:
    """Tracklet features with their colour descriptors (module docstring) and whether they were used: only when
    `share` > 0 and every row's meta has a "colour" of one length (a gallery ingested before them has none)."""
    f = np.asarray(features, dtype=np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    cols = [(r.get("meta") or {}).get("colour") for r in rows]
    if share <= 0 or not len(f) or any(not isinstance(c, list) or not c for c in cols):
        return f.astype(np.float32), False
    if len({len(c) for c in cols if isinstance(c, list)}) != 1:  # all lists here (checked above)
        return f.astype(np.float32), False
    c = np.asarray(cols, dtype=np.float64)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    return np.concatenate([f * np.sqrt(1.0 - share), c * np.sqrt(share)], axis=1).astype(np.float32), True


def debias_cameras(features: Any, cameras: Sequence[str], share: float = CAMERA_DEBIAS) -> np.ndarray:
    """Unit rows of `features` less `share` times the mean unit row of their camera, normalised (module docstring)."""
    f = np.asarray(features, dtype=np.float64)
    f = np.asarray(f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12))
    if share <= 0 or not len(f):
        return f.astype(np.float32)
    cams = np.asarray([str(c) for c in cameras])
    out = f.copy()
    for c in np.unique(cams):
        sel = cams == c
        out[sel] -= share * f[sel].mean(axis=0)
    return np.asarray(out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12), dtype=np.float32)


def _stitch_params(given: Any, prev: dict[str, Any]) -> StitchParams | None:
    """This run's stitching limits: `given` (False: off; True: the defaults), else the stored run's (off when
    none: on scene A it cost multi-camera IDF1, benchmarks/bench_identities.py)."""
    if given is None:
        given = prev.get("stitch")
        if given is None:
            return None
    if given is False:
        return None
    if given is True:
        return StitchParams().check()
    if isinstance(given, StitchParams):
        return given.check()
    if not isinstance(given, dict):
        raise ReIDError(f"identities: stitch must be StitchParams, a dict of its fields or False, got {given!r}")
    known = list(vars(StitchParams()))
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise OptionError(f"stitch.{unknown[0]}", f"unknown; known: {', '.join(known)}")
    return StitchParams(**given).check()


def _stitch_rows(rows: list[dict[str, Any]], feats: np.ndarray, sp: StitchParams | None) -> np.ndarray:
    """Stitch group labels of the tracklet rows (each its own group when `sp` is None)."""
    if sp is None:
        return np.arange(len(rows), dtype=np.int64)
    frags = []
    for r, f in zip(rows, feats):
        fps = float((r.get("meta") or {}).get("fps") or 0.0)
        boxes = (r.get("meta") or {}).get("boxes") or []
        if fps > 0 and boxes:  # frames of the tracklet's video -> seconds of the gallery's clock
            b = [[float(r["t_start"]) + (int(x[0]) - int(boxes[0][0])) / fps, *x[1:5]] for x in boxes]
        else:  # no boxes: the span alone (a fragment that can join by appearance only where its span allows)
            b = [[float(r["t_start"]), 0, 0, 1, 1], [float(r["t_end"]), 0, 0, 1, 1]]
        frags.append(Fragment.of(r["camera"], b, f))
    return stitch(frags, sp)


def identity_groups(gallery: Any) -> list[dict[str, Any]]:
    """Stored identities with their tracklets (time order): [{id, cameras, t_start, t_end, tracklets: [entry]}]."""
    assigned = stored_identities(gallery)["tracklets"]
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in _tracklets(gallery):
        i = assigned.get(str(r["tracklet"]))
        if i is not None:
            groups.setdefault(int(i), []).append(r)
    out = []
    for i, members in sorted(groups.items()):
        members.sort(key=lambda r: (r["t_start"], str(r["camera"]), str(r["tracklet"])))
        out.append(
            {
                "id": i,
                "cameras": sorted({str(r["camera"]) for r in members}),
                "t_start": min(r["t_start"] for r in members),
                "t_end": max(r["t_end"] for r in members),
                "tracklets": members,
            }
        )
    return out


def export_mot(gallery: Any, out: str | os.PathLike, cameras: Sequence[str] | None = None) -> dict[str, Path]:
    """OUT/<camera>.txt (MOTChallenge, global identity ids) per camera; `cameras` adds (empty) files for those."""
    rows = _tracklets(gallery)
    assigned = stored_identities(gallery)["tracklets"]
    missing = [str(r["tracklet"]) for r in rows if str(r["tracklet"]) not in assigned]
    if missing:
        raise ReIDError(
            f"gallery {gallery.db}: {len(missing)} tracklet(s) have no identity yet (e.g. {missing[0]}); "
            f"run `reidkit identities --db {gallery.db}` first"
        )
    return _write_mot([(r, int(assigned[str(r["tracklet"])])) for r in rows], out, cameras)


def export_tracklets(gallery: Any, out: str | os.PathLike, cameras: Sequence[str] | None = None) -> dict[str, Path]:
    """OUT/<camera>.txt (MOTChallenge) per camera with per-camera tracklet ids: what a tracker made, before
    identities (`reidkit tracklets export`). A tracklet's id is its gallery entry id (`reidkit tracklets show ID`),
    unique within each camera's file."""
    return _write_mot([(r, int(r["id"])) for r in _tracklets(gallery)], out, cameras)


def _write_mot(
    rows: list[tuple[dict[str, Any], int]], out: str | os.PathLike, cameras: Sequence[str] | None
) -> dict[str, Path]:
    """One MOTChallenge file per camera, ``frame,id,x,y,w,h,conf,-1,-1,-1`` from each (tracklet, id)'s stored boxes."""
    from reidkit.utils.io import atomic_write, ensure_dir

    lines: dict[str, list[tuple]] = {str(c): [] for c in (cameras or [])}
    for r, ident in rows:
        for b in (r.get("meta") or {}).get("boxes", []):
            frame, x0, y0, x1, y1 = int(b[0]), float(b[1]), float(b[2]), float(b[3]), float(b[4])
            conf = float(b[5]) if len(b) > 5 else 1.0
            lines.setdefault(str(r["camera"]), []).append((frame, ident, x0, y0, x1 - x0, y1 - y0, conf))
    for cam in lines:
        if not _CAMERA_FILE.match(cam) or ".." in cam:
            raise ReIDError(f"camera name {cam!r} cannot be a file name; name cameras with letters, digits, _ . -")
    root = ensure_dir(Path(out).expanduser(), "out")
    files = {}
    for cam, rs in sorted(lines.items()):
        rs.sort()
        path = root / f"{cam}.txt"
        with atomic_write(path, "w") as fh:
            fh.writelines(f"{f},{i},{x:.2f},{y:.2f},{w:.2f},{h:.2f},{c:.4f},-1,-1,-1\n" for f, i, x, y, w, h, c in rs)
        files[cam] = path
    return files
