"""Synthetic multi-camera scenes: videos plus MOTChallenge ground truth, for testing and measuring
the footage-to-gallery pipeline (reidkit.video) without real footage.

Each identity is a person of the procedural generator (reidkit.data.synthetic: its identities,
person drawing, camera backgrounds and camera photometric styles are reused, not copied). An
identity visits some of the cameras one after the other (a travel gap between visits); in each
visit it walks across the camera's view at a depth along a straight path, entering at one edge
and leaving at the other (side walkers seen from the left or right, diagonal walkers from the
front or the back). Farther people are smaller and drawn first, so nearer people occlude them;
each camera also has static occluders (poles, a low wall) drawn over everyone. The frame then
goes through the camera's photometric pipeline (resolution, blur, exposure, cast, noise).

Topology. ``topology="free"`` (the Python default, kept for existing callers): an identity visits
2..cams cameras in random order, 0.3-``frames/8`` frames apart. ``topology="chain"`` (the CLI's
default): the cameras stand along a corridor, cam1 - cam2 - ... - camN; a person enters the site
at a camera (person k at camera k mod N) and a random time, walks along the corridor in one
direction through consecutive cameras (each next camera reached after a transit time drawn from
``transit`` seconds, out of every view), stops at any camera with probability 0.25 (so some are never seen again), and with
probability 0.3 comes back to the last camera after 4-8 s out of its view. The camera-link
windows this topology allows are written to ``OUT/links.yaml`` (reidkit.cluster.identities reads
it): for cameras d steps apart the time from a person leaving one view to entering the other
(measured, as the clustering does, from the end of one tracklet to the start of the other) lies
in ``[d * transit_min + (d - 1) * cross_min, d * transit_max + (d + 2) * cross_max + 8 s]`` where
cross_min / cross_max bound the time a walk across a view takes at this frame size and speed.

Ground truth is written per camera in MOTChallenge format, ``frame,id,x,y,w,h,conf,-1,-1,-1``
(frame 1-based, box clipped to the frame, conf 1), identities global across cameras; a box
whose visible part (inside the frame) is under 30% of the person's box is left out, as people
entering or leaving are. Layout::

    OUT/scene.json                  cameras, fps, frames, size, ids, seed
    OUT/<cam>/<cam>.avi             MJPG (or <cam>.mp4, mp4v)
    OUT/<cam>/gt/gt.txt             ground truth
    OUT/<cam>/seqinfo.ini           MOTChallenge sequence info
    OUT/GT/SCENE-all/<cam>/gt/gt.txt  the same boxes in TrackEval's MOT17 layout (class 1 =
    OUT/GT/SCENE-all/<cam>/seqinfo.ini    pedestrian, visibility 1), benchmark SCENE, split all
    OUT/GT/seqmaps/SCENE-all.txt    the sequence list TrackEval reads
    OUT/links.yaml                  camera-link windows (chain topology only)
    OUT/query.jpg                   a query crop: the largest whole view in cam1 of a person another camera
                                    sees too (scene.json "query": pid, frame, box), for `tracklets search`

Randomness is keyed by (seed, domain, identity) for the plan and (seed, domain, camera, frame)
for the camera noise, so a seed always gives the same scene.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from reidkit.data import synthetic as syn
from reidkit.errors import OptionError, ReIDError
from reidkit.utils.io import atomic_write, write_json
from reidkit.utils.validate import check_positive

_T_SCENE_PLAN, _T_SCENE_NOISE, _T_SCENE_CAM = 31, 32, 33
MIN_VISIBLE = 0.3  # fraction of a person's box inside the frame for it to count as ground truth


@dataclass
class Visit:
    """One walk of one identity across one camera's view."""

    pid: int
    cam: int
    start: int  # first frame (0-based) of the walk
    frames: int  # duration in frames
    x0: float
    x1: float  # feet x at start and end
    y0: float
    y1: float  # feet y at start and end
    view: str
    phase0: float
    light: float

    def at(self, f: int, H: int) -> tuple[float, float, float, float] | None:
        """(cx, feet, height, phase) at frame f, or None when not walking then."""
        if f < self.start or f >= self.start + self.frames:
            return None
        a = (f - self.start) / max(1, self.frames - 1)
        cx = self.x0 + a * (self.x1 - self.x0)
        feet = self.y0 + a * (self.y1 - self.y0)
        height = _height_at(feet, H)
        dist = math.hypot(cx - self.x0, feet - self.y0)
        phase = self.phase0 + 2 * math.pi * dist / max(1.0, 0.85 * height)  # one stride ~ 0.85 x height
        return cx, feet, height, phase


