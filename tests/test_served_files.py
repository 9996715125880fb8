"""The HTTP service serves only the files indexed, and answers bad requests cleanly.

A small gallery (tiny checkpoint, a few crops, two tracklets committed by reidkit.video.pipeline.commit with
their thumbnails) on both backends. Then a hostile tester swaps files under it: an indexed image or
thumbnail replaced by a symbolic link to a secret, by a regular file of other content / size / mtime, by a
FIFO, a folder or a socket; a swap between the check and the read; a thumbnail no tracklet names. Each is
refused (404, a short JSON detail, no server path), the secret's bytes are in no response, nothing hangs,
and the untouched files are still served byte for byte. A gallery indexed before file stats were
recorded still serves (link and file-type checks only). HEAD answers every GET route and page like GET
without a body; a client that sends half an upload and closes the socket leaves no traceback in the log
of a real uvicorn server on 127.0.0.1, which keeps answering.

Every bad request is counted (tried / clean); the last test prints the counts.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import shutil
import socket
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from factories import serving, tiny_checkpoint

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's notice about httpx, not ours to act on
    from fastapi.testclient import TestClient


SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- served-files-secret-4f1c9a " + b"K" * 200
BACKENDS = ["sqlite", "milvus"]
# One image per purpose: each test swaps its own files, the untouched one stays untouched.
PURPOSES = [
    "untouched",
    "symlink",
    "dangling",
    "bigger",
    "same_size",
    "touched",
    "fifo",
    "folder",
    "socket",
    "race",
    "restored",
    "shrunk",
]
HTTP_BAD = {"tried": 0, "clean": 0}  # bad HTTP requests sent by this file / answered cleanly


def _db(root: Path, backend: str, name: str) -> str:
    return str(root / name) if backend == "sqlite" else f"milvus:{root / (name + '.db')}"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from reidkit.inference import FeatureExtractor

    root = tmp_path_factory.mktemp("served-model")
    weights = tiny_checkpoint(root / "tiny.pth", seed=0)
    return FeatureExtractor.load(weights)


def _crops(folder: Path, seed: int) -> dict[str, Path]:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = {}
    for i, purpose in enumerate(PURPOSES):
        p = folder / f"{i:04d}_c{i % 3 + 1}s1_{i:06d}_01.jpg"
        Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(p, quality=90)
        out[purpose] = p
    return out


def _chunk(gallery, seed: int, stats: bool = True):
    """Two tracklets of three thumbnails each, as reidkit.video.pipeline builds them."""
    from reidkit.video.pipeline import Chunk
    from reidkit.video.tracklets import thumbnail_jpeg

    rng = np.random.default_rng(seed)
    entries, thumbs = [], {}
    for t in range(2):
        key = f"cam{t + 1}-v0.t{t}"
        names = [f"{key}_{i}.jpg" for i in range(3)]
        for n in names:
            thumbs[n] = thumbnail_jpeg(rng.integers(0, 255, (80, 40, 3), dtype=np.uint8))
        entries.append(
            {
                "kind": "tracklet",
                "tracklet": key,
                "camera": f"cam{t + 1}",
                "frame_start": 1,
                "frame_end": 3,
                "t_start": 0.0,
                "t_end": 0.2,
                "meta": {
                    "video": "v0.avi",
                    "boxes": [[f, 1, 2, 20, 40, 0.9] for f in (1, 2, 3)],
                    "thumbs": names,
                    "thumb_frames": [1, 2, 3],
                    "fps": 10,
                },
            }
        )
    feats = rng.normal(size=(2, gallery.identity.feat_dim)).astype(np.float32)
    return Chunk("v0", "cam1", feats, entries, thumbs, {"next_frame": 3, "done": True})


def _world(tmp_path_factory, model, backend: str, old: bool):
    if backend == "milvus":
        pytest.importorskip("pymilvus")
        pytest.importorskip("milvus_lite")
    from reidkit.retrieval.gallery import Gallery
    from reidkit.retrieval.service import create_app
    from reidkit.video.identity_routes import identity_router
    from reidkit.video.pipeline import commit, thumbs_dir
    from reidkit.video.routes import tracklet_routes

    root = tmp_path_factory.mktemp(f"served-{backend}{'-old' if old else ''}")
    images = _crops(root / "crops", seed=1 if old else 0)
    secret = root / "secret.key"
    secret.write_bytes(SECRET)
    db = _db(root, backend, "db")
    if old:
        # a gallery made before file stats were recorded: the rows of that code (meta None), thumbnails
        # written and committed without their stats
        from reidkit.retrieval import gallery_build

        real_rows = gallery_build.image_rows
        patch = pytest.MonkeyPatch()
        patch.setattr(gallery_build, "image_rows", lambda paths: [{**r, "meta": None} for r in real_rows(paths)])
        try:
            g = Gallery.build(root / "crops", db, extractor=model)
        finally:
            patch.undo()
        chunk = _chunk(g, seed=5)
        folder = thumbs_dir(g)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in chunk.thumbs.items():
            (folder / name).write_bytes(data)
        g.add_entries(chunk.features, [{**e, "path": str(folder / e["meta"]["thumbs"][0])} for e in chunk.entries])
    else:
        g = Gallery.build(root / "crops", db, extractor=model)
        commit(g, _chunk(g, seed=4))
    g = Gallery.open(db, extractor=model)
    ids = {Path(e["path"]).name: int(e["id"]) for e in g.entries(kind="image")}
    tracklets = g.entries(kind="tracklet")
    app = create_app(g, routers=[tracklet_routes, identity_router])  # no token: the default
    return {
        "root": root,
        "db": db,
        "gallery": g,
        "app": app,
        "secret": secret,
        "images": images,
        "ids": {k: ids[p.name] for k, p in images.items()},
        "original": {k: p.read_bytes() for k, p in images.items()},
        "thumbs_dir": thumbs_dir(g),
        "tracklets": tracklets,
        "thumbs": [n for t in tracklets for n in t["meta"]["thumbs"]],
    }


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, tmp_path_factory, model):
    w = _world(tmp_path_factory, model, request.param, old=False)
    with TestClient(w["app"]) as client:
        w["client"] = client
        yield w


@pytest.fixture(scope="module", params=BACKENDS)
def old_world(request, tmp_path_factory, model):
    w = _world(tmp_path_factory, model, request.param, old=True)
    with TestClient(w["app"]) as client:
        w["client"] = client
        yield w


def _get(client, url: str, method: str = "GET"):
    r = client.request(method, url)
    assert SECRET[:40] not in r.content, f"{method} {url} sent the secret"
    return r


def _refused(r, statuses=(403, 404)) -> str:
    """A bad request's answer: a 403/404 with a short JSON detail naming no server path, never the file."""
    HTTP_BAD["tried"] += 1
    assert r.status_code in statuses, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    detail = r.json()["detail"]
    assert isinstance(detail, str) and 0 < len(detail) < 200 and "/" not in detail, detail
    assert SECRET[:40] not in r.content and b"Traceback" not in r.content
    HTTP_BAD["clean"] += 1
    return detail


