"""One video as a stream of commit chunks, and the stages that produce them.

The seam. ``process_video(job, settings, embedder, resume)`` is a generator of ``Chunk`` objects,
independent of any gallery: each chunk holds the tracklets that ended in it (features, entries,
thumbnail JPEGs) and the video's exact state after it (next frame to read, the whole tracker, the
tracklets still open). ``commit(gallery, chunk)`` writes the thumbnails and then ONE
``Gallery.add_entries`` call (entries + state ``video:<key>``). Whoever drives the generator decides
where it runs (this thread, a thread per video, a Dask worker) and who commits (the one writer).
Given the same job, settings and resume state, the chunks are the same, bit for bit: a killed run
re-run from the last committed state, or a Dask task retried from its input state, produces exactly
what the uninterrupted run produces.

A tracklet stores, per frame, the box its tracker reports for the match (``Match.box``: the
detection's, or bytesort's estimate when boxes jitter: ``report_box``), clipped to the frame; the
crops are the detections'.

Stages, per video: a reader thread decodes and detects (OpenCV releases the GIL in both) into a
bounded queue; the generator crops, embeds (the model releases the GIL too), tracks and cuts
tracklets. Several videos of one run share ONE embedder through ``SharedEmbedder``: each video's
requests are queued and served together, so batches mix cameras.

Detection at the camera's rate (each measured in benchmarks/bench_video.py):

- ``detect_scale``: the built-in HOG detector runs on a frame downscaled by this factor
  (reidkit.video.detectors.hog);
- ``detect_every`` N: detection and tracking run on every N-th read frame; a tracklet's boxes on the
  frames between two consecutive detections of its track are filled by linear interpolation
  (``OpenTracklet.observe``), so tracklets still cover every frame;
- ``appearance="needed"``: a crop is embedded only where association or the tracklet needs it: the
  tracker says which detections it needs features of this frame (``Tracker.needs_features``:
  reidkit.video.trackers; the built-in ones embed a detection that does not pair one-to-one, IoU >=
  0.3 and no other overlap >= 0.1, with the predicted box of exactly one track seen in the last
  frame: a new track, an ambiguous match) and gets None for the others. A tracklet's feature
  samples (reidkit.video.tracklets) without a feature are embedded late: ``reidkit video`` in one
  batch when the chunk is cut (before its state is stored) or the video ends, so a sample dropped
  before then, or whose track never became a tracklet, costs nothing; ``reidkit watch`` also a few at
  a time while it waits for a camera's next frame (``_Video.embed_missing``, most durable first), so
  a commit does not stall the frame loop with them. The tracklet feature is always the mean of real
  crop features, of the float model where association runs int8 (reidkit.video.embedder.float_twin).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, cast

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.utils.locks import PidLock
from reidkit.utils.validate import check_positive
from reidkit.video.decode import FrameStats, VideoInfo, iter_frames, safe_name
from reidkit.video.detectors import build_detector
from reidkit.video.embed_service import SharedEmbedder as SharedEmbedder  # re-exported for callers of process_video
from reidkit.video.embed_service import Stats as Stats
from reidkit.video.embed_service import _Client, _Direct
from reidkit.video.embedder import clip_boxes, crop_boxes, feature_dtype, float_twin
from reidkit.video.trackers import DEFAULT_TRACKER, build_tracker, tracker_options
from reidkit.video.trackers.base import frame_box
from reidkit.video.tracklets import FEATURE_KIND, OpenTracklet, crop_quality, older_feature

log = logging.getLogger(__name__)

THUMBS = "thumbs"
STATE_VERSION = 1
APPEARANCE = ("all", "needed")
QUEUE_FRAMES = 8  # frames decoded + detected ahead of tracking, per video
LEGACY_TRACKER_KEYS = ("max_age", "n_init", "max_cosine_distance")  # Settings fields, shorthands of tracker options


# ----------------------------------------------------------------------------- jobs and settings


@dataclass
class VideoJob:
    """One video to ingest, validated; picklable (the detector is rebuilt from `detector_spec` where it runs)."""

    info: VideoInfo
    camera: str
    key: str
    detector_spec: dict[str, Any]
    detector_name: str
    start_time: float = 0.0
    _detector: Any = field(default=None, repr=False, compare=False)

    @property
    def detector(self) -> Any:
        """The built detector (built once per process)."""
        if self._detector is None:
            self._detector = build_detector(self.detector_spec, self.info.path)
        return self._detector

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_detector"] = None if d["detector_spec"]["kind"] not in ("mot",) else d["_detector"]
        return d


@dataclass(frozen=True)
class Settings:
    """What decides the tracklets of a video (stored with its state: a resume must use the same)."""

    every: int = 1
    chunk: int = 50
    k: int = 4
    min_len: int = 3
    max_age: int | None = None  # None: the tracker's own default (shorthands of tracker options)
    n_init: int | None = None
    max_cosine_distance: float | None = None
    detect_every: int = 1
    appearance: str = "all"
    embed_budget: int = 0
    tracker: str = DEFAULT_TRACKER  # reidkit.video.trackers
    tracker_options: tuple[tuple[str, Any], ...] = ()  # (key, value) pairs of the tracker's options

    def tracker_values(self) -> dict[str, Any]:
        """The tracker options given: `tracker_options`, and the shorthand fields that are set."""
        values = dict(self.tracker_options)
        for key in LEGACY_TRACKER_KEYS:
            if getattr(self, key) is not None and key not in values:
                values[key] = getattr(self, key)
        return values

    def tracker_kw(self) -> dict[str, Any]:
        """The tracker and its resolved options as stored in a video's state (deep_sort's: as before the
        Tracker protocol, its three options; others only where they differ from the default)."""
        opts = tracker_options(self.tracker, self.tracker_values())
        if self.tracker != "deep_sort":
            return {"name": self.tracker, **opts}
        default = tracker_options("deep_sort")
        return {k: v for k, v in opts.items() if k in LEGACY_TRACKER_KEYS or v != default[k]}

    def stored(self, job: VideoJob, feature_dtype: str = "float") -> dict[str, Any]:
        """The settings as stored in the video's state; the keys of today's defaults stay as they were.
        ``feature`` (the tracklet feature: FEATURE_KIND) and ``feature_dtype`` (the stored features made by a
        "float" or an "int8" model: :func:`feature_dtype`) keep a resume from mixing kinds of features."""
        d = {
            "every": self.every,
            "detector": job.detector_name,
            "k": self.k,
            "min_len": self.min_len,
            "tracker": self.tracker_kw(),
            "camera": job.camera,
            "feature": FEATURE_KIND,
            "feature_dtype": feature_dtype,
        }
        if self.detect_every != 1:
            d["detect_every"] = self.detect_every
        if self.appearance != "all":
            d["appearance"] = self.appearance
        if self.embed_budget:
            d["embed_budget"] = self.embed_budget
        scale = job.detector_spec.get("scale", 1.0)
        if job.detector_spec["kind"] == "hog" and scale != 1.0:
            d["detect_scale"] = scale
        return d


def tracker_fields(
    max_age: Any = None,
    n_init: Any = None,
    max_cosine_distance: Any = None,
    tracker: str | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Settings' tracker fields from a caller's arguments (None: the tracker's default)."""
    return {
        "max_age": None if max_age is None else int(max_age),
        "n_init": None if n_init is None else int(n_init),
        "max_cosine_distance": None if max_cosine_distance is None else float(max_cosine_distance),
        "tracker": str(tracker or DEFAULT_TRACKER),
        "tracker_options": tuple(sorted(dict(options or {}).items())),
    }


