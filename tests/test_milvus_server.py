"""Milvus servers (``--db milvus:http://127.0.0.1:PORT``) and filter values on both backends.

- The supported server versions: a server older than Milvus 2.5 is refused at connect with one error
  naming the version it reports and the minimum (a stand-in client, then Milvus 2.3.5 itself below).
- Milvus Lite's own gRPC server (``milvus_lite.adapter.grpc.server``, bound to 127.0.0.1) in a child
  process, as a server gallery: `index build --collection`, `video --collection` (cameras named with a
  control character and a newline), `tracklets search|show` and `index delete --camera`, each a fresh
  `reidkit` process in a folder of its own. The thumbnails are in the folder the gallery recorded at the
  build (beside the images folder), never in a working directory; another --files is refused.
- Filter values (quotes, backslashes, ``" or id > 0 or "``, control characters) listed, searched and
  deleted by camera and tracklet key on both backends: exactly the entries they name.
- Milvus 2.3.5 (PyPI ``milvus``, a real standalone server), when importable: every verb gets the one
  version error. It binds every interface whatever its ``ip`` settings say (measured with ``ss -ltn``),
  so it runs only inside a private network namespace (``unshare -rnpf``), where the one interface is
  its own loopback; skipped with the reason where the package or the namespace is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import procs
import pytest
from factories import tiny_checkpoint

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from reidkit.errors import ReIDError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

# camera names a filter must take as one literal: quotes, backslashes, an injection, control characters
NAMES = [
    "c1",
    'a"b',
    "a\\b",
    "a\\",
    'a\\"b',
    '" or id > 0 or "',
    "' or id > 0 or '",
    "x) or (id > 0",
    "cam\x01",
    "cam\\x01",
    "nl\n",
    "nl\\n",
    "cr\r",
    "tab\t",
    "esc\x1b[2J",
    "del\x7f",
    "nul\x00",
    "é😀\u2028",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny model, a crop folder and a two-camera scene with ground-truth detections."""

    from reidkit.data.scene import generate_scene
    from reidkit.data.synthetic import generate
    from reidkit.inference import FeatureExtractor

    root = tmp_path_factory.mktemp("mserver")
    syn = generate(root / "syn", ids=4, images_per_id=3, cams=2, seed=0, workers=1)
    images = root / "crops" / "people"
    shutil.copytree(next(syn.rglob("bounding_box_test")), images)
    scene = generate_scene(root / "scene", cams=2, ids=3, frames=36, size=(96, 128), fps=10, seed=1, speed=1.5)
    weights = tiny_checkpoint(root / "tiny.pth")
    return {"root": root, "images": images, "scene": scene, "weights": weights, "ext": FeatureExtractor.load(weights)}


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return procs.run(
        [sys.executable, "-m", "reidkit.cli", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300
    )


def _one_error(p: subprocess.CompletedProcess) -> str:
    """The single `error:` line of a refused command (exit 2, no traceback, no library log)."""
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


# ----------------------------------------------------------------------------------- server versions


class _FakeClient:
    def __init__(self, version: str) -> None:
        self.version = version

    def get_server_version(self) -> str:
        if self.version == "raise":
            raise RuntimeError("unimplemented")
        return self.version


def test_server_versions_checked_at_connect():
    from reidkit.retrieval.backends.milvus.client import MIN_SERVER, _check_server, parse_version

    assert MIN_SERVER == (2, 5, 0)
    assert parse_version("v2.3.5-lite") == (2, 3, 5) and parse_version("2.6") == (2, 6, 0)
    for ok in ("v2.5.0", "v2.6.3", "v3.0.0-beta", "milvus_lite-3.2.2", "raise", "no version here"):
        _check_server(_FakeClient(ok), "http://127.0.0.1:1")
    for old in ("v2.3.5-lite", "v2.4.17", "Zilliz Cloud (Compatible with Milvus 2.4)"):
        with pytest.raises(ReIDError, match=r"^db: ") as e:
            _check_server(_FakeClient(old), "http://127.0.0.1:1")
        assert old in str(e.value) and "2.5.0 or newer" in str(e.value)


# ----------------------------------------------------------------------------------- filter values


def _db(tmp_path: Path, backend: str) -> str:
    return str(tmp_path / "emb") if backend == "embedded" else f"milvus:{tmp_path / 'g.db'}"


@pytest.mark.parametrize("backend", ["embedded", "milvus"])
def test_filter_values_name_exactly_their_entries(data, tmp_path, backend):
    """Each name lists, searches (camera, exclude_camera) and deletes exactly its own entries, by camera and by
    tracklet key; nothing is read as expression text."""
    from reidkit.retrieval.gallery import Gallery

    g = Gallery.create(_db(tmp_path, backend), data["ext"])
    dim = g.identity.feat_dim
    rng = np.random.default_rng(0)
    rows = [
        {
            "path": f"/v/{i}.mp4",
            "kind": "tracklet",
            "tracklet": f"{name}#{j}",
            "camera": name,
            "frame_start": 1,
            "frame_end": 5,
            "t_start": 0.0,
            "t_end": 1.0,
        }
        for i, name in enumerate(NAMES)
        for j in range(2)
    ]
    g.add_entries(rng.standard_normal((len(rows), dim)).astype(np.float32), rows)
    total = len(rows)
    assert len(g.entries()) == total
    q = rng.standard_normal(dim).astype(np.float32)
    for name in NAMES:
        got = g.entries(camera=name)
        assert sorted(e["tracklet"] for e in got) == [f"{name}#0", f"{name}#1"], repr(name)
        assert all(e["camera"] == name for e in got)
        hits = g.search(q, k=total, camera=name)
        assert len(hits) == 2 and {h["camera"] for h in hits} == {name}, repr(name)
        others = g.search(q, k=total, exclude_camera=name)
        assert len(others) == total - 2 and name not in {h["camera"] for h in others}, repr(name)
        assert [e["tracklet"] for e in g.entries(tracklet=f"{name}#1")] == [f"{name}#1"]
    left = total
    for name in NAMES:
        assert g.delete(tracklet=f"{name}#1") == 1, repr(name)
        assert g.delete(camera=name) == 1, repr(name)
        left -= 2
        assert len(g) == left and not g.entries(camera=name), repr(name)
        assert len(g.entries()) == left
    with pytest.raises(ReIDError, match="^camera: no entry has camera"):  # a value, never an expression
        g.delete(camera='" or id > 0 or "')
    assert len(g) == left


def test_milvus_values_it_cannot_store_and_failed_calls_are_one_error(data, tmp_path):
    """A value Milvus cannot take is refused naming its field; a call Milvus fails is one error line, without
    pymilvus's own log of it (its traceback, ~20 lines on stderr)."""
    from reidkit.retrieval.gallery import Gallery
    from reidkit.retrieval.backends.milvus.client import close_client

    g = Gallery.create(f"milvus:{tmp_path / 'g.db'}", data["ext"])
    one = np.ones((1, g.identity.feat_dim), np.float32)
    g.add_entries(one, [{"path": "/v/a.mp4", "kind": "tracklet", "tracklet": "k", "camera": "c1"}])
    with pytest.raises(ReIDError, match=r"^camera: .*not valid Unicode"):
        g.delete(camera="cam\udcff")
    with pytest.raises(ReIDError, match=r"^exclude_camera: .*not valid Unicode"):
        g.search(one[0], exclude_camera="cam\udcff")
    for bad, rx in (("cam\udcff", "not valid Unicode"), ("é" * 513, "1026 bytes long in UTF-8; .* at most 1024")):
        with pytest.raises(ReIDError, match=rf"^camera: .*{rx}"):
            g.add_entries(one, [{"path": "/v/b.mp4", "kind": "tracklet", "tracklet": "k2", "camera": bad}])
    assert [e["camera"] for e in g.entries()] == ["c1"]
    g.store.cols.client.drop_collection(g.store.cols.state_name)  # gone under it (another process, an admin)
    close_client(g.db)  # a Milvus Lite file: one process at a time
    p = _cli(["index", "check", "--db", g.db], tmp_path)  # a fresh process: pymilvus's log goes to its stderr
    assert "Milvus load_collection failed: collection 'reidkit_state' does not exist" in _one_error(p)


# ----------------------------------------------------------------------------------- a Milvus Lite server

_LITE_SERVER = """
import sys
from milvus_lite.adapter.grpc.server import start_server_in_thread
server, db, port = start_server_in_thread(sys.argv[1], host="127.0.0.1", port=0)
print(port, flush=True)
sys.stdin.read()  # until the test closes our stdin
server.stop(grace=1)
db.close()
"""


@pytest.fixture
def lite_server(tmp_path):
    """`milvus:http://127.0.0.1:PORT` of a Milvus Lite gRPC server in a child process, stopped after the test."""
    p = procs.Popen(
        [sys.executable, "-c", _LITE_SERVER, str(tmp_path / "server")],
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(p.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=120)
        assert line and line[0].strip().isdigit(), (
            f"the Milvus Lite server did not start: {p.stderr.read()[-2000:]}"
            if p.poll() is not None
            else "the Milvus Lite server did not start in 120 s"
        )
        yield f"milvus:http://127.0.0.1:{int(line[0])}"
    finally:
        p.stdin.close()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=20)
        from reidkit.retrieval.backends.milvus import client as milvus_client

        milvus_client._clients.clear()


def _folders(root: Path, *names: str) -> list[Path]:
    out = []
    for n in names:
        (root / n).mkdir()
        out.append(root / n)
    return out


def test_server_gallery_files_collection_and_control_character_camera(data, lite_server, tmp_path, monkeypatch):
    from reidkit.retrieval.gallery import Gallery
    from reidkit.video.ingest import ingest

    db, sc = lite_server, data["scene"]
    a, b, c = _folders(tmp_path, "a", "b", "c")
    files = data["images"].parent / "people.files"  # beside the images folder, named after the collection
    p = _cli(
        [
            "index",
            "build",
            "--images",
            str(data["images"]),
            "--db",
            db,
            "--collection",
            "people",
            "--weights",
            str(data["weights"]),
        ],
        a,
    )
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert f"files (video thumbnails): {files}" in p.stdout
    assert not Gallery.exists(db)  # the default collection is untouched

    video = [str(v) for v in sc.videos]
    dets = [x for g in sc.gt for x in ("--detections", str(g))]
    cams = ["--camera", "cam\x01", "--camera", "cam\n2"]
    refused = _cli(["video", *video, *dets, *cams, "--db", db, "--collection", "people", "--files", str(b)], b)
    assert f"keeps its files in {files}" in _one_error(refused) and "--files" in refused.stderr
    p = _cli(["video", *video, *dets, *cams, "--db", db, "--collection", "people", "--chunk", "6"], b)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "cam\\x01: " in p.stdout and "cam\\n2: " in p.stdout  # names shown escaped, one line each
    assert not any(a.iterdir()) and not any(b.iterdir())  # nothing in the working directories

    g = Gallery.open(db, collection="people")
    assert g.files_dir == files
    trk = g.entries(kind="tracklet")
    by_cam = {cam: [e for e in trk if e["camera"] == cam] for cam in ("cam\x01", "cam\n2")}
    assert by_cam["cam\x01"] and by_cam["cam\n2"] and len(trk) == sum(map(len, by_cam.values()))
    for e in trk:
        assert all((files / "thumbs" / t).is_file() for t in e["meta"]["thumbs"])

    key = by_cam["cam\x01"][0]["tracklet"]
    p = _cli(["tracklets", "search", "--db", db, "--collection", "people", "--tracklet", key, "--json"], c)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["results"] and all(Path(t).is_file() for h in res["results"] for t in h["thumb_paths"])
    p = _cli(["tracklets", "show", key, "--db", db, "--collection", "people", "--json"], c)
    assert p.returncode == 0 and all(Path(t).is_file() for t in json.loads(p.stdout)["tracklet"]["thumb_paths"])

    p = _cli(["index", "delete", "--db", db, "--collection", "people", "--camera", "cam\x01"], c)
    assert p.returncode == 0, p.stderr
    n = len(by_cam["cam\x01"])
    assert f"index delete: {n} {'entry' if n == 1 else 'entries'} deleted" in p.stdout
    g = Gallery.open(db, collection="people")
    assert [e["id"] for e in g.entries(kind="tracklet")] == sorted(e["id"] for e in by_cam["cam\n2"])
    assert len(g.entries(kind="image")) == len(list(data["images"].glob("*.jpg")))
    assert not any(c.iterdir())

    # a server gallery made by `video` records <collection>.files in the first video's folder
    monkeypatch.chdir(c)
    rep = ingest(
        db,
        [str(sc.videos[1])],
        detections=[str(sc.gt[1])],
        weights=str(data["weights"]),
        collection="cams",
        chunk=6,
        progress=None,
    )
    g = Gallery.open(db, collection="cams")
    assert rep["gallery_tracklets"] and g.files_dir == Path(sc.videos[1]).parent / "cams.files"
    assert all((g.files_dir / "thumbs" / t).is_file() for e in g.entries() for t in e["meta"]["thumbs"])
    # one made by the library alone records nothing: a per-user folder, keyed by server and collection
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    g = Gallery.create(db, data["ext"], collection="bare")
    server = db.split("://")[1].replace(":", "_")
    assert g.files_dir == tmp_path / "xdg" / "reidkit" / "milvus" / server / "bare.files"
    assert not any(c.iterdir())


def test_files_option_refused_where_it_does_not_apply(data, tmp_path):
    p = _cli(
        [
            "index",
            "build",
            "--images",
            str(data["images"]),
            "--db",
            str(tmp_path / "emb"),
            "--files",
            str(tmp_path / "f"),
        ],
        tmp_path,
    )
    assert "--files: applies to milvus: galleries only" in _one_error(p)
    (tmp_path / "afile").write_text("x")
    p = _cli(
        [
            "index",
            "build",
            "--images",
            str(data["images"]),
            "--db",
            f"milvus:{tmp_path / 'g.db'}",
            "--files",
            str(tmp_path / "afile"),
        ],
        tmp_path,
    )
    assert "is not a folder" in _one_error(p) and "--files" in p.stderr
    p = _cli(
        [
            "video",
            str(data["scene"].videos[0]),
            "--db",
            f"milvus:{tmp_path / 'g.db'}",
            "--collection",
            "x",
            "--workers",
            "2",
        ],
        tmp_path,
    )
    assert "--collection: not with --workers" in _one_error(p)


def test_milvus_lite_gallery_keeps_files_beside_its_file_unless_told(data, tmp_path):
    from reidkit.retrieval.gallery import Gallery
    from reidkit.retrieval.backends.milvus.client import close_client

    db = f"milvus:{tmp_path / 'g.db'}"
    g = Gallery.create(db, data["ext"], collection="x")
    assert g.files_dir == tmp_path / "g.db.x.files"
    assert g.store.use_files(None, default=tmp_path / "elsewhere") == tmp_path / "g.db.x.files"  # not recorded
    assert g.store.use_files(tmp_path / "mine") == tmp_path / "mine"
    close_client(db)
    assert Gallery.open(db, collection="x").files_dir == tmp_path / "mine"
    g = Gallery.open(db, collection="x")
    with pytest.raises(ReIDError, match=r"^files=.*keeps its files in .*mine"):
        g.store.use_files(tmp_path / "other")
    assert g.files_dir == tmp_path / "mine"
    images = data["images"]
    Gallery.build(images, db, extractor=data["ext"], collection="x", overwrite=True)  # a new gallery, no record
    assert g.refresh() and g.files_dir == tmp_path / "g.db.x.files"


# ----------------------------------------------------------------------------------- Milvus 2.3.5


def _netns_problem() -> str | None:
    """Why a private network namespace cannot be made here (None when it can)."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return "no unshare(1) here"
    p = subprocess.run(["unshare", "-rnpf", "--kill-child", "true"], capture_output=True, text=True)
    return None if p.returncode == 0 else f"unshare -rnpf fails here ({p.stderr.strip()[:120]})"


def test_milvus_2_3_server_is_refused_with_its_version(data, tmp_path):
    """Milvus 2.3.5 (the newest server wheel on PyPI), started in a private network namespace: index build,
    search, index delete of a camera with a control character and video each give one error naming the
    version the server reports and the minimum."""
    milvus = pytest.importorskip("milvus", reason="the PyPI `milvus` server wheel (2.3.5) is not installed")
    problem = _netns_problem()
    if problem:
        pytest.skip(f"Milvus 2.3.5 binds every interface, so it runs only in a private network namespace: {problem}")
    t0 = time.monotonic()
    query = sorted(data["images"].glob("*.jpg"))[0]
    job = {
        "data": str(tmp_path / "server"),
        "cwd": str(tmp_path),
        "commands": [
            ["index", "build", "--images", str(data["images"]), "--weights", str(data["weights"])],
            ["search", "--image", str(query)],
            ["index", "delete", "--camera", "cam\x01"],
            ["video", str(data["scene"].videos[0]), "--detections", str(data["scene"].gt[0]), "--camera", "cam\x01"],
        ],
    }
    p = subprocess.run(
        ["unshare", "-rnpf", "--kill-child", sys.executable, __file__, json.dumps(job)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    found = milvus.__version__
    for args, (code, stdout, stderr) in zip(job["commands"], out["results"]):
        line = _one_error(subprocess.CompletedProcess(args, code, stdout, stderr))
        assert line.startswith("error: --db: the Milvus server at http://127.0.0.1:"), line
        assert f"is version v{found}" in line and "reidkit needs Milvus 2.5.0 or newer" in line, line
    print(f"milvus {found}: server start {out['start_s']:.1f} s, whole test {time.monotonic() - t0:.1f} s")


def _forked_cli(args: list[str], cwd: str) -> tuple[int, str, str]:
    """`reidkit ARGS` in a fork of this process (its libraries imported once; reidkit itself fresh in each)."""
    import tempfile
    import traceback

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = os.fork()
        if pid == 0:  # the child: its stdout and stderr are the two files, as a process's would be
            code = 1
            try:
                os.chdir(cwd)
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                from reidkit.cli import main

                code = main(args)
            except BaseException:  # noqa: BLE001 - shown to the test as a traceback on stderr
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), out.read(), err.read()


def _inside_namespace(job: dict) -> None:
    """Run in `unshare -rnpf`: loopback up, Milvus started on a free 127.0.0.1 port, the commands, Milvus stopped."""
    import fcntl
    import importlib
    import struct

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, struct.pack("16sh", b"lo", 0)))[1]  # SIOCGIFFLAGS
    fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))  # SIOCSIFFLAGS: IFF_UP
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    from milvus import MilvusServer, MilvusServerConfig

    t0 = time.monotonic()
    server = MilvusServer(MilvusServerConfig(data_dir=job["data"]), wait_for_started=False)
    server.config.configs.update(proxy_port=port)
    for part in ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode"):
        server.config.set(f"{part}.ip", "127.0.0.1")  # the address it registers (the namespace has no other)
    server.start()
    try:
        for name in ("numpy", "torch", "cv2", "faiss", "onnxruntime", "PIL.Image", "pymilvus"):  # while it starts
            importlib.import_module(name)
        server.wait_started(timeout=120_000)
        start_s = time.monotonic() - t0
        db = ["--db", f"milvus:http://127.0.0.1:{port}"]
        results = [_forked_cli([*args, *db], job["cwd"]) for args in job["commands"]]
    finally:
        server.stop()
    print(json.dumps({"start_s": start_s, "results": results}))


if __name__ == "__main__":
    _inside_namespace(json.loads(sys.argv[1]))


_PINGS = """
import json, sys, time
import reidkit.retrieval.backends.milvus.client  # what every milvus: command imports before pymilvus
from pymilvus.client import grpc_handler

create = grpc_handler.GrpcHandler._create_grpc_channel
seen = []


def eager(self, address=None):
    # a server that finds the client's pings too frequent (what a loaded machine met): ping every 50 ms
    seen.append(dict(self._grpc_options))
    self._grpc_options = {**self._grpc_options, "grpc.keepalive_time_ms": 50, "grpc.keepalive_timeout_ms": 1000,
                          "grpc.keepalive_permit_without_calls": 1, "grpc.http2.max_pings_without_data": 0}
    return create(self, address)


grpc_handler.GrpcHandler._create_grpc_channel = eager
from reidkit.retrieval.backends.milvus.client import _client

client = _client(sys.argv[1])
client.create_collection("t", dimension=4)
for i in range(5):
    client.insert("t", [{"id": i, "vector": [0.1] * 4}])
time.sleep(5)  # idle: the pings go on, the server answers GOAWAY too_many_pings
print(json.dumps(seen[0]))
"""


def test_milvus_lite_does_not_flood_stderr_with_grpc_goaway(tmp_path):
    """Issue 31: Milvus Lite commands printed gRPC's `Received a GOAWAY ... too_many_pings` lines on stderr.
    A fresh interpreter (not a fork of the test server, which has imported grpc already), as a user runs it."""
    script = tmp_path / "pings.py"
    script.write_text(_PINGS)
    env = {k: v for k, v in ENV.items() if not k.startswith("GRPC_")}
    p = procs.run(
        ["/usr/bin/env", sys.executable, str(script), str(tmp_path / "g.db")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "GOAWAY" not in p.stderr and "too_many_pings" not in p.stderr, p.stderr
    opts = json.loads(p.stdout.strip().splitlines()[-1])  # what reidkit asks of a Milvus Lite connection
    assert opts["grpc.keepalive_permit_without_calls"] == 0 and opts["grpc.keepalive_time_ms"] >= 300_000
