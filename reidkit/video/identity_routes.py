"""HTTP routes for global identities, as one router: ``identity_router(get_gallery, authorize) -> APIRouter``.

- ``GET /identities``: the page (reidkit/retrieval/static/identities.html): every global identity with
  its tracklets per camera on a timeline, with thumbnails; a click on a tracklet shows its
  appearances (``GET /tracklets/{id}`` of reidkit.video.routes) and thumbnails (``GET /thumbs/{name}``).
- ``GET /identities/list``: the identities as JSON: ``{"identities": [{id, cameras, t_start, t_end,
  tracklets: [tracklet hit]}], "cameras": [...], "t_min", "t_max", "tracklets", "unassigned", "params"}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from fastapi import APIRouter, HTTPException, Request

from reidkit.retrieval.service import add_page

_PAGE = Path(__file__).resolve().parent.parent / "retrieval" / "static" / "identities.html"


def identity_list(gallery: Any) -> dict[str, Any]:
    """The JSON answer of ``GET /identities/list`` for a gallery."""
    from reidkit.video.identities import identity_groups, stored_identities
    from reidkit.video.search import hit

    state = stored_identities(gallery)
    groups = identity_groups(gallery)
    rows = gallery.entries(kind="tracklet")
    out = [
        {
            "id": g["id"],
            "cameras": g["cameras"],
            "t_start": g["t_start"],
            "t_end": g["t_end"],
            "tracklets": [hit(r) for r in g["tracklets"]],
        }
        for g in groups
    ]
    times = [t for r in rows for t in (r.get("t_start"), r.get("t_end")) if t is not None]
    return {
        "identities": out,
        "cameras": sorted({str(r["camera"]) for r in rows if r.get("camera") is not None}),
        "t_min": min(times, default=0.0),
        "t_max": max(times, default=0.0),
        "tracklets": len(rows),
        "unassigned": len(rows) - sum(len(g["tracklets"]) for g in groups),
        "params": state.get("params") or {},
    }


def identity_router(get_gallery: Callable[[], Any], authorize: Callable[[Any], None]) -> APIRouter:
    """The /identities page and its data route; `authorize(request)` guards the data."""
    from fastapi.concurrency import run_in_threadpool

    from reidkit.errors import ReIDError

    router = APIRouter()

    # a static page without data (it sends the user's token with each API call); `/` links to it
    # once the gallery holds identities
    add_page(router, "/identities", lambda: _PAGE.read_text(encoding="utf-8"), "Identities", shown_if="identities")

    @router.get("/identities/list")
    async def identities_list(request: Request) -> dict[str, Any]:
        authorize(request)
        try:
            return await run_in_threadpool(identity_list, get_gallery())
        except ReIDError as exc:
            raise HTTPException(400, detail=str(exc)) from None

    return router