def check_settings(s: Settings) -> Settings:
    """ReIDError naming the option for a value out of range."""
    for name in ("every", "chunk", "k", "min_len", "max_age", "n_init", "detect_every"):
        check_positive(name, getattr(s, name))
    if s.appearance not in APPEARANCE:
        raise OptionError("appearance", f"expected one of {', '.join(APPEARANCE)}, got {s.appearance!r}")
    if int(s.embed_budget) < 0:
        raise OptionError("embed_budget", f"must be >= 0 (0: no limit), got {s.embed_budget}")
    if s.embed_budget and s.appearance == "all":
        raise OptionError("embed_budget", "applies to appearance 'needed' only (with 'all' every crop is embedded)")
    s.tracker_kw()  # an unknown tracker or option: one error naming the nearest, before any work
    return s


# ----------------------------------------------------------------------------- chunks


@dataclass
class Chunk:
    """What one commit writes: ended tracklets (features, entries, thumbnails) and the video's state after them."""

    key: str
    camera: str
    features: np.ndarray | None  # None: already committed by the worker that made it (reidkit.video.watch_cluster)
    entries: list[dict[str, Any]]
    thumbs: dict[str, bytes]
    state: dict[str, Any]
    frames: int = 0  # frames processed in this chunk
    last_frame: int = -1  # 0-based index of the last processed frame
    seconds: float = 0.0  # wall time of this chunk

    @property
    def done(self) -> bool:
        """True for the video's last chunk."""
        return bool(self.state.get("done"))

    @property
    def state_key(self) -> str:
        """The gallery state key of the video."""
        return f"video:{self.key}"


