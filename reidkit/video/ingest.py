"""`reidkit video`: footage -> detections -> tracks (reidkit.video.trackers) -> tracklets -> gallery, resumable.

Per video: frames are decoded (every N-th with ``every``), people detected (reidkit.video.detectors),
their crops embedded once (reidkit.video.embedder; the same features drive the tracker's
appearance metric and the tracklet features), tracked (reidkit.video.trackers), and each ended
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

The work of one video is reidkit.video.pipeline.process_video (a generator of commit chunks); this
module drives it: the videos of a run go in parallel threads (at most ``streams`` at once) sharing
one embedder (batches mix cameras), and this thread commits their chunks, one writer. Two runs
given the same video and gallery: the second waits for the first (a per-video lock beside the
gallery, like the writer lock), then finds the video done (or partly done) and skips (or resumes) it.
Videos can also run on a Dask cluster (reidkit.video.cluster).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import queue
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

from reidkit.errors import OptionError, ReIDError
from reidkit.utils.progress import to_stderr
from reidkit.retrieval.backends import FILES_OUTSIDE, resolve
from reidkit.video.decode import legacy_video_keys, probe, video_key
from reidkit.video.embed_service import SharedEmbedder, Stats
from reidkit.video.embedder import Embedder
from reidkit.utils.validate import check_positive
from reidkit.video.options import DEFAULT_STREAMS, IngestOptions
from reidkit.video.pipeline import (
    THUMBS,
    Chunk,
    Settings,
    VideoJob,
    VideoLock,
    commit,
    process_video,
    resume_state,
    thumbs_dir,
)

__all__ = [
    "THUMBS",
    "CRASH_ENV",
    "VideoJob",
    "Settings",
    "IngestOptions",
    "create_gallery",
    "open_gallery",
    "prepare_jobs",
    "ingest",
    "run_jobs",
    "commit_chunk",
]

CRASH_ENV = "REIDKIT_VIDEO_CRASH_AFTER"  # tests: SIGKILL this process after that many commits
# Fixed cameras: on the generated scenes the motion detector finds more people than HOG at a tenth
# of its cost (tests/test_motion_detector.py, benchmarks/bench_video.py); it warns on a moving picture.
DEFAULT_DETECTOR = "motion"  # reidkit.video.detectors.DEFAULT_DETECTOR


def create_gallery(db: str | os.PathLike, embedder: Embedder, collection: str | None = None) -> Any:
    """A new empty flat gallery at `db` for the embedder's model; one made meanwhile by another run is opened."""
    from reidkit.retrieval.gallery import Gallery

    try:
        return Gallery.create(db, embedder.extractor, collection=collection)
    except ReIDError:
        if not Gallery.exists(db, collection=collection):
            raise
    # another `reidkit video` created it between our look and our publish
    gallery = Gallery.open(db, collection=collection)
    gallery.check_identity(embedder.identity)
    return gallery


def _use_files(gallery: Any, files: str | os.PathLike | None, default_files: str | os.PathLike | None) -> None:
    """A gallery whose side files live outside it records their folder (``files``, else ``default_files``)
    before any thumbnail."""
    if gallery.capabilities.files == FILES_OUTSIDE:
        gallery.store.use_files(files, default=default_files)


