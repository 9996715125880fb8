"""Hostile HTTP requests get a 4xx with a message, never a 500, and the keep-alive connection survives.

A real uvicorn server (tests/test_browser.py's `serving` helper) on 127.0.0.1 serves a small gallery with
images and tracklets (core router + reidkit.video.routes.tracklet_routes). Each case is sent on one
persistent HTTP/1.1 connection, followed by a good request on the same socket: a 500 used to reset it.
"""

from __future__ import annotations

import http.client
import json
import logging
import shutil

import pytest
from factories import serving, tiny_checkpoint

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


TOKEN = "bad-input-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BIG = 99999999999999999999  # 20 digits: beyond SQLite's signed 64-bit integers


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import numpy as np
    from PIL import Image

    from reidkit.retrieval.gallery import Gallery
    from reidkit.retrieval.service import create_app
    from reidkit.video.routes import tracklet_routes

    root = tmp_path_factory.mktemp("badhttp")
    imgs = root / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(2)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(
            imgs / f"{i:04d}_c{i % 2 + 1}s1_{i:06d}_01.png"
        )
    weights = tiny_checkpoint(root / "tiny.pth", seed=0)
    db = root / "secret-server-folder" / "db"
    g = Gallery.build(imgs, db, weights=weights)
    feats = rng.normal(size=(3, g.identity.feat_dim)).astype(np.float32)
    entries = [
        {
            "path": f"video{j}.avi",
            "kind": "tracklet",
            "tracklet": f"cam{j % 2 + 1}-{j}",
            "camera": f"cam{j % 2 + 1}",
            "frame_start": 1,
            "frame_end": 5,
            "t_start": 0.0,
            "t_end": 0.4,
            "meta": {"boxes": [[f, 1, 2, 20, 40, 0.9] for f in range(1, 6)], "fps": 10},
        }
        for j in range(3)
    ]
    ids = g.add_entries(feats, entries)
    g = Gallery.open(db, weights=weights)
    jpeg = root / "q.jpg"
    shutil.copy(next(imgs.iterdir()), root / "q.png")
    Image.open(root / "q.png").save(jpeg)
    app = create_app(g, routers=[tracklet_routes], token=TOKEN)
    errors: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                errors.append(record)

    keep = Keep()
    log = logging.getLogger("uvicorn.error")  # where uvicorn logs an exception that escaped the app
    log.addHandler(keep)
    try:
        with serving(app) as url:
            yield {
                "url": url,
                "db": db,
                "tracklet_id": ids[0],
                "jpeg": jpeg.read_bytes(),
                "root": root,
                "errors": errors,
            }
    finally:
        log.removeHandler(keep)


def _multipart(fields: dict[str, tuple[str, bytes, str] | str]) -> tuple[bytes, str]:
    boundary = "----reidkitbadinput"
    out = b""
    for name, value in fields.items():
        if isinstance(value, tuple):
            fname, data, ctype = value
            out += (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{fname}"\r\n'
                    f"Content-Type: {ctype}\r\n\r\n"
                ).encode()
                + data
                + b"\r\n"
            )
        else:
            out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _json(obj) -> tuple[bytes, str]:
    return (obj if isinstance(obj, bytes) else json.dumps(obj).encode()), "application/json"


def _deep(n: int, open_: str = "[") -> bytes:
    return (open_ * n).encode()


