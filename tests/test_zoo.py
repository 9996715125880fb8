"""Weights by name: the catalogue, downloads from a loopback server, hashes recorded and checked, a killed
download's part removed by the next run, offline and typo messages, and `reidkit extract --weights <catalogue
name>`. The cache's attacks (symlinks, truncation, size, races, shadowing, bad entries) are in test_zoo_attacks."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import procs
import pytest
import torch
import yaml

from reidkit.cli import main
from reidkit.errors import ReIDError
from reidkit.models import zoo


class _Files(http.server.BaseHTTPRequestHandler):
    """Serves `server.files[name]` with single-range support; `server.slow` names files sent slowly."""

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        srv = self.server
        name = self.path.lstrip("/")
        srv.requests.append((name, self.headers.get("Range")))
        data = srv.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        step = 4096 if name in srv.slow else len(body) or 1
        for i in range(0, len(body), step):
            self.wfile.write(body[i : i + step])
            if name in srv.slow:
                self.wfile.flush()
                time.sleep(0.01)


@pytest.fixture()
def loopback():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    srv.files, srv.slow, srv.requests = {}, set(), []
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _osnet_file(variant: str = "x0_25") -> bytes:
    """A torchreid-layout OSNet checkpoint ({"state_dict": ...}, 'module.' prefixes) with random weights."""
    from reidkit.models.backbones.osnet import osnet

    gen = torch.Generator().manual_seed(3)
    net = osnet(variant)
    sd = {
        k: (torch.randn(v.shape, generator=gen) * 0.05 if v.is_floating_point() else v)
        for k, v in net.state_dict().items()
    }
    for k in sd:
        if k.endswith("running_var"):
            sd[k] = sd[k].abs() + 0.5
    width = net.out_channels
    sd["fc.0.weight"] = torch.randn(512, width, generator=gen) * 0.05
    sd["fc.0.bias"] = torch.zeros(512)
    for n, v in (
        ("weight", torch.ones(512)),
        ("bias", torch.zeros(512)),
        ("running_mean", torch.zeros(512)),
        ("running_var", torch.ones(512)),
    ):
        sd[f"fc.1.{n}"] = v
    sd["fc.1.num_batches_tracked"] = torch.tensor(0)
    sd["classifier.weight"] = torch.randn(7, 512, generator=gen)
    sd["classifier.bias"] = torch.zeros(7)
    buf = io.BytesIO()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, buf)
    return buf.getvalue()


def _fastreid_file() -> bytes:
    from test_interop import _fastreid_ckpt

    buf = io.BytesIO()
    torch.save(_fastreid_ckpt(torch.Generator().manual_seed(4), depth=18), buf)
    return buf.getvalue()


def _keys_file(*keys: str) -> bytes:
    """A state dict holding only `keys` (small tensors): enough for a layout's key signature."""
    buf = io.BytesIO()
    torch.save({k: torch.zeros(2, 2) for k in keys}, buf)
    return buf.getvalue()