def open_gallery(
    db: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    device: str | None = None,
    batch_size: int = 64,
    flip: bool = False,
    engine: str = "torch",
    collection: str | None = None,
    files: str | os.PathLike | None = None,
    default_files: str | os.PathLike | None = None,
) -> tuple[Any, Embedder]:
    """(gallery, embedder): open `db` (its own model unless `weights`), or create it for `weights` (None: ImageNet).

    `engine`: how the embedder runs the model ("torch", "onnx", "auto": see reidkit.inference).
    `collection`, `files`: a Milvus gallery's collection and side-file folder (MilvusStore.use_files;
    `default_files` when it records none).
    """
    from reidkit.inference import FeatureExtractor
    from reidkit.retrieval.gallery import Gallery

    backend = resolve(db, collection)
    path = backend.db
    if files is not None:
        backend.refuse_files()
    if Gallery.exists(path, collection=collection):
        gallery = Gallery.open(
            path, weights=weights, device=device, batch_size=batch_size, engine=engine, collection=collection
        )
        _use_files(gallery, files, default_files)
        ext = gallery.extractor
        own = FeatureExtractor(ext.model, ext.identity, ext.device, batch_size, flip, engine=ext.engine)  # own flip
        return gallery, Embedder(extractor=own, flip=flip, batch_size=batch_size)
    backend.check_new()  # before the model loads: a file, a folder with other files in it
    embedder = Embedder(weights, device=device, batch_size=batch_size, flip=flip, engine=engine)
    gallery = create_gallery(path, embedder, collection)
    _use_files(gallery, files, default_files)
    return gallery, embedder


def prepare_jobs(
    videos: Sequence[str | os.PathLike], options: IngestOptions | None = None, **changes: Any
) -> list[VideoJob]:
    """Validate every input (videos readable with frames, detection files well-formed, the detector and its
    options) before any work. The inputs and the detector are `options`' (IngestOptions; `changes`: keyword
    arguments of ingest applied to them)."""
    o = IngestOptions.of(options, **changes)
    cameras, detections, start_times, detector = o.cameras, o.detections, o.start_times, o.detector
    detector_options = o.detector_options
    if not videos:
        raise ReIDError("give at least one video")
    n = len(videos)
    for name, vals in (("cameras", cameras), ("detections", detections), ("start_times", start_times)):
        if vals and len(vals) != n:
            raise OptionError(name, f"give one per video ({n} videos, {len(vals)} values)")
    if detections and (detector is not None or detector_options):
        raise OptionError("detections", "give detections or a detector (and its options), not both")
    infos = [probe(v) for v in videos]
    cams = list(cameras) if cameras else [info.path.stem for info in infos]
    seen: dict[str, Path] = {}
    for cam, info in zip(cams, infos):
        if not str(cam).strip():
            raise OptionError("cameras", f"empty camera name for {info.path}")
        if cam in seen and not cameras:
            raise OptionError(
                "cameras",
                f"videos {seen[cam]} and {info.path} would both be camera {cam!r} (named after the file); "
                "name their cameras",
            )
        seen[cam] = info.path
    from reidkit.video.detectors import build_detector, detector_spec, is_per_video, resolve_detector

    shared_spec: dict[str, Any] = {}
    shared_det = None
    if not detections:
        flags: dict[str, dict[str, Any]] = {
            "onnx": {
                "conf": float(o.conf),
                "person_class": int(o.person_class),
                **({"input_size": tuple(o.detector_size)} if o.detector_size else {}),
            },
            "hog": {"min_height": int(o.hog_min_height), "detect_scale": float(o.detect_scale)},
        }
        text = str(detector if detector is not None else DEFAULT_DETECTOR)
        kind = resolve_detector(text, detector_options)[0]["kind"]  # which part the flags are options of
        shared_spec, shared_name = resolve_detector(text, {**flags.get(kind, {}), **dict(detector_options or {})})
        if not is_per_video(shared_spec):  # the motion detector is one per video (its background)
            shared_det = build_detector(shared_spec)  # refused here, before any work, when it cannot be built
    jobs = []
    for i, info in enumerate(infos):
        start = float(start_times[i]) if start_times else 0.0
        if detections:
            spec = detector_spec("mot", {"path": str(Path(detections[i]).expanduser().absolute())})
            # parsed now: a malformed row fails before any commit
            job = VideoJob(
                info,
                str(cams[i]),
                video_key(info.path, cams[i]),
                spec,
                f"mot:{Path(detections[i]).name}",
                start,
                build_detector(spec),
            )
        else:
            job = VideoJob(
                info, str(cams[i]), video_key(info.path, cams[i]), shared_spec, shared_name, start, shared_det
            )
        jobs.append(job)
    return jobs


