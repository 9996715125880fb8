"""The web page in headless Chromium: token prompt, drag-and-drop and file upload, ranked grid, screenshot.

Set REIDKIT_SCREENSHOT=/path/to.png to also save the screenshot there (docs/service.png is made so).
"""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import pytest

from factories import CHROMIUM, chromium_page, screenshot, serving

TOKEN = "browser-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The service (ImageNet EfficientNet-Lite0 gallery of synthetic people) on a free loopback port."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"chromium not found at {CHROMIUM}")
    from reidkit.data.synthetic import generate
    from reidkit.retrieval.gallery import Gallery
    from reidkit.retrieval.folder import parse_camera_frame
    from reidkit.retrieval.service import create_app

    root = tmp_path_factory.mktemp("browser")
    syn = generate(root / "syn", ids=10, images_per_id=5, cams=3, seed=7, workers=1)
    gal = root / "gallery"
    shutil.copytree(syn / "bounding_box_test", gal)
    query = sorted((syn / "query").glob("*.jpg"))[1]
    pcam = (parse_camera_frame(query)[0] + 1) % 3
    planted = gal / f"{query.name[:4]}_c{pcam + 1}s9_000001_01.jpg"  # same person id, other camera
    shutil.copy(query, planted)
    gallery = Gallery.build(gal, root / "db")  # no weights: the offline ImageNet extractor
    app = create_app(gallery, token=TOKEN)

    with serving(app) as url:
        yield {"url": url, "query": query, "planted": planted, "gallery": gallery}


def _drop(page, path: Path) -> None:
    """Drop a file on the drop zone the way a desktop drag-and-drop does (a DataTransfer with a File)."""
    data = base64.b64encode(path.read_bytes()).decode()
    page.call(
        """(b64, name) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: "image/jpeg" }));
            const zone = document.querySelector("#drop");
            for (const kind of ["dragenter", "drop"]) {
                zone.dispatchEvent(new DragEvent(kind, { dataTransfer: dt, bubbles: true, cancelable: true }));
            }
        }""",
        data,
        path.name,
    )


def _first_card(page) -> dict:
    page.wait_for("document.querySelector('#results').dataset.ready === '1'")
    return page.evaluate("(c => ({id: +c.dataset.id, path: c.dataset.path}))(document.querySelector('#results .card'))")


def test_upload_shows_ranked_grid(server, tmp_path):
    # The page's CSP forbids eval; DevTools' evaluations are not bound by it, bypassed anyway as a user's tools are.
    with chromium_page(1280, 760, bypass_csp=True) as page:
        page.goto(server["url"] + "/")
        page.wait_for("document.querySelector('#info').textContent.startsWith('gallery: ')")
        assert re.match(r"gallery: \d+ images · generation", page.inner_text("#info"))  # issue 31: what it holds
        assert "token required" in page.inner_text("#info")

        # Without a token the API refuses, and the page says so.
        page.fill("#k", "14")
        page.set_input_files("#file", server["query"])
        page.wait_for("document.querySelector('#status').classList.contains('error')")
        assert "token" in page.inner_text("#status")

        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
        # Drag-and-drop a gallery image: it must come back first (its own copy).
        other = server["gallery"].record(5)
        _drop(page, Path(other["path"]))
        page.wait_for(
            "(p) => { const c = document.querySelector('#results .card'); return c && c.dataset.path === p; }",
            other["path"],
        )

        # The file input: the planted copy of the query is ranked first.
        page.evaluate("document.querySelector('#results').dataset.ready = ''")
        page.set_input_files("#file", server["query"])
        first = _first_card(page)
        assert first["path"] == str(server["planted"].resolve())
        assert page.count("#results .card") == 14
        page.wait_for(
            "[...document.querySelectorAll('#results .card img')].every((i) => i.complete && i.naturalWidth > 0)"
        )
        score = float(page.inner_text("#results .card .score"))
        assert score == pytest.approx(1.0, abs=1e-3)

        screenshot(page, tmp_path / "service.png", "REIDKIT_SCREENSHOT")


# ----------------------------------------------------------------------------- the tracklet page

from test_video import _majority, _query_crop  # noqa: E402  (`run`, `ingested`: conftest.py)


@pytest.fixture(scope="module")
def tracklet_server(run, ingested):
    """The service on the ingested two-camera scene gallery."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"chromium not found at {CHROMIUM}")
    from reidkit.retrieval.service import create_app

    from reidkit.video.routes import tracklet_routes

    app = create_app(ingested["db"], routers=[tracklet_routes], token=TOKEN)
    with serving(app) as url:
        yield url


def test_tracklet_page_finds_the_person_in_the_other_camera(run, ingested, tracklet_server, tmp_path):
    from PIL import Image

    g = ingested["gallery"]
    cam2 = {e["tracklet"]: _majority(e, run["gt"]["cam2"]) for e in g.entries(kind="tracklet", camera="cam2")}
    pid = sorted(set(cam2.values()))[0]
    frame, box = _query_crop(run, pid)
    crop = tmp_path / "query.png"
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    Image.fromarray(frame[y1:y2, x1:x2]).save(crop)
    with chromium_page(1100, 760, bypass_csp=True) as page:
        page.goto(tracklet_server + "/tracklets")
        page.wait_for("document.querySelector('#error').textContent.length > 0")  # no token yet
        page.fill("#token", TOKEN)
        page.fill("#exclude", "cam1")  # the token field's change: the list comes at once, before any search
        page.wait_for("document.querySelectorAll('#results[data-shows=list] .hit').length > 0")
        assert page.inner_text("#info").endswith("tracklets; search with a crop or a tracklet to rank them")
        page.set_input_files("#file", crop)
        page.click("button[type=submit]")
        page.wait_for("document.querySelectorAll('#results[data-shows=search] .hit').length > 0")
        meta = page.inner_text("#results .hit .meta")
        key = meta.rsplit(" · ", 1)[-1].strip()
        assert "cam2" in meta and cam2[key] == pid  # that person's tracklet in the other camera, first
        page.wait_for(
            "[...document.querySelectorAll('#results .hit img')].every((i) => i.complete && i.naturalWidth > 0)"
        )
        page.click("#results .hit")
        page.wait_for("document.querySelectorAll('#detail tr').length > 2")
        frames = [
            int(t) for t in page.eval_on_selector_all("#detail tr td:first-child", "tds => tds.map(t => t.textContent)")
        ]
        assert frames == sorted(frames) and len(frames) >= 2
        screenshot(page, tmp_path / "tracklets.png", "REIDKIT_SCREENSHOT_TRACKLETS")
