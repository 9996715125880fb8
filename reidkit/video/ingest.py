"""`reidkit video`: footage -> detections -> DeepSort tracks -> tracklets -> gallery, resumable.

Per video: frames are decoded (every N-th with ``every``), people detected (reidkit.video.detect),
their crops embedded once (reidkit.video.embedder; the same features drive the tracker's
appearance metric and the tracklet features), tracked (reidkit.video.track), and each ended
confirmed track becomes a tracklet (reidkit.video.tracklets): its K best crops give the feature
and the thumbnails, every box is kept as its appearances. Tracklet entries go to the gallery with
``kind="tracklet"``, camera, 1-based frame span, time span (``start_time + frame / fps`` seconds),
boxes and thumbnail names; thumbnails are JPEGs under ``DB/thumbs/`` (written atomically before
the commit that references them).

Resume. Work is committed in chunks of ``chunk`` processed frames. Each commit is ONE
``Gallery.add_entries`` call holding the tracklets that ended in the chunk and the state
``video:<key>``: the next frame to read, the whole tracker (Kalman states, appearance samples,
id counter) and the tracklets still open (their boxes, best crops and features). Tracklets open at
a chunk boundary are therefore neither split nor committed early: they are carried in the state.
A killed run, re-run, restores that state and continues at the next frame, so it produces exactly
the tracklets an uninterrupted run produces: none duplicated (ended ones were committed with the
state that excludes them), none lost (open ones are in the state). A finished video's state says
``done`` and a re-run skips it. Everything a run can reject (unreadable video, zero frames,
malformed detections) is checked for every video before the first commit.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from reidkit.errors import ReIDError
from reidkit.video.decode import VideoInfo, iter_frames, probe, safe_name, video_key
from reidkit.video.embedder import Embedder, clip_boxes, crop_boxes
from reidkit.video.track import Tracker
from reidkit.video.tracklets import OpenTracklet

THUMBS = "thumbs"
CRASH_ENV = "REIDKIT_VIDEO_CRASH_AFTER"  # tests: SIGKILL this process after that many commits
STATE_VERSION = 1


@dataclass
class VideoJob:
    """One video to ingest, validated."""

    info: VideoInfo
    camera: str
    key: str
    detector: Any
    detector_name: str
    start_time: float = 0.0


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def create_gallery(db: Path, embedder: Embedder) -> Any:
    """A new empty flat gallery at `db` for the embedder's model (tracklets are then added to it)."""
    from reidkit.retrieval.index import Gallery

    return Gallery.create(db, embedder.extractor)


def open_gallery(db: str | os.PathLike, weights: str | os.PathLike | None = None, device: str | None = None,
                 batch_size: int = 64, flip: bool = False) -> tuple[Any, Embedder]:
    """(gallery, embedder): open `db` (its own model unless `weights`), or create it for `weights` (None: ImageNet)."""
    from reidkit.inference import FeatureExtractor
    from reidkit.retrieval.index import Gallery

    milvus = str(db).startswith("milvus:")
    path = db if milvus else Path(db).expanduser().absolute()
    if not milvus and path.exists() and not path.is_dir():
        raise ReIDError(f"--db: {path} exists and is not a folder")
    if Gallery.exists(path):
        gallery = Gallery.open(path, weights=weights, device=device, batch_size=batch_size)
        ext = gallery.extractor
        own = FeatureExtractor(ext.model, ext.identity, ext.device, batch_size, flip)  # own flip setting
        return gallery, Embedder(extractor=own, flip=flip, batch_size=batch_size)
    if not milvus and path.is_dir() and any(path.iterdir()):
        raise ReIDError(f"--db: {path} is a folder with other files in it; give a gallery or a new folder")
    embedder = Embedder(weights, device=device, batch_size=batch_size, flip=flip)
    return create_gallery(path, embedder), embedder


def prepare_jobs(videos: Sequence[str | os.PathLike], cameras: Sequence[str] | None = None,
                 detections: Sequence[str | os.PathLike] | None = None, detector: str | os.PathLike | None = None,
                 conf: float = 0.25, start_times: Sequence[float] | None = None,
                 hog_min_height: int = 480, detector_size: tuple[int, int] | None = None,
                 person_class: int = 0) -> list[VideoJob]:
    """Validate every input (videos readable with frames, detection files well-formed) before any work."""
    from reidkit.video.detect import HogDetector, MotDetections, OnnxDetector

    if not videos:
        raise ReIDError("give at least one video")
    n = len(videos)
    for name, vals in (("--camera", cameras), ("--detections", detections), ("--start-time", start_times)):
        if vals and len(vals) != n:
            raise ReIDError(f"{name}: give one per video ({n} videos, {len(vals)} values)")
    if detections and detector is not None:
        raise ReIDError("give --detections or --detector, not both")
    infos = [probe(v) for v in videos]
    cams = list(cameras) if cameras else [info.path.stem for info in infos]
    seen: dict[str, Path] = {}
    for cam, info in zip(cams, infos):
        if not str(cam).strip():
            raise ReIDError(f"--camera: empty camera name for {info.path}")
        if cam in seen and not cameras:
            raise ReIDError(f"videos {seen[cam]} and {info.path} would both be camera {cam!r} (named after the file); "
                            f"name them with --camera")
        seen[cam] = info.path
    shared = None
    if not detections:
        shared = (OnnxDetector(detector, conf=conf, input_size=detector_size, person_class=person_class)
                  if detector is not None else HogDetector(min_height=hog_min_height))
        shared_name = f"onnx:{Path(detector).name}" if detector is not None else "hog"
    jobs = []
    for i, info in enumerate(infos):
        if detections:
            det, name = MotDetections(detections[i]), f"mot:{Path(detections[i]).name}"
        else:
            det, name = shared, shared_name
        jobs.append(VideoJob(info, str(cams[i]), video_key(info.path, cams[i]), det, name,
                             float(start_times[i]) if start_times else 0.0))
    return jobs


