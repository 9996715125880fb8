"""``reidkit watch --cluster ADDRESS``: live cameras spread over Dask workers, one writer.

Each camera is one long-running Dask task (:func:`camera_task`) that reads its stream and runs
``reidkit watch``'s per-camera code (:func:`reidkit.video.watch.run_camera`) on the worker: a camera is on
one worker at a time (a task holds one of the worker's threads), and when that worker dies Dask runs the
task again on another one. The driver is the :class:`reidkit.video.watch.Watch` writer of a single-process
watch, with :class:`ClusterCameras` as its runner instead of local threads.

Messages. Tasks talk to the driver through one Dask queue (``<run>-up``, pickled tuples, in order per task):
``hello`` when a task starts, ``chunk`` every ``--commit-every`` seconds, ``status`` every second (the
source's counters and the newest annotated frame, for the live page and ``/metrics``). The driver answers
a hello through a Dask variable named by the task's token, and stops every task with one Dask event.

Sessions across a retried task. A live stream cannot be re-read, so every task attempt is a new session
with its own tracklet keys (``<camera>-live-s<N>``). The number comes from the driver (the writer's counter
in the gallery, ``live:<camera>``), never from the task's arguments, which Dask repeats unchanged on a retry:
on a hello the driver commits the open tracklets of the camera's previous session if it never finished (a
killed worker: as of its last commit, the frames after it are lost, as with a SIGKILLed ``reidkit watch``),
starts session N+1 and sends N+1 back. A chunk of a closed session (a killed worker's last message, or a
worker the scheduler gave up on that still runs) is dropped, so no tracklet is committed twice.

Writers. With a backend whose capabilities admit many writer processes (a Milvus server;
reidkit.retrieval.backends) the tasks commit their chunks themselves through ``Gallery.open(db)`` and send
the driver only what it counts; otherwise (the embedded folder, a Milvus Lite file) the chunks come to the
driver, which commits them.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
import uuid
from typing import Any, Sequence

from reidkit.video.cameras import Camera, detector_factory
from reidkit.video.live import LiveSource
from reidkit.video.options import WatchOptions
from reidkit.video.watch import CameraState, Watch, run_camera

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 120.0  # seconds a task waits for the driver's answer to its hello
_SHARED: dict[tuple, Any] = {}  # per worker process: one shared embedder per model (cameras batch together)


def _shared_embedder(model: dict[str, Any]) -> Any:
    from reidkit.video.cluster import _embedder
    from reidkit.video.embed_service import SharedEmbedder

    key = tuple(sorted(model.items()))
    if key not in _SHARED:
        _SHARED[key] = SharedEmbedder(_embedder(model))
    return _SHARED[key]


def camera_task(
    run: str,
    camera: Camera,
    settings: Any,
    model: dict[str, Any],
    detector: tuple[str | None, dict[str, Any] | None],
    commit_every: float,
    buffer: int,
    backoff: tuple[float, float],
    db: str | None = None,
    collection: str | None = None,
) -> dict[str, Any]:
    """One camera on a Dask worker until the run's stop event (see the module docstring). `db`: commit here
    (a gallery of many writers); None: send the chunks to the driver."""
    from distributed import Event, Queue, Variable, get_worker

    from reidkit.video.embedder import float_twin
    from reidkit.video.embed_service import Stats, _Direct
    from reidkit.video.pipeline import Chunk, _Video, commit
    from reidkit.video.watch_status import annotated_jpeg

    up, stop_event = Queue(f"{run}-up"), Event(f"{run}-stop")
    token = uuid.uuid4().hex
    worker = get_worker().address
    up.put(pickle.dumps(("hello", camera.name, token, worker)))
    answer = Variable(f"{run}-{token}")
    session = int(answer.get(timeout=HELLO_TIMEOUT))
    answer.delete()  # one answer per attempt: nothing is left on the scheduler
    shared = _shared_embedder(model)
    emb = shared.client(camera.name)
    twin = float_twin(shared.embedder)
    stats = Stats()
    gallery = None
    if db is not None:
        from reidkit.retrieval.gallery import Gallery

        gallery = Gallery.open(db, collection=collection)
    make_detector, detector_name = detector_factory(*detector)
    source = LiveSource(camera.url, camera.name, buffer=buffer, backoff=backoff).start()
    stop = threading.Event()
    seen: dict[str, Any] = {"frames": 0, "latest": None}

    def send(kind: str, *rest: Any) -> None:
        up.put(pickle.dumps((kind, camera.name, session, *rest)))

    def emit(chunk: Chunk) -> None:
        n = len(chunk.entries)
        if gallery is not None:
            commit(gallery, chunk)
            chunk = Chunk(chunk.key, chunk.camera, None, [{}] * n, {}, chunk.state, chunk.frames, chunk.last_frame)
        send("chunk", chunk)

    def on_frame(frame: Any, boxes: Any) -> None:
        seen["frames"] += 1
        seen["latest"] = (frame.image, boxes, frame.wall)

    def watcher() -> None:  # the run's stop event, and the counters and newest frame every second
        sent = None
        while not stop.is_set():
            if stop_event.wait(timeout=1.0):
                stop.set()
            latest = seen["latest"]
            jpeg = None
            if latest is not None and latest[2] != sent:
                jpeg, sent = (latest[2], annotated_jpeg(latest[0], latest[1])), latest[2]
            send("status", {**source.stats.report(), "processed": seen["frames"]}, jpeg)

    side = threading.Thread(target=watcher, name=f"reidkit-watch-{camera.name}-status", daemon=True)
    side.start()
    try:
        run_camera(
            camera,
            session,
            source,
            lambda job: _Video(job, settings, emb, stats, _Direct(twin, stats), twin is shared.embedder),  # Watch.video
            make_detector(camera),
            detector_name,
            stop,
            commit_every,
            emit,
            on_frame,
        )
    finally:
        stop.set()
        source.stop()
        side.join(timeout=5)
        emb.close()
    send("status", {**source.stats.report(), "processed": seen["frames"]}, None)
    send("ended")
    return {"camera": camera.name, "session": session, "worker": worker}


class ClusterCameras:
    """The runner of a Watch whose cameras run on Dask workers (see the module docstring)."""

    def __init__(
        self, w: Watch, client: Any, model: dict[str, Any], detector: tuple, db: str | None, collection: str | None
    ) -> None:
        from distributed import Event, Queue

        self.w, self.client, self.model, self.detector = w, client, model, detector
        self.db, self.collection = db, collection
        self.run = f"reidkit-watch-{uuid.uuid4().hex[:12]}"
        self.up = Queue(f"{self.run}-up", client=client)
        self.stop_event = Event(f"{self.run}-stop", client=client)
        self.futures: dict[str, Any] = {}
        self.by_name = {cs.camera.name: cs for cs in w.cams}
        self.prior: dict[str, dict[str, Any]] = {}  # counters of each camera's finished attempts
        self.pump: threading.Thread | None = None

    def start(self) -> None:
        """Submit one task per camera and start the thread that turns the tasks' messages into the writer's."""
        w = self.w
        for cs in w.cams:
            self.futures[cs.camera.name] = self.client.submit(
                camera_task,
                self.run,
                cs.camera,
                w.settings,
                self.model,
                self.detector,
                w.commit_every,
                w.buffer,
                w.backoff,
                self.db,
                self.collection,
                key=f"{self.run}-{cs.camera.name}",
                pure=False,
            )
        self.pump = threading.Thread(target=self._pump, name="reidkit-watch-cluster", daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        stopped = False
        while True:
            if self.w.stop.is_set() and not stopped:
                self.stop_event.set()
                stopped = True
            done = all(f.done() for f in self.futures.values())
            items = self.up.get(batch=True)  # what is there now (a get that times out logs an error on the scheduler)
            if not items:
                time.sleep(0.1)
            for raw in items:
                self._message(*pickle.loads(raw))
            for name, f in self.futures.items():
                cs = self.by_name[name]
                if f.status == "error" and not cs.error:
                    cs.error = f"{type(f.exception()).__name__}: {f.exception()}"
                    log.error("camera %s stopped: %s", name, cs.error)
            if done and not items:  # every task returned and its last messages are in
                return

    def _message(self, kind: str, name: str, *rest: Any) -> None:
        cs = self.by_name[name]
        w = self.w
        if kind == "hello":
            token, worker = rest
            w.chunks.put((cs, lambda: self._hello(cs, token, worker)))
        elif kind == "chunk":
            session, chunk = rest
            w.chunks.put((cs, chunk))
        elif kind == "status" and rest[0] == cs.session:
            counts, jpeg = rest[1], rest[2]
            cs.remote = _add(self.prior.get(name, {}), counts)
            if jpeg is not None:
                cs.jpeg = jpeg

    def _hello(self, cs: CameraState, token: str, worker: str) -> None:
        """(The writer's thread.) A task of `cs` started on `worker`: close its previous session, start a new one."""
        from distributed import Variable

        if cs.remote is not None:  # an earlier attempt's counters carry on
            self.prior[cs.camera.name] = dict(cs.remote)
        moved = f", moved from {cs.worker}" if cs.worker and cs.worker != worker else ""
        session = self.w.begin_session(cs)
        cs.worker, cs.attempts = worker, cs.attempts + 1
        Variable(f"{self.run}-{token}", client=self.client).set(session)
        self.w.say(f"[{cs.camera.name}] session {session} on worker {worker}{moved}")

    def alive(self) -> bool:
        """True while a task runs or its last messages are not all in."""
        return self.pump is not None and self.pump.is_alive()

    def stop(self) -> None:
        """After w.stop is set: stop the tasks (the pump sets the event) and take their last messages."""
        self.stop_event.set()
        if self.pump is not None:
            self.pump.join(timeout=60)
        for f in self.futures.values():
            f.cancel()
        self.stop_event.clear()  # a cleared event with no waiter is removed from the scheduler


_COUNTERS = ("received", "delivered", "skipped", "corrupt", "reconnects", "failures", "processed")


def _add(prior: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """A camera's counters over its attempts: the counts summed, the rest (gauges, errors) the newest."""
    return {**now, **{k: int(prior.get(k, 0)) + int(now.get(k, 0)) for k in _COUNTERS}}


def watch_on_cluster(
    db: str,
    cameras: Sequence[Camera],
    options: WatchOptions | None = None,
    *,
    address: str | None = None,
    workers: int | None = None,
    client: Any = None,
    duration: float | None = None,
    status_port: int | None = None,
    progress: Any = None,
    stop: threading.Event | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """``reidkit watch --cluster``: :func:`reidkit.video.watch.watch` with each camera on a Dask worker. One of
    `address` (a running scheduler), `workers` (a local cluster on 127.0.0.1) or `client`; `options` and
    `changes` as for watch."""
    from reidkit.retrieval.backends import resolve
    from reidkit.utils.dask import dask_client, need_distributed
    from reidkit.video.cluster import _model_spec
    from reidkit.video.watch import prepare_watch

    need_distributed()
    o = WatchOptions.of(options, **changes)
    w, gallery, embedder, detector = prepare_watch(db, cameras, o, progress)
    if stop is not None:
        w.stop = stop
    from reidkit.inference import ENGINES

    used = getattr(embedder.extractor, "engine", o.engine)  # the workers embed as the driver resolved it
    model = _model_spec(gallery, o.weights, o.device, 64, False, used if used in ENGINES else o.engine)
    many = resolve(db, o.collection).capabilities.many_writers
    det = (detector, o.detector_options)
    from reidkit.video.watch_status import serve_status

    server = serve_status(w, status_port) if status_port is not None else None
    try:
        with dask_client(workers, address, client) as c:
            runner = ClusterCameras(w, c, model, det, str(db) if many else None, o.collection)
            return w.run(duration=duration, runner=runner)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
