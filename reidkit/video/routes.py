"""HTTP routes for tracklets: ``tracklet_routes(get_gallery, authorize) -> fastapi.APIRouter``, a router
for reidkit.retrieval.service.create_app(..., routers=[tracklet_routes]) (`reidkit serve` composes it):

- ``POST /tracklets/search``: multipart ``file`` (a crop, or a frame with form field ``box`` =
  ``x1,y1,x2,y2``; optional ``exclude_camera``) or JSON ``{"tracklet": id-or-key, "exclude_camera":
  name}`` (validated: ids within SQLite's integer range, keys of a plain form, bounded size and
  depth; 422 otherwise); query ``topk`` (default 10; ``k``, its old spelling, still accepted). Returns
  ranked tracklets of other cameras (reidkit.video.search).
- ``GET /tracklets/list?limit=200``: the tracklets by camera and time (the page shows them on load).
- ``GET /tracklets/{id}``: the tracklet and its appearances in time order.
- ``GET /thumbs/{name}``: a thumbnail JPEG. Only a plain file name of the form the ingestion writes
  reaches the file system, and only inside ``DB/thumbs``: no path traversal. Only a thumbnail a stored
  tracklet names is served, and only while it is the file written at ingestion (no symbolic link or
  other file type; size and mtime as recorded in the tracklet's meta ``thumb_stats``, where recorded:
  see reidkit.retrieval.served_files.open_indexed).
- ``GET /tracklets``: the page (reidkit/retrieval/static/tracklets.html), linked from ``/`` when the
  gallery holds tracklets.

Errors keep their type: a missing tracklet is reidkit.errors.NotFound (404 by the service's handler),
any other ReIDError is 400; uploads are decoded under the service's memory budget.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Callable, Union

# module level: FastAPI resolves the (postponed) annotations of the handlers in this module's globals
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.datastructures import UploadFile

from reidkit.retrieval.served_files import IndexedFileResponse, open_indexed, recorded_stat
from reidkit.retrieval.http_input import json_body, topk_param
from reidkit.retrieval.service import MAX_ID, add_page
from reidkit.video.search import appearances, hit, parse_box, search_tracklets

_THUMB_RX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.jpg$")
_REF_PATTERN = r"^[A-Za-z0-9_.-]{1,300}$"
_REF_RX = re.compile(_REF_PATTERN)
_PAGE = Path(__file__).resolve().parent.parent / "retrieval" / "static" / "tracklets.html"

TrackletId = Annotated[int, Field(strict=True, ge=0, le=MAX_ID)]
TrackletKey = Annotated[str, StringConstraints(pattern=_REF_PATTERN)]
CameraName = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class TrackletQuery(BaseModel):
    """JSON body of ``POST /tracklets/search``."""

    model_config = ConfigDict(extra="forbid")
    tracklet: Union[TrackletId, TrackletKey]
    exclude_camera: CameraName | None = None


def _check_ref(ref: str) -> str:
    """A tracklet reference of a plain form; a numeric one within the gallery's id range (else 422)."""
    if not _REF_RX.match(ref):
        raise HTTPException(
            422, detail="tracklet: expected a gallery id or a tracklet key ([A-Za-z0-9_.-], at most 300 characters)"
        )
    if ref.isdigit() and int(ref) > MAX_ID:
        raise HTTPException(422, detail=f"tracklet: id {ref} is beyond the largest gallery id ({MAX_ID})")
    return ref


def _listed_thumbs(rec: dict[str, Any]) -> list[str]:
    """The thumbnail names a tracklet entry's meta lists."""
    meta = rec.get("meta")
    thumbs = meta.get("thumbs") if isinstance(meta, dict) else None
    return [t for t in thumbs if isinstance(t, str)] if isinstance(thumbs, list) else []


def list_tracklets(gallery: Any, limit: int) -> dict[str, Any]:
    """{total, tracklets: the first `limit` ordered by (camera, t_start, id), each as a search hit}."""
    ents = gallery.entries(kind="tracklet")
    ents.sort(key=lambda e: (str(e.get("camera") or ""), e.get("t_start") or 0.0, e["id"]))
    return {"total": len(ents), "tracklets": [hit(e) for e in ents[:limit]]}


