"""Load on a real server: many small uploads that decode to huge images must not exhaust its memory.

`reidkit serve` runs in a subprocess on 127.0.0.1 (its RSS is sampled with psutil); 12 clients upload at
once a 6300 x 6300 PNG of ~130 kB (39.7 MP decoded, 119 MB as RGB). The server admits a per-image
limit above that size here, so the global budget of decoded pixels in flight is what is tested: every
request is answered 200 or 503 (with Retry-After), and the peak RSS stays under the idle RSS plus the
stated upload memory budget.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time

import procs
import pytest
from factories import tiny_checkpoint

psutil = pytest.importorskip("psutil")
httpx = pytest.importorskip("httpx")

SIDE = 6300
CLIENTS = 12
BUDGET_MB = 1000  # --upload-memory-mb: 1000 MB / 12 B per pixel = 87.4 MP in flight: two of these images


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _big_png() -> bytes:
    import numpy as np
    from PIL import Image

    img = Image.new("RGB", (SIDE, SIDE), (90, 120, 160))
    img.paste(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 32, 3), dtype=np.uint8)), (10, 10))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


@pytest.fixture(scope="module")
def gallery_db(tmp_path_factory):
    import numpy as np
    from PIL import Image

    from reidkit.retrieval.gallery import Gallery

    root = tmp_path_factory.mktemp("load")
    imgs = root / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(imgs / f"{i:04d}_c1s1_{i:06d}_01.png")
    weights = tiny_checkpoint(root / "tiny.pth", seed=0)
    Gallery.build(imgs, root / "db", weights=weights)
    return root / "db", next(imgs.iterdir())


def test_concurrent_huge_png_uploads_stay_within_the_memory_budget(gallery_db, tmp_path):
    db, small = gallery_db
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "reidkit.cli",
        "serve",
        "--db",
        str(db),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-image-pixels",
        "40000000",
        "--upload-memory-mb",
        str(BUDGET_MB),
        "--upload-wait",
        "20",
    ]
    log = (tmp_path / "server.log").open("w")
    proc = procs.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        # warm up (first search allocates the model's buffers) so the idle figure is the steady state
        r = httpx.post(url + "/search?k=3", files={"file": ("q.png", small.read_bytes(), "image/png")}, timeout=60)
        assert r.status_code == 200, r.text
        server = psutil.Process(proc.pid)
        time.sleep(0.5)
        before = server.memory_info().rss
        png = _big_png()
        peak = [before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], server.memory_info().rss)
                except psutil.Error:
                    return
                time.sleep(0.01)

        answers: list[tuple[int, float, dict]] = []
        lock = threading.Lock()

        def client(i: int) -> None:
            t0 = time.perf_counter()
            try:
                r = httpx.post(url + "/search?k=3", files={"file": (f"big{i}.png", png, "image/png")}, timeout=120)
                out = (r.status_code, time.perf_counter() - t0, dict(r.headers))
            except httpx.HTTPError as exc:  # a reset connection is an unanswered request: counted as 0
                out = (0, time.perf_counter() - t0, {"error": repr(exc)})
            with lock:
                answers.append(out)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        wall = time.perf_counter() - t0
        time.sleep(0.2)
        stop.set()
        sampler.join(timeout=5)
        statuses = sorted(s for s, _, _ in answers)
        lat = sorted(t for _, t, _ in answers)
        mb = 1024 * 1024
        print(
            f"\n{CLIENTS} x {SIDE}x{SIDE} PNG ({len(png) / 1024:.0f} kB each), budget {BUDGET_MB} MB: "
            f"statuses {statuses}; RSS before {before / mb:.0f} MB, peak {peak[0] / mb:.0f} MB "
            f"(+{(peak[0] - before) / mb:.0f} MB); latency min {lat[0]:.2f} s, median {lat[len(lat) // 2]:.2f} s, "
            f"max {lat[-1]:.2f} s; wall {wall:.1f} s"
        )
        assert len(answers) == CLIENTS
        assert set(statuses) <= {200, 503} and 200 in statuses, answers
        for s, _, headers in answers:
            if s == 503:
                assert int(headers["retry-after"]) >= 1
        assert peak[0] - before < BUDGET_MB * mb, f"peak RSS grew by {(peak[0] - before) / mb:.0f} MB"
        # the server still answers normally afterwards
        r = httpx.post(url + "/search?k=3", files={"file": ("q.png", small.read_bytes(), "image/png")}, timeout=60)
        assert r.status_code == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_default_limit_refuses_the_same_upload_naming_it():
    """With the default per-image limit (4096 x 4096 = 16.7 MP) a 6300 x 6300 upload is a 413 from its header."""
    from reidkit.retrieval.uploads import DEFAULT_MAX_IMAGE_PIXELS, UploadError, probe_upload

    png = _big_png()
    with pytest.raises(UploadError) as err:
        probe_upload(png)
    assert err.value.http_status == 413
    assert "6300x6300" in str(err.value) and f"{DEFAULT_MAX_IMAGE_PIXELS:,}" in str(err.value)
