"""HTTP search service over a gallery: ``POST /search``, ``GET /images/{id}``, ``GET /health``, a web page at ``/``.

The model runs in worker thread(s) fed by a queue: requests waiting at the same time are
embedded as one batch (torch is never called concurrently on the model), then each is searched
with its own options. Uploads are bounded twice: by Content-Length before the body is read and by
counting the bytes actually received (chunked uploads send no length).

The service follows the gallery: a background thread reads the stored (uid, generation) every
`poll_s` seconds (one tiny SQLite read) and, when it changed, opens the new generation (faiss
index and metadata pinned together, see reidkit.retrieval.index) and swaps the reference between
requests. Each request takes the current gallery once at its start and uses only it, so an answer
never mixes generations and in-flight requests finish on the snapshot they began with. Results
carry `snapshot` ("<uid>-<generation>"); `/images/{id}?snapshot=...` serves the path of that
snapshot (the last few are kept), so a rebuilt gallery cannot show another image under an old id.

Extension hook: if `reidkit.video.routes` exists and defines `add_routes(app, get_gallery, authorize)`,
create_app calls it (get_gallery() returns the current gallery snapshot; authorize(request) raises
401 without a valid token) so the video package can add its tracklet routes.
"""
from __future__ import annotations

import asyncio
import hmac
import io
import logging
import mimetypes
import os
import queue
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from reidkit.errors import ReIDError
from reidkit.retrieval import store
from reidkit.retrieval.index import Gallery, parse_camera_frame

__all__ = ["create_app", "DEFAULT_MAX_UPLOAD", "TOKEN_ENV"]

logger = logging.getLogger("reidkit.service")

DEFAULT_MAX_UPLOAD = 8 * 1024 * 1024
TOKEN_ENV = "REIDKIT_API_TOKEN"
# Multipart framing (boundaries, part headers) on top of the file bytes themselves.
_MULTIPART_SLACK = 64 * 1024
# Decoded-size bound: a small PNG can expand to gigabytes of pixels.
MAX_PIXELS = 40_000_000
_ID_RX = re.compile(r"^[0-9]{1,12}$")


@dataclass
class _Job:
    image: np.ndarray
    k: int
    rerank: bool
    exclude_camid: int | None
    future: Future = field(default_factory=Future)


class _Batcher:
    """Worker thread(s) that embed queued query images in batches and search them."""

    def __init__(self, get_gallery: Any, workers: int = 1, max_batch: int = 16) -> None:
        self.get_gallery = get_gallery
        self.max_batch = max(1, int(max_batch))
        self.queue: queue.Queue[_Job | None] = queue.Queue()
        if int(workers) < 1:
            raise ReIDError(f"--workers: must be >= 1, got {workers}")
        self.workers = int(workers)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.batches: list[int] = []  # sizes of the batches run (observability and tests)

    def start(self) -> None:
        """Start the worker threads once (lazily, so apps used without lifespan events work too)."""
        with self._lock:
            if self._threads:
                return
            for i in range(self.workers):
                t = threading.Thread(target=self._loop, name=f"reidkit-search-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def stop(self) -> None:
        """Ask the workers to finish and wait for them."""
        with self._lock:
            for _ in self._threads:
                self.queue.put(None)
            for t in self._threads:
                t.join(timeout=10)
            self._threads = []

    def submit(self, job: _Job) -> Future:
        """Queue a job; its future resolves to the result list."""
        self.start()
        self.queue.put(job)
        return job.future

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < self.max_batch:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)  # leave the stop signal for this thread's next turn
                    break
                batch.append(nxt)
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        self.batches.append(len(batch))
        gallery = self.get_gallery()  # one snapshot for the whole batch
        try:
            feats = gallery.embed([j.image for j in batch])
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
            for j in batch:
                j.future.set_exception(exc)
            return
        for j, f in zip(batch, feats):
            try:
                res = gallery.search_features(f[None], k=j.k, rerank=j.rerank, exclude_camid=[j.exclude_camid])[0]
                tag = _snapshot_tag(gallery)
                for r in res:
                    r["snapshot"] = tag
                j.future.set_result((res, gallery))
            except Exception as exc:  # noqa: BLE001
                j.future.set_exception(exc)


def _snapshot_tag(gallery: Gallery) -> str:
    return f"{gallery.uid}-{gallery.generation}"


