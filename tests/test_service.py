"""HTTP service: search, auth, upload limits and errors, image serving by id, concurrency."""
from __future__ import annotations

import asyncio
import shutil
import warnings
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's notice about httpx vs httpx2, not ours to act on
    from fastapi.testclient import TestClient

from reidkit.errors import ReIDError  # noqa: E402
from reidkit.retrieval.index import Gallery, parse_camera_frame  # noqa: E402
from reidkit.retrieval.service import create_app  # noqa: E402

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    from reidkit.data.synthetic import generate
    from reidkit.models.build import ModelConfig, build_model, save_model

    root = tmp_path_factory.mktemp("service")
    syn = generate(root / "syn", ids=6, images_per_id=4, cams=3, seed=3, workers=1)
    gal = root / "gallery"
    shutil.copytree(syn / "bounding_box_test", gal)
    query = sorted((syn / "query").glob("*.jpg"))[0]
    pcam = (parse_camera_frame(query)[0] + 1) % 3
    planted = gal / f"9999_c{pcam + 1}s1_000001_01.jpg"
    shutil.copy(query, planted)
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet18", pretrained=False, pooling="gem")
    weights = save_model(root / "tiny.pth", build_model(cfg, 4), cfg, 4, (64, 32))
    gallery = Gallery.build(gal, root / "db", weights=weights)
    app = create_app(gallery, token=TOKEN, max_upload_bytes=LIMIT)
    with TestClient(app) as client:
        yield {"client": client, "app": app, "gallery": gallery, "query": query, "planted": planted,
               "pcam": pcam, "db": root / "db"}


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

    r = c.post("/search", content=chunks(),
               headers={**AUTH, "Content-Type": "multipart/form-data; boundary=xyz"})
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
                r = await client.post("/search?k=3", files={"file": (f"q{i}.jpg", data, "image/jpeg")},
                                      headers=AUTH)
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