def _served(w, purpose: str) -> None:
    r = _get(w["client"], f"/images/{w['ids'][purpose]}")
    assert r.status_code == 200, r.text
    assert r.content == w["original"][purpose] and r.headers["content-type"] == "image/jpeg"
    assert int(r.headers["content-length"]) == len(w["original"][purpose])


def _swap(path: Path, make) -> None:
    """Replace `path` by what `make(path)` creates there (the way a hostile tester would)."""
    path.unlink()
    make(path)


def _bounded(fn, seconds: float = 20.0):
    """fn() in a thread; fail (instead of hanging the suite) when it has not returned after `seconds`."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"no answer within {seconds} s (blocked on a FIFO?)"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_untouched_files_are_served_byte_for_byte(world):
    _served(world, "untouched")
    c = world["client"]
    for t in world["tracklets"]:
        name = t["meta"]["thumbs"][0]
        want = (world["thumbs_dir"] / name).read_bytes()
        r = _get(c, f"/thumbs/{name}")
        assert r.status_code == 200 and r.content == want and r.headers["content-type"] == "image/jpeg"
        r = _get(c, f"/images/{t['id']}")  # a tracklet entry's path is its first thumbnail
        assert r.status_code == 200 and r.content == want
    # the stat recorded at indexing sits in the entry's meta, on both backends, exactly
    st = os.stat(world["images"]["untouched"])
    rec = world["gallery"].record(world["ids"]["untouched"])
    assert rec["meta"]["file_stat"] == {"size": st.st_size, "mtime_ns": str(st.st_mtime_ns)}
    name = world["tracklets"][0]["meta"]["thumbs"][1]
    st = os.stat(world["thumbs_dir"] / name)
    assert world["tracklets"][0]["meta"]["thumb_stats"][name] == {"size": st.st_size, "mtime_ns": str(st.st_mtime_ns)}


def test_a_symlink_to_a_secret_is_refused(world):
    c = world["client"]
    _swap(world["images"]["symlink"], lambda p: p.symlink_to(world["secret"]))
    assert "not the file indexed" in _refused(_get(c, f"/images/{world['ids']['symlink']}"))
    _swap(world["images"]["dangling"], lambda p: p.symlink_to(world["root"] / "nothing-here"))
    _refused(_get(c, f"/images/{world['ids']['dangling']}"))
    name = world["thumbs"][1]
    _swap(world["thumbs_dir"] / name, lambda p: p.symlink_to(world["secret"]))
    _refused(_get(c, f"/thumbs/{name}"))
    # HEAD too: refused, and no body
    r = _get(c, f"/images/{world['ids']['symlink']}", "HEAD")
    assert r.status_code == 404 and r.content == b""
    _served(world, "untouched")


def test_a_changed_regular_file_is_refused(world):
    c = world["client"]
    recorded = {k: os.stat(world["images"][k]) for k in ("same_size", "touched", "restored")}
    # other content and size
    world["images"]["bigger"].write_bytes(world["original"]["bigger"] + b"\0" * 100)
    assert "changed since it was indexed" in _refused(_get(c, f"/images/{world['ids']['bigger']}"))
    # the same size, other bytes (mtime moved on, as any write moves it)
    p = world["images"]["same_size"]
    p.write_bytes(bytes(reversed(world["original"]["same_size"])))
    os.utime(p, ns=(recorded["same_size"].st_atime_ns, recorded["same_size"].st_mtime_ns + 1_000_000_000))
    _refused(_get(c, f"/images/{world['ids']['same_size']}"))
    # the same bytes, another mtime (touched; a copy that did not keep the time)
    os.utime(world["images"]["touched"], ns=(0, recorded["touched"].st_mtime_ns + 1))
    _refused(_get(c, f"/images/{world['ids']['touched']}"))
    # put back with its recorded size and mtime: served again (the check is of the file, not a blacklist)
    p = world["images"]["restored"]
    p.write_bytes(b"\xff" * 10)
    _refused(_get(c, f"/images/{world['ids']['restored']}"))
    p.write_bytes(world["original"]["restored"])
    os.utime(p, ns=(recorded["restored"].st_atime_ns, recorded["restored"].st_mtime_ns))
    _served(world, "restored")
    # a thumbnail overwritten by another JPEG
    name = world["thumbs"][2]
    (world["thumbs_dir"] / name).write_bytes((world["thumbs_dir"] / world["thumbs"][0]).read_bytes() + b"\0")
    _refused(_get(c, f"/thumbs/{name}"))
    _served(world, "untouched")


def test_a_fifo_a_folder_or_a_socket_is_refused_without_hanging(world):
    c = world["client"]
    _swap(world["images"]["fifo"], lambda p: os.mkfifo(p))
    _refused(_bounded(lambda: _get(c, f"/images/{world['ids']['fifo']}")))
    r = _bounded(lambda: _get(c, f"/images/{world['ids']['fifo']}", "HEAD"))
    assert r.status_code == 404 and r.content == b""
    _swap(world["images"]["folder"], lambda p: p.mkdir())
    _refused(_get(c, f"/images/{world['ids']['folder']}"))
    sock = socket.socket(socket.AF_UNIX)
    try:
        _swap(world["images"]["socket"], lambda p: sock.bind(str(p)))
        _refused(_bounded(lambda: _get(c, f"/images/{world['ids']['socket']}")))
    finally:
        sock.close()
    name = world["thumbs"][4]
    _swap(world["thumbs_dir"] / name, lambda p: os.mkfifo(p))
    _refused(_bounded(lambda: _get(c, f"/thumbs/{name}")))
    _served(world, "untouched")


def test_a_swap_after_the_check_still_sends_the_checked_file(world, monkeypatch):
    """The race: the file passes the checks, then is replaced by a link to the secret before the bytes are
    read. What is sent comes from the descriptor that was checked, never from the path again."""
    from reidkit.retrieval import service

    real = service.open_indexed
    path = world["images"]["race"]

    def open_then_swap(*args, **kwargs):
        fd, st = real(*args, **kwargs)
        _swap(path, lambda p: p.symlink_to(world["secret"]))
        return fd, st

    monkeypatch.setattr(service, "open_indexed", open_then_swap)
    r = _get(world["client"], f"/images/{world['ids']['race']}")
    assert r.status_code == 200 and r.content == world["original"]["race"]
    monkeypatch.undo()
    _refused(_get(world["client"], f"/images/{world['ids']['race']}"))  # the next request sees the link

    def open_then_truncate(*args, **kwargs):  # the checked file itself cut short before it is read
        fd, st = real(*args, **kwargs)
        os.truncate(world["images"]["shrunk"], 10)
        return fd, st

    monkeypatch.setattr(service, "open_indexed", open_then_truncate)
    _refused(_get(world["client"], f"/images/{world['ids']['shrunk']}"))


def test_open_indexed_refuses_a_link_or_fifo_swapped_in_after_the_lstat(tmp_path, monkeypatch):
    """The checks that hold when the swap comes between the lstat and the open: O_NOFOLLOW, O_NONBLOCK and
    fstat of the opened descriptor."""
    from reidkit.errors import NotFound
    from reidkit.retrieval import served_files as service
    from reidkit.retrieval.store import file_stat

    good = tmp_path / "good.jpg"
    good.write_bytes(b"\xff\xd8 a jpeg")
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    link = tmp_path / "link.jpg"
    link.symlink_to(secret)
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    real_lstat = os.lstat
    monkeypatch.setattr(service.os, "lstat", lambda p: real_lstat(good))  # every lstat sees a regular file
    for path in (link, fifo):
        with pytest.raises(NotFound) as info:
            _bounded(lambda: service.open_indexed(path, service.UNRECORDED, "gallery image 1"))
        assert "not the file indexed" in info.value.public and str(path) in str(info.value)
    monkeypatch.undo()
    # with the real lstat, a FIFO, socket or folder is refused before any open (a device is never opened)
    opened = []
    real_open = os.open
    monkeypatch.setattr(service.os, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.jpg"))
    (tmp_path / "dir.jpg").mkdir()
    try:
        for path in (fifo, tmp_path / "sock.jpg", tmp_path / "dir.jpg", link):
            with pytest.raises(NotFound):
                service.open_indexed(path, service.UNRECORDED, "gallery image 4")
    finally:
        sock.close()
    assert opened == []
    monkeypatch.undo()
    fd, st = service.open_indexed(good, file_stat(good), "gallery image 2")
    try:
        assert os.read(fd, 100) == good.read_bytes()
    finally:
        os.close(fd)
    for bad in (None, {"size": "x"}, {"size": 1}, "12:34", {"size": True, "mtime_ns": "1"}):
        with pytest.raises(NotFound):  # a recorded stat that is not one refuses (fails closed)
            service.open_indexed(good, bad, "gallery image 3")


def test_a_thumbnail_no_tracklet_names_is_not_served(world):
    c = world["client"]
    key = world["tracklets"][0]["tracklet"]
    stray = world["thumbs_dir"] / f"{key}_9.jpg"  # the tracklet's own key, an index it never wrote
    shutil.copy(world["thumbs_dir"] / world["thumbs"][0], stray)
    (world["thumbs_dir"] / "nobody-at-all_0.jpg").write_bytes(stray.read_bytes())
    for name in (stray.name, "nobody-at-all_0.jpg"):
        _refused(_get(c, f"/thumbs/{name}"))
    for bad in ("..%2Fmeta.sqlite", "%2E%2E%2Fsecret.key", "meta.sqlite", ".x.jpg", "a..b_0.jpg"):
        _refused(_get(c, f"/thumbs/{bad}"), statuses=(400, 404))
    _refused(_get(c, "/images/999999999"))
    _refused(_get(c, "/images/-1"), statuses=(400,))


def test_a_gallery_indexed_before_stats_were_recorded_still_serves(old_world):
    """No stat recorded (entries of an older reidkit): served while it is a regular file; a link or a FIFO is
    refused; a changed regular file cannot be told from the indexed one and is served."""
    w, c = old_world, old_world["client"]
    assert w["gallery"].record(w["ids"]["untouched"])["meta"] is None
    _served(w, "untouched")
    name = w["thumbs"][0]
    r = _get(c, f"/thumbs/{name}")
    assert r.status_code == 200 and r.content == (w["thumbs_dir"] / name).read_bytes()
    _swap(w["images"]["symlink"], lambda p: p.symlink_to(w["secret"]))
    _refused(_get(c, f"/images/{w['ids']['symlink']}"))
    _swap(w["thumbs_dir"] / w["thumbs"][1], lambda p: p.symlink_to(w["secret"]))
    _refused(_get(c, f"/thumbs/{w['thumbs'][1]}"))
    _swap(w["images"]["fifo"], lambda p: os.mkfifo(p))
    _refused(_bounded(lambda: _get(c, f"/images/{w['ids']['fifo']}")))
    w["images"]["bigger"].write_bytes(b"changed" * 50)
    r = _get(c, f"/images/{w['ids']['bigger']}")
    assert r.status_code == 200 and r.content == b"changed" * 50  # the documented limit of an old gallery


def _get_urls(w) -> list[str]:
    t = w["tracklets"][0]
    return [
        "/",
        "/tracklets",
        "/identities",
        "/health",
        f"/images/{w['ids']['untouched']}",
        f"/thumbs/{t['meta']['thumbs'][0]}",
        f"/tracklets/{t['id']}",
        "/identities/list",
    ]


def test_head_answers_like_get_without_a_body(world):
    c = world["client"]
    for url in _get_urls(world):
        got, head = _get(c, url), _get(c, url, "HEAD")
        assert got.status_code == 200 and head.status_code == 200, (url, head.status_code)
        assert head.content == b"", url
        assert head.headers["content-type"] == got.headers["content-type"], url
        if url != "/health":  # /health's figures may move between two calls
            assert int(head.headers["content-length"]) == len(got.content), url
    r = _get(c, "/search", "HEAD")  # a POST-only route: 405 as for GET, without a body
    assert r.status_code == 405 and r.content == b""
    # the app itself sends no body bytes for HEAD (uvicorn and httpx drop them anyway; other servers may not)
    for url in ("/", f"/images/{world['ids']['untouched']}"):
        sent = asyncio.run(_asgi(world["app"], "HEAD", url))
        assert sent[0]["status"] == 200 and b"".join(m.get("body", b"") for m in sent[1:]) == b"", url


async def _asgi(app, method: str, path: str) -> list[dict]:
    """The messages `app` sends for one request, called directly (no server, no client in between)."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: dict) -> None:
        sent.append(msg)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    return sent