def commit_chunk(gallery: Any, chunk: Chunk) -> list[int]:
    """pipeline.commit; when it fails (a full disk, a lock held too long) the error says what the gallery holds
    after the failure: earlier chunks of the run stay committed, so the store's per-write "nothing was changed,
    the gallery is unchanged" is not what a run that already committed some chunks left."""
    try:
        return commit(gallery, chunk)
    except (ReIDError, OSError) as exc:
        raise _not_committed(gallery, chunk, exc) from None


def _not_committed(gallery: Any, chunk: Chunk, exc: BaseException) -> ReIDError:
    if isinstance(exc, OptionError):
        reason = exc.detail
    elif isinstance(exc, OSError):  # writing a thumbnail
        reason = f"cannot write {exc.filename or thumbs_dir(gallery)}: {exc.strerror or exc}"
    else:
        reason = str(exc)
    reason = reason.split("; nothing was ")[0]  # the store's per-write clause: replaced by the gallery's state
    name = f"{Path(chunk.state.get('video', chunk.key)).name} (camera {chunk.camera})"
    try:
        key, stored = gallery.stored_key(), gallery.get_state(chunk.state_key)
    except (ReIDError, OSError) as err:
        now = f"what the gallery holds now cannot be read ({err})"
    else:
        gen = f"generation {key[1]}" if key else "its last committed generation"
        held = (
            f"nothing of {name} yet"
            if not stored
            else f"all of {name}"
            if stored.get("done")
            else f"{name} up to frame {int(stored['next_frame'])} with {int(stored.get('tracklets', 0))} tracklets"
        )
        now = f"the gallery is whole at {gen} and holds {held}" + (" (earlier chunks stay committed)" if stored else "")
    what = (
        f"the last chunk of {name}, with the tracklets still open at its end,"
        if chunk.done
        else f"the chunk of {name} ending at frame {chunk.last_frame + 1}"
    )
    full = any(w in reason for w in ("disk is full", "quota", "file size limit", os.strerror(errno.ENOSPC)))
    msg = (
        f"{reason}; {what} was not committed: {now}; "
        + ("free some space and run" if full else "run")
        + " the same command again to resume from there"
    )
    db_error = isinstance(exc, OSError) or (isinstance(exc, OptionError) and exc.option == "db")
    return OptionError("db", msg) if db_error else ReIDError(msg)


class _Committer:
    """The one writer: commits chunks, reports progress, counts commits (for the crash test hook)."""

    def __init__(self, gallery: Any, progress: Callable[[str], None]) -> None:
        self.g, self.say, self.commits = gallery, progress, 0
        self.frames: dict[str, int] = {}
        self.t0: dict[str, float] = {}

    def __call__(self, job: VideoJob, chunk: Chunk) -> None:
        commit_chunk(self.g, chunk)
        self.commits += 1
        limit = os.environ.get(CRASH_ENV)
        if limit and self.commits >= int(limit):
            os.kill(os.getpid(), signal.SIGKILL)
        n = self.frames[job.key] = self.frames.get(job.key, 0) + chunk.frames
        rate = n / max(time.perf_counter() - self.t0.setdefault(job.key, time.perf_counter()), 1e-9)
        if not chunk.done:
            total = f"/{job.info.frame_count}" if job.info.frame_count else ""
            self.say(
                f"[{job.camera}] frame {chunk.last_frame + 1}{total}  {rate:.1f} frames/s  "
                f"tracklets {chunk.state['tracklets']} (+{len(chunk.state['open'])} open)"
            )
        else:
            self.say(
                f"[{job.camera}] {job.info.path.name}: done, {n} frames at {rate:.1f} frames/s, "
                f"{chunk.state['tracklets']} tracklets"
            )


