"""HTTP routes for tracklets, added to the search service by ``add_routes(app, get_gallery, authorize)``
(reidkit.retrieval.service.create_app calls it):

- ``POST /tracklets/search``: multipart ``file`` (a crop, or a frame with form field ``box`` =
  ``x1,y1,x2,y2``; optional ``exclude_camera``) or JSON ``{"tracklet": id-or-key}``; query ``k``.
  Returns ranked tracklets of other cameras (see reidkit.video.search).
- ``GET /tracklets/{id}``: the tracklet and its appearances in time order.
- ``GET /thumbs/{name}``: a thumbnail JPEG. Only a plain file name of the form the ingestion writes
  reaches the file system, and only inside ``DB/thumbs``: no path traversal.
- ``GET /tracklets``: the page (reidkit/retrieval/static/tracklets.html).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

# module level: FastAPI resolves the (postponed) annotations of the handlers in this module's globals
from fastapi import HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse

_THUMB_RX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.jpg$")
_PAGE = Path(__file__).resolve().parent.parent / "retrieval" / "static" / "tracklets.html"


def add_routes(app: Any, get_gallery: Callable[[], Any], authorize: Callable[[Any], None]) -> None:
    """Add the tracklet routes to a FastAPI app serving `get_gallery()`; `authorize(request)` guards data routes."""
    from fastapi.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile

    from reidkit.errors import ReIDError
    from reidkit.video.search import appearances, parse_box, search_tracklets

    def _bad(exc: ReIDError) -> HTTPException:
        return HTTPException(404 if "no tracklet" in str(exc) else 400, detail=str(exc))

    @app.get("/tracklets", response_class=HTMLResponse)
    async def tracklets_page() -> HTMLResponse:
        # static page without data; it sends the user's token with each API call
        return HTMLResponse(_PAGE.read_text(encoding="utf-8"), headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                       "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"})

    @app.post("/tracklets/search")
    async def tracklets_search(request: Request, k: int = Query(10, ge=1, le=200)) -> dict[str, Any]:
        authorize(request)
        g = get_gallery()
        ctype = request.headers.get("content-type", "")
        try:
            if ctype.startswith("application/json"):
                try:
                    body = await request.json()
                except ValueError:
                    raise HTTPException(400, detail="invalid JSON body") from None
                if not isinstance(body, dict) or body.get("tracklet") in (None, ""):
                    raise HTTPException(400, detail='expected JSON {"tracklet": <id or key>}')
                return await run_in_threadpool(search_tracklets, g, None, None, str(body["tracklet"]), k,
                                               body.get("exclude_camera"))
            if not ctype.startswith("multipart/form-data"):
                raise HTTPException(400, detail="expected a multipart upload (field 'file', optional 'box') "
                                                'or JSON {"tracklet": id}')
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
            from reidkit.retrieval.service import _decode_upload

            image = await run_in_threadpool(_decode_upload, data)
            box = parse_box(box_text if isinstance(box_text, str) else None)
            return await run_in_threadpool(search_tracklets, g, image, box, None, k, exclude)
        except ReIDError as exc:
            raise _bad(exc) from None

    @app.get("/tracklets/{ref}")
    async def tracklet(ref: str, request: Request) -> dict[str, Any]:
        authorize(request)
        if not re.match(r"^[A-Za-z0-9_.-]{1,300}$", ref):
            raise HTTPException(400, detail="tracklet: expected a gallery id or a tracklet key")
        try:
            return await run_in_threadpool(appearances, get_gallery(), ref)
        except ReIDError as exc:
            raise _bad(exc) from None

    @app.get("/thumbs/{name}")
    async def thumb(name: str, request: Request) -> FileResponse:
        authorize(request)
        if not _THUMB_RX.match(name) or ".." in name:
            raise HTTPException(400, detail="thumbnail: expected a file name like <tracklet>_<n>.jpg")
        folder = (Path(get_gallery().db) / "thumbs").resolve()
        path = folder / name
        if path.parent != folder or not path.is_file():
            raise HTTPException(404, detail=f"no thumbnail {name}")
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