@dataclass
class SceneReport:
    """What generate_scene wrote."""

    root: Path
    cameras: list[str]
    videos: list[Path]
    gt: list[Path]
    fps: float
    frames: int
    size: tuple[int, int]
    ids: int
    visits: list[Visit] = field(default_factory=list)
    boxes: int = 0
    links: Path | None = None
    query: Path | None = None  # OUT/query.jpg


def _height_at(feet: float, H: int) -> float:
    """Perspective: people lower in the frame are nearer, hence taller."""
    return H * (0.3 + 0.25 * (feet / H - 0.62) / 0.36)


def _plan(ids: int, cams: int, frames: int, W: int, H: int, seed: int, dom: int, speed: float) -> list[Visit]:
    """Every identity's visits, in time order per identity (keyed randomness)."""
    visits: list[Visit] = []
    for pid in range(1, ids + 1):
        r = syn.keyed_rng(seed, dom, _T_SCENE_PLAN, pid)
        n_vis = cams if cams <= 2 else int(r.integers(2, cams + 1))
        order = r.permutation(cams)[:n_vis]
        t = int(r.integers(0, max(1, frames // 4)))
        for cam in order.tolist():
            dur, x0, x1, y0, y1, view = _walk(r, W, H, speed)
            visits.append(
                Visit(
                    pid,
                    int(cam),
                    t,
                    dur,
                    x0,
                    x1,
                    y0,
                    y1,
                    view,
                    float(r.uniform(0, 2 * math.pi)),
                    float(r.uniform(-1, 1)),
                )
            )
            t += dur + int(r.integers(3, max(4, frames // 8)))
    return visits


RETURN_GAP = (4.0, 8.0)  # seconds out of view before a person comes back to the same camera (chain topology)
STOP_PROB, RETURN_PROB = 0.25, 0.3
TOPOLOGIES = ("free", "chain")
TRACKEVAL_BENCHMARK, TRACKEVAL_SPLIT = "SCENE", "all"
QUERY_FILE = "query.jpg"


def _walk(r: np.random.Generator, W: int, H: int, speed: float) -> tuple:
    """One walk across a view: (duration in frames, x0, x1, y0, y1, view)."""
    y_feet = float(r.uniform(0.66, 0.97) * H)
    h = _height_at(y_feet, H)
    margin = 0.35 * h  # start and end fully outside the frame: the walker enters and leaves
    diagonal = r.random() < 0.3
    rightwards = r.random() < 0.5
    x0, x1 = (-margin, W + margin) if rightwards else (W + margin, -margin)
    if diagonal:  # towards the camera (front view) or away from it (back view), drifting sideways
        dy = float(r.uniform(0.08, 0.16) * H)
        toward = r.random() < 0.5
        y0, y1 = (y_feet - dy, min(H * 0.99, y_feet + dy)) if toward else (min(H * 0.99, y_feet + dy), y_feet - dy)
        view = "front" if toward else "back"
    else:
        y0 = y1 = y_feet
        view = "right" if rightwards else "left"
    v = float(speed * r.uniform(0.8, 1.25) * h / 10.0)  # pixels per frame, about a body height per second at 10 fps
    dur = max(8, int(math.hypot(x1 - x0, y1 - y0) / v))
    return dur, x0, x1, y0, y1, view


def crossing_bounds(W: int, H: int, speed: float) -> tuple[int, int]:
    """(shortest, longest) walk across a view, in frames, for _walk's ranges of depth, speed and path."""
    h_near, h_far = _height_at(0.97 * H, H), _height_at(0.66 * H, H)
    fastest = (W + 0.7 * h_near) / (speed * 1.25 * h_near / 10.0)
    slowest = math.hypot(W + 0.7 * h_far, 0.32 * H) / (speed * 0.8 * h_far / 10.0)
    return max(8, int(fastest) - 1), max(8, int(slowest) + 1)


def _plan_chain(
    ids: int,
    cams: int,
    frames: int,
    W: int,
    H: int,
    seed: int,
    dom: int,
    speed: float,
    fps: float,
    transit: tuple[float, float],
) -> list[Visit]:
    """Walks along a corridor of cameras (chain topology; module docstring)."""
    visits: list[Visit] = []
    lo, hi = (max(1, int(round(t * fps))) for t in transit)
    for pid in range(1, ids + 1):
        r = syn.keyed_rng(seed, dom, _T_SCENE_PLAN, pid)
        cam = (pid - 1) % cams  # entrances spread over the cameras
        step = 1 if cam == 0 else -1 if cam == cams - 1 else int(r.choice([-1, 1]))
        t = int(r.integers(0, max(1, int(frames * 0.6))))
        route = [cam]
        while cams > 1 and 0 <= cam + step < cams and r.random() >= STOP_PROB:
            cam += step
            route.append(cam)
        back = r.random() < RETURN_PROB
        for i, c in enumerate(route + ([route[-1]] if back else [])):
            if i:
                gap = r.uniform(*RETURN_GAP) * fps if back and i == len(route) else r.integers(lo, hi + 1)
                t += int(round(gap))
            dur, x0, x1, y0, y1, view = _walk(r, W, H, speed)
            visits.append(
                Visit(
                    pid, int(c), t, dur, x0, x1, y0, y1, view, float(r.uniform(0, 2 * math.pi)), float(r.uniform(-1, 1))
                )
            )
            t += dur
    return visits


def chain_links(
    names: list[str], W: int, H: int, speed: float, fps: float, transit: tuple[float, float]
) -> dict[str, Any]:
    """The camera-link windows of the chain topology (module docstring), as links.yaml holds them."""
    cmin, cmax = (c / fps for c in crossing_bounds(W, H, speed))
    lo, hi = (max(1, int(round(t * fps))) / fps for t in transit)
    out = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            d = j - i
            out.append(
                {
                    "cameras": [names[i], names[j]],
                    "min": round(d * lo + (d - 1) * cmin, 3),
                    "max": round(d * hi + (d + 2) * cmax + RETURN_GAP[1] + 1.0 / fps, 3),
                }
            )
    return {"links": out}


def _write_trackeval_gt(
    root: Path, names: list[str], lines: dict[str, list[str]], fps: float, frames: int, W: int, H: int
) -> Path:
    """GT/<BENCH>-<SPLIT>/<cam>/gt/gt.txt + seqinfo.ini and GT/seqmaps/<BENCH>-<SPLIT>.txt (TrackEval's layout)."""
    gt_root = root / "GT"
    split = f"{TRACKEVAL_BENCHMARK}-{TRACKEVAL_SPLIT}"
    for cam in names:
        seq = gt_root / split / cam
        (seq / "gt").mkdir(parents=True, exist_ok=True)
        with atomic_write(seq / "gt" / "gt.txt", "w") as fh:  # MOT17 gt: consider flag 1, class 1, visibility 1
            fh.writelines(line.rsplit(",", 4)[0] + ",1,1,1\n" for line in lines[cam])
        with atomic_write(seq / "seqinfo.ini", "w") as fh:
            fh.write(_seqinfo(cam, fps, frames, W, H))
    (gt_root / "seqmaps").mkdir(parents=True, exist_ok=True)
    with atomic_write(gt_root / "seqmaps" / f"{split}.txt", "w") as fh:
        fh.write("name\n" + "".join(f"{c}\n" for c in names))
    return gt_root


def _seqinfo(name: str, fps: float, frames: int, W: int, H: int) -> str:
    return (
        f"[Sequence]\nname={name}\nimDir=img1\nframeRate={fps:g}\nseqLength={frames}\n"
        f"imWidth={W}\nimHeight={H}\nimExt=.jpg\n"
    )


def _occluders(seed: int, dom: int, cam: int, W: int, H: int) -> list[tuple[str, tuple, tuple]]:
    """Static things in front of the walkers: one or two poles and sometimes a low wall."""
    r = syn.keyed_rng(seed, dom, _T_SCENE_CAM, cam)
    out: list[tuple[str, tuple[float, float, float, float], tuple[int, int, int]]] = []
    for _ in range(int(r.integers(1, 3))):
        px = float(r.uniform(0.15, 0.85) * W)
        pw = float(r.uniform(0.025, 0.05) * W)
        out.append(("pole", (px - pw / 2, 0, px + pw / 2, H), syn.colour(r.uniform(50, 130) * np.ones(3))))
    if r.random() < 0.5:
        x0 = float(r.uniform(0.0, 0.6) * W)
        out.append(("wall", (x0, H * 0.86, x0 + W * r.uniform(0.15, 0.3), H), syn.colour(r.uniform(90, 170, 3))))
    return out


def _render_frame(
    bg: Image.Image,
    people: list[tuple[Visit, tuple]],
    occ: list,
    cs: dict,
    seed: int,
    dom: int,
    cam: int,
    f: int,
    hard: bool,
) -> tuple[Image.Image, dict[int, tuple]]:
    """The frame and each drawn person's full box (x0, y0, x1, y1), before clipping to the frame."""
    img = bg.copy()
    boxes = {}
    for vis, (cx, feet, height, phase) in sorted(people, key=lambda p: p[1][1]):  # far (high) first
        idt = syn.sample_identity(seed, dom, identity_key(vis.pid, hard))
        boxes[vis.pid] = syn.draw_person(img, idt, vis.view, phase, cx, feet, height, vis.light)
    d = ImageDraw.Draw(img)
    for _kind, box, colour in occ:
        d.rectangle(box, fill=colour)
    return syn.photometric(img, cs, syn.keyed_rng(seed, dom, _T_SCENE_NOISE, cam, f)), boxes


def identity_key(pid: int, hard_negatives: bool = False) -> int:
    """The synthetic generator's identity key of scene person `pid`.

    The generator dresses identities in groups of three alike (hard negatives); a scene takes one
    person per group unless `hard_negatives`, so its few people are told apart as in a real crowd.
    """
    return int(pid) if hard_negatives else (int(pid) - 1) * syn.GROUP_SIZE + 1


def generate_scene(
    out: str | os.PathLike,
    cams: int = 3,
    ids: int = 6,
    frames: int = 200,
    size: tuple[int, int] = (240, 320),
    fps: float = 10.0,
    seed: int = 0,
    domain: str = "A",
    speed: float = 0.5,
    fmt: str = "avi",
    hard_negatives: bool = False,
    topology: str = "free",
    transit: tuple[float, float] = (2.0, 5.0),
) -> SceneReport:
    """Write a multi-camera scene (videos + MOTChallenge ground truth) under `out`; size is (H, W).

    `topology` "free" or "chain" and `transit` (min, max seconds between neighbouring cameras,
    chain only): see the module docstring.
    """
    import cv2

    if domain not in syn.DOMAINS:
        raise OptionError("domain", f"expected one of {', '.join(syn.DOMAINS)}, got {domain!r}")
    for name, count in (("cams", cams), ("ids", ids), ("frames", frames)):
        check_positive(name, int(count))
    H, W = int(size[0]), int(size[1])
    if H < 48 or W < 48:
        raise OptionError("size", f"frames must be at least 48x48, got {H}x{W}")
    if fmt not in ("avi", "mp4"):
        raise OptionError("fmt", f"expected avi or mp4, got {fmt!r}")
    if topology not in TOPOLOGIES:
        raise OptionError("topology", f"expected one of {', '.join(TOPOLOGIES)}, got {topology!r}")
    given = tuple(float(t) for t in transit)
    if len(given) != 2 or not all(math.isfinite(t) for t in given) or not 0 < given[0] <= given[1]:
        raise OptionError("transit", f"expected MIN,MAX seconds with 0 < MIN <= MAX, got {given!r}")
    transit = (given[0], given[1])
    dom = syn.DOMAINS[domain]
    root = Path(out).expanduser()
    from reidkit.utils.io import ensure_dir

    ensure_dir(root, "out")
    if topology == "chain":
        visits = _plan_chain(int(ids), int(cams), int(frames), W, H, seed, dom, speed, float(fps), transit)
    else:
        visits = _plan(int(ids), int(cams), int(frames), W, H, seed, dom, speed)
    names = [f"cam{c + 1}" for c in range(cams)]
    seen_in = {v.pid: {w.cam for w in visits if w.pid == v.pid} for v in visits}
    query: dict[str, Any] = {}  # the largest whole view in camera 1 of someone other cameras see too
    videos, gts = [], []
    n_boxes = 0
    all_lines: dict[str, list[str]] = {}
    for cam in range(cams):
        cs = syn.camera_style(seed, dom, cam)
        bg = syn.camera_background(seed, dom, cam, H, W)
        occ = _occluders(seed, dom, cam, W, H)
        mine = [v for v in visits if v.cam == cam]
        folder = root / names[cam]
        (folder / "gt").mkdir(parents=True, exist_ok=True)
        video = folder / f"{names[cam]}.{fmt}"
        tmp = folder / f".video.tmp.{os.getpid()}.{fmt}"  # VideoWriter needs a real path; renamed when whole
        fourcc = cv2.VideoWriter.fourcc(*("MJPG" if fmt == "avi" else "mp4v"))
        writer = cv2.VideoWriter(str(tmp), fourcc, float(fps), (W, H))
        if not writer.isOpened():
            raise ReIDError(f"cannot write {video}: OpenCV has no {fmt} encoder here")
        lines = []
        try:
            for f in range(frames):
                people = [(v, s) for v in mine if (s := v.at(f, H)) is not None]
                frame, drawn = _render_frame(bg, people, occ, cs, seed, dom, cam, f, hard_negatives)
                writer.write(cv2.cvtColor(np.asarray(frame), cv2.COLOR_RGB2BGR))
                for v, _state in people:
                    x0, y0, x1, y1 = drawn[v.pid]
                    area = (x1 - x0) * (y1 - y0)
                    cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(W), x1), min(float(H), y1)
                    if cx1 <= cx0 or cy1 <= cy0 or (cx1 - cx0) * (cy1 - cy0) < MIN_VISIBLE * area:
                        continue
                    lines.append(f"{f + 1},{v.pid},{cx0:.1f},{cy0:.1f},{cx1 - cx0:.1f},{cy1 - cy0:.1f},1,-1,-1,-1\n")
                    whole = (cx0, cy0, cx1, cy1) == (x0, y0, x1, y1)
                    if cam == 0 and whole and (len(seen_in[v.pid]) > 1 or cams == 1) and area > query.get("area", 0):
                        query = {
                            "area": area,
                            "pid": v.pid,
                            "frame": f + 1,
                            "box": [x0, y0, x1, y1],
                            "crop": frame.crop((int(x0), int(y0), int(math.ceil(x1)), int(math.ceil(y1)))),
                        }
        finally:
            writer.release()
        os.replace(tmp, video)
        with atomic_write(folder / "gt" / "gt.txt", "w") as fh:
            fh.writelines(lines)
        with atomic_write(folder / "seqinfo.ini", "w") as fh:
            fh.write(_seqinfo(names[cam], fps, frames, W, H))
        all_lines[names[cam]] = lines
        videos.append(video)
        gts.append(folder / "gt" / "gt.txt")
        n_boxes += len(lines)
    _write_trackeval_gt(root, names, all_lines, fps, frames, W, H)
    links = None
    if topology == "chain":
        import yaml

        links = root / "links.yaml"
        with atomic_write(links, "w") as fh:
            fh.write(
                "# camera-link windows of this scene's chain topology (seconds from leaving one view to\n"
                "# entering the other); read by `reidkit identities --links`\n"
            )
            yaml.safe_dump(chain_links(names, W, H, speed, float(fps), transit), fh, sort_keys=False)
    if query:  # a query crop for `reidkit tracklets search --image OUT/query.jpg`
        with atomic_write(root / QUERY_FILE, "wb") as fh:
            query.pop("crop").save(fh, format="JPEG", quality=95)
        query = {
            "file": QUERY_FILE,
            "camera": names[0],
            "pid": query["pid"],
            "frame": query["frame"],
            "box": [round(float(b), 1) for b in query["box"]],
        }
    write_json(
        root / "scene.json",
        {
            "cameras": names,
            "videos": [str(v.relative_to(root)) for v in videos],
            "gt": [str(g.relative_to(root)) for g in gts],
            "fps": fps,
            "frames": frames,
            "size": [H, W],
            "ids": ids,
            "seed": seed,
            "domain": domain,
            "speed": speed,
            "hard_negatives": hard_negatives,
            "topology": topology,
            "transit": list(transit) if topology == "chain" else None,
            "links": "links.yaml" if links else None,
            "query": query or None,
            "trackeval": {"gt_folder": "GT", "benchmark": TRACKEVAL_BENCHMARK, "split": TRACKEVAL_SPLIT},
            "visits": [
                {"pid": v.pid, "camera": names[v.cam], "start": v.start + 1, "end": v.start + v.frames, "view": v.view}
                for v in visits
            ],
        },
    )
    return SceneReport(
        root,
        names,
        videos,
        gts,
        float(fps),
        int(frames),
        (H, W),
        int(ids),
        visits,
        n_boxes,
        links,
        root / QUERY_FILE if query else None,
    )


def read_mot(path: str | os.PathLike) -> np.ndarray:
    """A MOTChallenge file as an (N, 7) float array frame, id, x, y, w, h, conf (ReIDError names a bad line)."""
    rows = []
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ReIDError(f"cannot read {p}: {exc.strerror or exc}") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.replace(" ", "").split(",")
        try:
            vals = [float(v) for v in parts[:7]]
        except ValueError:
            vals = []
        if len(vals) < 7:
            raise ReIDError(f"{p}:{n}: expected 'frame,id,x,y,w,h,conf,...', got {line.strip()[:80]!r}")
        rows.append(vals)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 7)


def scene_info(root: str | os.PathLike) -> dict[str, Any]:
    """The scene.json of a generated scene."""
    p = Path(root) / "scene.json"
    if not p.is_file():
        raise ReIDError(f"{root}: no scene.json (not a scene written by generate_scene)")
    info = json.loads(p.read_text())
    if not isinstance(info, dict):
        raise ReIDError(f"{p}: not a scene description (a JSON object written by generate_scene)")
    return info
