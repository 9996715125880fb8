"""``reidkit watch``: live cameras into a gallery until stopped, with identities updated as it runs.

Per camera, a :class:`reidkit.video.live.LiveSource` keeps the stream drained (bounded buffer, frames
skipped by rule when the machine is behind, reconnects with backoff) and a worker thread detects,
embeds (one embedder shared by all cameras, batches mixed across them), tracks and cuts tracklets with
the same per-frame code as ``reidkit video`` (``pipeline._Video``). This thread is the one writer: it
commits each camera's chunk every ``commit_every`` seconds (the tracklets that ended, with the exact
tracker state), updates global identities every ``identities_every`` seconds (incremental: existing
identities keep their numbers), applies retention, and publishes the counters (:meth:`Watch.status`,
:func:`prometheus_text`).

What resume means for a stream. A live camera cannot be re-read, so each run of a camera is a
*session* with its own tracklet keys (``<camera>-live-s<N>``, recorded in the gallery state
``live:<camera>``). A run stopped by SIGTERM/SIGINT finishes its open tracklets and commits them with the
session marked done. A run killed without warning loses only the frames after its last commit: the
next run finds the killed session's state (tracker and open tracklets as committed), commits those
open tracklets as they were, and starts session N+1. Committed tracklets are never repeated (their keys
belong to one session) and never lost (each commit is one gallery write).

Frame indices and times. A frame's index is its arrival time on the camera's nominal frame grid
(``live.frame_index``), so a tracklet's ``t_start``/``t_end`` are wall-clock seconds (Unix time) and
skipped frames leave holes that the tracker bridges like missed detections.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.video.decode import VideoInfo, safe_name
from reidkit.video.live import LiveSource, SourceStats, shown_url
from reidkit.video.embedder import float_twin
from reidkit.video.pipeline import Chunk, Settings, SharedEmbedder, Stats, VideoJob, _Direct, _Video, commit

log = logging.getLogger(__name__)

LIVE_STATE = "live:{camera}"
DEFAULT_FPS = 10.0  # when a stream does not say its rate


@dataclass(frozen=True)
class Camera:
    """One live camera: its name (the gallery's camera), its source (URL or file) and, optionally, its rate."""

    name: str
    url: str
    fps: float | None = None
    detections: str | None = None  # a MOTChallenge file numbered as the stream's frames (replays, tests)


def read_cameras(path: str | os.PathLike) -> tuple[list[Camera], Any]:
    """Cameras (and links, or None) of a cameras file: ``cameras: [{name, url, fps?}]``, ``links: [...]``
    (the links file's form, reidkit.cluster.identities.load_links); one ReIDError naming the file and entry."""
    import yaml

    p = Path(path).expanduser()
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ReIDError(f"cameras file {p}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ReIDError(f"cameras file {p}: not YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list) or not data["cameras"]:
        raise ReIDError(f"cameras file {p}: expected a mapping with a non-empty list 'cameras' (each: name, url)")
    unknown = sorted(set(data) - {"cameras", "links", "max_gap"})
    if unknown:
        raise ReIDError(f"cameras file {p}: unknown key(s) {unknown} (expected cameras, links, max_gap)")
    cams = []
    for i, c in enumerate(data["cameras"]):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not isinstance(c.get("url"), str):
            raise ReIDError(f"cameras file {p}: cameras[{i}] needs a 'name' and a 'url' (strings), got {c!r}")
        extra = sorted(set(c) - {"name", "url", "fps", "detections"})
        if extra:
            raise ReIDError(
                f"cameras file {p}: cameras[{i}] has unknown key(s) {extra} (expected name, url, fps, detections)"
            )
        fps = c.get("fps")
        if fps is not None and (not isinstance(fps, (int, float)) or not 0 < float(fps) <= 1000):
            raise ReIDError(f"cameras file {p}: cameras[{i}].fps must be a number in (0, 1000], got {fps!r}")
        url = c["url"] if "://" in c["url"] else str((p.parent / c["url"]).resolve())  # files: relative to the file
        det = c.get("detections")
        if det is not None:
            det = str((p.parent / str(det)).resolve())
            if not Path(det).is_file():
                raise ReIDError(f"cameras file {p}: cameras[{i}].detections: no such file {det}")
        cams.append(Camera(c["name"], url, None if fps is None else float(fps), det))
    check_cameras(cams)
    links = {k: data[k] for k in ("links", "max_gap") if k in data} or None
    return cams, links


def check_cameras(cams: Sequence[Camera]) -> None:
    """One error for repeated or unusable camera names."""
    names = [c.name for c in cams]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise OptionError("cameras", f"camera names must be unique, repeated: {dup}")
    bad = [n for n in names if not n or safe_name(n) != n]
    if bad:
        raise OptionError("cameras", f"camera names may hold letters, digits, _ . - only, got {bad}")


class OnlineMotion:
    """The motion detector (reidkit.video.detectors.motion) on a stream that cannot be read ahead: the
    background is the per-pixel median of the last `samples` frames, sampled every ``block // samples``
    frames (every frame until `samples` are held), and follows the scene as it changes."""

    def __init__(self, **options: Any) -> None:
        from reidkit.video.detectors.motion import MotionDetector

        det = MotionDetector("", **options)
        det.background = self.background  # type: ignore[method-assign]  # the stream's own background
        self.det, self.ring, self.seen, self.median = det, [], 0, None

    def background(self, index: int) -> np.ndarray:
        """The current background (the median of the held samples)."""
        return self.median

    def __call__(self, frame: np.ndarray, index: int = 0) -> Any:
        every = max(1, self.det.block // self.det.samples)
        if len(self.ring) < self.det.samples or self.seen % every == 0:
            self.ring = [*self.ring, self.det._small(frame)][-self.det.samples :]
            self.median = np.median(np.stack(self.ring), axis=0).astype(np.float32)
        self.seen += 1
        return self.det(frame, index)


def detector_factory(name: str | None, options: dict[str, Any] | None = None) -> tuple[Callable[[Camera], Any], str]:
    """(camera -> detector, the name stored with each session) for `name` (None: motion, the default):
    motion learns each stream's background as it runs; any other registered or catalogue detector is built
    once per camera from its spec."""
    from reidkit.video.detectors import build_detector, detector_options, resolve_detector

    if name == "mot":  # each camera's own detections file
        from reidkit.video.detectors.mot import MotDetections

        return (lambda cam: MotDetections(cam.detections)), "mot"
    if name in (None, "motion"):
        opts = detector_options("motion", options or {})
        values = dataclasses.asdict(opts) if opts is not None else {}
        return (lambda _cam: OnlineMotion(**values)), "motion(live)"
    spec, stored = resolve_detector(str(name), options or {})
    return (lambda _cam: build_detector(spec)), stored


@dataclass
class CameraState:
    """What the writer knows of one camera (read by status and metrics)."""

    camera: Camera
    source: LiveSource | None = None
    session: int = 0
    frames: int = 0  # frames processed (detected + tracked)
    tracklets: int = 0  # tracklets committed by this run
    commits: int = 0
    error: str = ""
    latest: tuple[np.ndarray, np.ndarray] | None = None  # the newest processed frame and its person boxes


class _Worker(threading.Thread):
    """One camera: read -> detect -> step; a chunk every commit_every seconds into the writer's queue."""

    def __init__(self, w: Watch, cs: CameraState, embedder: Any) -> None:
        super().__init__(name=f"reidkit-watch-{cs.camera.name}", daemon=True)
        self.w, self.cs, self.emb = w, cs, embedder

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the writer, the other cameras go on
            self.cs.error = f"{type(exc).__name__}: {exc}"
            log.error("camera %s stopped: %s", self.cs.camera.name, self.cs.error)

    def _run(self) -> None:
        w, cs = self.w, self.cs
        src = cs.source
        first = None
        while first is None and not w.stop.is_set():
            first = src.read(timeout=0.5)
        if first is None:
            return
        H, W = first.image.shape[:2]
        fps = cs.camera.fps or src.fps or DEFAULT_FPS
        key = f"{cs.camera.name}-live-s{cs.session}"
        job = VideoJob(
            VideoInfo(Path(shown_url(cs.camera.url)), fps, 0, W, H),
            cs.camera.name,
            key,
            {"kind": "live"},
            w.detector_name,
            start_time=first.wall,
        )
        video = w.video(job, self.emb)
        detector = w.detector_factory(cs.camera)
        last, t_commit, n, frame = -1, time.monotonic(), 0, first
        while True:
            if frame is not None:
                idx = max(frame.index, last + 1)
                boxes, scores = detector(frame.image, idx)
                cs.latest = (frame.image, boxes)  # what the live page draws (reidkit.video.watch_status)
                video.step(idx, frame.image, boxes, scores)
                last, n = idx, n + 1
                video.next_frame = idx + 1
                cs.frames += 1
            stopping = w.stop.is_set() or (src.ended and src.file)
            if stopping or (n and time.monotonic() - t_commit >= w.commit_every):  # nothing new: no write
                if stopping:
                    for tid in list(video.open):
                        video._finish(tid)
                chunk = video.chunk(stopping, n, last, time.monotonic() - t_commit)
                chunk.state["live"] = {
                    "camera": cs.camera.name,
                    "session": cs.session,
                    "url": shown_url(cs.camera.url),
                    "t0": first.wall,
                    "fps": fps,
                }
                w.chunks.put((cs, chunk))
                t_commit, n = time.monotonic(), 0
                if stopping:
                    return
            frame = src.read(timeout=0.2)


class Watch:
    """Live cameras into `gallery` (see the module docstring). ``run()`` returns when `stop` is set (or
    every source is a file that played out) after the last commits."""

    def __init__(
        self,
        gallery: Any,
        embedder: Any,
        cameras: Sequence[Camera],
        settings: Settings,
        detector_factory: Callable[[Camera], Any],
        detector_name: str,
        links: Any = None,
        commit_every: float = 10.0,
        identities_every: float = 60.0,
        retain: float | None = None,
        buffer: int = 4,
        backoff: tuple[float, float] = (0.5, 30.0),
        progress: Callable[[str], None] | None = None,
    ) -> None:
        check_cameras(cameras)
        for name, v in (("commit_every", commit_every), ("identities_every", identities_every)):
            if not (np.isfinite(v) and v > 0):
                raise OptionError(name, f"must be > 0 seconds, got {v}")
        if retain is not None and not (np.isfinite(retain) and retain > 0):
            raise OptionError("retain", f"must be > 0 seconds, got {retain}")
        self.gallery, self.settings, self.links = gallery, settings, links
        self.detector_factory, self.detector_name = detector_factory, detector_name
        self.commit_every, self.identities_every, self.retain = float(commit_every), float(identities_every), retain
        self.say = progress or (lambda _m: None)
        self.stop = threading.Event()
        self.stats = Stats()
        self.chunks: queue.Queue = queue.Queue()
        self.embedder = embedder
        self.shared = SharedEmbedder(embedder, self.stats)
        self.cams = [CameraState(c) for c in cameras]
        self.buffer, self.backoff = int(buffer), backoff
        self.identities: dict[str, Any] = {"identities": 0, "updated": None}
        self.deleted = 0
        self.started = time.time()

    def video(self, job: VideoJob, client: Any) -> _Video:
        """The per-frame work of one camera session: association through the shared embedder's `client`,
        the stored best-K crops through its float twin (as `reidkit video`: reidkit.video.embedder.float_twin)."""
        twin = float_twin(self.embedder)
        return _Video(
            job, self.settings, client, self.stats, None if twin is self.embedder else _Direct(twin, self.stats)
        )

    # ------------------------------------------------------------------ sessions
    def _recover(self, cs: CameraState) -> None:
        """Commit the open tracklets of a session killed without warning (as of its last commit)."""
        ptr = self.gallery.get_state(LIVE_STATE.format(camera=cs.camera.name)) or {}
        prev = int(ptr.get("session", 0))
        cs.session = prev + 1
        state = self.gallery.get_state(f"video:{cs.camera.name}-live-s{prev}") if prev else None
        if state is not None and not state.get("done"):
            live = state.get("live") or {}
            info = VideoInfo(Path(shown_url(cs.camera.url)), float(live.get("fps", DEFAULT_FPS)), 0, 1, 1)
            job = VideoJob(
                info,
                cs.camera.name,
                f"{cs.camera.name}-live-s{prev}",
                {"kind": "live"},
                self.detector_name,
                start_time=float(live.get("t0", 0.0)),
            )
            video = self.video(job, self.shared.client(cs.camera.name))
            video.load(state)
            for tid in list(video.open):
                video._finish(tid)
            chunk = video.chunk(True, 0, int(state["next_frame"]) - 1, 0.0)
            chunk.state["live"] = live
            commit(self.gallery, chunk)
            self.say(
                f"[{cs.camera.name}] session {prev} was killed: its {len(chunk.entries)} open tracklet(s) "
                f"as of its last commit are committed; this run is session {cs.session}"
            )
        self.gallery.add_entries(
            np.zeros((0, 1), np.float32),
            [],
            state={
                LIVE_STATE.format(camera=cs.camera.name): {
                    "session": cs.session,
                    "url": shown_url(cs.camera.url),
                    "started": time.time(),
                }
            },
        )

    # ------------------------------------------------------------------ the writer
    def run(self, duration: float | None = None) -> dict[str, Any]:
        """Watch until stop is set, `duration` seconds pass, or every source (files) played out."""
        for cs in self.cams:
            self._recover(cs)
        workers = []
        for cs in self.cams:
            cs.source = LiveSource(cs.camera.url, cs.camera.name, buffer=self.buffer, backoff=self.backoff).start()
            workers.append(_Worker(self, cs, self.shared.client(cs.camera.name)))
        for t in workers:
            t.start()
        end = None if duration is None else time.monotonic() + float(duration)
        next_ids = time.monotonic() + self.identities_every
        try:
            while any(t.is_alive() for t in workers) or not self.chunks.empty():
                if end is not None and time.monotonic() >= end:
                    self.stop.set()
                try:
                    cs, chunk = self.chunks.get(timeout=0.2)
                except queue.Empty:
                    chunk = None
                if chunk is not None:
                    self._commit(cs, chunk)
                if time.monotonic() >= next_ids:
                    self._update(retention=True)
                    next_ids = time.monotonic() + self.identities_every
        finally:
            self.stop.set()
            for cs in self.cams:
                if cs.source is not None:
                    cs.source.stop()
            for t in workers:
                t.join(timeout=10)
            while not self.chunks.empty():
                cs, chunk = self.chunks.get_nowait()
                self._commit(cs, chunk)
            self.shared.close()
        failed = [f"{cs.camera.name}: {cs.error}" for cs in self.cams if cs.error]
        if failed and len(failed) == len(self.cams):
            raise ReIDError("every camera stopped with an error (" + "; ".join(failed) + ")")
        self._update(retention=True)
        return self.status()

    def _commit(self, cs: CameraState, chunk: Chunk) -> None:
        commit(self.gallery, chunk)
        cs.tracklets += len(chunk.entries)
        cs.commits += 1
        s = cs.source.stats if cs.source is not None else SourceStats()
        self.say(
            f"[{cs.camera.name}] {cs.frames} frames, {s.skipped} skipped, lag {s.lag:.2f} s, "
            f"tracklets {cs.tracklets} (+{len(chunk.state.get('open', []))} open)"
            + (", session done" if chunk.done else "")
        )

    def _update(self, retention: bool) -> None:
        """Retention, then global identities (incremental) over what is committed."""
        if retention and self.retain is not None:
            self.deleted += delete_older(self.gallery, time.time() - self.retain)
        self.gallery.compact()  # a writer that always holds a snapshot would grow the embedded store's WAL forever
        self.gallery.refresh()
        if not self.gallery.entries(kind="tracklet"):
            return
        from reidkit.video.identities import assign_identities

        rep = assign_identities(self.gallery, links=self.links)
        self.identities = {"identities": int(rep.get("identities", 0)), "updated": time.time()}

    # ------------------------------------------------------------------ what people look at
    def status(self) -> dict[str, Any]:
        """Per camera: source counters, frames processed, tracklets, errors; identities; uptime."""
        now = time.time()
        cams = {}
        for cs in self.cams:
            src = cs.source.stats.report(now) if cs.source is not None else SourceStats().report(now)
            cams[cs.camera.name] = {
                **src,
                "processed": cs.frames,
                "tracklets": cs.tracklets,
                "commits": cs.commits,
                "session": cs.session,
                "error": cs.error,
            }
        return {
            "cameras": cams,
            "identities": self.identities["identities"],
            "deleted": self.deleted,
            "uptime": round(now - self.started, 1),
        }


def delete_older(gallery: Any, cutoff: float) -> int:
    """Delete the tracklets that ended before `cutoff` (Unix seconds), and their thumbnails; returns the count."""
    from reidkit.video.pipeline import thumbs_dir

    old = [e for e in gallery.entries(kind="tracklet") if float(e.get("t_end") or 0.0) < cutoff]
    if not old:
        return 0
    n = gallery.delete(ids=[int(e["id"]) for e in old])
    folder = thumbs_dir(gallery)
    for e in old:  # after the delete is committed: a crash in between leaves files, never a dangling entry
        for name in (e.get("meta") or {}).get("thumbs", []):
            try:
                (folder / name).unlink()
            except FileNotFoundError:
                pass
    return n


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float, what: str = "duration") -> float:
    """Seconds of ``90``, ``45s``, ``30m``, ``12h`` or ``7d``; OptionError naming `what` otherwise."""
    raw = str(text).strip().lower()
    unit = _UNITS.get(raw[-1:], None) if raw else None
    number = raw[:-1] if unit is not None else raw
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        value = float("nan")
    if not (np.isfinite(value) and value > 0):
        raise OptionError(what, f"expected a positive duration such as 90, 45s, 30m, 12h or 7d, got {text!r}")
    return value


def watch(
    db: str | os.PathLike,
    cameras: Sequence[Camera],
    links: Any = None,
    weights: str | None = None,
    device: str | None = None,
    engine: str = "auto-int8",
    collection: str | None = None,
    detector: str | None = None,
    detector_options: dict[str, Any] | None = None,
    settings: Settings | None = None,
    commit_every: float = 10.0,
    identities_every: float = 60.0,
    retain: float | None = None,
    buffer: int = 4,
    duration: float | None = None,
    status_port: int | None = None,
    progress: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Open (or create) gallery `db` and watch `cameras` into it until `stop` is set or `duration` passes
    (the Python side of ``reidkit watch``); returns the final status. `detector` "mot": each camera's
    `detections` file. `status_port`: serve /metrics and /health on 127.0.0.1 while it runs."""
    from reidkit.video.ingest import open_gallery
    from reidkit.video.pipeline import check_settings

    check_cameras(cameras)
    if detector == "mot":
        missing = [c.name for c in cameras if not c.detections]
        if missing:
            raise OptionError("detector", f"'mot' needs a detections file for every camera; none for {missing}")
    elif any(c.detections for c in cameras) and detector is None:
        detector = "mot"
    settings = check_settings(settings or Settings(appearance="needed", embed_budget=8))
    factory, name = detector_factory(detector, detector_options)
    gallery, embedder = open_gallery(db, weights, device, engine=engine, collection=collection)
    w = Watch(
        gallery,
        embedder,
        cameras,
        settings,
        factory,
        name,
        links=links,
        commit_every=commit_every,
        identities_every=identities_every,
        retain=retain,
        buffer=buffer,
        progress=progress,
    )
    if stop is not None:
        w.stop = stop
    from reidkit.video.watch_status import serve_status

    server = serve_status(w, status_port) if status_port is not None else None
    try:
        return w.run(duration=duration)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
