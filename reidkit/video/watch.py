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

import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.video.decode import VideoInfo
from reidkit.video.cameras import Camera, check_cameras, detector_factory
from reidkit.video.live import LiveFrame, LiveSource, SourceStats, shown_url
from reidkit.video.embedder import float_twin
from reidkit.video.embed_service import SharedEmbedder, Stats, _Direct
from reidkit.video.options import WatchOptions
from reidkit.video.pipeline import Chunk, Settings, VideoJob, _Video, commit

log = logging.getLogger(__name__)

LIVE_STATE = "live:{camera}"
DEFAULT_FPS = 10.0  # when a stream does not say its rate


@dataclass
class CameraState:
    """What the writer knows of one camera (read by status and metrics). On a cluster (reidkit.video.watch_cluster)
    the source runs on a worker: `remote` holds its last reported counters and `jpeg` its last annotated frame."""

    camera: Camera
    source: LiveSource | None = None
    session: int = 0
    frames: int = 0  # frames processed (detected + tracked)
    tracklets: int = 0  # tracklets committed by this run
    commits: int = 0
    error: str = ""
    latest: tuple[np.ndarray, np.ndarray, float] | None = None  # the newest processed frame, its boxes, its time
    remote: dict[str, Any] | None = None  # a cluster worker's counters (SourceStats.report + processed)
    jpeg: tuple[float, bytes] | None = None  # a cluster worker's newest annotated frame: (its time, JPEG)
    worker: str = ""  # the cluster worker that runs the camera now
    attempts: int = 0  # tasks started for the camera on a cluster (a retried task is one more)


def run_camera(
    camera: Camera,
    session: int,
    source: LiveSource,
    make_video: Callable[[VideoJob], _Video],
    detector: Any,
    detector_name: str,
    stop: threading.Event,
    commit_every: float,
    emit: Callable[[Chunk], None],
    on_frame: Callable[[LiveFrame, np.ndarray], None] = lambda _f, _b: None,
) -> None:
    """One camera session: read -> detect -> step; `emit` a chunk every `commit_every` seconds (none when
    nothing was processed) and a last one, with the open tracklets finished, when `stop` is set or a file
    played out. The same code runs in ``reidkit watch``'s threads and in a cluster worker's task."""
    first = None
    while first is None and not stop.is_set():
        first = source.read(timeout=0.5)
        if first is None and source.ended:
            return
    if first is None:
        return
    H, W = first.image.shape[:2]
    fps = camera.fps or source.fps or DEFAULT_FPS
    job = VideoJob(
        VideoInfo(Path(shown_url(camera.url)), fps, 0, W, H),
        camera.name,
        f"{camera.name}-live-s{session}",
        {"kind": "live"},
        detector_name,
        start_time=first.wall,
    )
    video = make_video(job)
    last, t_commit, n = -1, time.monotonic(), 0
    frame: LiveFrame | None = first
    late = video.embed_missing  # the samples embedded while no frame waits (wait_frame)
    while True:
        if frame is not None:
            idx = max(frame.index, last + 1)
            boxes, scores = detector(frame.image, idx)
            on_frame(frame, boxes)  # what the live pages draw (reidkit.video.watch_status)
            video.step(idx, frame.image, boxes, scores)
            last, n = idx, n + 1
            video.next_frame = idx + 1
            spread_missing(video, t_commit + commit_every - time.monotonic(), fps)
        stopping = stop.is_set() or (source.ended and source.file)
        if stopping or (n and time.monotonic() - t_commit >= commit_every):  # nothing new: no write
            if stopping:
                for tid in list(video.open):
                    video._finish(tid)
            chunk = video.chunk(stopping, n, last, time.monotonic() - t_commit)
            chunk.state["live"] = {
                "camera": camera.name,
                "session": session,
                "url": shown_url(camera.url),
                "t0": first.wall,
                "fps": fps,
            }
            emit(chunk)
            t_commit, n = time.monotonic(), 0
            if stopping:
                return
        frame = wait_frame(source, late, stop)


IDLE_BATCH = 4  # feature samples embedded at a time while a camera has no frame waiting


def spread_missing(video: _Video, seconds_left: float, fps: float) -> int:
    """Embed this frame's share of the feature samples still waiting: the backlog spread evenly over the frames
    left before the next commit (all of it when at most one is left), so a camera with no time between frames
    (``wait_frame`` embeds them there) still reaches its commit with nothing left to embed, the work taken a
    few crops per frame instead of one burst that outlasts the frame buffer. Returns how many."""
    waiting = len(video.missing())
    if not waiting:
        return 0
    return video.embed_missing(math.ceil(waiting / max(1.0, seconds_left * fps)))