# (name, method, path, body builder or None, expected status, a phrase the message must contain)
CASES = [
    ("tracklet id beyond int64", "GET", f"/tracklets/{BIG}", None, 422, "beyond the largest gallery id"),
    ("tracklet id 10**30 as JSON", "POST", "/tracklets/search", lambda c: _json({"tracklet": 10**30}), 422, "tracklet"),
    (
        "tracklet key of 20 digits as JSON",
        "POST",
        "/tracklets/search",
        lambda c: _json({"tracklet": str(BIG)}),
        422,
        "beyond the largest gallery id",
    ),
    (
        "exclude_camera an object",
        "POST",
        "/tracklets/search",
        lambda c: _json({"tracklet": "1", "exclude_camera": {"a": 1}}),
        422,
        "exclude_camera",
    ),
    (
        "exclude_camera empty",
        "POST",
        "/tracklets/search",
        lambda c: _json({"tracklet": "1", "exclude_camera": ""}),
        422,
        "exclude_camera",
    ),
    ("100,000 nested [", "POST", "/tracklets/search", lambda c: _json(_deep(100_000)), 422, "nested deeper"),
    ('2,000 nested {"a":', "POST", "/tracklets/search", lambda c: _json(b'{"a":' * 2000), 422, "nested deeper"),
    ("negative id", "POST", "/tracklets/search", lambda c: _json({"tracklet": -1}), 422, "tracklet"),
    ("fractional id", "POST", "/tracklets/search", lambda c: _json({"tracklet": 1.5}), 422, "tracklet"),
    ("boolean id", "POST", "/tracklets/search", lambda c: _json({"tracklet": True}), 422, "tracklet"),
    ("null id", "POST", "/tracklets/search", lambda c: _json({"tracklet": None}), 422, "tracklet"),
    ("1e400 id", "POST", "/tracklets/search", lambda c: _json(b'{"tracklet": 1e400}'), 422, "tracklet"),
    ("missing tracklet", "POST", "/tracklets/search", lambda c: _json({}), 422, "tracklet"),
    ("unknown field", "POST", "/tracklets/search", lambda c: _json({"tracklet": 1, "evil": 2}), 422, "evil"),
    ("a list body", "POST", "/tracklets/search", lambda c: _json([1, 2]), 422, "body"),
    ("not JSON", "POST", "/tracklets/search", lambda c: _json(b'{"tracklet": '), 422, "invalid JSON"),
    ("key with a slash", "POST", "/tracklets/search", lambda c: _json({"tracklet": "a/../b"}), 422, "tracklet"),
    ("key of 400 chars", "POST", "/tracklets/search", lambda c: _json({"tracklet": "x" * 400}), 422, "tracklet"),
    (
        "JSON over 16 kB",
        "POST",
        "/tracklets/search",
        lambda c: _json({"tracklet": "x", "pad": "y" * 20000}),
        413,
        "too large",
    ),
    ("unknown key", "GET", "/tracklets/no-such-key", None, 404, "no tracklet 'no-such-key'"),
    ("unknown id", "GET", "/tracklets/123456", None, 404, "no tracklet '123456'"),
    ("unknown id as JSON", "POST", "/tracklets/search", lambda c: _json({"tracklet": 123456}), 404, "no tracklet"),
    ("dot-dot ref", "GET", "/tracklets/..", None, 404, "no tracklet"),
    ("ref with a space", "GET", "/tracklets/a%20b", None, 422, "tracklet"),
    ("k=0", "POST", "/tracklets/search?k=0", lambda c: _json({"tracklet": 1}), 422, "k:"),
    ("k=abc", "POST", "/tracklets/search?k=abc", lambda c: _json({"tracklet": 1}), 422, "k:"),
    (
        "k beyond int64 on /search",
        "POST",
        f"/search?k={BIG}",
        lambda c: _multipart({"file": ("q.jpg", c["jpeg"], "image/jpeg")}),
        422,
        "k:",
    ),
    (
        "exclude_camid beyond int64",
        "POST",
        f"/search?exclude_camid={BIG}",
        lambda c: _multipart({"file": ("q.jpg", c["jpeg"], "image/jpeg")}),
        422,
        "exclude_camid",
    ),
    ("image id beyond int64", "GET", f"/images/{BIG}", None, 400, "non-negative integer"),
    ("image id unknown", "GET", "/images/77777", None, 404, "no gallery image"),
    ("thumb traversal", "GET", "/thumbs/..%2Fmeta.sqlite", None, 404, "Not Found"),  # no route matches
    ("thumb dot-name", "GET", "/thumbs/.x.jpg", None, 400, "thumbnail"),
    ("thumb missing", "GET", "/thumbs/nothing_0.jpg", None, 404, "no thumbnail"),
    (
        "box of two numbers",
        "POST",
        "/tracklets/search",
        lambda c: _multipart({"file": ("q.jpg", c["jpeg"], "image/jpeg"), "box": "1,2"}),
        400,
        "box: expected",
    ),
    (
        "box outside the image",
        "POST",
        "/tracklets/search",
        lambda c: _multipart({"file": ("q.jpg", c["jpeg"], "image/jpeg"), "box": "500,500,900,900"}),
        400,
        "outside",
    ),
    (
        "exclude_camera of 300 chars",
        "POST",
        "/tracklets/search",
        lambda c: _multipart({"file": ("q.jpg", c["jpeg"], "image/jpeg"), "exclude_camera": "c" * 300}),
        422,
        "exclude_camera",
    ),
    (
        "text as image",
        "POST",
        "/tracklets/search",
        lambda c: _multipart({"file": ("a.txt", b"hello", "text/plain")}),
        415,
        "not an image",
    ),
    (
        "truncated JPEG",
        "POST",
        "/search",
        lambda c: _multipart({"file": ("q.jpg", c["jpeg"][:200], "image/jpeg")}),
        400,
        "corrupt",
    ),
    ("text/plain body", "POST", "/tracklets/search", lambda c: (b"tracklet=1", "text/plain"), 400, "expected"),
    ("JSON to /search", "POST", "/search", lambda c: _json({"tracklet": 1}), 400, "multipart"),
]


