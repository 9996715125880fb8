"""HTTP service: search, auth, upload limits and errors, image serving by id, concurrency."""

from __future__ import annotations

import asyncio
import shutil
import warnings
from pathlib import Path

import numpy as np
import procs
import pytest
from factories import serving, tiny_checkpoint

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's notice about httpx vs httpx2, not ours to act on
    from fastapi.testclient import TestClient

from fastapi import Request  # noqa: E402

from reidkit.errors import ReIDError  # noqa: E402
from reidkit.retrieval.gallery import Gallery  # noqa: E402
from reidkit.retrieval.folder import parse_camera_frame  # noqa: E402
from reidkit.retrieval.service import create_app  # noqa: E402

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from reidkit.data.synthetic import generate

    root = tmp_path_factory.mktemp("service")
    syn = generate(root / "syn", ids=6, images_per_id=4, cams=3, seed=3, workers=1)
    gal = root / "gallery"
    shutil.copytree(syn / "bounding_box_test", gal)
    query = sorted((syn / "query").glob("*.jpg"))[0]
    pcam = (parse_camera_frame(query)[0] + 1) % 3
    planted = gal / f"9999_c{pcam + 1}s1_000001_01.jpg"
    shutil.copy(query, planted)
    weights = tiny_checkpoint(root / "tiny.pth", seed=0)
    gallery = Gallery.build(gal, root / "db", weights=weights)
    app = create_app(gallery, token=TOKEN, max_upload_bytes=LIMIT)
    with TestClient(app) as client:
        yield {
            "client": client,
            "app": app,
            "gallery": gallery,
            "query": query,
            "planted": planted,
            "pcam": pcam,
            "db": root / "db",
        }


def _upload(path: Path, name: str | None = None) -> dict:
    return {"file": (name or path.name, path.read_bytes(), "image/jpeg")}


def test_health_needs_no_token(setup):
    r = setup["client"].get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["gallery_size"] == len(setup["gallery"]) and body["auth"] is True
    assert body["model"]["name"].startswith("sha256:") and body["model"]["feat_dim"] == 512
    assert "/" not in body["model"]["source"]  # no server paths to anonymous callers