class _Log(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._seen: set[int] = set()
        self._kept: list[logging.LogRecord] = []
        self._fmt = logging.Formatter("%(levelname)s %(name)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        if id(record) in self._seen:  # reached through two of the loggers it is attached to
            return
        self._seen.add(id(record))
        self._kept.append(record)  # alive, so that no later record gets its id
        self.lines.append(self._fmt.format(record))  # a record with exc_info brings its traceback


@pytest.fixture()
def live(world):
    """The gallery on a real uvicorn server on 127.0.0.1, with its log (uvicorn's and reidkit's) captured."""
    from reidkit.retrieval.service import create_app
    from reidkit.video.identity_routes import identity_router
    from reidkit.video.routes import tracklet_routes

    app = create_app(world["gallery"], routers=[tracklet_routes, identity_router])
    log = _Log()
    loggers = [logging.getLogger(n) for n in ("", "uvicorn", "uvicorn.error", "reidkit")]
    service_log = logging.getLogger("reidkit.service")
    level = service_log.level
    with serving(app) as url:
        for lg in loggers:  # after uvicorn configured its logging (that drops handlers it did not make)
            lg.addHandler(log)
        service_log.setLevel(logging.INFO)
        try:
            yield {"port": int(url.rsplit(":", 1)[1]), "log": log}
        finally:
            service_log.setLevel(level)
            for lg in loggers:
                lg.removeHandler(log)


def _half_uploads() -> list[tuple[str, bytes]]:
    """(name, raw request bytes) of uploads cut off half way."""
    boundary = "----served-files"
    part = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="q.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + b"\xff\xd8"
        + b"z" * 20000
    )
    multipart = f"multipart/form-data; boundary={boundary}"
    body = json.dumps({"tracklet": "cam1-v0.t0", "exclude_camera": "cam9"}).encode()
    return [
        (
            "/search, Content-Length",
            f"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: {multipart}\r\n"
            f"Content-Length: {2 * len(part)}\r\n\r\n".encode()
            + part,
        ),
        (
            "/search, chunked",
            f"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: {multipart}\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n{len(part) * 2:x}\r\n".encode()
            + part,
        ),
        (
            "/tracklets/search, multipart",
            f"POST /tracklets/search HTTP/1.1\r\nHost: x\r\nContent-Type: {multipart}\r\n"
            f"Content-Length: {2 * len(part)}\r\n\r\n".encode()
            + part,
        ),
        (
            "/tracklets/search, JSON",
            "POST /tracklets/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[: len(body) // 2],
        ),
    ]


def _health(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_client_gone_mid_upload_leaves_no_traceback(live):
    log, port = live["log"], live["port"]
    for name, raw in _half_uploads():
        HTTP_BAD["tried"] += 1
        before = len(log.lines)
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(raw)
        time.sleep(0.2)  # the server is reading the body now
        s.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(log.lines) == before:
            time.sleep(0.05)  # until the server has seen the disconnect (and logged it, one way or the other)
        time.sleep(0.2)
        new = log.lines[before:]
        text = "\n".join(new)
        assert new, f"{name}: the server logged nothing about the client that went away"
        assert "Exception in ASGI application" not in text and "Traceback" not in text, f"{name}:\n{text}"
        assert len(new) <= 1 and "client went away" in new[0], f"{name}: {new}"
        assert _health(port) == 200, name
        HTTP_BAD["clean"] += 1


def test_head_on_a_real_server_keeps_the_connection_in_step(world, live):
    """Over one keep-alive connection: HEAD, then GET. A body sent for the HEAD would be read as the next
    response's start."""
    conn = http.client.HTTPConnection("127.0.0.1", live["port"], timeout=20)
    try:
        for url in _get_urls(world):
            conn.request("HEAD", url)
            r = conn.getresponse()
            assert r.status == 200 and r.read() == b"", url
            conn.request("GET", url)
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200 and body and SECRET[:40] not in body, url
    finally:
        conn.close()
    assert not [ln for ln in live["log"].lines if "Traceback" in ln or ln.startswith("ERROR")]


def test_zz_bad_request_counts():
    """The last test of the file: what the tests above sent and how it was answered."""
    print(f"\nHTTP bad requests tried: {HTTP_BAD['tried']}, clean: {HTTP_BAD['clean']}")
    assert HTTP_BAD["tried"] > 0 and HTTP_BAD["clean"] == HTTP_BAD["tried"]