@pytest.mark.parametrize("name,method,path,body,status,phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_request_is_4xx_with_a_message_and_the_connection_survives(
    server, name, method, path, body, status, phrase
):
    host, port = server["url"].rsplit("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        headers = dict(AUTH)
        data = None
        if body is not None:
            data, ctype = body(server)
            headers["Content-Type"] = ctype
        conn.request(method, path, body=data, headers=headers)
        sock = conn.sock
        r = conn.getresponse()
        text = r.read().decode("utf-8", "replace")
        assert r.status == status, (name, text)
        detail = json.loads(text)["detail"]
        assert isinstance(detail, str) and phrase in detail, (name, detail)
        assert str(server["root"]) not in text and "secret-server-folder" not in text  # no server paths
        assert (r.getheader("connection") or "").lower() != "close", name
        # the same socket answers the next request
        conn.request("GET", f"/tracklets/{server['tracklet_id']}", headers=AUTH)
        r2 = conn.getresponse()
        body2 = json.loads(r2.read())
        assert conn.sock is sock, f"{name}: the connection was closed after the error"
        assert r2.status == 200 and body2["tracklet"]["id"] == server["tracklet_id"]
        assert not server["errors"], server["errors"][0].getMessage()  # no traceback logged by the server
    finally:
        conn.close()


def test_good_json_query_still_answers(server):
    import httpx

    r = httpx.post(
        server["url"] + "/tracklets/search",
        json={"tracklet": server["tracklet_id"], "exclude_camera": "x"},
        headers=AUTH,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["query"]["excluded_camera"] == "x"
    r = httpx.post(server["url"] + "/tracklets/search", json={"tracklet": "cam1-0"}, headers=AUTH, timeout=60)
    assert r.status_code == 200 and all(h["camera"] != "cam1" for h in r.json()["results"])


def test_index_page_links_the_tracklet_page(server):
    """/health lists the tracklet router's page with the count it needs; the gallery holds tracklets, so / links it."""
    import httpx

    h = httpx.get(server["url"] + "/health", timeout=30).json()
    pages = {p["path"]: p for p in h["pages"]}
    assert pages["/tracklets"] == {"path": "/tracklets", "title": "Tracklets", "shown_if": "tracklets"}
    assert h["tracklets"] == 3
    page = httpx.get(server["url"] + "/tracklets", timeout=30)
    assert page.status_code == 200 and "/tracklets/search" in page.text


def test_index_page_shows_the_link_in_a_browser(server):
    """Headless Chromium: / renders a link to /tracklets (the gallery holds tracklets), and not to itself."""
    from factories import chromium_page

    with chromium_page() as page:
        page.goto(server["url"] + "/")
        page.wait_for("document.querySelector('#pages a')")
        links = page.eval_on_selector_all("#pages a", "els => els.map(e => [e.getAttribute('href'), e.textContent])")
        assert links == [["/tracklets", "Tracklets"]]