def tracklet_routes(get_gallery: Callable[[], Any], authorize: Callable[[Request], None]) -> APIRouter:
    """The tracklet router over `get_gallery()` (the current snapshot); `authorize(request)` guards data routes."""
    router = APIRouter()
    add_page(router, "/tracklets", lambda: _PAGE.read_text(encoding="utf-8"), "Tracklets", shown_if="tracklets")

    @router.post("/tracklets/search")
    async def tracklets_search(
        request: Request,
        topk: int | None = Query(None, ge=1, le=200, description="number of results (default 10)"),
        k: int | None = Query(None, ge=1, le=200, deprecated=True, description="deprecated alias of topk"),
    ) -> dict[str, Any]:
        """Tracklets of other cameras matching an uploaded crop (or box of a frame) or a stored tracklet."""
        authorize(request)
        k = topk_param(topk, k, 10)
        g = get_gallery()
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            q = await json_body(request, TrackletQuery)
            ref = _check_ref(str(q.tracklet))
            return await run_in_threadpool(search_tracklets, g, None, None, ref, k, q.exclude_camera)
        if not ctype.startswith("multipart/form-data"):
            raise HTTPException(
                400, detail="expected a multipart upload (field 'file', optional 'box') or JSON {\"tracklet\": id}"
            )
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, detail="expected the image in the multipart field 'file'")
        data = await upload.read()
        box_text = form.get("box")
        exclude = form.get("exclude_camera") or None
        await form.close()
        if not data:
            raise HTTPException(400, detail="empty upload")
        if exclude is not None and (not isinstance(exclude, str) or len(exclude) > 200):
            raise HTTPException(422, detail="exclude_camera: expected a camera name (at most 200 characters)")
        box = parse_box(box_text if isinstance(box_text, str) else None)
        # a box is in the frame's own pixels: decode at full size then (no reduced JPEG decoding)
        async with request.app.state.uploads.decoded(data, draft_min_side=None if box else 512) as image:
            return await run_in_threadpool(search_tracklets, g, image, box, None, k, exclude)

    @router.get("/tracklets/list")
    async def tracklets_list(request: Request, limit: int = Query(200, ge=1, le=10_000)) -> dict[str, Any]:
        """The gallery's tracklets by camera and start time (the first `limit`), for the page to show at once."""
        authorize(request)
        return await run_in_threadpool(list_tracklets, get_gallery(), limit)

    @router.get("/tracklets/{ref}")
    async def tracklet(ref: str, request: Request) -> dict[str, Any]:
        authorize(request)
        return await run_in_threadpool(appearances, get_gallery(), _check_ref(ref))

    @router.get("/thumbs/{name}")
    async def thumb(name: str, request: Request) -> Response:
        authorize(request)
        if not _THUMB_RX.match(name) or ".." in name:
            raise HTTPException(400, detail="thumbnail: expected a file name like <tracklet>_<n>.jpg")
        g = get_gallery()
        # the ingestion names a tracklet's thumbnails <key>_<n>.jpg: serve only one its stored entry lists
        key = name.rpartition("_")[0]
        rows = await run_in_threadpool(g.entries, kind="tracklet", tracklet=key) if _REF_RX.match(key) else []
        rec = next((r for r in rows if name in _listed_thumbs(r)), None)
        folder = (Path(g.files_dir) / "thumbs").resolve()
        path = folder / name
        if rec is None or path.parent != folder:
            raise HTTPException(404, detail=f"no thumbnail {name}")
        what = f"thumbnail {name}"
        fd, st = await run_in_threadpool(open_indexed, path, recorded_stat(rec, name), what)
        return IndexedFileResponse(fd, st, "image/jpeg", headers={"Cache-Control": "private, max-age=3600"}, what=what)

    return router


__all__ = ["tracklet_routes", "TrackletQuery"]
