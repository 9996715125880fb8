"""`reidkit video --workers N | --cluster ADDRESS`: videos ingested on a Dask cluster, one writer.

Each video is a chain of Dask tasks. A task runs reidkit.video.pipeline.process_video from a given
state for a segment of ``segment`` chunks and returns those chunks (tracklet features, entries,
thumbnails, the state after each); the driver commits them in order (the one writer of an
embedded gallery) and submits the video's next segment from the last state. Videos run in parallel,
one task per worker at a time.

Exactly once. A task is a pure function of (job, settings, model, state): a worker killed mid-task
makes Dask run it again elsewhere, from the same state, giving the same chunks, and nothing of the
killed attempt was committed. A killed driver leaves each video at its last committed chunk (the
gallery state per video key), where the next run resumes, as without a cluster.

With a backend whose capabilities admit many writer processes (a Milvus server; reidkit.retrieval.backends)
the workers commit their chunks themselves through ``Gallery.open(db)`` (writes there are idempotent by
content), after reading the video's stored state so that a retried task resumes from what its killed
attempt committed; the driver only chains the segments. With one writer (the embedded folder, a Milvus
Lite file) the driver commits.

Local clusters (``--workers N``) listen on 127.0.0.1 only, N processes of one thread, no dashboard, the
scheduler's HTTP server on a free port (reidkit.utils.dask.local_cluster).
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from itertools import islice
from typing import Any, Callable, Sequence

from reidkit.errors import OptionError
from reidkit.utils.dask import check_cluster_args, dask_client, need_distributed
from reidkit.utils.progress import to_stderr
from reidkit.utils.validate import check_positive
from reidkit.video.embed_service import Stats
from reidkit.video.options import IngestOptions
from reidkit.video.pipeline import (
    Chunk,
    Settings,
    VideoJob,
    VideoLock,
    commit,
    process_video,
    resume_state,
)

CRASH_ENV = "REIDKIT_VIDEO_WORKER_CRASH"  # tests: a file; the first task that renames it away exits its worker
DEFAULT_SEGMENT = 4
_EMBEDDERS: dict[tuple, Any] = {}


def _embedder(model: dict[str, Any]) -> Any:
    """The worker's embedder for `model` (loaded once per worker process)."""
    key = tuple(sorted(model.items()))
    if key not in _EMBEDDERS:
        from reidkit.video.embedder import Embedder

        _EMBEDDERS[key] = Embedder(
            model["weights"],
            device=model["device"],
            batch_size=model["batch_size"],
            flip=model["flip"],
            engine=model.get("engine", "torch"),
            trust_checkpoint=bool(model.get("trust", False)),
        )  # the driver's --trust-checkpoint
    return _EMBEDDERS[key]


def _crash_once() -> None:
    flag = os.environ.get(CRASH_ENV)
    if flag:
        try:
            os.rename(flag, flag + ".fired")  # atomic: one task, in one worker, wins
        except OSError:
            return
        os._exit(1)


def run_segment(
    job: VideoJob,
    settings: Settings,
    model: dict[str, Any],
    state: dict[str, Any] | None,
    segment: int,
    db: str | None = None,
) -> dict[str, Any]:
    """One task: up to `segment` chunks of `job` from `state`; with `db` (Milvus) commit them here too."""
    emb = _embedder(model)
    stats = Stats()
    if db is not None:
        from reidkit.retrieval.gallery import Gallery

        gallery = Gallery.open(db)
        stored = gallery.get_state(f"video:{job.key}")
        if stored is not None and (
            state is None or stored.get("done") or int(stored["next_frame"]) > int(state["next_frame"])
        ):
            state = stored  # a killed attempt of this task committed some chunks already
    chunks: list[Chunk] = []
    for i, chunk in enumerate(islice(process_video(job, settings, emb, state, stats), int(segment))):
        if db is not None:
            commit(gallery, chunk)
            chunk = Chunk(
                chunk.key,
                chunk.camera,
                None if chunk.features is None else chunk.features[:0],
                [],
                {},
                chunk.state,
                chunk.frames,
                chunk.last_frame,
                chunk.seconds,
            )
        chunks.append(chunk)
        if i == 0 and not chunk.done:
            _crash_once()
    last = chunks[-1].state if chunks else state
    return {"chunks": chunks, "identity": emb.identity, "stats": stats.report(), "state": last}


def _model_spec(
    gallery: Any, weights: Any, device: Any, batch_size: int, flip: bool, engine: str = "torch"
) -> dict[str, Any]:
    src = getattr(gallery.identity, "source", None)
    if weights is None and src not in (None, "imagenet"):
        weights = src
    from reidkit.models.checkpoint import trust_active

    return {
        "weights": None if weights is None else str(weights),
        "device": device,
        "batch_size": int(batch_size),
        "flip": bool(flip),
        "engine": str(engine),
        "trust": trust_active(),
    }