class _Follower:
    """Holds the current gallery snapshot and swaps in each new generation (see the module docstring)."""

    KEEP = 4  # recent snapshots kept for /images?snapshot=...

    def __init__(self, gallery: Gallery, poll_s: float = 0.5) -> None:
        if not poll_s > 0:
            raise ReIDError(f"--poll: must be > 0 seconds, got {poll_s}")
        self.db = gallery.db
        self.poll_s = float(poll_s)
        self._current = gallery
        self._recent: dict[str, Gallery] = {_snapshot_tag(gallery): gallery}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.swaps = 0
        self._pending_since: float | None = None

    def current(self) -> Gallery:
        """The newest loaded snapshot (a plain reference read: atomic)."""
        return self._current

    def snapshot(self, tag: str) -> Gallery | None:
        """A recent snapshot by its tag, or None when it is no longer kept."""
        return self._recent.get(tag)

    def start(self) -> None:
        """Start the polling thread once."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name="reidkit-gallery-follower", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(timeout=10)
        self._thread = None

    def _loop(self) -> None:
        last = ""
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - keep serving the current snapshot, retry next poll
                msg = f"{type(exc).__name__}: {exc}"
                if msg != last:  # once per distinct problem, not every poll
                    logger.warning("could not load the new generation of %s (%s); still serving generation %d",
                                   self.db, msg, self._current.generation)
                last = msg

    def check(self) -> bool:
        """Swap in the stored generation if it is newer than the current one; True when swapped."""
        key = store.read_key(self.db)
        cur = self._current
        if key is None or key == (cur.uid, cur.generation):
            self._pending_since = None
            return False
        # A writer that has committed but not yet written the faiss cache of its generation: give it a
        # few seconds rather than rebuilding the index here (correct either way, only slower).
        now = time.monotonic()
        if not store.cache_path(self.db, key[1]).is_file() and store.WriterLock.is_held(self.db):
            if self._pending_since is None:
                self._pending_since = now
            if now - self._pending_since < 10:
                return False
        self._pending_since = None
        try:
            new = Gallery.open(self.db, extractor=cur.extractor)
        except ReIDError as exc:
            if "model mismatch" not in str(exc):
                raise
            new = Gallery.open(self.db)  # rebuilt with another model: load that one (its stored source)
            _ = new.extractor
        with self._lock:
            self._current = new
            self._recent[_snapshot_tag(new)] = new
            while len(self._recent) > self.KEEP:
                self._recent.pop(next(iter(self._recent)))
            self.swaps += 1
        logger.info("gallery %s: now serving generation %d (%d entries)", self.db, new.generation, len(new))
        return True


class _BodyLimit:
    """ASGI middleware: 413 when a POST body grows past `limit` bytes, whatever Content-Length said."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            if msg.get("type") == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, detail=f"upload too large (limit {self.limit - _MULTIPART_SLACK} bytes)")
            return msg

        await self.app(scope, limited, send)