def wait_frame(
    source: LiveSource, late: Callable[[int], int] | None, stop: threading.Event, wait: float = 0.2
) -> LiveFrame | None:
    """The camera's next frame (None after `wait` seconds without one). While no frame is waiting, the open
    tracklets' feature samples are embedded `IDLE_BATCH` at a time (`late`: ``_Video.embed_missing``), so the
    time a camera leaves between frames does the work a commit would otherwise do in one burst (a burst longer
    than the frame buffer skips frames). The next frame waits at most one such batch. (What idle time leaves
    undone, ``spread_missing`` takes a share of after each frame.)"""
    while late is not None and not stop.is_set():
        frame = source.read(timeout=0)
        if frame is not None:
            return frame
        if not late(IDLE_BATCH):
            break
    return source.read(timeout=wait)


class _Worker(threading.Thread):
    """One camera in this process: run_camera into the writer's queue."""

    def __init__(self, w: Watch, cs: CameraState, embedder: Any) -> None:
        super().__init__(name=f"reidkit-watch-{cs.camera.name}", daemon=True)
        self.w, self.cs, self.emb = w, cs, embedder

    def run(self) -> None:
        w, cs = self.w, self.cs
        assert cs.source is not None  # the Watch opens each camera's source before its thread starts

        def seen(frame: LiveFrame, boxes: np.ndarray) -> None:
            cs.latest = (frame.image, boxes, frame.wall)
            cs.frames += 1

        try:
            run_camera(
                cs.camera,
                cs.session,
                cs.source,
                lambda job: w.video(job, self.emb),
                w.detector_factory(cs.camera),
                w.detector_name,
                w.stop,
                w.commit_every,
                lambda chunk: w.chunks.put((cs, chunk)),
                seen,
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the writer, the other cameras go on
            cs.error = f"{type(exc).__name__}: {exc}"
            log.error("camera %s stopped: %s", cs.camera.name, cs.error)


class LocalCameras:
    """The cameras of a Watch run in this process: a LiveSource and a worker thread each (the runner seam:
    reidkit.video.watch_cluster.ClusterCameras runs them on Dask workers instead)."""

    def __init__(self, w: Watch) -> None:
        self.w = w
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        """Recover each camera's killed session, open its source and start its worker."""
        w = self.w
        for cs in w.cams:
            w.begin_session(cs)
        for cs in w.cams:
            cs.source = LiveSource(cs.camera.url, cs.camera.name, buffer=w.buffer, backoff=w.backoff).start()
            self.threads.append(_Worker(w, cs, w.shared.client(cs.camera.name)))
        for t in self.threads:
            t.start()

    def alive(self) -> bool:
        """True while some camera may still send a chunk."""
        return any(t.is_alive() for t in self.threads)

    def stop(self) -> None:
        """After w.stop is set: stop the sources and wait for the workers' last chunks."""
        for cs in self.w.cams:
            if cs.source is not None:
                cs.source.stop()
        for t in self.threads:
            t.join(timeout=10)


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
        publish: bool = True,
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
        self.publish = bool(publish)  # the live view for `reidkit serve`, in the gallery's files folder

    def video(self, job: VideoJob, client: Any) -> _Video:
        """The per-frame work of one camera session: association through the shared embedder's `client`, the
        tracklets' feature samples through its float twin (as `reidkit video`: reidkit.video.embedder.float_twin),
        called from the camera's own thread (``wait_frame`` embeds them while it waits: run in the shared
        embedder's batches they would hold up the other cameras' association)."""
        twin = float_twin(self.embedder)
        return _Video(job, self.settings, client, self.stats, _Direct(twin, self.stats), twin is self.embedder)

    # ------------------------------------------------------------------ sessions
    def begin_session(self, cs: CameraState) -> int:
        """Start the camera's next session: commit the open tracklets of a session killed without warning (as
        of its last commit), then record the new session number in the gallery (``live:<camera>``), the
        counter every run and every cluster task of the camera draws from (the writer's side)."""
        self.gallery.refresh()  # on a gallery of many writers, a cluster worker may have committed since
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
            client = self.shared.client(cs.camera.name)
            try:
                video = self.video(job, client)
                video.load(state)
                for tid in list(video.open):
                    video._finish(tid)
                chunk = video.chunk(True, 0, int(state["next_frame"]) - 1, 0.0)
            finally:
                client.close()
            chunk.state["live"] = live
            commit(self.gallery, chunk)
            cs.tracklets += len(chunk.entries)
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
        return cs.session

    # ------------------------------------------------------------------ the writer
    def run(self, duration: float | None = None, runner: Any = None) -> dict[str, Any]:
        """Watch until stop is set, `duration` seconds pass, or every source (files) played out. `runner`: where
        the cameras run (default: LocalCameras, threads of this process); its chunks come to this thread, the
        one writer, through `chunks` as (camera state, Chunk) or (camera state, a callable to run here)."""
        runner = runner or LocalCameras(self)
        end = None if duration is None else time.monotonic() + float(duration)
        next_ids = time.monotonic() + self.identities_every
        next_pub = 0.0
        try:
            runner.start()
            while runner.alive() or not self.chunks.empty():
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
                if self.publish and time.monotonic() >= next_pub:
                    self._publish()
                    next_pub = time.monotonic() + 1.0
        finally:
            self.stop.set()
            runner.stop()
            while not self.chunks.empty():
                cs, chunk = self.chunks.get_nowait()
                self._commit(cs, chunk)
            self.shared.close()
        failed = [f"{cs.camera.name}: {cs.error}" for cs in self.cams if cs.error]
        if failed and len(failed) == len(self.cams):
            raise ReIDError("every camera stopped with an error (" + "; ".join(failed) + ")")
        self._update(retention=True)
        if self.publish:
            self._publish(running=False)
        return self.status()

    def _commit(self, cs: CameraState, chunk: Any) -> None:
        if callable(chunk):  # work a cluster runner hands to the writer (a new session)
            chunk()
            return
        session = int((chunk.state.get("live") or {}).get("session", cs.session))
        if session != cs.session:  # a killed cluster task's late chunk: its session was closed by the next one
            log.warning("camera %s: a chunk of closed session %d dropped", cs.camera.name, session)
            return
        if chunk.features is not None:  # None: a cluster worker committed it to a gallery of many writers
            commit(self.gallery, chunk)
        cs.tracklets += len(chunk.entries)
        cs.commits += 1
        s = self._source_report(cs)
        self.say(
            f"[{cs.camera.name}] {s['processed']} frames, {s['skipped']} skipped, lag {s['lag']:.2f} s, "
            f"tracklets {cs.tracklets} (+{len(chunk.state.get('open', []))} open)"
            + (", session done" if chunk.done else "")
        )

    def _publish(self, running: bool = True) -> None:
        """The live view `reidkit serve` shows (reidkit.video.watch_status.publish_live); a failure is logged."""
        from reidkit.video.watch_status import publish_live

        try:
            publish_live(self, running=running)
        except OSError as exc:
            log.warning("live view not published: %s", exc)

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
    def _source_report(self, cs: CameraState, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        if cs.remote is not None:  # a cluster worker's counters, the age recomputed now
            rep = dict(cs.remote)
            wall = rep.get("last_frame_wall") or 0.0
            rep["last_frame_age"] = round(now - wall, 3) if wall else None
            return rep
        rep = cs.source.stats.report(now) if cs.source is not None else SourceStats().report(now)
        rep["processed"] = cs.frames
        return rep

    def status(self) -> dict[str, Any]:
        """Per camera: source counters, frames processed, tracklets, errors; identities; uptime."""
        now = time.time()
        cams = {}
        for cs in self.cams:
            cams[cs.camera.name] = {
                **self._source_report(cs, now),
                "tracklets": cs.tracklets,
                "commits": cs.commits,
                "session": cs.session,
                "error": cs.error,
                **({"worker": cs.worker, "attempts": cs.attempts} if cs.attempts else {}),
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
    return int(n)


def prepare_watch(
    db: str | os.PathLike,
    cameras: Sequence[Camera],
    options: WatchOptions,
    progress: Callable[[str], None] | None = None,
) -> tuple[Watch, Any, Any, str | None]:
    """(the Watch writer, its gallery, its embedder, the detector resolved): the checks and the gallery that
    :func:`watch` and reidkit.video.watch_cluster.watch_on_cluster share. Detector "mot": each camera's
    `detections` file (the default when every camera has one)."""
    from reidkit.video.ingest import open_gallery
    from reidkit.video.pipeline import check_settings

    o, detector = options, options.detector
    check_cameras(cameras)
    if detector == "mot":
        missing = [c.name for c in cameras if not c.detections]
        if missing:
            raise OptionError("detector", f"'mot' needs a detections file for every camera; none for {missing}")
    elif any(c.detections for c in cameras) and detector is None:
        detector = "mot"
    settings = check_settings(o.settings or Settings(appearance="needed", embed_budget=8))
    factory, name = detector_factory(detector, o.detector_options)
    gallery, embedder = open_gallery(db, o.weights, o.device, engine=o.engine, collection=o.collection)
    w = Watch(
        gallery,
        embedder,
        cameras,
        settings,
        factory,
        name,
        links=o.links,
        commit_every=o.commit_every,
        identities_every=o.identities_every,
        retain=o.retain,
        buffer=o.buffer,
        progress=progress,
    )
    return w, gallery, embedder, detector


def watch(
    db: str | os.PathLike,
    cameras: Sequence[Camera],
    options: WatchOptions | None = None,
    *,
    duration: float | None = None,
    status_port: int | None = None,
    progress: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """Open (or create) gallery `db` and watch `cameras` into it until `stop` is set or `duration` passes
    (the Python side of ``reidkit watch``); returns the final status. `options`: a
    :class:`~reidkit.video.options.WatchOptions` (its docstring lists them); `changes`: any of its fields as
    keyword arguments (``watch(db, cameras, detector="mot", retain=3600)``), applied over `options`.
    `status_port`: serve /metrics and /health on 127.0.0.1 while it runs."""
    w = prepare_watch(db, cameras, WatchOptions.of(options, **changes), progress)[0]
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