def _report(
    job: VideoJob, state: dict[str, Any] | None, resumed: dict[str, Any] | None, frames: int, seconds: float
) -> dict[str, Any]:
    dec = (state or {}).get("decoded") or {}
    return {
        "video": str(job.info.path),
        "camera": job.camera,
        "key": job.key,
        "skipped": False,
        "tracklets": int(state["tracklets"]) if state else 0,
        "frames": frames,
        "truncated": bool(dec.get("truncated", False)),
        "frames_announced": dec.get("announced"),
        "frames_decoded": dec.get("read"),
        "resumed_from": int(resumed["next_frame"]) + 1 if resumed else None,
        "frames_per_s": round(frames / max(seconds, 1e-9), 2),
    }


def _skipped(job: VideoJob, state: dict[str, Any]) -> dict[str, Any]:
    dec = state.get("decoded") or {}
    return {
        "video": str(job.info.path),
        "camera": job.camera,
        "key": job.key,
        "skipped": True,
        "truncated": bool(dec.get("truncated", False)),
        "frames_announced": dec.get("announced"),
        "frames_decoded": dec.get("read"),
        "tracklets": int(state.get("tracklets", 0)),
        "resumed_from": None,
    }


def keep_legacy_key(gallery: Any, job: VideoJob) -> VideoJob:
    """`job` under the key an earlier release gave its video (reidkit.video.decode.legacy_video_keys) when
    `gallery` holds that video's state under it and none under the current key: a gallery made before resumes
    (and skips a finished video) under the keys its tracklets already have, without duplicates."""
    if gallery.get_state(f"video:{job.key}") is not None:
        return job
    for old in legacy_video_keys(job.info.path, job.camera):
        if gallery.get_state(f"video:{old}") is not None:
            return dataclasses.replace(job, key=old)
    return job