def _decode_upload(data: bytes) -> np.ndarray:
    """RGB uint8 image from uploaded bytes; HTTPException 415 (not an image) / 400 (corrupt) / 413 (too many pixels)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise HTTPException(413, detail=f"image too large: {im.width}x{im.height} pixels (limit {MAX_PIXELS})")
            im.load()
            rgb = im.convert("RGB")
    except Image.DecompressionBombError:
        # Pillow refuses at open (before decoding) when the header promises > 2x its own limit
        raise HTTPException(413, detail=f"image too large: its header declares more than {MAX_PIXELS} pixels") from None
    except UnidentifiedImageError:
        raise HTTPException(415, detail="unsupported upload: not an image file (JPEG, PNG, BMP, WebP, ...)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise HTTPException(400, detail="corrupt image: the file could not be decoded") from None
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or min(arr.shape[:2]) < 2:
        raise HTTPException(400, detail=f"image too small: {arr.shape[1]}x{arr.shape[0]} pixels")
    return arr


def _page() -> bytes:
    return resources.files("reidkit.retrieval").joinpath("static/index.html").read_bytes()


def create_app(db: str | os.PathLike | Gallery, token: str | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD, workers: int = 1, max_batch: int = 16,
               weights: str | os.PathLike | None = None, poll_s: float = 0.5) -> FastAPI:
    """The FastAPI app serving gallery `db` (a folder or an open Gallery) and following its new generations.

    `token` falls back to $REIDKIT_API_TOKEN; `poll_s` is the period of the new-generation check.
    """
    if int(workers) < 1:
        raise ReIDError(f"--workers: must be >= 1, got {workers}")
    gallery = db if isinstance(db, Gallery) else Gallery.open(db, weights=weights)
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    if token is not None and not token.strip():
        raise ReIDError("--token: the API token is empty")
    if int(max_upload_bytes) < 1:
        raise ReIDError(f"max_upload_bytes: must be >= 1, got {max_upload_bytes}")
    max_upload_bytes = int(max_upload_bytes)
    _ = gallery.extractor  # load the model now: a missing model fails at start-up, not at the first query
    follower = _Follower(gallery, poll_s=poll_s)
    batcher = _Batcher(follower.current, workers=workers, max_batch=max_batch)
    secret = token.encode() if token else None

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Any):  # noqa: ANN202
        batcher.start()
        follower.start()
        yield
        await run_in_threadpool(follower.stop)
        await run_in_threadpool(batcher.stop)

    app = FastAPI(title="reidkit search", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.gallery = gallery  # the snapshot served at start; app.state.follower.current() is the live one
    app.state.follower = follower
    app.state.batcher = batcher
    app.add_middleware(_BodyLimit, limit=max_upload_bytes + _MULTIPART_SLACK)

    def authorize(request: Request) -> None:
        if secret is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken does not reveal how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), secret):
            raise HTTPException(401, detail="missing or invalid API token (send 'Authorization: Bearer <token>')",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @app.exception_handler(ReIDError)
    async def reid_error(request: Request, exc: ReIDError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        follower.start()  # apps driven without lifespan events (ASGI test transports) follow too
        info = follower.current().health()
        # Unauthenticated: name the model, but not where its file sits on the server.
        info["model"]["source"] = Path(info["model"]["source"]).name
        info["auth"] = secret is not None
        info["max_upload_bytes"] = max_upload_bytes
        return info

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        # The page is static and holds no gallery data; it sends the token the user types with
        # every API call, so it must load without one.
        return HTMLResponse(_page(), headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                       "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"})

    @app.post("/search")
    async def search(
        request: Request,
        k: int = Query(20, ge=1, le=1000),
        rerank: bool = False,
        exclude_camid: int | None = Query(None, ge=0),
        exclude_same_camera: bool = False,
    ) -> dict[str, Any]:
        authorize(request)
        follower.start()
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_upload_bytes + _MULTIPART_SLACK:
            raise HTTPException(413, detail=f"upload too large (limit {max_upload_bytes} bytes)")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(400, detail="expected a multipart/form-data upload with the image in the field 'file'")
        form = await request.form(max_files=1, max_fields=16)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, detail="expected a multipart/form-data upload with the image in the field 'file'")
        data = await upload.read(max_upload_bytes + 1)
        await form.close()
        if len(data) > max_upload_bytes:
            raise HTTPException(413, detail=f"upload too large (limit {max_upload_bytes} bytes)")
        if not data:
            raise HTTPException(400, detail="empty upload")
        image = await run_in_threadpool(_decode_upload, data)
        query_camid = parse_camera_frame(upload.filename or "")[0] if upload.filename else None
        camid = exclude_camid
        if camid is None and exclude_same_camera:
            if query_camid is None:
                raise HTTPException(400, detail="exclude_same_camera: the upload's file name gives no camera "
                                                "(Market-style '..._c1s1_...'); pass exclude_camid")
            camid = query_camid
        t0 = time.perf_counter()
        results, snap = await asyncio.wrap_future(batcher.submit(_Job(image, k, rerank, camid)))
        return {"results": results, "took_ms": round((time.perf_counter() - t0) * 1000, 2),
                "generation": snap.generation, "snapshot": _snapshot_tag(snap),
                "query": {"filename": upload.filename, "camid": query_camid, "excluded_camid": camid}}

    @app.get("/images/{image_id}")
    async def image(image_id: str, request: Request, snapshot: str | None = Query(None, max_length=64)) -> FileResponse:
        authorize(request)
        # Only a decimal id reaches the database; the path served is the one stored there.
        if not _ID_RX.match(image_id):
            raise HTTPException(400, detail="image id must be a non-negative integer")
        g = follower.current()
        if snapshot is not None:
            pinned = follower.snapshot(snapshot)
            if pinned is None:
                raise HTTPException(410, detail=f"gallery snapshot {snapshot} is no longer served; search again")
            g = pinned
        rec = await run_in_threadpool(g.record, int(image_id))
        if rec is None:
            raise HTTPException(404, detail=f"no gallery image with id {image_id}")
        path = Path(rec["path"])
        if not path.is_file():
            raise HTTPException(404, detail=f"gallery image {image_id} is no longer on disk")
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    _add_extension_routes(app, follower.current, authorize)
    return app


def _add_extension_routes(app: FastAPI, get_gallery: Any, authorize: Any) -> None:
    """Let reidkit.video add its routes: `reidkit.video.routes.add_routes(app, get_gallery, authorize)` if present."""
    import importlib
    import importlib.util

    try:
        spec = importlib.util.find_spec("reidkit.video.routes")
    except (ModuleNotFoundError, ValueError):  # no reidkit.video package / a module without a spec
        spec = None
    if spec is None:
        return
    module = importlib.import_module("reidkit.video.routes")
    add_routes = getattr(module, "add_routes", None)
    if callable(add_routes):
        add_routes(app, get_gallery, authorize)
    from reidkit.video.identity_routes import identity_router  # until create_app takes routers=[...]

    app.include_router(identity_router(get_gallery, authorize))


def serve(db: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD, workers: int = 1,
          weights: str | os.PathLike | None = None, poll_s: float = 0.5) -> None:
    """Run the service with uvicorn (blocking)."""
    import uvicorn

    if not 1 <= int(port) <= 65535:
        raise ReIDError(f"--port: expected 1..65535, got {port}")
    app = create_app(db, token=token, max_upload_bytes=max_upload_bytes, workers=workers, weights=weights,
                     poll_s=poll_s)
    if host not in ("127.0.0.1", "localhost", "::1") and token is None and not os.environ.get(TOKEN_ENV):
        logger.warning("serving on %s without an API token: anyone who can reach it can search the gallery", host)
    uvicorn.run(app, host=host, port=int(port), log_level="info")
