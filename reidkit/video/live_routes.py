"""Live cameras in ``reidkit serve``: what a ``reidkit watch`` writing the gallery publishes, as one router
``live_router(get_gallery, authorize) -> APIRouter``.

The watch writes ``<gallery files>/live/`` every second (reidkit.video.watch_status.publish_live): each camera's
newest annotated frame (``CAMERA.jpg``) and ``status.json`` (the counters, identities, each frame's time, when
it was published, whether the watch still runs), each replaced atomically. The service only reads them, so it
serves a gallery while a watch in another process (or a cluster's driver) writes it, and it never passes off an
old answer as a new one: every answer carries its age, measured from the times the watch wrote.

- ``GET /live``: the page: each camera's newest frame, refreshed every second, with its age and counters; a
  banner when the watch stopped or its last word is older than a few publishing periods.
- ``GET /live/status``: JSON: the published status plus ``age`` (seconds since it was published), ``stale``
  (not running, or older than ``STALE_AFTER`` periods) and, per camera, ``frame_age``.
- ``GET /live/frames/{camera}.jpg``: the newest frame, with ``X-Frame-Time`` and ``X-Frame-Age`` headers.
- ``GET /metrics``: the counters in Prometheus' text format (reidkit.video.watch_status.prometheus_text), with
  ``reidkit_live_status_age_seconds`` and ``reidkit_live_running`` so that a scrape can tell a stale view.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from reidkit.retrieval.service import add_page
from reidkit.video.decode import safe_name
from reidkit.video.watch_status import LIVE_DIR, prometheus_text

STALE_AFTER = 5.0  # publishing periods after which the view is stale


def read_live(gallery: Any, now: float | None = None) -> dict[str, Any] | None:
    """The live view a watch published into `gallery` (None: none), with its ages (module docstring)."""
    path = Path(gallery.files_dir) / LIVE_DIR / "status.json"
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):  # not a status this module published
        return None
    now = time.time() if now is None else now
    age = max(0.0, now - float(doc.get("published", 0.0)))
    every = float(doc.get("every", 1.0))
    doc["age"] = round(age, 3)
    doc["stale"] = (not doc.get("running", False)) or age > STALE_AFTER * every
    for name, cam in doc.get("status", {}).get("cameras", {}).items():
        frame = doc.get("frames", {}).get(name)
        cam["frame_age"] = None if frame is None else round(max(0.0, now - float(frame["time"])), 3)
    return doc


def live_metrics(doc: dict[str, Any]) -> str:
    """Prometheus text of a published live view, with its age and whether its watch runs."""
    extra = [
        "# HELP reidkit_live_status_age_seconds seconds since reidkit watch published these figures",
        "# TYPE reidkit_live_status_age_seconds gauge",
        f"reidkit_live_status_age_seconds {float(doc['age']):g}",
        "# HELP reidkit_live_running 1 while the reidkit watch that publishes them runs",
        "# TYPE reidkit_live_running gauge",
        f"reidkit_live_running {int(bool(doc.get('running')) and not doc['stale'])}",
    ]
    return prometheus_text(doc["status"]) + "\n".join(extra) + "\n"


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>reidkit live cameras</title>
<style>body{font-family:system-ui,sans-serif;margin:1em;background:#fafafa}h1{font-size:1.3em}
.cams{display:flex;flex-wrap:wrap;gap:1em}.cam{background:#fff;border:1px solid #ddd;padding:.5em;border-radius:4px}
.cam img{display:block;width:480px;background:#222;min-height:270px}.cam .n{font-size:.85em;color:#444;margin-top:.3em}
.age{font-weight:bold}.old{color:#b00}#banner{padding:.4em;margin-bottom:.6em;background:#fdd;display:none}
</style></head><body><h1>Live cameras: <span id="ids">0</span> identities</h1>
<label>Token <input id="token" type="password" size="12" placeholder="(if required)"></label>
<div id="banner"></div><div class="cams" id="cams"></div>
<script>
const $ = (id) => document.getElementById(id);
function headers() { const t = $('token').value.trim(); return t ? {Authorization: 'Bearer ' + t} : {}; }
async function tick() {
  const r = await fetch('/live/status', {headers: headers()});
  const banner = $('banner');
  if (!r.ok) { banner.style.display = 'block';
    banner.textContent = r.status === 404 ? 'No reidkit watch is writing this gallery.' : 'Error ' + r.status; return; }
  const h = await r.json();
  banner.style.display = h.stale ? 'block' : 'none';
  banner.textContent = (h.running ? 'reidkit watch silent for ' : 'reidkit watch stopped; last update ') +
    h.age.toFixed(0) + ' s ago: what follows is not live.';
  $('ids').textContent = h.status.identities;
  for (const [cam, c] of Object.entries(h.status.cameras)) {
    let d = $('cam-' + cam);
    if (!d) { d = document.createElement('div'); d.className = 'cam'; d.id = 'cam-' + cam;
      d.innerHTML = '<b></b> <span class="age"></span><img alt=""><div class="n"></div>'; $('cams').appendChild(d); }
    d.querySelector('b').textContent = cam + (c.connected ? '' : ' (not connected: ' + (c.last_error || '...') + ')');
    const age = d.querySelector('.age');
    age.textContent = c.frame_age === null ? 'no frame yet' : 'frame ' + c.frame_age.toFixed(1) + ' s old';
    age.className = 'age' + (c.frame_age === null || c.frame_age > 5 || h.stale ? ' old' : '');
    if (c.frame_age !== null) {
      const f = await fetch('/live/frames/' + encodeURIComponent(cam) + '.jpg?t=' + Date.now(), {headers: headers()});
      if (f.ok) { const img = d.querySelector('img'); const old = img.src;
        img.src = URL.createObjectURL(await f.blob()); if (old.startsWith('blob:')) URL.revokeObjectURL(old); }
    }
    d.querySelector('.n').textContent = c.received + ' frames received, ' + c.processed + ' processed, ' +
      c.skipped + ' skipped, lag ' + c.lag.toFixed(2) + ' s, ' + c.reconnects + ' reconnects, ' +
      c.tracklets + ' tracklets';
  }
}
$('token').addEventListener('change', tick);
tick(); setInterval(tick, 1000);
</script></body></html>
"""


