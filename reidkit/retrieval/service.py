"""HTTP search service over a gallery: ``POST /search?topk=N``, ``GET /images/{id}``, ``GET /health``, a web page at ``/``.

The model runs in worker thread(s) fed by a queue: requests waiting at the same time are
embedded as one batch (torch is never called concurrently on the model), then each is searched
with its own options. Uploads are bounded twice: by Content-Length before the body is read and by
counting the bytes actually received (chunked uploads send no length).

The service follows the gallery: a background thread reads the stored (uid, generation) every
`poll_s` seconds (one tiny SQLite read) and, when it changed, opens the new generation (faiss
index and metadata pinned together, see reidkit.retrieval.backends.sqlite.snapshot) and swaps the reference between
requests. Each request takes the current gallery once at its start and uses only it, so an answer
never mixes generations and in-flight requests finish on the snapshot they began with. Results
carry `snapshot` ("<uid>-<generation>"); `/images/{id}?snapshot=...` serves the path of that
snapshot (the last few are kept), so a rebuilt gallery cannot show another image under an old id.

Routers: the app is composed of `fastapi.APIRouter`s. The image search routes (`/search`,
`/images/{id}`) are the core router; other packages contribute theirs through `routers=[...]`, each a
function `(get_gallery, authorize) -> APIRouter` (get_gallery() returns the current gallery snapshot;
authorize(request) raises 401 without a valid token). reidkit.video.routes.tracklet_routes is one;
`reidkit serve` composes them in the command layer, so this module imports no package above it. A
router declares its pages with `add_page(router, path, html, title, shown_if)`; `/health` lists them
(`pages`) and `/` links to each page whose `shown_if` count in `/health` is non-zero.

Served files: ``GET /images/{id}`` serves a file only while it is the one indexed
(reidkit.retrieval.served_files).

HEAD: every GET route and page answers HEAD with GET's status and headers and no body (reidkit.retrieval.served_files.HeadAsGet).
A client that goes away while its request body is read (starlette's ClientDisconnect) costs one info line.

Errors: the HTTP status comes from the exception's type, never its text: ReIDError -> 400,
reidkit.errors.NotFound -> 404 (with its `public` message, which names no server path),
uploads.UploadError -> its `http_status` (400 / 413 / 415 / 503 with Retry-After); request
validation (query, path, JSON bodies) -> 422 with a one-line message. Uploads are decoded under a
memory budget (reidkit.retrieval.uploads).
"""

from __future__ import annotations

import asyncio
import hmac
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
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from reidkit.errors import OptionError, ReIDError
from reidkit.retrieval.folder import parse_camera_frame
from reidkit.retrieval.gallery import Gallery
from reidkit.retrieval.served_files import HeadAsGet, IndexedFileResponse, open_indexed, recorded_stat
from reidkit.retrieval.uploads import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MEMORY_BUDGET, UploadPolicy
from reidkit.utils.validate import check_positive

__all__ = [
    "create_app",
    "serve",
    "add_page",
    "json_body",
    "search_routes",
    "RouterFactory",
    "MAX_ID",
    "DEFAULT_MAX_UPLOAD",
    "TOKEN_ENV",
]

logger = logging.getLogger("reidkit.service")