def _left(folder: Path) -> list[str]:
    """What a failed download left in the cache folder, its lock files aside (they stay, empty, by design)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


def _catalogue(tmp_path: Path, entries: list[dict]) -> Path:
    base = {"source": "test", "licence": "MIT", "arch": "x", "train": "market1501", "input_size": [64, 32]}
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump({"weights": [{**base, **e} for e in entries]}))
    return path


@pytest.fixture()
def env(tmp_path, loopback, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("REIDKIT_HOME", str(home))
    monkeypatch.setenv("REIDKIT_ZOO_URL_OVERRIDE", loopback.url)
    return {"home": home, "weights": home / "weights", "srv": loopback}


def test_packaged_catalogue_fields():
    cat = zoo.catalogue()
    assert len(cat) >= 30
    for must in (
        "osnet_x1_0_msmt17",
        "osnet_x0_25_market1501",
        "osnet_ain_x1_0_msmt17_combineall",
        "fastreid_sbs_r50_ibn_market1501",
        "fastreid_agw_r50_dukemtmc",
        "fastreid_bot_r50_msmt17",
        "transreid_vit_base_market1501",
        "solider_swin_tiny_market1501",
        "solider_swin_base_market1501",
        "solider_swin_small_msmt17",
    ):
        assert must in cat, must
    e = cat["osnet_x1_0_msmt17"]
    assert e.fmt == "torchreid" and e.gdrive and e.published["msmt17"] == {"mAP": 43.8, "rank1": 74.9}
    assert cat["osnet_ain_x1_0_msmt17_combineall"].invalid_eval == ("msmt17",)
    assert cat["fastreid_sbs_r50_ibn_market1501"].url.endswith("/v0.1.1/market_sbs_R50-ibn.pth")
    reid = [x for x in cat.values() if x.kind == "reid"]
    assert {x.fmt for x in reid} == {"torchreid", "fastreid", "transreid", "solider"}
    assert all(x.licence and x.source and x.input_size[0] > x.input_size[1] for x in reid)
    # detectors (issue 30): the YOLOX ONNX releases, Apache-2.0, each with its family and input size
    det = {x.name: x for x in cat.values() if x.kind == "detector"}
    assert set(det) == {"yolox_nano", "yolox_tiny", "yolox_s"} == set(zoo.detector_names())
    assert all(
        x.fmt == "onnx" and x.arch == "yolox" and x.licence == "Apache-2.0" and x.max_bytes for x in det.values()
    )
    assert (
        det["yolox_nano"].url
        == "https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_nano.onnx"
    )
    assert det["yolox_s"].input_size == (640, 640) and det["yolox_tiny"].input_size == (416, 416)


def test_download_in_each_layout_records_hash_then_checks_it(env, tmp_path, monkeypatch):
    from reidkit.models.loading import load_model

    srv = env["srv"]
    files = {
        "osnet.pth": _osnet_file(),
        "fastreid.pth": _fastreid_file(),
        "transreid.pth": _keys_file(
            "base.cls_token", "base.pos_embed", "base.patch_embed.proj.weight", "bottleneck.weight"
        ),
        "solider.pth": _keys_file("base.patch_embed.projection.weight", "base.stages.0.w", "head.w"),
    }
    srv.files.update(files)
    monkeypatch.setenv(
        "REIDKIT_ZOO",
        str(
            _catalogue(
                tmp_path,
                [
                    {
                        "name": "t_osnet",
                        "fmt": "torchreid",
                        "filename": "osnet.pth",
                        "url": "https://example.invalid/osnet.pth",
                    },
                    {
                        "name": "t_fastreid",
                        "fmt": "fastreid",
                        "filename": "fastreid.pth",
                        "url": "https://example.invalid/f.pth",
                    },
                    {"name": "t_transreid", "fmt": "transreid", "filename": "transreid.pth", "gdrive": "abc"},
                    {"name": "t_solider", "fmt": "solider", "filename": "solider.pth", "gdrive": "def"},
                ],
            )
        ),
    )
    for name, fname in (
        ("t_osnet", "osnet.pth"),
        ("t_fastreid", "fastreid.pth"),
        ("t_transreid", "transreid.pth"),
        ("t_solider", "solider.pth"),
    ):
        path = Path(zoo.resolve_weights(name))
        assert path == env["weights"] / fname and path.read_bytes() == files[fname]
        record = path.with_name(fname + ".sha256").read_text().split()
        assert record == [hashlib.sha256(files[fname]).hexdigest(), fname]
        assert not path.with_name(fname + ".part").exists()
    assert load_model(env["weights"] / "osnet.pth").source_format == "torchreid"
    assert load_model(env["weights"] / "fastreid.pth").source_format == "fastreid"
    # cached: no network at all (the server is stopped), the recorded hash is checked
    n = len(srv.requests)
    srv.shutdown()
    assert zoo.resolve_weights("t_osnet") == str(env["weights"] / "osnet.pth")
    assert len(srv.requests) == n
    # the cached file changed: refused with both hashes named
    good = hashlib.sha256(files["fastreid.pth"]).hexdigest()
    with open(env["weights"] / "fastreid.pth", "r+b") as f:
        f.seek(100)
        f.write(b"\0\1\2\3")
    bad = hashlib.sha256((env["weights"] / "fastreid.pth").read_bytes()).hexdigest()
    with pytest.raises(ReIDError) as err:
        zoo.resolve_weights("t_fastreid")
    msg = str(err.value)
    assert good in msg and bad in msg and str(env["weights"] / "fastreid.pth") in msg and "nothing was loaded" in msg


def test_catalogue_and_pinned_hash_mismatch_refuse_the_download(env, tmp_path, monkeypatch):
    srv = env["srv"]
    data = _osnet_file()
    srv.files["a.pth"] = data
    actual = hashlib.sha256(data).hexdigest()
    wrong = "0" * 64
    monkeypatch.setenv(
        "REIDKIT_ZOO",
        str(
            _catalogue(
                tmp_path,
                [
                    {
                        "name": "pinned_in_catalogue",
                        "fmt": "torchreid",
                        "filename": "a.pth",
                        "url": "https://x.invalid/a",
                        "sha256": wrong,
                    },
                    {"name": "free", "fmt": "torchreid", "filename": "a.pth", "url": "https://x.invalid/a"},
                ],
            )
        ),
    )
    with pytest.raises(ReIDError) as err:
        zoo.resolve_weights("pinned_in_catalogue")
    assert wrong in str(err.value) and actual in str(err.value) and "catalogue" in str(err.value)
    assert _left(env["weights"]) == []  # nothing kept: no file, no part, no record
    with pytest.raises(ReIDError, match=actual):
        zoo.resolve_weights("free", sha256=wrong)
    assert _left(env["weights"]) == []
    assert zoo.resolve_weights("free", sha256=actual.upper()) == str(env["weights"] / "a.pth")
    with pytest.raises(ReIDError, match="64 hex digits"):
        zoo.resolve_weights("free", sha256="abc")


def test_killed_download_leaves_a_part_the_next_run_removes(env, tmp_path, monkeypatch):
    srv = env["srv"]
    data = _osnet_file()
    srv.files["big.pth"] = data
    srv.slow.add("big.pth")  # ~2.5 s to send: time to kill the downloader mid-way
    cat = _catalogue(
        tmp_path, [{"name": "big", "fmt": "torchreid", "filename": "big.pth", "url": "https://x.invalid/b"}]
    )
    monkeypatch.setenv("REIDKIT_ZOO", str(cat))
    p = procs.Popen(
        [sys.executable, "-m", "reidkit.cli", "weights", "get", "big"],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(f.stat().st_size >= 100_000 for f in env["weights"].glob("big.pth.*.part")):
            assert p.poll() is None and time.monotonic() < deadline, "the download did not start"
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    parts = list(env["weights"].glob("big.pth.*.part"))
    assert [f.name for f in parts] == [f"big.pth.{p.pid}.{parts[0].name.split('.')[3]}.part"]  # its pid in the name
    assert 0 < parts[0].stat().st_size < len(data) and not (env["weights"] / "big.pth").exists()
    srv.slow.clear()
    path = zoo.resolve_weights("big")
    assert Path(path).read_bytes() == data
    assert _left(env["weights"]) == ["big.pth", "big.pth.sha256"]  # the dead process's part was removed
    assert srv.requests[-1] == ("big.pth", None)  # a whole download: a part is never resumed


def test_offline_message_and_file_put_by_hand(env, tmp_path, monkeypatch, capsys):
    srv = env["srv"]
    monkeypatch.setenv("REIDKIT_ZOO_URL_OVERRIDE", "http://127.0.0.1:9")  # nothing listens on the discard port
    cat = zoo.catalogue()
    target = env["weights"] / cat["osnet_x1_0_msmt17"].filename
    with pytest.raises(ReIDError) as err:
        zoo.resolve_weights("osnet_x1_0_msmt17")
    msg = str(err.value)
    assert "http://127.0.0.1:9/osnet_x1_0_msmt17.pth" in msg and f"put the file at {target}" in msg
    assert "weights get osnet_x1_0_msmt17 --sha256" in msg
    assert main(["weights", "path", "osnet_x1_0_msmt17"]) == 0
    # the user downloads it by hand and puts it there: not trusted until pinned (a file without its record is
    # exactly what a deleted record looks like)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"by hand")
    with pytest.raises(ReIDError, match="no recorded sha256"):
        zoo.resolve_weights("osnet_x1_0_msmt17")
    # pinned, but not a checkpoint: refused, nothing recorded
    with pytest.raises(ReIDError, match="not a torchreid checkpoint"):
        zoo.resolve_weights("osnet_x1_0_msmt17", sha256=hashlib.sha256(b"by hand").hexdigest())
    assert not (target.parent / (target.name + ".sha256")).exists()
    # the real file, pinned with its hash (the CLI): used without network, the pin recorded for later loads
    data = _osnet_file()
    target.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    capsys.readouterr()
    assert main(["weights", "get", "osnet_x1_0_msmt17", "--sha256", digest]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert (target.parent / (target.name + ".sha256")).read_text().split()[0] == digest
    assert zoo.resolve_weights("osnet_x1_0_msmt17") == str(target)
    assert srv.requests == []


def test_typo_did_you_mean_and_paths_unchanged(env, tmp_path, capsys):
    with pytest.raises(ReIDError, match="did you mean 'osnet_x1_0_msmt17'"):
        zoo.resolve_weights("osnet_x1_0_msmt")
    assert main(["weights", "get", "osnet_x1_0_msmt1"]) == 2
    assert "did you mean 'osnet_x1_0_msmt17'" in capsys.readouterr().err
    f = tmp_path / "mine.pth"
    f.write_bytes(b"x")
    assert zoo.resolve_weights(str(f)) == str(f)
    assert zoo.resolve_weights("no/such/file.pth") == "no/such/file.pth"  # the caller's own error names it
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "osnet_x1_0_msmt17" in out and "43.8" in out and "never evaluate on msmt17" in out


def test_extract_by_catalogue_name_then_cached_then_corrupted(env, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    srv = env["srv"]
    # the catalogue's osnet_x1_0_msmt17 file, served by the loopback server (x0_25 width: a fast test)
    srv.files["osnet_x1_0_msmt17.pth"] = _osnet_file()
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(images / f"000{i}_c1s1_00000{i}_01.jpg")
    argv = [
        "extract",
        "--weights",
        "osnet_x1_0_msmt17",
        "--images",
        str(images),
        "--size",
        "64",
        "32",
        "--device",
        "cpu",
    ]
    assert main([*argv, "--out", str(tmp_path / "a.npz")]) == 0, capsys.readouterr().err
    cached = env["weights"] / "osnet_x1_0_msmt17.pth"
    assert cached.is_file() and (env["weights"] / "osnet_x1_0_msmt17.pth.sha256").is_file()
    assert [r for r, _ in srv.requests] == ["osnet_x1_0_msmt17.pth"]
    srv.shutdown()  # second run: no network
    assert main([*argv, "--out", str(tmp_path / "b.npz")]) == 0, capsys.readouterr().err
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(a["features"], b["features"])
    recorded = (env["weights"] / "osnet_x1_0_msmt17.pth.sha256").read_text().split()[0]
    cached.write_bytes(cached.read_bytes()[:-10] + b"0123456789")
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "c.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and recorded in err and hashlib.sha256(cached.read_bytes()).hexdigest() in err
    assert "Traceback" not in err and not (tmp_path / "c.npz").exists()