def live_router(get_gallery: Callable[[], Any], authorize: Callable[[Any], None]) -> APIRouter:
    """The /live page, its data routes and /metrics; `authorize(request)` guards the data."""
    router = APIRouter()
    add_page(router, "/live", lambda: _PAGE, "Live cameras", shown_if="tracklets")

    def current(request: Request) -> dict[str, Any]:
        authorize(request)
        doc = read_live(get_gallery())
        if doc is None:
            raise HTTPException(404, "no live view: no reidkit watch is writing this gallery")
        return doc

    @router.get("/live/status")
    async def live_status(request: Request) -> dict[str, Any]:
        return current(request)

    @router.get("/live/frames/{name}")
    async def live_frame(name: str, request: Request) -> Response:
        doc = current(request)
        camera = name[: -len(".jpg")] if name.endswith(".jpg") else ""
        frame = doc.get("frames", {}).get(camera)
        if not camera or safe_name(camera) != camera or frame is None:
            raise HTTPException(404, "no frame of that camera")
        try:
            data = (Path(get_gallery().files_dir) / LIVE_DIR / f"{camera}.jpg").read_bytes()
        except OSError:
            raise HTTPException(404, "no frame of that camera") from None
        age = max(0.0, time.time() - float(frame["time"]))
        headers = {
            "X-Frame-Time": f"{float(frame['time']):.3f}",
            "X-Frame-Age": f"{age:.3f}",
            "Cache-Control": "no-store",
        }
        return Response(data, media_type="image/jpeg", headers=headers)

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        doc = current(request)
        return Response(live_metrics(doc), media_type="text/plain; version=0.0.4")

    return router
