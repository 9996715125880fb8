"""Shared builders for tests: small, deterministic things several test files make the same way.

Import them (``from factories import weights_world``); the tests folder is on ``sys.path`` under pytest.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch


SCENE_W, SCENE_H, SCENE_FRAMES = 160, 120, 110  # the scene of tests/test_video.py (conftest's `scene` fixture)


def with_overrides(cfg: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with keyword overrides applied: ``section__key=value`` sets ``cfg[section][key]``."""
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[key] = value
    return cfg


def meta_params(name: str, **options: Any) -> int:
    """Parameters of backbone `name`, built on the meta device: shapes without allocating or initialising
    (a ViT-B costs seconds of random init on the CPU, its parameter count nothing)."""
    from reidkit.models.backbones import build_backbone

    with torch.device("meta"):
        model = build_backbone(name, **options)
    return sum(p.numel() for p in model.parameters())


def weights_world(root: Path) -> dict[str, Any]:
    """What the verbs that load weights need, under ``root``: a tiny resnet18 reidkit checkpoint
    (``good``, 64x32 input), 4 Market-named crops, a gallery built with the checkpoint (``db``), a
    one-camera 6-frame scene and a `reidkit test` config over a 4-identity synthetic set."""
    from PIL import Image

    from reidkit.cli import main
    from reidkit.data.scene import generate_scene
    from reidkit.models.build import ModelConfig, build_model, save_model

    cfg = ModelConfig(backbone="resnet18", pretrained=False)
    torch.manual_seed(0)
    good = save_model(root / "good.pt", build_model(cfg, 4).eval(), cfg, 4, (64, 32))
    crops = root / "crops"
    crops.mkdir()
    for i in range(4):
        arr = (np.random.default_rng(i).random((64, 32, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(crops / f"{i + 1:04d}_c{i % 2 + 1}s1_{i:06d}_00.jpg")
    db = root / "db"
    assert main(["index", "build", "--images", str(crops), "--db", str(db), "--weights", str(good)]) == 0
    scene = generate_scene(root / "scene", cams=1, ids=1, frames=6, size=(96, 128), fps=10, seed=0)
    config = synthetic_test_config(root)
    return {"root": root, "good": good, "crops": crops, "db": db, "scene": scene, "config": config}


def weight_verbs(world: dict[str, Any], weights: Path, tmp: Path) -> dict[str, list[str]]:
    """The command line of every verb that loads a model from `weights`, over the files of :func:`weights_world`
    (`world`; ``serve`` when it holds a ``port``), each writing under `tmp`; a test picks the verbs it runs."""
    w, crops, db, query = str(weights), str(world["crops"]), str(world["db"]), str(sorted(world["crops"].iterdir())[0])
    verbs = {
        "extract": ["extract", "--weights", w, "--images", crops, "--out", str(tmp / "f.npz")],
        "extract --from fastreid": [
            "extract",
            "--weights",
            w,
            "--from",
            "fastreid",
            "--images",
            crops,
            "--out",
            str(tmp / "f.npz"),
        ],
        "index build": ["index", "build", "--images", crops, "--db", str(tmp / "newdb"), "--weights", w],
        "index build --from fastreid": [
            "index",
            "build",
            "--images",
            crops,
            "--db",
            str(tmp / "newdb2"),
            "--weights",
            w,
            "--from",
            "fastreid",
        ],
        "index add": ["index", "add", "--db", db, "--images", crops, "--weights", w],
        "export": ["export", "--weights", w, "--out", str(tmp / "m.onnx")],
        "search": ["search", "--db", db, "--image", query, "--weights", w],
        "tracklets search": ["tracklets", "search", "--db", db, "--image", query, "--weights", w],
        "video": [
            "video",
            str(world["scene"].videos[0]),
            "--detections",
            str(world["scene"].gt[0]),
            "--db",
            str(tmp / "vdb"),
            "--weights",
            w,
        ],
        "test": ["test", "--config", str(world["config"]), "--weights", w],
        "pseudo-label": ["pseudo-label", "--config", str(world["config"]), "--weights", w, "--out", str(tmp / "pl")],
    }
    if "port" in world:
        verbs["serve"] = ["serve", "--db", db, "--weights", w, "--port", world["port"]]
    return verbs


def synthetic_test_config(root: Path) -> Path:
    """`root`/c.yaml: a `reidkit test` config over a 4-identity synthetic set made in `root`/syn, on CPU, its
    output in `root`/t."""
    import yaml

    from reidkit.data.datasets import load_dataset

    syn = root / "syn"
    load_dataset("synthetic", syn, ids=4, images_per_id=4, cams=2, seed=0)
    conf = {
        "data": {
            "datasets": [
                {"name": "synthetic", "root": str(syn), "options": {"ids": 4, "images_per_id": 4, "cams": 2, "seed": 0}}
            ]
        },
        "device": "cpu",
        "output_dir": str(root / "t"),
    }
    (root / "c.yaml").write_text(yaml.safe_dump(conf))
    return root / "c.yaml"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_stream(video: Path, port: int, quality: int = 2, loop: bool = False):
    """Debian's ffmpeg serving `video` at its own rate as MPEG-TS over HTTP on 127.0.0.1:`port` (one client,
    then it exits; `loop`: the video over and over until killed): a live camera for the tests (reidkit.video.live)."""
    import subprocess

    return subprocess.Popen(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-re",
            *(["-stream_loop", "-1"] if loop else []),
            "-i",
            str(video),
            "-c:v",
            "mpeg2video",
            "-q:v",
            str(quality),
            "-f",
            "mpegts",
            "-listen",
            "1",
            f"http://127.0.0.1:{port}/",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


RTSP_SERVER = Path(__file__).resolve().parent / "data" / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"


def rtsp_unavailable() -> str | None:
    """Why GStreamer's RTSP server cannot run here (None: it can): it needs Debian's python3-gi,
    gir1.2-gst-rtsp-server-1.0 and gstreamer1.0-plugins-{base,good,ugly} (x264enc), driven by the system Python."""
    import subprocess

    if not Path(SYSTEM_PYTHON).is_file():
        return f"no system Python at {SYSTEM_PYTHON}"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
        "missing = [e for e in ('x264enc', 'rtph264pay', 'decodebin', 'videoconvert') if not Gst.ElementFactory.find(e)]; "
        "print(' '.join(missing))"
    )
    try:
        out = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the system Python does not run: {exc}"
    if out.returncode != 0:
        return (
            "GStreamer's RTSP server is not installed (gir1.2-gst-rtsp-server-1.0, python3-gi): "
            + (out.stderr.strip().splitlines() or ["?"])[-1]
        )
    if out.stdout.strip():
        return f"GStreamer elements missing (gstreamer1.0-plugins-*): {out.stdout.strip()}"
    return None


def serve_rtsp(video: Path, port: int, path: str = "cam", user: str | None = None, password: str | None = None):
    """GStreamer's RTSP server (tests/data/rtsp_server.py) serving `video` as H.264 at its own rate on
    rtsp://127.0.0.1:`port`/`path`, with basic authentication when `user` is given; returns once it listens."""
    import subprocess

    cmd = [SYSTEM_PYTHON, str(RTSP_SERVER), str(video), str(port), path]
    if user is not None:
        cmd += [user, str(password)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"the RTSP server did not start (exit {proc.wait()})")
    return proc


# ----------------------------------------------------------------------------- a browser without Playwright

CHROMIUM = "/usr/bin/chromium"  # Debian's chromium
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    # a tab opened over DevTools counts as a background tab: its timers (a page's polling) must not be slowed
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
]


class BrowserError(Exception):
    """A DevTools command failed, a page script threw, or a wait ran out of time."""


class Chromium:
    """Headless Chromium driven over the Chrome DevTools Protocol on a pipe (``--remote-debugging-pipe``: the
    browser reads commands on fd 3 and writes replies and events on fd 4, NUL-separated JSON), so the browser
    tests need no Playwright and no websocket client. https://chromedevtools.github.io/devtools-protocol/"""

    def __init__(self, executable: str = CHROMIUM, args: list[str] | None = None, timeout: float = 30.0) -> None:
        import json
        import os
        import subprocess
        import tempfile
        import threading

        self._json, self.timeout = json, timeout
        self.profile = Path(tempfile.mkdtemp(prefix="reidkit-chromium-"))
        import fcntl

        def above_4(fd: int) -> int:  # a number the child's fd 3 and 4 redirections below cannot clobber
            high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(fd)
            return high

        to_child, self._to = os.pipe()
        self._from, from_child = os.pipe()
        to_child, from_child = above_4(to_child), above_4(from_child)
        argv = [executable, *(CHROMIUM_ARGS if args is None else args), "--remote-debugging-pipe"]
        argv += [f"--user-data-dir={self.profile}", "about:blank"]
        # fd 3 and 4 in the child, whatever numbers the pipes have here
        shell = f'exec "$0" "$@" 3<&{to_child} 4>&{from_child} {to_child}<&- {from_child}>&-'
        with open(self.profile / "stderr.txt", "wb") as err:
            self.proc = subprocess.Popen(
                ["/bin/bash", "-c", shell, *argv],  # bash: dash takes no fd number above 9
                pass_fds=(to_child, from_child),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        os.close(to_child)
        os.close(from_child)
        self._next, self._replies, self._lock = 0, {}, threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.send("Browser.getVersion")  # the browser answers: it started
        except BrowserError:
            self.close()
            raise

    def _read(self) -> None:
        import os

        buf = b""
        while True:
            try:
                chunk = os.read(self._from, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._lock:
                    self._replies[None] = {"error": {"message": "the browser closed its pipe"}}
                    self._lock.notify_all()
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for raw in messages:
                msg = self._json.loads(raw)
                if "id" in msg:  # replies; events are not needed
                    with self._lock:
                        self._replies[msg["id"]] = msg
                        self._lock.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """One DevTools command; its result, or BrowserError with the browser's message."""
        import os
        import time

        with self._lock:
            self._next += 1
            mid = self._next
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to, self._json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        with self._lock:
            while mid not in self._replies and None not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"{method}: no answer from the browser in {self.timeout:g} s")
                self._lock.wait(left)
            reply = self._replies.pop(mid, None) or self._replies[None]
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def new_page(self, width: int = 1280, height: int = 720, bypass_csp: bool = False) -> "BrowserPage":
        return BrowserPage(self, width, height, bypass_csp)

    def close(self) -> None:
        import os
        import shutil
        import subprocess

        try:
            self.send("Browser.close")
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to, self._from):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


class BrowserPage:
    """A tab: navigation, waiting on a page expression, typing, clicking, file inputs, screenshots (the few
    things the browser tests do). Scripts run by DevTools' Runtime.evaluate, which a page's CSP does not stop."""

    def __init__(self, browser: Chromium, width: int, height: int, bypass_csp: bool) -> None:
        self.browser = browser
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        browser.send("Target.activateTarget", {"targetId": target})
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        if bypass_csp:
            self.send("Page.setBypassCSP", {"enabled": True})

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.browser.send(method, params, self.session)

    def goto(self, url: str, timeout: float = 30.0) -> None:
        """Open `url` and wait for its load event; BrowserError when it cannot be loaded (say, refused)."""
        res = self.send("Page.navigate", {"url": url})
        if res.get("errorText"):
            raise BrowserError(f"{url}: {res['errorText']}")
        self.wait_for("document.readyState === 'complete'", timeout=timeout)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-able; promises awaited)."""
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            details = res["exceptionDetails"]
            raise BrowserError(details.get("exception", {}).get("description") or details.get("text"))
        return res["result"].get("value")

    def call(self, function: str, *args):
        """``function`` (JavaScript source) called with the JSON-able `args`."""
        import json

        return self.evaluate(f"({function})(...{json.dumps(list(args))})")

    def wait_for(self, expression: str, *args, timeout: float = 30.0) -> None:
        """Wait until an expression (or, given `args`, a function of them) is truthy in the page, as JavaScript
        judges it (an element is truthy); BrowserError naming it after `timeout` seconds."""
        import json
        import time

        check = f"!!(({expression})(...{json.dumps(list(args))}))" if args else f"!!({expression})"
        deadline, last = time.monotonic() + timeout, None
        while True:
            try:
                if self.evaluate(check):
                    return
            except BrowserError as exc:  # not there yet (say, a missing element): try again
                last = exc
            if time.monotonic() > deadline:
                raise BrowserError(
                    f"waited {timeout:g} s for {expression}" + (f" (last error: {last})" if last else "")
                )
            time.sleep(0.05)

    def _element(self, selector: str, body: str, *args):
        """`body` (JavaScript using `el` and `args`) run on the first element matching `selector`."""
        return self.call(
            f"(sel, ...args) => {{ const el = document.querySelector(sel);"
            f" if (!el) throw new Error('no element ' + sel); {body} }}",
            selector,
            *args,
        )

    def fill(self, selector: str, text: str) -> None:
        """Type `text` into a field as a user does (focus, select all, insert): input events, and change on blur."""
        self._element(selector, "el.focus(); if (el.select) el.select();")
        if text:
            self.send("Input.insertText", {"text": text})
        else:
            self.evaluate("document.execCommand('delete')")

    def click(self, selector: str) -> None:
        """A left click at the middle of the element (scrolled into view), with the mouse events a user makes."""
        x, y = self._element(
            selector,
            "el.scrollIntoView({block: 'center', inline: 'center'}); const r = el.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2];",
        )
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def check(self, selector: str) -> None:
        if not self._element(selector, "return el.checked;"):
            self.click(selector)

    def set_input_files(self, selector: str, *paths: Path | str) -> None:
        """Choose files in a file input (its input and change events fire, as when a user picks them)."""
        root = self.send("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        if not node:
            raise BrowserError(f"no element {selector}")
        self.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(Path(p).resolve()) for p in paths]})

    def dispatch_event(self, selector: str, kind: str) -> None:
        self._element(selector, "el.dispatchEvent(new Event(args[0], {bubbles: true}));", kind)

    def inner_text(self, selector: str) -> str:
        return self._element(selector, "return el.innerText;")

    def eval_on_selector_all(self, selector: str, function: str):
        """``function`` (JavaScript source) called with the list of elements matching `selector`."""
        return self.call(f"(sel) => ({function})([...document.querySelectorAll(sel)])", selector)

    def count(self, selector: str) -> int:
        return self.call("(sel) => document.querySelectorAll(sel).length", selector)

    def screenshot(self, path: Path | str, full_page: bool = True) -> None:
        """A PNG of the page (the whole page with full_page, else the viewport)."""
        import base64

        params: dict = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            params["captureBeyondViewport"] = True
        Path(path).write_bytes(base64.b64decode(self.send("Page.captureScreenshot", params)["data"]))


def chromium_page(width: int = 1280, height: int = 720, bypass_csp: bool = False):
    """A context manager: a page of a fresh headless Chromium, closed after; the test is skipped when Debian's
    chromium is missing or does not start here."""
    import contextlib

    import pytest

    @contextlib.contextmanager
    def opened():
        if not Path(CHROMIUM).is_file():
            pytest.skip(f"chromium not found at {CHROMIUM}")
        try:
            browser = Chromium()
        except (BrowserError, OSError) as exc:
            pytest.skip(f"chromium does not start here: {exc}")
        try:
            yield browser.new_page(width, height, bypass_csp)
        finally:
            browser.close()

    return opened()


_MILVUS_LITE_SERVER = """
import sys
from milvus_lite.adapter.grpc.server import start_server_in_thread
server, db, port = start_server_in_thread(sys.argv[1], host="127.0.0.1", port=0)
print(port, flush=True)
sys.stdin.read()  # until the caller closes our stdin
server.stop(grace=1)
db.close()
"""


def milvus_lite_server(folder: Path):
    """A Milvus Lite gRPC server on 127.0.0.1 in a child process, keeping its data in `folder`: (the process, its
    ``milvus:http://127.0.0.1:PORT``); close the process's stdin to stop it. A server: a gallery of many writers."""
    import subprocess
    import sys
    import threading

    p = subprocess.Popen(
        [sys.executable, "-c", _MILVUS_LITE_SERVER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(p.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=120)
    if not (line and line[0].strip().isdigit()):
        p.kill()
        raise RuntimeError(f"the Milvus Lite server did not start: {p.stderr.read()[-2000:]}")
    return p, f"milvus:http://127.0.0.1:{int(line[0])}"


SYN_RECIPE = {"ids": 8, "images_per_id": 4, "cams": 2, "seed": 0}  # the synthetic set a recipe trains on


def train_recipe(base: str, model: dict | None = None, warmup: bool = False) -> tuple[Any, list[float]]:
    """Train recipe `base` on CPU for 2 epochs of 4 batches (P 4 x K 4 at 64x32, no validation) on an 8-identity
    synthetic set, the model's `model` overrides over ``pretrained: False``; (the trainer, the loss of each of the
    8 iterations). `warmup`: keep the recipe's warm-up epochs (else none)."""
    import tempfile

    from reidkit.engine.supervised import SupervisedTrainer

    solver = {"max_epochs": 2, "eval_period": 100, "checkpoint_period": 100, "log_period": 1}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {
            "_base_": base,
            "data": {
                "datasets": [{"name": "synthetic", "root": f"{tmp}/syn", "options": SYN_RECIPE}],
                "size": [64, 32],
                "val": [],
            },
            "sampler": {"p": 4, "k": 4, "epoch_batches": 4},
            "model": {"pretrained": False, **(model or {})},
            "solver": solver if warmup else {**solver, "warmup_epochs": 0},
            "device": "cpu",
            "output_dir": f"{tmp}/out",
        }
        trainer = SupervisedTrainer(cfg)
        losses: list[float] = []
        trainer.loss_hook = lambda t, loss: (losses.append(float(loss.detach())), loss)[1]
        trainer.fit()
    return trainer, losses


def assert_loss_goes_down(losses: list[float]) -> None:
    """8 iterations, and the mean loss of the last 3 below 0.8 times that of the first 3."""
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def health(port: int) -> dict[str, Any]:
    """GET /health of a watch's status server on 127.0.0.1:`port`."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
        return json.loads(r.read())


def wait_health(
    port: int, watcher: Any, cond: Callable[[dict[str, Any]], bool], timeout: float = 120
) -> dict[str, Any]:
    """Poll /health on `port` every 0.3 s until `cond` holds of it, then return it; fails when `watcher` (the
    watch's process, or the thread running it) ends first or `timeout` seconds pass."""
    import threading
    import time

    deadline, h = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if isinstance(watcher, threading.Thread):
            assert watcher.is_alive(), "the watch ended early"
        else:
            assert watcher.poll() is None, watcher.communicate()[1][-3000:]
        try:
            h = health(port)
            if cond(h):
                return h
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"the watch did not reach the state in {timeout} s; last /health: {h}")


def noise_video(path: Path, frames: int, size: tuple[int, int] = (256, 128), fps: float = 5.0) -> Path:
    """An MJPG video at `path` of `frames` frames of uniform noise, `size` (width, height), seeded: nothing in it
    a detector learns from, so a fixed-box detector's box is the only thing tracked."""
    import cv2

    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        wr.write(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    wr.release()
    return path


def tiny_checkpoint(
    path: Path, seed: int | None = 1, classes: int = 4, size: tuple[int, int] = (64, 32), pooling: str = "gem"
) -> Path:
    """A reidkit checkpoint at `path` of an untrained resnet18 (`pooling`: gem or avg): `classes` identities,
    `size` (height, width) input, its weights drawn after ``torch.manual_seed(seed)`` (None: from the global
    generator as it stands; it is left where building the model leaves it). Returns `path`."""
    from reidkit.models.build import ModelConfig, build_model, save_model

    if seed is not None:
        torch.manual_seed(seed)
    cfg = ModelConfig(backbone="resnet18", pretrained=False, pooling=pooling)
    return save_model(path, build_model(cfg, classes), cfg, classes, size)


TEST_CACHE = Path(os.environ.get("REIDKIT_TEST_CACHE", Path.home() / ".cache" / "reidkit-test"))


def made_once(final, make, file: bool = False):
    """`final`, a folder (or with `file`, a file) in a cache that every test process shares
    (``~/.cache/reidkit-test``: two pytest runs, or two xdist workers, may fill it at the same moment), made by
    ``make(tmp)`` the first time.

    ``make`` fills a private temp folder (``.<name>.<pid>.<random>.tmp`` beside `final`; for a file it writes
    ``tmp/<name of final>``); the finished result is renamed to `final` in one step. A concurrent process that
    got there first wins (its result is the same) and ours is dropped, so a reader never sees a half-made
    `final` and no run fails on another's. Temps of killed runs are removed by the next call (owner gone)."""
    import shutil
    import tempfile

    from reidkit.utils.io import clean_stale_temps

    final = Path(final)
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(final.parent, dirs=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=final.parent))
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700: the published folder gets the usual mode
        make(tmp)
        made = tmp / final.name if file else tmp
        if not made.exists():
            raise FileNotFoundError(f"{made} was not made")
        try:
            os.rename(made, final)  # a file replaces a winner's equal one; a folder onto a non-empty one fails
        except OSError:
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def pypi_download(name: str, spec: str, *pip_args: str) -> Path:
    """`name`, an archive of PyPI package `spec` in :data:`TEST_CACHE`, downloaded once (``pip download --no-deps
    *pip_args spec``, through :func:`made_once`); skips the test with pip's last words when PyPI cannot be reached."""
    import subprocess
    import sys

    import pytest

    final = TEST_CACHE / name
    if final.exists():
        return final
    failed: list[str] = []

    def download(tmp: Path) -> None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *pip_args, spec, "-d", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        failed.append(proc.stderr.strip()[-300:])

    try:
        return made_once(final, download, file=True)
    except FileNotFoundError:
        pytest.skip(f"{spec} could not be downloaded from PyPI: {failed[-1] if failed else ''}")


def demo_overrides(data: Path, ids: int, seed: int, run: Path) -> list[str]:
    """Overrides of the `demo` recipe for one short CPU run: a synthetic set of `ids` identities (6 images each,
    3 cameras) made in `data`, mobilenetv2 at 64x32, 1 epoch of 2 P 4 x K 4 batches, the output in `run`."""
    return [
        f"data.datasets=[{{name: synthetic, root: '{data}', options: {{ids: {ids}, images_per_id: 6, cams: 3, seed: {seed}}}}}]",
        "data.size=[64,32]",
        "model.backbone=mobilenetv2",
        "model.pooling=avg",
        "sampler.p=4",
        "sampler.k=4",
        "solver.max_epochs=1",
        "sampler.epoch_batches=2",
        "loss.names=[softmax,triplet]",
        "device=cpu",
        f"output_dir={run}",
    ]


def plugin_video_argv(plugin: Path, scene: Any, *extra: str) -> list[str]:
    """`reidkit --plugin PLUGIN video` over the first camera of `scene` with its ground-truth detections, the torch
    engine, then `extra`."""
    return [
        "--plugin",
        str(plugin),
        "video",
        str(scene.videos[0]),
        "--detections",
        str(scene.gt[0]),
        "--engine",
        "torch",
        *extra,
    ]


def forget_tracker(name: str) -> None:
    """Undo a plug-in's registration of tracker `name` (the registry entry and its options), if it is there."""
    from reidkit.config.options import register_options
    from reidkit.video.trackers import TRACKERS

    if name in TRACKERS.names():
        TRACKERS.unregister(name)
    register_options("tracker", name, None)


def cli_stdout(*args: str) -> str:
    """`reidkit ARGS...` in this process; its stdout, after asserting it exits 0 (else its stderr is the message)."""
    import contextlib
    import io

    from reidkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    assert code == 0, err.getvalue()
    return out.getvalue()


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Run `app` with uvicorn on a free loopback port in a thread; yields its base URL."""
    import socket
    import threading
    import time

    import pytest
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # a bound socket handed to uvicorn: no race for the port
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=15)
        sock.close()


def screenshot(page: Any, shot: Path, env: str) -> None:
    """A full-page screenshot (a real picture, not a blank page), also copied to $env when set (docs/*.png)."""
    import shutil

    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    target = os.environ.get(env)
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target)
