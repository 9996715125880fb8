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
Background threads (the batcher, the follower): reidkit.retrieval.search_workers; bounded request input
(body limit, JSON bodies, validation messages, topk): reidkit.retrieval.http_input.
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
import re
import time
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from reidkit.errors import OptionError, ReIDError
from reidkit.retrieval.folder import parse_camera_frame
from reidkit.retrieval.gallery import Gallery
from reidkit.retrieval.http_input import MULTIPART_SLACK, BodyLimit, json_body, topk_param, validation_message
from reidkit.retrieval.search_workers import Batcher, Follower, SearchJob, snapshot_tag
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
# The largest id a gallery stores (SQLite INTEGER is a signed 64-bit value).
MAX_ID = 2**63 - 1
_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'"
)
_PAGE_KEY = "x-reidkit-page"
# A router factory: (get_gallery, authorize) -> APIRouter.
RouterFactory = Callable[[Callable[[], Gallery], Callable[[Request], None]], APIRouter]
_ID_RX = re.compile(r"^[0-9]{1,16}$")


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


def search_routes(
    get_gallery: Callable[[], Gallery],
    authorize: Callable[[Request], None],
    *,
    follower: Follower,
    batcher: Batcher,
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
        if length is not None and length.isdigit() and int(length) > max_upload_bytes + MULTIPART_SLACK:
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
            results, snap = await asyncio.wrap_future(batcher.submit(SearchJob(image, k, rerank, camid)))
        return {
            "results": results,
            "took_ms": round((time.perf_counter() - t0) * 1000, 2),
            "generation": snap.generation,
            "snapshot": snapshot_tag(snap),
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
    follower = Follower(gallery, poll_s=poll_s)
    batcher = Batcher(follower.current, workers=workers, max_batch=max_batch)
    secret = token.encode() if token else None

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
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
    app.add_middleware(BodyLimit, limit=max_upload_bytes + MULTIPART_SLACK)
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
        return JSONResponse({"detail": validation_message(exc.errors())}, status_code=422)

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