DEFAULT_MAX_UPLOAD = 8 * 1024 * 1024
TOKEN_ENV = "REIDKIT_API_TOKEN"
# Multipart framing (boundaries, part headers) on top of the file bytes themselves.
_MULTIPART_SLACK = 64 * 1024
# The largest id a gallery stores (SQLite INTEGER is a signed 64-bit value).
MAX_ID = 2**63 - 1
# JSON request bodies: a few small fields; bounded before parsing (size, then nesting depth).
MAX_JSON_BYTES = 16 * 1024
MAX_JSON_DEPTH = 8
_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'"
)
_PAGE_KEY = "x-reidkit-page"
# A router factory: (get_gallery, authorize) -> APIRouter.
RouterFactory = Callable[[Callable[[], Gallery], Callable[[Request], None]], APIRouter]
_ID_RX = re.compile(r"^[0-9]{1,16}$")


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
        check_positive("workers", int(workers))
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
            raise OptionError("poll_s", f"must be > 0 seconds, got {poll_s}")
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
                    logger.warning(
                        "could not load the new generation of %s (%s); still serving generation %d",
                        self.db,
                        msg,
                        self._current.generation,
                    )
                last = msg

    def check(self) -> bool:
        """Swap in the stored generation if it is newer than the current one; True when swapped."""
        cur = self._current
        if not cur.changed():
            self._pending_since = None
            return False
        # A writer that has published but not yet finished (the embedded backend's faiss cache): give it a
        # few seconds rather than rebuilding the index here (correct either way, only slower).
        now = time.monotonic()
        if cur.settling():
            if self._pending_since is None:
                self._pending_since = now
            if now - self._pending_since < 10:
                return False
        self._pending_since = None
        try:
            new = cur.reopen(extractor=cur.extractor)
        except ReIDError as exc:
            if "model mismatch" not in str(exc):
                raise
            new = cur.reopen()  # rebuilt with another model: load that one (its stored source)
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


def _page() -> bytes:
    return resources.files("reidkit.retrieval").joinpath("static/index.html").read_bytes()


def add_page(
    router: APIRouter, path: str, html: Callable[[], str | bytes], title: str, shown_if: str | None = None
) -> None:
    """Serve the static page `html()` at GET `path` on `router` and list it in `/health` (`pages`).

    Pages hold no gallery data (they send the user's token with each API call), so they load without
    one. `/` links to the page when `shown_if` is None or `/health[shown_if]` is a non-zero count.
    """

    async def page() -> HTMLResponse:
        return HTMLResponse(html(), headers={"Content-Security-Policy": _CSP})

    router.add_api_route(path, page, methods=["GET"], response_class=HTMLResponse, name=title)
    pages = router.__dict__.setdefault(_PAGE_KEY, [])  # read by create_app when it includes the router
    pages.append({"path": path, "title": title, "shown_if": shown_if})


def _json_depth_ok(data: bytes, limit: int) -> bool:
    """True when no array/object in `data` nests deeper than `limit` (strings skipped, escapes honoured)."""
    depth, in_str, esc = 0, False, False
    for b in data:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:  # backslash
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return False
        elif b in (0x5D, 0x7D):
            depth -= 1
    return True