def test_auth(setup):
    c = setup["client"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}):
        r = c.post("/search", files=_upload(setup["query"]), headers=headers)
        assert r.status_code == 401 and "token" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
    assert c.get("/images/0").status_code == 401
    assert c.get("/images/0", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.post("/search", files=_upload(setup["query"]), headers=AUTH).status_code == 200


def test_search_finds_planted_identity(setup):
    c = setup["client"]
    r = c.post("/search?k=5", files=_upload(setup["query"]), headers=AUTH)
    assert r.status_code == 200
    res = r.json()["results"]
    assert len(res) == 5 and set(res[0]) >= {"id", "path", "score", "camid"}
    assert res[0]["path"] == str(setup["planted"].resolve()) and res[0]["score"] == pytest.approx(1.0, abs=1e-5)
    # excluding the planted copy's camera removes it; excluding the query's own camera keeps it
    r = c.post(f"/search?k=50&exclude_camid={setup['pcam']}", files=_upload(setup["query"]), headers=AUTH)
    assert all(x["camid"] != setup["pcam"] for x in r.json()["results"])
    r = c.post("/search?k=50&exclude_same_camera=true&rerank=true", files=_upload(setup["query"]), headers=AUTH)
    body = r.json()
    assert body["query"]["excluded_camid"] == parse_camera_frame(setup["query"])[0]
    assert body["results"][0]["path"] == str(setup["planted"].resolve())
    assert all(x["camid"] != body["query"]["excluded_camid"] for x in body["results"])


def test_topk_is_the_one_name_and_k_a_deprecated_alias(setup):
    """Issue 31: `POST /search?topk=3` was ignored (20 results: the parameter was `k`, undocumented)."""
    c = setup["client"]
    for query, n in (("topk=3", 3), ("k=4", 4), ("topk=2&k=2", 2), ("", 20)):
        r = c.post(f"/search?{query}", files=_upload(setup["query"]), headers=AUTH)
        assert r.status_code == 200 and len(r.json()["results"]) == min(n, len(setup["gallery"])), (query, r.text)
    r = c.post("/search?topk=2&k=3", files=_upload(setup["query"]), headers=AUTH)
    assert r.status_code == 400 and "give topk only" in r.json()["detail"]
    assert c.post("/search?topk=0", files=_upload(setup["query"]), headers=AUTH).status_code == 422
    params = {p["name"]: p for p in c.app.openapi()["paths"]["/search"]["post"]["parameters"]}  # not served
    assert "number of results" in params["topk"]["description"] and params["k"].get("deprecated") is True
    assert not params["topk"].get("deprecated")


def test_tracklets_search_topk_flag_and_hidden_k_alias(capsys):
    from reidkit.cli import build_parser

    parser = build_parser()
    base = ["tracklets", "search", "--db", "x", "--tracklet", "1"]
    assert parser.parse_args([*base, "--topk", "3"]).k == 3 and parser.parse_args(base).k == 10
    capsys.readouterr()
    assert parser.parse_args([*base, "-k", "4"]).k == 4 and parser.parse_args([*base, "--k", "5"]).k == 5
    assert capsys.readouterr().err.count("is deprecated; use --topk") == 2
    sub = parser._subparsers._group_actions[0].choices["tracklets"]._subparsers._group_actions[0].choices["search"]
    help_text = sub.format_help()
    assert "--topk N" in help_text and "(default 10)" in help_text
    assert "-k" not in help_text.replace("--topk", "").replace("--tracklet", "")


def test_pages_count_what_the_gallery_holds_and_list_at_once(setup, tmp_path):
    """Issue 31: `/` said "32 gallery images" of a gallery of 0 images and 32 tracklets; /tracklets and
    /identities showed nothing until a button was clicked."""
    from reidkit.retrieval.gallery import holdings
    from reidkit.video.identity_routes import identity_router
    from reidkit.video.routes import tracklet_routes

    assert (holdings(0, 32), holdings(1, 0), holdings(12, 1), holdings(0, 0)) == (
        "32 tracklets",
        "1 image",
        "12 images, 1 tracklet",
        "no entries",
    )
    g = Gallery.create(tmp_path / "tl", setup["gallery"].extractor)
    f = np.random.default_rng(0).standard_normal((32, g.identity.feat_dim)).astype(np.float32)
    g.add_entries(
        f,
        [
            {
                "path": "/v.mp4",
                "kind": "tracklet",
                "tracklet": f"cam{i % 2}:{i}",
                "camera": f"cam{i % 2}",
                "t_start": float(31 - i),
                "t_end": 40.0,
            }
            for i in range(32)
        ],
    )
    with TestClient(create_app(g, routers=[tracklet_routes, identity_router])) as c:
        h = c.get("/health").json()
        assert (h["images"], h["tracklets"], h["holds"]) == (0, 32, "32 tracklets")
        page = c.get("/").text
        assert "${h.holds}" in page and "${h.gallery_size} gallery images" not in page
        body = c.get("/tracklets/list?limit=5").json()
        assert body["total"] == 32 and [t["tracklet"] for t in body["tracklets"]] == [
            "cam0:30",
            "cam0:28",
            "cam0:26",
            "cam0:24",
            "cam0:22",
        ]
        assert c.get("/tracklets/list?limit=0").status_code == 422
        tl, ids = c.get("/tracklets").text, c.get("/identities").text
    # the pages fetch their lists when they open, not only from a button's handler
    assert "\nloadList();\n" in tl and 'fetch("/tracklets/list"' in tl
    assert "\nload();" in ids and "/identities/list" in ids
    assert setup["client"].get("/health").json()["holds"] == f"{len(setup['gallery'])} images"


def test_bad_uploads_get_4xx_json(setup):
    c = setup["client"]
    jpeg = setup["query"].read_bytes()
    cases = [
        ({"file": ("big.jpg", b"\xff" * (LIMIT + 1), "image/jpeg")}, 413),
        ({"file": ("empty.jpg", b"", "image/jpeg")}, 400),
        ({"file": ("notes.txt", b"this is not an image at all", "text/plain")}, 415),
        ({"file": ("cut.jpg", jpeg[: len(jpeg) // 3], "image/jpeg")}, 400),
        ({"other": ("q.jpg", jpeg, "image/jpeg")}, 400),
    ]
    for files, status in cases:
        r = c.post("/search", files=files, headers=AUTH)
        assert r.status_code == status, (files.keys(), r.text)
        assert isinstance(r.json()["detail"], str)
    # far over the limit with Content-Length: refused before the body is parsed
    r = c.post("/search", files={"file": ("huge.jpg", b"\0" * (LIMIT * 4), "image/jpeg")}, headers=AUTH)
    assert r.status_code == 413
    # chunked upload without Content-Length: stopped by counting the bytes received

    def chunks():
        for _ in range(40):
            yield b"z" * 8192

    r = c.post("/search", content=chunks(), headers={**AUTH, "Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    r = c.post("/search", content=b"{}", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400


def test_images_served_by_id_only(setup):
    c, g = setup["client"], setup["gallery"]
    rec = g.record(3)
    r = c.get("/images/3", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == Path(rec["path"]).read_bytes()
    assert c.get(f"/images/{len(g) + 10}", headers=AUTH).status_code == 404
    for bad in ("..%2F..%2Fetc%2Fpasswd", "-1", "3.jpg", "%2Fetc%2Fpasswd", "1e3"):
        r = c.get(f"/images/{bad}", headers=AUTH)
        assert r.status_code in (400, 404), bad
        assert "root:" not in r.text


def test_page_served(setup):
    r = setup["client"].get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert 'id="results"' in r.text and "Authorization" in r.text


def test_fifty_concurrent_searches(setup):
    """50 simultaneous requests through the ASGI app: every one answered with its own image first."""
    import httpx

    g, app = setup["gallery"], setup["app"]
    picks = [g.record(i) for i in range(0, len(g), max(1, len(g) // 5))][:5]
    payloads = [(rec["id"], Path(rec["path"]).read_bytes()) for rec in picks]

    async def run() -> list[tuple[int, httpx.Response]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:

            async def one(i: int):
                want, data = payloads[i % len(payloads)]
                r = await client.post("/search?k=3", files={"file": (f"q{i}.jpg", data, "image/jpeg")}, headers=AUTH)
                return want, r

            return await asyncio.gather(*(one(i) for i in range(50)))

    before = sum(app.state.batcher.batches)
    answers = asyncio.run(run())
    assert len(answers) == 50
    for want, r in answers:
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["id"] == want
    assert sum(app.state.batcher.batches) - before == 50  # every job went through the model worker
    print("batch sizes:", app.state.batcher.batches)


def test_token_from_environment_and_empty_token(setup, monkeypatch):
    monkeypatch.setenv("REIDKIT_API_TOKEN", "from-env")
    app = create_app(setup["gallery"])
    with TestClient(app) as c:
        assert c.get("/images/0").status_code == 401
        assert c.get("/images/0", headers={"Authorization": "Bearer from-env"}).status_code == 200
    with pytest.raises(ReIDError, match="empty"):
        create_app(setup["gallery"], token="  ")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (a few bytes: the pixel data is never reached)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_too_many_pixels_is_413_not_corrupt(setup):
    c = setup["client"]
    for w, h in ((20000, 20000), (8000, 8000)):  # refused by Pillow at open / by our limit after the header
        r = c.post("/search", files={"file": ("huge.png", _png_header_only(w, h), "image/png")}, headers=AUTH)
        assert r.status_code == 413, (w, r.text)
        assert "too large" in r.json()["detail"] and "pixels" in r.json()["detail"]


def test_health_reports_generation_and_counts(setup):
    body = setup["client"].get("/health").json()
    assert body["generation"] == setup["gallery"].generation and body["images"] == len(setup["gallery"])
    assert body["tracklets"] == 0


def _tiny_images(folder: Path, n: int, seed: int) -> set[str]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(
            folder / f"{seed}{i:03d}_c1s1_{i:06d}_01.png"
        )
    return {str(p.resolve()) for p in folder.iterdir()}


def test_service_follows_add_and_rebuild_without_wrong_answers(tmp_path):
    """Searches run throughout `index add` and `index build --overwrite` (subprocesses): every answer holds only
    paths of the generation it reports, never an empty one, and the new content is answered within seconds."""
    import os
    import sys
    import threading
    import time

    import httpx

    weights = tiny_checkpoint(tmp_path / "tiny.pth", seed=0, size=(32, 16))
    a = _tiny_images(tmp_path / "A", 6, 1)
    b = _tiny_images(tmp_path / "B", 4, 2)
    c = _tiny_images(tmp_path / "C", 5, 3)
    db = tmp_path / "db"
    g = Gallery.build(tmp_path / "A", db, weights=weights)
    app = create_app(g, poll_s=0.2)
    with serving(app) as url:
        content = {(g.uid, 1): a}
        answers: list[tuple[float, int, str, list[str], int]] = []
        stop = threading.Event()
        query = sorted(a)[0]
        data = Path(query).read_bytes()

        def client() -> None:
            with httpx.Client(base_url=url, timeout=60) as cl:
                while not stop.is_set():
                    r = cl.post("/search?k=20", files={"file": ("q.png", data, "image/png")})
                    body = r.json()
                    answers.append(
                        (
                            time.monotonic(),
                            r.status_code,
                            body.get("snapshot", ""),
                            [x["path"] for x in body.get("results", [])],
                            body.get("generation", -1),
                        )
                    )

        clients = [threading.Thread(target=client) for _ in range(2)]
        for t in clients:
            t.start()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        try:
            time.sleep(0.5)
            for args, expect in (
                (["index", "add", "--db", str(db), "--images", str(tmp_path / "B")], a | b),
                (
                    [
                        "index",
                        "build",
                        "--db",
                        str(db),
                        "--images",
                        str(tmp_path / "C"),
                        "--overwrite",
                        "--weights",
                        str(weights),
                    ],
                    c,
                ),
            ):
                p = procs.run(
                    [sys.executable, "-m", "reidkit.cli", *args], env=env, capture_output=True, text=True, timeout=120
                )
                assert p.returncode == 0, p.stderr
                done = time.monotonic()
                from reidkit.retrieval.backends.sqlite import schema as store

                uid, gen = store.read_key(db)
                content[(uid, gen)] = expect
                deadline = done + 10
                while time.monotonic() < deadline and not any(s == f"{uid}-{gen}" for _, _, s, _, _ in answers[-5:]):
                    time.sleep(0.05)
                seen = [t for t, _, s, _, _ in answers if s == f"{uid}-{gen}"]
                assert seen, f"generation {gen} not answered within 10 s"
                # negative: the swap was served before the writer process had exited
                print(f"\n{args[1]}: new content answered {seen[0] - done:.2f} s after the command finished")
                assert seen[0] - done < 5
            time.sleep(0.3)
            # ids are reassigned by a rebuild: /images pins the snapshot a result came from
            with httpx.Client(base_url=url, timeout=60) as cl:
                assert cl.get(f"/images/0?snapshot={g.uid}-1").content == Path(sorted(a)[0]).read_bytes()
                assert cl.get("/images/0").content == Path(sorted(c)[0]).read_bytes()
                assert cl.get("/images/0?snapshot=0000-1").status_code == 410
        finally:
            stop.set()
            for t in clients:
                t.join(timeout=60)
    tags = {f"{u}-{gen}": v for (u, gen), v in content.items()}
    wrong = 0
    for _, status, snap, paths, _gen in answers:
        ok = (
            status == 200
            and snap in tags
            and paths
            and all(paths)
            and set(paths) <= tags[snap]
            and len(paths) == min(20, len(tags[snap]))
        )
        wrong += not ok
    print(
        f"requests during swaps: {len(answers)}, wrong answers: {wrong}, generations seen: "
        f"{sorted({s for _, _, s, _, _ in answers}, key=lambda s: int(s.split('-')[1]))}"
    )
    assert wrong == 0 and len(answers) > 10
    assert len({s for _, _, s, _, _ in answers}) == 3  # old, after add, after rebuild


def test_routers_compose_with_pages_and_errors_by_type(setup):
    """create_app(routers=[...]) includes each router (built from get_gallery and authorize); a page a router
    adds is listed in /health and linked from /; a status comes from the exception type, never its text."""
    from fastapi import APIRouter

    from reidkit.errors import NotFound
    from reidkit.retrieval.service import add_page

    def ping_routes(get_gallery, authorize):
        router = APIRouter()
        add_page(router, "/ping-page", lambda: "<p>ping</p>", "Ping", shown_if="images")
        add_page(router, "/never", lambda: "<p>x</p>", "Never", shown_if="tracklets")

        @router.get("/video/ping")
        async def ping(request: Request) -> dict:
            authorize(request)
            g = get_gallery()
            return {"generation": g.generation, "size": len(g)}

        @router.get("/video/missing")
        async def missing() -> dict:
            raise NotFound("no such thing in /srv/secret/db", public="no such thing")

        @router.get("/video/bad")
        async def bad() -> dict:
            raise ReIDError("no tracklet here, but a 400")  # the words 'no tracklet' no longer make a 404

        return router

    app = create_app(setup["gallery"], routers=[ping_routes], token=TOKEN)
    with TestClient(app) as c:
        assert c.get("/video/ping").status_code == 401
        body = c.get("/video/ping", headers=AUTH).json()
        assert body == {"generation": setup["gallery"].generation, "size": len(setup["gallery"])}
        r = c.get("/video/missing")
        assert r.status_code == 404 and r.json()["detail"] == "no such thing"
        assert c.get("/video/bad").status_code == 400
        pages = {p["path"]: p for p in c.get("/health").json()["pages"]}
        assert set(pages) == {"/", "/ping-page", "/never"} and pages["/never"]["shown_if"] == "tracklets"
        assert c.get("/ping-page").text == "<p>ping</p>"
        assert "h.pages" in c.get("/").text  # the page renders the links /health lists
    # without the router: its routes are absent
    with TestClient(create_app(setup["gallery"], token=TOKEN)) as c:
        assert c.get("/video/ping", headers=AUTH).status_code == 404
        assert [p["path"] for p in c.get("/health").json()["pages"]] == ["/"]


def _encoded(arr, fmt: str, **kw) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decode_upload_orientation_and_reduced_decoding():
    """EXIF orientation is applied; a large JPEG is decoded at a reduced DCT scale and a large PNG reduced at
    once, both keeping each side >= 512; the per-image limit applies to the decoded size and names itself."""
    import numpy as np
    from PIL import Image

    from reidkit.retrieval.uploads import UploadError, decode_upload, probe_upload

    rng = np.random.default_rng(0)
    tall = rng.integers(0, 255, (40, 20, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree turn clockwise
    turned = decode_upload(_encoded(tall, "JPEG", exif=exif.tobytes()))
    assert turned.shape == (20, 40, 3)
    assert decode_upload(_encoded(tall, "JPEG")).shape == (40, 20, 3)
    big = np.zeros((2400, 1200, 3), np.uint8)
    big[:1200] = 200
    jpeg, png = _encoded(big, "JPEG", quality=90), _encoded(big, "PNG")
    assert probe_upload(jpeg) == (600, 1200)  # 1/2 scale: both sides >= 512
    a, b = decode_upload(jpeg), decode_upload(png)
    assert a.shape == (1200, 600, 3) and b.shape == (1200, 600, 3)
    assert abs(int(a[100, 100, 0]) - 200) < 4 and b[1000, 100, 0] == 0
    assert decode_upload(png, draft_min_side=None).shape == (2400, 1200, 3)  # a box query: full size
    with pytest.raises(UploadError) as err:
        decode_upload(png, max_pixels=2_000_000, draft_min_side=None)
    assert err.value.http_status == 413 and "2,000,000 pixels" in str(err.value)
    huge = _encoded(np.zeros((6000, 3000, 3), np.uint8), "JPEG")
    assert probe_upload(huge, max_pixels=1_200_000) == (750, 1500)  # 1/4 scale: what is decoded is checked