def _crash_hook(commits: int) -> None:
    limit = os.environ.get(CRASH_ENV)
    if limit and commits >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)


class _Ingest:
    """One video's run: the loop, the chunk commits."""

    def __init__(self, gallery: Any, embedder: Embedder, job: VideoJob, every: int, chunk: int, k: int,
                 min_len: int, tracker_kw: dict[str, Any], progress: Callable[[str], None]) -> None:
        self.g, self.emb, self.job = gallery, embedder, job
        self.every, self.chunk, self.k, self.min_len = every, chunk, k, min_len
        self.tracker = Tracker(**tracker_kw)
        self.tracker_kw = tracker_kw
        self.progress = progress
        self.open: dict[str, OpenTracklet] = {}
        self.pending: list[OpenTracklet] = []
        self.committed = 0
        self.thumbs = Path(gallery.files_dir) / THUMBS

    @property
    def state_key(self) -> str:
        return f"video:{self.job.key}"

    def _settings(self) -> dict[str, Any]:
        return {"every": self.every, "detector": self.job.detector_name, "k": self.k, "min_len": self.min_len,
                "tracker": self.tracker_kw, "camera": self.job.camera}

    def _state(self, next_frame: int, done: bool) -> dict[str, Any]:
        return {"version": STATE_VERSION, "video": str(self.job.info.path), "settings": self._settings(),
                "next_frame": int(next_frame), "done": bool(done), "tracklets": self.committed,
                "tracker": None if done else self.tracker.state_dict(),
                "open": [] if done else [t.to_state() for t in self.open.values()]}

    def _entry(self, t: OpenTracklet) -> tuple[np.ndarray, dict[str, Any]]:
        from reidkit.utils.io import atomic_write_bytes

        job, fps = self.job, self.job.info.fps
        key = f"{job.key}.t{safe_name(t.track_id)}"
        best = sorted(t.best, key=lambda c: c["frame"])  # thumbnails in time order
        names = []
        self.thumbs.mkdir(parents=True, exist_ok=True)
        for i, c in enumerate(best):
            name = f"{key}_{i}.jpg"
            atomic_write_bytes(self.thumbs / name, c["jpeg"])
            names.append(name)
        f0, f1 = int(t.boxes[0][0]), int(t.boxes[-1][0])
        entry = {"path": str(self.thumbs / names[0]), "kind": "tracklet", "tracklet": key, "camera": job.camera,
                 "frame_start": f0 + 1, "frame_end": f1 + 1,
                 "t_start": job.start_time + f0 / fps, "t_end": job.start_time + f1 / fps,
                 "meta": {"video": str(job.info.path), "video_key": job.key, "track_id": t.track_id, "fps": fps,
                          "boxes": [[int(b[0]) + 1, *b[1:]] for b in t.boxes],
                          "thumbs": names, "thumb_frames": [c["frame"] + 1 for c in best],
                          "quality": [round(c["q"], 4) for c in best], "detector": job.detector_name}}
        return t.feature(), entry

    def _finish(self, tid: str) -> None:
        t = self.open.pop(tid, None)
        if t is not None and t.confirmed and len(t.boxes) >= self.min_len:
            self.pending.append(t)

    def _commit(self, next_frame: int, done: bool) -> None:
        made = [self._entry(t) for t in self.pending]
        feats = np.stack([f for f, _ in made]) if made else np.zeros((0, self.emb.dim), np.float32)
        before = self.committed
        self.committed += len(made)  # the state records the count including this commit
        try:
            self.g.add_entries(feats, [e for _, e in made], state={self.state_key: self._state(next_frame, done)})
        except BaseException:
            self.committed = before
            raise
        self.pending = []
        self.commits += 1
        _crash_hook(self.commits)

    def run(self) -> dict[str, Any]:
        job = self.job
        info = job.info
        state = self.g.get_state(self.state_key)
        start, resumed = 0, False
        if state is not None:
            if state.get("settings") != self._settings():
                raise ReIDError(f"video {info.path} (camera {job.camera}) was partly ingested into {self.g.db} with "
                                f"other settings ({state.get('settings')}); re-run with those, or delete its "
                                f"tracklets and state first")
            if state.get("done"):
                self.progress(f"[{job.camera}] {info.path.name}: already ingested ({state.get('tracklets', 0)} "
                              f"tracklets), skipped")
                return {"video": str(info.path), "camera": job.camera, "key": job.key, "skipped": True,
                        "tracklets": int(state.get("tracklets", 0)), "resumed_from": None}
            start, resumed = int(state["next_frame"]), True
            self.tracker.load_state_dict(state["tracker"])
            self.open = {d["track_id"]: OpenTracklet.from_state(d) for d in state["open"]}
            self.committed = int(state.get("tracklets", 0))
            self.progress(f"[{job.camera}] {info.path.name}: resuming at frame {start + 1} "
                          f"({self.committed} tracklets already committed)")
        self.commits = 0
        W, H = info.width, info.height
        t0, n_done, last, next_frame = time.perf_counter(), 0, start - self.every, start
        for idx, frame in iter_frames(info.path, start=start, every=self.every):
            if frame.shape[0] != H or frame.shape[1] != W:
                raise ReIDError(f"video {info.path}: frame {idx + 1} is {frame.shape[1]}x{frame.shape[0]}, "
                                f"expected {W}x{H}")
            boxes, scores = job.detector(frame, idx)
            if len(boxes):
                boxes = clip_boxes(boxes, W, H).astype(np.float32)  # positive sizes inside the frame
            crops = crop_boxes(frame, boxes) if len(boxes) else []
            feats = self.emb.embed_crops(crops)
            matched, ended = self.tracker.update(boxes, scores, feats)
            for tid, di, confirmed in matched:
                tr = self.open.setdefault(tid, OpenTracklet(tid))
                tr.observe(idx, boxes[di], float(scores[di]), feats[di], crops[di], W, H, self.k, confirmed)
            for tid in ended:
                self._finish(tid)
            n_done += 1
            last, next_frame = idx, idx + self.every
            if (idx // self.every + 1) % self.chunk == 0:
                self._commit(next_frame, done=False)
                rate = n_done / max(time.perf_counter() - t0, 1e-9)
                total = f"/{info.frame_count}" if info.frame_count else ""
                self.progress(f"[{job.camera}] frame {idx + 1}{total}  {rate:.1f} frames/s  "
                              f"tracklets {self.committed} (+{len(self.open)} open)")
        if last < 0 and not resumed:
            raise ReIDError(f"video {info.path}: no frames could be decoded")
        for tid in list(self.open):
            self._finish(tid)
        self._commit(next_frame, done=True)
        rate = n_done / max(time.perf_counter() - t0, 1e-9)
        self.progress(f"[{job.camera}] {info.path.name}: done, {n_done} frames at {rate:.1f} frames/s, "
                      f"{self.committed} tracklets")
        return {"video": str(info.path), "camera": job.camera, "key": job.key, "skipped": False,
                "tracklets": self.committed, "frames": n_done, "resumed_from": start + 1 if resumed else None,
                "frames_per_s": round(rate, 2)}


def ingest(db: str | os.PathLike, videos: Sequence[str | os.PathLike], cameras: Sequence[str] | None = None,
           detections: Sequence[str | os.PathLike] | None = None, detector: str | os.PathLike | None = None,
           weights: str | os.PathLike | None = None, device: str | None = None, every: int = 1, chunk: int = 50,
           k: int = 4, min_len: int = 3, flip: bool = False, conf: float = 0.25,
           start_times: Sequence[float] | None = None, batch_size: int = 64, hog_min_height: int = 480,
           max_age: int = 15, n_init: int = 3, max_cosine_distance: float = 0.1,
           progress: Callable[[str], None] | None = _stderr, embedder: Embedder | None = None,
           detector_size: tuple[int, int] | None = None, person_class: int = 0) -> dict[str, Any]:
    """Ingest videos into gallery `db` (created when missing); returns a per-video report. See the module docstring."""
    for name, v in (("--every", every), ("--chunk", chunk), ("--k", k), ("--min-len", min_len),
                    ("--max-age", max_age), ("--n-init", n_init)):
        if int(v) < 1:
            raise ReIDError(f"{name}: must be >= 1, got {v}")
    jobs = prepare_jobs(videos, cameras, detections, detector, conf, start_times, hog_min_height,
                        detector_size, person_class)
    if embedder is not None:
        from reidkit.retrieval.index import Gallery

        path = db if str(db).startswith("milvus:") else Path(db).expanduser().absolute()
        gallery = Gallery.open(path) if Gallery.exists(path) else create_gallery(path, embedder)
        gallery.check_identity(embedder.identity)
    else:
        gallery, embedder = open_gallery(db, weights, device, batch_size, flip)
    say = progress or (lambda _m: None)
    tracker_kw = {"max_age": int(max_age), "n_init": int(n_init), "max_cosine_distance": float(max_cosine_distance)}
    reports = [_Ingest(gallery, embedder, job, int(every), int(chunk), int(k), int(min_len), tracker_kw, say).run()
               for job in jobs]
    gallery.refresh()
    return {"db": str(gallery.db), "videos": reports, "tracklets": sum(r["tracklets"] for r in reports),
            "gallery_tracklets": len(gallery.entries(kind="tracklet"))}