async def json_body(
    request: Request, model: Any, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """The request's JSON body validated by pydantic `model`; size and nesting depth are bounded before parsing.

    Every refusal is a 422 with a message (a body over `max_bytes` is a 413), never a parser crash.
    """
    from pydantic import ValidationError

    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        chunks.append(chunk)
        if size > max_bytes:
            if not _json_depth_ok(b"".join(chunks)[:max_bytes], max_depth):
                raise HTTPException(422, detail=f"JSON body nested deeper than {max_depth} levels")
            raise HTTPException(413, detail=f"JSON body too large (limit {max_bytes} bytes)")
    data = b"".join(chunks)
    if not _json_depth_ok(data, max_depth):
        raise HTTPException(422, detail=f"JSON body nested deeper than {max_depth} levels")
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise HTTPException(422, detail=_validation_message(exc.errors(include_url=False), body=True)) from None


def _validation_message(errors: Sequence[Mapping[str, Any]], body: bool = False) -> str:
    parts = []
    for err in errors[:5]:
        loc = [str(x) for x in err.get("loc", ()) if not (body and x == "body")]
        if loc and loc[0] in ("query", "path", "header", "body"):
            loc = loc[1:]
        # union members show up as extra location parts ('int', 'constrained-str'): keep the field name
        loc = [x for x in loc if x not in ("int", "str") and not x.startswith(("constrained-", "function-"))]
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":
            msg = "invalid JSON"
        parts.append(f"{'.'.join(loc) or 'body'}: {msg}")
    return "; ".join(dict.fromkeys(parts))


def topk_param(topk: int | None, k: int | None, default: int) -> int:
    """The number of results a request asks for: `topk`, else the deprecated alias `k`, else `default`."""
    if topk is not None and k is not None and topk != k:
        raise HTTPException(400, detail=f"topk={topk} and k={k} (its deprecated alias) disagree; give topk only")
    return topk if topk is not None else k if k is not None else default


def search_routes(
    get_gallery: Callable[[], Gallery],
    authorize: Callable[[Request], None],
    *,
    follower: _Follower,
    batcher: _Batcher,
    uploads: UploadPolicy,
    max_upload_bytes: int,
) -> APIRouter:
    """The core router: `POST /search` (multipart image) and `GET /images/{id}`."""
    router = APIRouter()

    @router.post("/search")
    async def search(
        request: Request,
        topk: int | None = Query(None, ge=1, le=1000, description="number of results (default 20)"),
        k: int | None = Query(None, ge=1, le=1000, deprecated=True, description="deprecated alias of topk"),
        rerank: bool = False,
        exclude_camid: int | None = Query(None, ge=0, le=2**31 - 1),
        exclude_same_camera: bool = False,
    ) -> dict[str, Any]:
        """Rank the gallery for the image in the multipart field `file`: the best `topk` entries (default 20;
        `k` is the deprecated spelling), optionally re-ranked and without one camera's entries."""
        authorize(request)
        k = topk_param(topk, k, 20)
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
        query_camid = parse_camera_frame(upload.filename or "")[0] if upload.filename else None
        camid = exclude_camid
        if camid is None and exclude_same_camera:
            if query_camid is None:
                raise HTTPException(
                    400,
                    detail="exclude_same_camera: the upload's file name gives no camera "
                    "(Market-style '..._c1s1_...'); pass exclude_camid",
                )
            camid = query_camid
        async with uploads.decoded(data) as image:
            t0 = time.perf_counter()
            results, snap = await asyncio.wrap_future(batcher.submit(_Job(image, k, rerank, camid)))
        return {
            "results": results,
            "took_ms": round((time.perf_counter() - t0) * 1000, 2),
            "generation": snap.generation,
            "snapshot": _snapshot_tag(snap),
            "query": {"filename": upload.filename, "camid": query_camid, "excluded_camid": camid},
        }

    @router.get("/images/{image_id}")
    async def image(image_id: str, request: Request, snapshot: str | None = Query(None, max_length=64)) -> Response:
        authorize(request)
        # Only a decimal id reaches the database; the path served is the one stored there.
        if not _ID_RX.match(image_id):
            raise HTTPException(400, detail="image id must be a non-negative integer")
        g = get_gallery()
        if snapshot is not None:
            pinned = follower.snapshot(snapshot)
            if pinned is None:
                raise HTTPException(410, detail=f"gallery snapshot {snapshot} is no longer served; search again")
            g = pinned
        rec = await run_in_threadpool(g.record, int(image_id))
        if rec is None:
            raise HTTPException(404, detail=f"no gallery image with id {image_id}")
        path = Path(rec["path"])
        what = f"gallery image {image_id}"
        fd, st = await run_in_threadpool(open_indexed, path, recorded_stat(rec), what)
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return IndexedFileResponse(fd, st, media, headers={"Cache-Control": "private, max-age=3600"}, what=what)

    return router


def create_app(
    db: str | os.PathLike | Gallery,
    routers: Sequence[RouterFactory] = (),
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    workers: int = 1,
    max_batch: int = 16,
    weights: str | os.PathLike | None = None,
    poll_s: float = 0.5,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    upload_memory_bytes: int = DEFAULT_MEMORY_BUDGET,
    max_pixels_in_flight: int | None = None,
    upload_wait_s: float = 10.0,
    trust_checkpoint: bool = False,
) -> FastAPI:
    """The FastAPI app serving gallery `db` (a folder or an open Gallery) and following its new generations.

    `routers`: extra router factories `(get_gallery, authorize) -> APIRouter` (e.g.
    reidkit.video.routes.tracklet_routes), included after the core search router. `token` falls back
    to $REIDKIT_API_TOKEN; `poll_s` is the period of the new-generation check. Uploads: at most
    `max_image_pixels` decoded pixels each, and `max_pixels_in_flight` (default `upload_memory_bytes
    / uploads.BYTES_PER_PIXEL`) across all requests; a request that does not fit waits
    `upload_wait_s`, then gets 503 with Retry-After. `trust_checkpoint`: a model that runs code (TorchScript)
    may load (CLI --trust-checkpoint); without it such a model is refused.
    """
    check_positive("workers", int(workers))
    gallery = db if isinstance(db, Gallery) else Gallery.open(db, weights=weights, trust_checkpoint=trust_checkpoint)
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    if token is not None and not token.strip():
        raise OptionError("token", "the API token is empty")
    check_positive("max_upload_bytes", int(max_upload_bytes))
    max_upload_bytes = int(max_upload_bytes)
    uploads = UploadPolicy.from_memory(upload_memory_bytes, max_image_pixels, max_pixels_in_flight, upload_wait_s)
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

    app = FastAPI(
        title="reidkit search", version="1", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.gallery = gallery  # the snapshot served at start; app.state.follower.current() is the live one
    app.state.follower = follower
    app.state.batcher = batcher
    app.state.uploads = (
        uploads  # routers decode uploads through it: `async with request.app.state.uploads.decoded(data)`
    )
    app.add_middleware(_BodyLimit, limit=max_upload_bytes + _MULTIPART_SLACK)
    app.add_middleware(HeadAsGet)

    def authorize(request: Request) -> None:
        if secret is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken does not reveal how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), secret):
            raise HTTPException(
                401,
                detail="missing or invalid API token (send 'Authorization: Bearer <token>')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @app.exception_handler(ReIDError)
    async def reid_error(request: Request, exc: ReIDError) -> JSONResponse:
        # the status by type: NotFound -> 404, UploadError -> its own, any other ReIDError -> 400
        status = int(getattr(exc, "http_status", 400))
        detail = getattr(exc, "public", None) or str(exc)
        return JSONResponse({"detail": detail}, status_code=status, headers=getattr(exc, "headers", None) or None)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # the client closed the connection while its body was read: nobody to answer, nothing went wrong here
        logger.info("client went away during %s %s; request dropped", request.method, request.url.path)
        return Response(status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc.errors())}, status_code=422)

    def get_gallery() -> Gallery:
        return follower.current()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        follower.start()  # apps driven without lifespan events (ASGI test transports) follow too
        info = follower.current().health()
        # Unauthenticated: name the model, but not where its file sits on the server.
        info["model"]["source"] = Path(info["model"]["source"]).name
        info["auth"] = secret is not None
        info["max_upload_bytes"] = max_upload_bytes
        info["max_image_pixels"] = uploads.max_image_pixels
        info["pages"] = [dict(p) for p in pages]
        return info

    core = APIRouter()
    add_page(core, "/", _page, "Image search")
    built = [
        core,
        search_routes(
            get_gallery,
            authorize,
            follower=follower,
            batcher=batcher,
            uploads=uploads,
            max_upload_bytes=max_upload_bytes,
        ),
    ]
    built += [make(get_gallery, authorize) for make in routers]
    pages: list[dict[str, Any]] = []
    for router in built:
        app.include_router(router)
        pages += router.__dict__.get(_PAGE_KEY, [])
    return app


def serve(
    db: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    workers: int = 1,
    weights: str | os.PathLike | None = None,
    poll_s: float = 0.5,
    routers: Sequence[RouterFactory] = (),
    **upload_limits: Any,
) -> None:
    """Run the service with uvicorn (blocking); `upload_limits` are create_app's upload keywords."""
    import uvicorn

    if not 1 <= int(port) <= 65535:
        raise OptionError("port", f"expected 1..65535, got {port}")
    app = create_app(
        db,
        routers=routers,
        token=token,
        max_upload_bytes=max_upload_bytes,
        workers=workers,
        weights=weights,
        poll_s=poll_s,
        **upload_limits,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and token is None and not os.environ.get(TOKEN_ENV):
        logger.warning("serving on %s without an API token: anyone who can reach it can search the gallery", host)
    uvicorn.run(app, host=host, port=int(port), log_level="info")
