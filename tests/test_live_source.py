"""Live frame sources (reidkit.video.live): pacing, bounded buffers that skip by rule, reconnects, faults,
and a real stream served by ffmpeg on 127.0.0.1 (issue 32)."""

import shutil
import time

import numpy as np
import pytest
from factories import free_port, serve_stream

from reidkit.data.scene import generate_scene
from reidkit.errors import OptionError
from reidkit.video.live import LiveSource, frame_index, is_stream


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 30-frame, 20 fps scene video (1.5 s of camera time)."""
    rep = generate_scene(tmp_path_factory.mktemp("live") / "scene", cams=1, ids=3, frames=30, fps=20.0)
    return rep.videos[0]


class FakeCapture:
    """A cv2.VideoCapture stand-in: `frames` images, then a failed read (the stream dropped)."""

    def __init__(self, frames, opened=True, fps=25.0):
        self.frames, self.opened, self.fps = list(frames), opened, fps

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return self.opened

    def get(self, prop):
        return self.fps

    def read(self):
        if not self.frames:
            return False, None
        return True, self.frames.pop(0)

    def release(self):
        pass


def _img(v, h=48, w=64):
    return np.full((h, w, 3), v, np.uint8)


def _collect(src, n, timeout=10.0):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        f = src.read(timeout=0.2)
        if f is not None:
            got.append(f)
    return got


def test_urls_are_streams_and_a_missing_file_is_one_error(tmp_path):
    assert is_stream("rtsp://cam/1") and is_stream("HTTP://127.0.0.1:8000/x") and is_stream("udp://127.0.0.1:5000")
    assert not is_stream("cam1.avi")
    with pytest.raises(OptionError, match="nope.avi is neither a stream URL"):
        LiveSource(tmp_path / "nope.avi", "cam1")
    with pytest.raises(OptionError, match="buffer"):
        LiveSource("rtsp://x", "cam1", buffer=0)
    with pytest.raises(OptionError, match="backoff"):
        LiveSource("rtsp://x", "cam1", backoff=(2.0, 1.0))


def test_a_file_plays_at_its_own_rate_and_every_frame_arrives_when_the_consumer_keeps_up(clip):
    src = LiveSource(clip, "cam1", buffer=4).start()
    t0 = time.monotonic()
    frames = list(src)
    took = time.monotonic() - t0
    assert len(frames) == 30 and src.stats.delivered == 30 and src.stats.skipped == 0
    assert src.ended and src.fps == pytest.approx(20.0)
    assert took >= 1.3, f"30 frames at 20 fps must take about 1.5 s, took {took:.2f}"
    assert [f.index for f in frames] == list(range(30))  # a stream that loses nothing: the file's numbering
    walls = [f.wall for f in frames]
    assert all(b > a for a, b in zip(walls, walls[1:]))
    assert 1.1 <= walls[-1] - walls[0] <= 3.0  # 29 frame periods of 50 ms, with room for a loaded machine


def test_a_slow_consumer_skips_the_oldest_frames_and_its_lag_stays_bounded(clip):
    src = LiveSource(clip, "cam1", buffer=2).start()
    lags, indices = [], []
    for f in src:
        indices.append(f.index)
        time.sleep(0.12)  # 2.4 frame periods of work per frame: the camera is faster than this consumer
        lags.append(src.stats.lag)
    s = src.stats
    assert s.received == 30 and s.delivered + s.skipped == 30 and s.skipped >= 10
    assert indices == sorted(set(indices)) and indices[-1] == 29  # skipped frames leave holes in the numbering
    # never an ever-growing lag: a frame waits about the buffer's length of consumer work (2 x 0.12 s); without the
    # rule the last frames would wait over 2 s (30 frames in 1.5 s against 3.6 s of work), hence the 1 s bound
    assert max(lags) < 1.0, lags


def test_a_dropped_stream_reconnects_and_a_corrupt_frame_is_counted():
    sessions = [
        FakeCapture([_img(1), _img(2), _img(3)]),
        FakeCapture([], opened=False),  # the camera is down for one attempt
        FakeCapture([_img(4), _img(5, h=40), _img(6)]),
    ]  # a frame of another size: corrupt
    opened = []

    def opener(url, open_timeout, read_timeout):
        opened.append(url)
        return sessions.pop(0) if sessions else FakeCapture([], opened=False)

    src = LiveSource("rtsp://127.0.0.1/cam", "cam1", backoff=(0.01, 0.05), opener=opener).start()
    got = _collect(src, 5, timeout=5)
    src.stop()
    assert [int(f.image[0, 0, 0]) for f in got] == [1, 2, 3, 4, 6]
    idx = [f.index for f in got]
    assert idx[:3] == [0, 1, 2] and idx[3] > 2 and idx[4] == idx[3] + 1  # after the outage: the wall clock's grid
    s = src.stats
    assert s.reconnects == 1 and s.failures >= 1 and s.corrupt == 1 and s.received == 5
    assert len(opened) >= 3


def test_a_camera_that_never_connects_is_reported_and_does_not_hold_up_another():
    def down(url, *_):
        raise ConnectionRefusedError(111, "Connection refused")

    frames = [_img(i) for i in range(10)]
    bad = LiveSource("rtsp://127.0.0.1:9/none", "cam2", backoff=(0.01, 0.02), opener=down).start()
    good = LiveSource(
        "rtsp://127.0.0.1/cam1",
        "cam1",
        buffer=16,
        opener=lambda *_: FakeCapture(frames if frames else [], opened=bool(frames)),
    ).start()
    t0 = time.monotonic()
    assert bad.read(timeout=0.3) is None
    assert time.monotonic() - t0 < 1.0
    got = _collect(good, 10, timeout=5)
    bad.stop(), good.stop()
    assert len(got) == 10
    assert not bad.stats.connected and bad.stats.failures >= 2 and "Connection refused" in bad.stats.last_error
    r = bad.stats.report()
    assert r["last_frame_age"] is None and r["received"] == 0


def test_frame_index_follows_the_wall_clock_and_always_increases():
    assert [frame_index(t, 100.0, 10.0, -1) for t in (100.0, 100.1, 100.5)] == [0, 1, 5]
    assert frame_index(100.0, 100.0, 10.0, 7) == 8  # never back in time
    assert frame_index(103.0, 100.0, 10.0, 5) == 30  # a 2.5 s gap (skips, a reconnect) leaves a hole


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg to serve a stream")
def test_a_real_http_stream_is_read_and_a_killed_server_is_reconnected(clip):
    port = free_port()
    server = serve_stream(clip, port)
    src = LiveSource(
        f"http://127.0.0.1:{port}/", "cam1", buffer=64, backoff=(0.2, 0.5), open_timeout=5, read_timeout=3
    ).start()
    try:
        first = _collect(src, 30, timeout=20)
        assert len(first) >= 27, f"{len(first)} of 30 frames over HTTP"  # the last few may be cut at the end
        assert first[0].image.shape == (240, 320, 3)
        server.wait(timeout=10)  # played out: the stream dropped
        server = serve_stream(clip, port)  # the camera comes back
        second = _collect(src, 20, timeout=20)
        assert len(second) >= 20 and src.stats.reconnects >= 1
        assert second[0].wall > first[-1].wall
    finally:
        src.stop()
        server.kill()
        server.wait()