def thumbs_dir(gallery: Any) -> Path:
    """Where the thumbnails of a folder gallery go."""
    return Path(gallery.files_dir) / THUMBS


def commit(gallery: Any, chunk: Chunk, lock_timeout: float | None = None) -> list[int]:
    """Write the chunk's thumbnails (atomically, before the entries that name them), then one add_entries.

    Each entry's meta records its thumbnails' size and mtime (``thumb_stats``): the service serves a
    thumbnail only while they match."""
    from reidkit.retrieval.store import THUMB_STATS_KEY, file_stat
    from reidkit.utils.io import atomic_write_bytes

    folder = thumbs_dir(gallery)
    stats: dict[str, Any] = {}
    if chunk.thumbs:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in chunk.thumbs.items():
            atomic_write_bytes(folder / name, data)
            stats[name] = file_stat(folder / name)
    entries = [
        {
            **e,
            "path": str(folder / e["meta"]["thumbs"][0]),
            "meta": {**e["meta"], THUMB_STATS_KEY: {n: stats.get(n) for n in e["meta"]["thumbs"]}},
        }
        for e in chunk.entries
    ]
    if chunk.features is None:
        raise ReIDError(f"{chunk.key}: this chunk was committed already (its features were dropped)")
    ids = gallery.add_entries(chunk.features, entries, state={chunk.state_key: chunk.state}, lock_timeout=lock_timeout)
    return cast(list[int], ids)  # Gallery.add_entries (the gallery is duck-typed here)


def resume_state(gallery: Any, job: VideoJob, settings: Settings, embedder: Any) -> dict[str, Any] | None:
    """The video's stored state (None: not started); ReIDError naming each setting that differs (`embedder`:
    the run's, whose float twin makes the stored features). A state without the feature keys (an older
    reidkit) is read by tracklets.older_feature; where nothing tells, it resumes with a warning."""
    state = gallery.get_state(f"video:{job.key}")
    if state is None:
        return None
    now = settings.stored(job, feature_dtype(float_twin(embedder)))
    was = dict(state.get("settings") or {})
    if "feature" not in was:
        was.update({k: v for k, v in older_feature(state).items() if k not in was})
    unknown = [k for k in ("feature", "feature_dtype") if k not in was]
    was.update({k: now[k] for k in unknown})
    differ = [k for k in [*now, *(k for k in was if k not in now)] if was.get(k) != now.get(k)]
    if differ:
        said = "; ".join(f"{k} {was.get(k)!r} there, {now.get(k)!r} now" for k in differ)
        raise ReIDError(
            f"video {job.info.path} (camera {job.camera}) was partly ingested into {gallery.db} with "
            f"other settings: {said}; re-run with those, or delete its tracklets and state first"
        )
    if unknown and not state.get("done"):
        said = ", ".join(f"{k} (taken as {now[k]!r})" for k in unknown)
        log.warning(
            "video %s (camera %s): its state (an older reidkit) does not record %s", job.info.path, job.camera, said
        )
    return cast("dict[str, Any] | None", state)  # Gallery.get_state