def run_jobs(
    gallery: Any,
    embedder: Any,
    jobs: Sequence[VideoJob],
    settings: Settings,
    progress: Callable[[str], None] = to_stderr,
    streams: int = DEFAULT_STREAMS,
    stats: Stats | None = None,
) -> list[dict[str, Any]]:
    """Ingest `jobs` into `gallery`: up to `streams` videos at once sharing `embedder`; this thread commits."""
    stats = stats if stats is not None else Stats()
    jobs = [keep_legacy_key(gallery, job) for job in jobs]
    write = _Committer(gallery, progress)
    reports: dict[str, dict[str, Any]] = {}
    out: queue.Queue = queue.Queue(maxsize=2 * max(1, int(streams)))
    shared = SharedEmbedder(embedder, stats) if len(jobs) > 1 and streams > 1 else None
    failed = threading.Event()

    def plan(job: VideoJob) -> dict[str, Any] | None:
        state = resume_state(gallery, job, settings, embedder)
        if state is not None and state.get("done"):
            progress(
                f"[{job.camera}] {job.info.path.name}: already ingested ({state.get('tracklets', 0)} "
                f"tracklets), skipped"
            )
            reports[job.key] = _skipped(job, state)
            return None
        if state is not None:
            progress(
                f"[{job.camera}] {job.info.path.name}: resuming at frame {int(state['next_frame']) + 1} "
                f"({state.get('tracklets', 0)} tracklets already committed)"
            )
        return {"state": state}

    def one(job: VideoJob, emb: Any, sink: Callable[[VideoJob, Chunk], None]) -> None:
        # one ingester per video, unless the backend's writes are idempotent by content (no lock file)
        lock = (
            nullcontext()
            if gallery.capabilities.idempotent_ids
            else VideoLock(gallery.files_dir, job.key, on_wait=progress)
        )
        with lock:
            p = plan(job)
            if p is None:
                return
            t0, frames, last = time.perf_counter(), 0, p["state"]
            write.t0[job.key] = t0
            for chunk in process_video(job, settings, emb, p["state"], stats):
                if failed.is_set():
                    return
                frames += chunk.frames
                sink(job, chunk)
                last = chunk.state
            secs = time.perf_counter() - t0
            reports[job.key] = _report(job, last, p["state"], frames, secs)

    if shared is None:  # one stream: this thread runs the generator and commits
        for job in jobs:
            one(job, embedder, write)
        return [reports[j.key] for j in jobs]

    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)

    def worker() -> None:
        while not failed.is_set():
            try:
                job = todo.get_nowait()
            except queue.Empty:
                break
            client = shared.client(job.camera)
            try:

                def sink(j: VideoJob, c: Chunk) -> None:
                    acked = threading.Event()
                    while True:  # bounded: a slow writer holds the videos back
                        if failed.is_set():
                            raise ReIDError("stopped: another video of this run failed")
                        try:
                            out.put(("chunk", j, (c, acked)), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    # the video's lock is released after its last chunk is COMMITTED: a second run waiting
                    # for it must then find the video done
                    while c.done and not acked.wait(0.1):
                        if failed.is_set():
                            raise ReIDError("stopped: another video of this run failed")

                one(job, client, sink)
            except BaseException as exc:  # noqa: BLE001 - handed to the committing thread
                if not failed.is_set():  # else the committing thread has stopped reading
                    out.put(("error", job, exc))
                return
            finally:
                client.close()
        if not failed.is_set():
            out.put(("exit", None, None))

    n_workers = min(int(streams), len(jobs))
    threads = [threading.Thread(target=worker, name=f"reidkit-video-{i}", daemon=True) for i in range(n_workers)]
    for t in threads:
        t.start()
    try:
        exited = 0
        while exited < n_workers:
            kind, job, payload = out.get()
            if kind == "exit":
                exited += 1
            elif kind == "error":
                raise payload
            else:
                write(job, payload[0])
                payload[1].set()
    except BaseException:
        failed.set()
        raise
    finally:
        for t in threads:
            t.join(timeout=30)
        shared.close()
    return [reports[j.key] for j in jobs]


def ingest(
    db: str | os.PathLike,
    videos: Sequence[str | os.PathLike],
    options: IngestOptions | None = None,
    *,
    progress: Callable[[str], None] | None = to_stderr,
    embedder: Embedder | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """Ingest videos into gallery `db` (created when missing); returns a per-video report. See the module docstring.

    `options`: an IngestOptions (its docstring lists them); `changes`: any of its fields as keyword arguments
    (``ingest(db, videos, detector="hog", k=8)``), applied over `options`. `progress`: called with each line
    of progress (None: silent); `embedder`: an Embedder to use instead of loading the model (its gallery must
    match it). With a Milvus server, the side-file folder defaults to ``<collection>.files`` in the first
    video's folder."""
    o = IngestOptions.of(options, **changes)
    settings = o.settings()
    check_positive("streams", o.streams)
    jobs = prepare_jobs(videos, o)
    collection, files = o.collection, o.files
    backend = resolve(db, collection)
    default_files = backend.default_files(jobs[0].info.path)
    if embedder is not None:
        from reidkit.retrieval.gallery import Gallery

        if files is not None:
            backend.refuse_files()
        path = backend.db
        gallery = (
            Gallery.open(path, collection=collection)
            if Gallery.exists(path, collection=collection)
            else create_gallery(path, embedder, collection)
        )
        gallery.check_identity(embedder.identity)
        _use_files(gallery, files, default_files)
    else:
        gallery, embedder = open_gallery(
            db,
            o.weights,
            o.device,
            o.batch_size,
            o.flip,
            o.engine,
            collection=collection,
            files=files,
            default_files=default_files,
        )
    say = progress or (lambda _m: None)
    stats = Stats()
    t0 = time.perf_counter()
    reports = run_jobs(gallery, embedder, jobs, settings, say, int(o.streams), stats)
    gallery.refresh()
    return {
        "db": str(gallery.db),
        "videos": reports,
        "tracklets": sum(r["tracklets"] for r in reports),
        "gallery_tracklets": len(gallery.entries(kind="tracklet")),
        "seconds": round(time.perf_counter() - t0, 3),
        "stages": stats.report(),
        "engine": getattr(getattr(embedder, "extractor", None), "engine", None),
    }
