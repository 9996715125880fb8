"""The live cameras in `reidkit serve` (issue 32): a watch writing the gallery publishes its view (reidkit.video
.watch_status.publish_live), the service shows it at /live with each frame's age, /live/status and /metrics say how
old their figures are, and a stopped watch is shown as stopped, never as live. Browser-tested in headless Chromium;
REIDKIT_SCREENSHOT_LIVE_SERVE=docs/live_serve.png saves the picture of the page."""

from __future__ import annotations

import os
import shutil
import time
from threading import Event, Thread

import pytest
from factories import free_port, serve_stream

from reidkit.data.scene import generate_scene
from reidkit.video.cameras import Camera

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg to serve streams")
TOKEN = "live-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_serve_shows_the_cameras_a_watch_writes_live_with_their_age(tmp_path):
    import httpx

    from reidkit.retrieval.service import create_app
    from reidkit.video.identity_routes import identity_router
    from reidkit.video.live_routes import live_router
    from reidkit.video.routes import tracklet_routes
    from reidkit.video.watch import watch
    from factories import serving

    rep = generate_scene(tmp_path / "scene", cams=3, ids=6, frames=120, fps=20.0, speed=1.0, topology="chain")
    ports = [free_port() for _ in rep.cameras]
    servers = [serve_stream(v, p, loop=True) for v, p in zip(rep.videos, ports)]  # cameras until stopped
    cams = [Camera(c, f"http://127.0.0.1:{p}/", 20.0, str(g)) for c, p, g in zip(rep.cameras, ports, rep.gt)]
    db, stop, result = tmp_path / "db", Event(), {}
    t = Thread(
        target=lambda: result.update(watch(db, cams, commit_every=0.5, identities_every=1.0, buffer=100000, stop=stop)),
        daemon=True,
    )
    t.start()
    try:
        deadline = time.monotonic() + 300
        while not (db / "live" / "status.json").is_file():  # the gallery exists once the watch published
            assert t.is_alive() and time.monotonic() < deadline, "the watch published nothing"
            time.sleep(0.2)
        app = create_app(db, routers=[tracklet_routes, identity_router, live_router], token=TOKEN, poll_s=0.2)
        with serving(app) as url:
            assert httpx.get(url + "/live/status", timeout=30).status_code == 401  # the data needs the token
            deadline = time.monotonic() + 300
            while True:
                live = httpx.get(url + "/live/status", headers=AUTH, timeout=30).json()
                cams_now = live["status"]["cameras"]
                if all(c["processed"] > 0 and c["frame_age"] is not None for c in cams_now.values()):
                    break
                assert time.monotonic() < deadline, live
                time.sleep(0.3)
            assert live["running"] and not live["stale"] and live["age"] < 10, live
            r = httpx.get(url + "/live/frames/cam2.jpg", headers=AUTH, timeout=30)
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            assert 0 <= float(r.headers["x-frame-age"]) < 30 and r.content[:2] == b"\xff\xd8"
            assert httpx.get(url + "/live/frames/nope.jpg", headers=AUTH, timeout=30).status_code == 404
            metrics = httpx.get(url + "/metrics", headers=AUTH, timeout=30).text
            for name in ("frames_received_total", "frames_skipped_total", "lag_seconds", "reconnects_total"):
                assert f'reidkit_{name}{{camera="cam1"}}' in metrics, name
            assert "reidkit_live_status_age_seconds " in metrics and "reidkit_live_running 1" in metrics
            _browser(url, rep.cameras, running=True, shot=tmp_path / "live.png")
            stop.set()
            t.join(timeout=120)
            # the watch stopped: the last view stays readable, and says it is not live
            live = httpx.get(url + "/live/status", headers=AUTH, timeout=30).json()
            assert not live["running"] and live["stale"], live
            assert "reidkit_live_running 0" in httpx.get(url + "/metrics", headers=AUTH, timeout=30).text
            _browser(url, rep.cameras, running=False, shot=None)
    finally:
        stop.set()
        t.join(timeout=120)
        for s in servers:
            s.kill()
    assert result["identities"] >= 1


def _browser(url, cameras, running, shot):
    """Headless Chromium on /live (the token typed in): a frame, its age and the counters per camera; a banner
    only when the watch is not live."""
    from factories import chromium_page

    with chromium_page(1540, 460, bypass_csp=True) as page:
        page.goto(url + "/live")
        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
        page.wait_for(
            f"document.querySelectorAll('.cam img').length === {len(cameras)} && "
            "[...document.querySelectorAll('.cam img')].every(i => i.complete && i.naturalWidth === 320)",
            timeout=240,
        )
        page.wait_for("+document.getElementById('ids').textContent > 0", timeout=240)
        text = page.inner_text("#cams")
        for cam in cameras:
            assert cam in text
        assert text.count("frames received") == len(cameras) and text.count(" s old") == len(cameras), text
        if running:
            page.wait_for("getComputedStyle(document.getElementById('banner')).display === 'none'")
        else:
            page.wait_for("document.getElementById('banner').textContent.includes('stopped')", timeout=30)
        if shot is not None:
            page.screenshot(shot, full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("REIDKIT_SCREENSHOT_LIVE_SERVE"):  # the picture the docs show
                shutil.copy(shot, os.environ["REIDKIT_SCREENSHOT_LIVE_SERVE"])


def test_read_live_of_a_status_that_is_not_a_json_object_is_none(tmp_path) -> None:
    # what `reidkit serve` shows for a status.json it did not publish: no live view, not a 500 (AttributeError)
    from types import SimpleNamespace

    from reidkit.video.live_routes import read_live
    from reidkit.video.watch_status import LIVE_DIR

    (tmp_path / LIVE_DIR).mkdir()
    (tmp_path / LIVE_DIR / "status.json").write_text("[1, 2]")
    assert read_live(SimpleNamespace(files_dir=str(tmp_path))) is None
    (tmp_path / LIVE_DIR / "status.json").write_text('{"published": 0, "running": true}')
    assert read_live(SimpleNamespace(files_dir=str(tmp_path)), now=10.0)["stale"] is True