# ----------------------------------------------------------------------------- the reader stage

_END = object()


def _reader(
    job: VideoJob,
    start: int,
    stride: int,
    out: queue.Queue,
    stop: threading.Event,
    stats: Stats | None,
    decoded: FrameStats | None = None,
) -> None:
    """Decode + detect frames start, start + stride, ... into `out` (then _END, or the exception)."""
    info = job.info
    try:
        det = job.detector
        frames = iter_frames(info.path, start=start, every=stride, stats=decoded)
        while True:
            t0 = time.perf_counter()
            item = next(frames, None)
            if item is None:
                break
            idx, frame = item
            t1 = time.perf_counter()
            if frame.shape[0] != info.height or frame.shape[1] != info.width:
                raise ReIDError(
                    f"video {info.path}: frame {idx + 1} is {frame.shape[1]}x{frame.shape[0]}, "
                    f"expected {info.width}x{info.height}"
                )
            boxes, scores = det(frame, idx)
            if stats is not None:
                stats.add("decode", t1 - t0)
                stats.add("detect", time.perf_counter() - t1)
            while not stop.is_set():
                try:
                    out.put((idx, frame, boxes, scores), timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        out.put(_END)
    except BaseException as exc:  # noqa: BLE001 - re-raised in the consuming thread
        out.put(exc)


# ----------------------------------------------------------------------------- one video


class _Video:
    """The per-frame work of one video: crops, features, tracker, tracklets, chunks."""

    def __init__(
        self,
        job: VideoJob,
        settings: Settings,
        embedder: Any,
        stats: Stats | None,
        store: Any = None,
        same_model: bool | None = None,
    ) -> None:
        """`store`: what embeds the tracklets' feature samples (default `embedder`); `same_model`: whether it runs
        the same model as `embedder`, so association's features serve as samples too (default: store is embedder)."""
        self.job, self.s, self.emb, self.stats, self.store = job, settings, embedder, stats, store or embedder
        self.reuse = (self.store is embedder) if same_model is None else bool(same_model)
        self.tracker = build_tracker(settings.tracker, settings.tracker_values())
        self.open: dict[str, OpenTracklet] = {}
        self.pending: list[OpenTracklet] = []
        self.committed = 0
        self.next_frame = 0
        self.stride = settings.every * settings.detect_every

    def load(self, state: dict[str, Any]) -> None:
        """Continue from a stored state."""
        self.next_frame = int(state["next_frame"])
        self.tracker.load_state_dict(state["tracker"])
        self.open = {d["track_id"]: OpenTracklet.from_state(d) for d in state["open"]}
        self.committed = int(state.get("tracklets", 0))

    def _state(self, done: bool) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "video": str(self.job.info.path),
            "settings": self.s.stored(self.job, feature_dtype(self.store)),
            "next_frame": int(self.next_frame),
            "done": bool(done),
            "tracklets": self.committed,
            "tracker": None if done else self.tracker.state_dict(),
            "open": [] if done else [t.to_state() for t in self.open.values()],
        }

    def _entry(self, t: OpenTracklet, thumbs: dict[str, bytes]) -> tuple[np.ndarray, dict[str, Any]]:
        job, fps = self.job, self.job.info.fps
        key = f"{job.key}.t{safe_name(t.track_id)}"
        best = sorted(t.best, key=lambda c: c["frame"])  # thumbnails in time order
        names = []
        for i, c in enumerate(best):
            name = f"{key}_{i}.jpg"
            thumbs[name] = c["jpeg"]
            names.append(name)
        f0, f1 = int(t.boxes[0][0]), int(t.boxes[-1][0])
        entry: dict[str, Any] = {
            "kind": "tracklet",
            "tracklet": key,
            "camera": job.camera,
            "frame_start": f0 + 1,
            "frame_end": f1 + 1,
            "t_start": job.start_time + f0 / fps,
            "t_end": job.start_time + f1 / fps,
            "meta": {
                "video": str(job.info.path),
                "video_key": job.key,
                "track_id": t.track_id,
                "fps": fps,
                "boxes": [[int(b[0]) + 1, *b[1:]] for b in t.boxes],
                "thumbs": names,
                "thumb_frames": [c["frame"] + 1 for c in best],
                "quality": [round(c["q"], 4) for c in best],
                "detector": job.detector_name,
            },
        }
        colour = t.colour()  # reidkit.video.colour, compared by `reidkit identities`
        if colour is not None:
            entry["meta"]["colour"] = [round(float(v), 4) for v in colour]
        return t.feature(), entry

    def _finish(self, tid: str) -> None:
        t = self.open.pop(tid, None)
        if t is not None and t.confirmed and len(t.boxes) >= self.s.min_len:
            self.pending.append(t)

    def missing(self) -> list[dict[str, Any]]:
        """The feature samples still to embed, the most needed first: those of ended tracklets (the next commit
        needs them, and nothing drops them any more), then the open ones' by how many halvings they survive
        (OpenTracklet.survival), oldest first."""
        ended = [c for t in self.pending for c in t.missing()]
        ranked = [(-t.survival(c), c["frame"], i, c) for i, t in enumerate(self.open.values()) for c in t.missing()]
        return ended + [r[-1] for r in sorted(ranked, key=lambda r: r[:3])]

    def embed_missing(self, limit: int | None = None) -> int:
        """Embed up to `limit` (None: all) of the feature samples still to embed, in one batch, the most needed
        first (``missing``); returns how many."""
        todo = self.missing() if limit is None else self.missing()[: max(0, int(limit))]
        if not todo:
            return 0
        for c, f in zip(todo, self.store.embed_crops([c["crop"] for c in todo])):
            c["feat"] = np.asarray(f, np.float32)
            del c["crop"]
        if self.stats is not None:
            self.stats.add("embedded", 0.0, len(todo))
            self.stats.add("late", 0.0, len(todo))
        return len(todo)

    def _fill_features(self) -> None:
        """Embed, in one batch, the feature samples of open and pending tracklets that have none yet."""
        self.embed_missing(None)

    def chunk(self, done: bool, frames: int, last: int, seconds: float) -> Chunk:
        """The pending tracklets and the state after them (the count includes them)."""
        self._fill_features()
        thumbs: dict[str, bytes] = {}
        made = [self._entry(t, thumbs) for t in self.pending]
        feats = np.stack([f for f, _ in made]) if made else np.zeros((0, self.emb.dim), np.float32)
        self.committed += len(made)
        self.pending = []
        return Chunk(
            self.job.key, self.job.camera, feats, [e for _, e in made], thumbs, self._state(done), frames, last, seconds
        )

    def step(self, idx: int, frame: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> None:
        """Crops, features, tracking, tracklets for one processed frame."""
        info = self.job.info
        W, H = info.width, info.height
        t0 = time.perf_counter()
        if len(boxes):
            boxes = clip_boxes(boxes, W, H).astype(np.float32)  # positive sizes inside the frame
        crops = crop_boxes(frame, boxes) if len(boxes) else []
        q = [crop_quality(c, b, float(s), W, H) for c, b, s in zip(crops, boxes, scores)]
        if self.s.appearance == "all":
            need = list(range(len(crops)))
        else:  # the tracker says which detections it must see the appearance of (reidkit.video.trackers)
            need = np.flatnonzero(self.tracker.needs_features(boxes, scores, int(self.s.embed_budget))).tolist()
        t1 = time.perf_counter()
        feats: list[np.ndarray | None] = [None] * len(crops)
        if need:
            for i, f in zip(need, self.emb.embed_crops([crops[i] for i in need])):
                feats[i] = f
        t2 = time.perf_counter()
        matched, ended = self.tracker.update(boxes, scores, feats)
        step = self.s.every if self.s.detect_every > 1 else None
        for m in matched:
            di = m.det
            tr = self.open.setdefault(m.track_id, OpenTracklet(m.track_id))
            tr.observe(
                idx,
                frame_box(m.box, W, H, boxes[di]),  # the tracker's reported box (bytesort: report_box)
                float(scores[di]),
                feats[di] if self.reuse else None,
                crops[di],
                W,
                H,
                self.s.k,
                m.confirmed,
                q=q[di],
                fill_step=step,
                fill_gap=self.stride,
            )
        for tid in ended:
            self._finish(tid)
        if self.stats is not None:
            self.stats.add("crop", t1 - t0)
            self.stats.add("track", time.perf_counter() - t2)
            self.stats.add("crops", 0.0, len(crops))
            self.stats.add("embedded", 0.0, len(need))


def process_video(
    job: VideoJob, settings: Settings, embedder: Any, resume: dict[str, Any] | None = None, stats: Stats | None = None
) -> Iterator[Chunk]:
    """The chunks of one video from `resume` (a stored state, None: the start); see the module docstring.

    `embedder`: anything with `embed_crops(list of RGB crops) -> N x D` and `dim`.
    A video whose state says done yields nothing.
    """
    if resume is not None and resume.get("done"):
        return
    raw = embedder.shared.embedder if isinstance(embedder, _Client) else getattr(embedder, "embedder", embedder)
    embedder = embedder if isinstance(embedder, (_Client, _Direct)) else _Direct(embedder, stats)
    v = _Video(job, settings, embedder, stats, None if float_twin(raw) is raw else _Direct(float_twin(raw), stats))
    resumed = resume is not None
    if resume is not None:
        v.load(resume)
    q: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
    stop = threading.Event()
    decoded = FrameStats()
    reader = threading.Thread(
        target=_reader,
        args=(job, v.next_frame, v.stride, q, stop, stats, decoded),
        name=f"reidkit-read-{job.camera}",
        daemon=True,
    )
    reader.start()
    try:
        t0, n, last = time.perf_counter(), 0, -1
        while True:
            item = q.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            idx, frame, boxes, scores = item
            v.step(idx, frame, boxes, scores)
            n += 1
            last, v.next_frame = idx, idx + v.stride
            if (idx // v.stride + 1) % settings.chunk == 0:
                yield v.chunk(False, n, last, time.perf_counter() - t0)
                t0, n = time.perf_counter(), 0
        if last < 0 and not resumed:
            raise ReIDError(f"video {job.info.path}: no frames could be decoded")
        for tid in list(v.open):
            v._finish(tid)
        final = v.chunk(True, n, last, time.perf_counter() - t0)
        # what the decoder met: a truncated file is counted in the stored state and the report, not only logged
        final.state["decoded"] = {
            "announced": int(decoded.announced),
            "read": int(decoded.read),
            "truncated": bool(decoded.truncated),
        }
        yield final
    finally:
        stop.set()
        while reader.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                reader.join(timeout=0.05)


# ----------------------------------------------------------------------------- one ingester per video


class VideoLock(PidLock):
    """Exclusive lock of one video's ingestion into one gallery (reidkit.utils.locks.PidLock).

    Two runs given the same video and gallery: the second waits here (saying so once), then finds
    the video's state and resumes or skips it. Lock files live beside the gallery folder
    (``.DB.video-locks/KEY.lock``), like the gallery's writer lock.
    """

    poll = 0.1

    def __init__(
        self,
        db: str | os.PathLike,
        key: str,
        on_wait: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ) -> None:
        d = Path(db).absolute()
        super().__init__(d.parent / f".{d.name}.video-locks" / f"{safe_name(key)}.lock", timeout, on_wait)
        self.key = key

    def waiting_message(self) -> str:
        return f"waiting for video {self.key}: being ingested by pid {self.holder()}"

    def timeout_error(self) -> ReIDError:
        return ReIDError(f"video {self.key}: still being ingested by another process after {self.timeout:g} s")
