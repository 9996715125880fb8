"""What people look at while `reidkit watch` runs: a live page (the newest processed frame of each camera with
its person boxes, refreshed every second, and the counters), ``/metrics`` in Prometheus' text format and
``/health`` as JSON, served on 127.0.0.1 by a small HTTP server in the watch process itself."""

from __future__ import annotations

import threading
from typing import Any, cast

LIVE_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>reidkit watch</title>
<style>body{font-family:system-ui,sans-serif;margin:1em;background:#fafafa}h1{font-size:1.3em}
.cams{display:flex;flex-wrap:wrap;gap:1em}.cam{background:#fff;border:1px solid #ddd;padding:.5em;border-radius:4px}
.cam img{display:block;width:480px;background:#222;min-height:270px}.cam .n{font-size:.85em;color:#444;margin-top:.3em}
</style></head><body><h1>reidkit watch: <span id="ids">0</span> identities</h1><div class="cams" id="cams"></div>
<script>
async function tick(){
  const h = await (await fetch('/health')).json();
  document.getElementById('ids').textContent = h.identities;
  const box = document.getElementById('cams');
  for (const [cam, c] of Object.entries(h.cameras)) {
    let d = document.getElementById('cam-' + cam);
    if (!d) { d = document.createElement('div'); d.className = 'cam'; d.id = 'cam-' + cam;
      d.innerHTML = '<b></b><img alt=""><div class="n"></div>'; box.appendChild(d); }
    d.querySelector('b').textContent = cam + (c.connected ? '' : ' (not connected: ' + (c.last_error || '...') + ')');
    if (c.processed > 0) d.querySelector('img').src = '/frame/' + encodeURIComponent(cam) + '.jpg?t=' + Date.now();
    d.querySelector('.n').textContent = c.received + ' frames received, ' + c.processed + ' processed, ' +
      c.skipped + ' skipped, lag ' + c.lag.toFixed(2) + ' s, ' + c.reconnects + ' reconnects, ' +
      c.tracklets + ' tracklets';
  }
}
tick(); setInterval(tick, 1000);
</script></body></html>
"""


def annotated_jpeg(image: Any, boxes: Any, width: int = 480) -> bytes | None:
    """`image` (BGR) with its person `boxes` drawn, at most `width` pixels wide, as JPEG."""
    import cv2

    s = min(1.0, width / image.shape[1])
    out = cv2.resize(image, (round(image.shape[1] * s), round(image.shape[0] * s))) if s < 1.0 else image.copy()
    for x0, y0, x1, y1 in boxes if len(boxes) else []:
        cv2.rectangle(out, (int(x0 * s), int(y0 * s)), (int(x1 * s), int(y1 * s)), (0, 200, 0), 2)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return buf.tobytes() if ok else None


def latest_frame(watch: Any, camera: str) -> tuple[float, bytes] | None:
    """(arrival time, JPEG) of the newest processed frame of `camera` with its person boxes drawn (None: none
    yet); on a cluster, the one its worker last sent."""
    cs = next((c for c in watch.cams if c.camera.name == camera), None)
    if cs is None:
        return None
    if cs.latest is not None:
        image, boxes, wall = cs.latest
        jpeg = annotated_jpeg(image, boxes)
        return None if jpeg is None else (wall, jpeg)
    return cast("tuple[float, bytes] | None", cs.jpeg)  # CameraState.jpeg (the watch is duck-typed here)


def latest_jpeg(watch: Any, camera: str) -> bytes | None:
    """The JPEG of :func:`latest_frame` (None: no frame of that camera yet)."""
    got = latest_frame(watch, camera)
    return None if got is None else got[1]


LIVE_DIR = "live"  # in the gallery's files folder: status.json and CAMERA.jpg, what `reidkit serve` shows
PUBLISH_EVERY = 1.0


def publish_live(watch: Any, running: bool = True) -> None:
    """Write the live view into ``<gallery files>/live/``: each camera's newest annotated frame (``CAMERA.jpg``,
    when it changed) and then ``status.json`` (the status, each frame's time, when it was published and
    whether the watch still runs), every file replaced atomically. A reader (reidkit.video.live_routes) gets
    a whole file or the previous one, and judges staleness from the times inside, never from its own clock
    of reading."""
    import json
    import os
    from pathlib import Path

    def atomic_write_bytes(path: Path, data: bytes) -> None:  # a view, not a record: replaced, not fsynced
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    folder = Path(watch.gallery.files_dir) / LIVE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    done = watch.__dict__.setdefault("_published_frames", {})
    frames = {}
    for cs in watch.cams:
        name = cs.camera.name
        wall = cs.latest[2] if cs.latest is not None else (cs.jpeg[0] if cs.jpeg is not None else None)
        if wall is not None and done.get(name) != wall:
            got = latest_frame(watch, name)
            if got is not None:
                atomic_write_bytes(folder / f"{name}.jpg", got[1])
                done[name] = got[0]
        if name in done:
            frames[name] = {"time": done[name], "file": f"{name}.jpg"}
    doc = {
        "published": time_now(),
        "every": PUBLISH_EVERY,
        "running": bool(running),
        "pid": os.getpid(),
        "frames": frames,
        "status": watch.status(),
    }
    atomic_write_bytes(folder / "status.json", json.dumps(doc).encode())


def time_now() -> float:
    """The wall clock (Unix seconds)."""
    import time

    return time.time()


def prometheus_text(status: dict[str, Any]) -> str:
    """The status in Prometheus' text exposition format (counters and gauges per camera)."""
    metrics = [
        ("frames_received_total", "counter", "received", "frames read from the stream"),
        ("frames_processed_total", "counter", "processed", "frames detected and tracked"),
        ("frames_skipped_total", "counter", "skipped", "frames dropped because processing was behind"),
        ("frames_corrupt_total", "counter", "corrupt", "frames dropped as corrupt"),
        ("reconnects_total", "counter", "reconnects", "reconnections after a dropped stream"),
        ("tracklets_total", "counter", "tracklets", "tracklets committed by this run"),
        ("lag_seconds", "gauge", "lag", "seconds the last processed frame waited"),
        ("last_frame_age_seconds", "gauge", "last_frame_age", "seconds since the newest frame arrived"),
        ("connected", "gauge", "connected", "1 while the stream is connected"),
    ]
    out = []
    for name, kind, key, text in metrics:
        out += [f"# HELP reidkit_{name} {text}", f"# TYPE reidkit_{name} {kind}"]
        for cam, c in sorted(status["cameras"].items()):
            v = c.get(key)
            if v is None:
                continue
            out.append(f'reidkit_{name}{{camera="{cam}"}} {float(v):g}')
    out += [
        "# HELP reidkit_identities global identities",
        "# TYPE reidkit_identities gauge",
        f"reidkit_identities {int(status['identities'])}",
        "# HELP reidkit_tracklets_deleted_total tracklets deleted by retention",
        "# TYPE reidkit_tracklets_deleted_total counter",
        f"reidkit_tracklets_deleted_total {int(status['deleted'])}",
    ]
    return "\n".join(out) + "\n"


def serve_status(watch: Any, port: int, host: str = "127.0.0.1") -> Any:
    """A small HTTP server (in a daemon thread) of `watch`: ``/`` (the live page), ``/frame/CAMERA.jpg``,
    ``/metrics`` (Prometheus text) and ``/health`` (JSON); returns it (``.server_address``, ``.shutdown()``)."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?")[0]
            if path == "/metrics":
                body, kind = prometheus_text(watch.status()).encode(), "text/plain; version=0.0.4"
            elif path == "/health":
                body, kind = json.dumps(watch.status()).encode(), "application/json"
            elif path == "/":
                body, kind = LIVE_PAGE.encode(), "text/html; charset=utf-8"
            elif path.startswith("/frame/") and path.endswith(".jpg"):
                jpeg = latest_jpeg(watch, path[len("/frame/") : -len(".jpg")])
                if jpeg is None:
                    self.send_error(404, "no frame of that camera yet")
                    return
                body, kind = jpeg, "image/jpeg"
            else:
                self.send_error(404, "not found: /, /frame/CAMERA.jpg, /metrics or /health")
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    try:
        server = ThreadingHTTPServer((host, int(port)), Handler)
    except OSError as exc:
        from reidkit.errors import OptionError

        raise OptionError("status_port", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="reidkit-watch-status", daemon=True).start()
    return server