def ingest_on_cluster(
    db: str | os.PathLike,
    videos: Sequence[str | os.PathLike],
    workers: int | None = None,
    address: str | None = None,
    client: Any = None,
    segment: int = DEFAULT_SEGMENT,
    progress: Callable[[str], None] | None = None,
    options: IngestOptions | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """`reidkit.video.ingest.ingest` with each video's work on Dask workers (see the module docstring).

    One of `workers` (a local cluster on 127.0.0.1), `address` (a running scheduler) or `client`.
    `options` and `changes` are those of `ingest` (``streams`` does not apply; the workers open the gallery
    by `db` alone, so neither ``collection`` nor ``files`` can be given).
    """
    from reidkit.video.ingest import _report, commit_chunk, open_gallery, prepare_jobs

    o = IngestOptions.of(options, **changes)
    say = progress if progress is not None else to_stderr
    check_positive("segment", segment)
    for name in ("collection", "files"):
        if getattr(o, name) is not None:
            raise OptionError(name, "not with a Dask cluster (the workers open the gallery by db alone)")
    check_cluster_args(workers, address)
    distributed = need_distributed()
    settings = o.settings()
    jobs = prepare_jobs(videos, o)
    weights, device, batch_size, flip, engine = o.weights, o.device, int(o.batch_size), bool(o.flip), str(o.engine)
    # Workers write themselves only to a backend that admits many writer processes (a Milvus server); with
    # one writer (the folder, Milvus Lite) the chunks come back to the driver, which writes them.
    from reidkit.retrieval.backends import resolve

    direct = resolve(db).capabilities.many_writers
    gallery, emb = open_gallery(db, weights, device, batch_size, flip, engine)
    from reidkit.inference import ENGINES

    used = getattr(emb.extractor, "engine", engine)  # the workers embed as the driver resolved it
    model = _model_spec(gallery, weights, device, batch_size, flip, used if used in ENGINES else engine)

    stack = ExitStack()
    client = stack.enter_context(dask_client(workers, address, client))
    t0 = time.perf_counter()
    reports: dict[str, dict[str, Any]] = {}
    locks: list[VideoLock] = []
    try:
        pending: dict[Any, VideoJob] = {}
        started: dict[str, dict[str, Any] | None] = {}
        frames: dict[str, int] = {}
        for job in jobs:
            if not direct:
                lock = VideoLock(gallery.files_dir, job.key, on_wait=say)
                lock.__enter__()
                locks.append(lock)
            state = resume_state(gallery, job, settings, emb)
            if state is not None and state.get("done"):
                say(
                    f"[{job.camera}] {job.info.path.name}: already ingested ({state.get('tracklets', 0)} "
                    f"tracklets), skipped"
                )
                reports[job.key] = {
                    "video": str(job.info.path),
                    "camera": job.camera,
                    "key": job.key,
                    "skipped": True,
                    "tracklets": int(state.get("tracklets", 0)),
                    "resumed_from": None,
                }
                continue
            if state is not None:
                say(f"[{job.camera}] {job.info.path.name}: resuming at frame {int(state['next_frame']) + 1}")
            started[job.key], frames[job.key] = state, 0
            fut = client.submit(
                run_segment, job, settings, model, state, segment, str(db) if direct else None, pure=False
            )
            pending[fut] = job
        ac = distributed.as_completed(list(pending))
        checked = False
        for fut in ac:
            job = pending.pop(fut)
            res = fut.result()
            if not checked and not direct:
                gallery.check_identity(res["identity"])
                checked = True
            for chunk in res["chunks"]:
                if not direct:
                    commit_chunk(gallery, chunk)  # a failure says what the gallery holds after it
                frames[job.key] += chunk.frames
                say(
                    f"[{job.camera}] frame {chunk.last_frame + 1}: {chunk.state['tracklets']} tracklets"
                    + (", done" if chunk.done else "")
                )
            last = res["state"]
            if last is not None and not last.get("done"):
                nxt = client.submit(
                    run_segment, job, settings, model, last, segment, str(db) if direct else None, pure=False
                )
                pending[nxt] = job
                ac.add(nxt)
            else:
                reports[job.key] = _report(job, last, started[job.key], frames[job.key], time.perf_counter() - t0)
    finally:
        for lock in locks:
            lock.__exit__(None, None, None)
        stack.close()
    gallery.refresh()
    rep = [reports[j.key] for j in jobs]
    return {
        "db": str(gallery.db),
        "videos": rep,
        "tracklets": sum(r["tracklets"] for r in rep),
        "gallery_tracklets": len(gallery.entries(kind="tracklet")),
        "seconds": round(time.perf_counter() - t0, 3),
    }
