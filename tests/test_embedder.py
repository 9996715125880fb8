"""reidkit.video.embedder.Embedder: features of boxes in a frame equal the one-by-one crop features,
BGR/RGB handling, clipping, empty input, ONNX parity, and use as deep_sort_realtime's embedder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from factories import tiny_checkpoint

from reidkit.errors import ReIDError
from reidkit.video.embedder import Embedder, clip_boxes


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("emb") / "tiny.pth", seed=3)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    f = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    f[20:80, 30:55] = (200, 40, 10)  # a block of colour so the crops differ
    return f


BOXES = np.array([[30, 20, 55, 80], [0, 0, 40, 70], [100.4, 10.2, 119.6, 60.8]], dtype=np.float32)


def test_embed_equals_one_by_one(weights, frame):
    emb = Embedder(weights, device="cpu", batch_size=2)  # batches of 2: 3 boxes span two batches
    out = emb.embed(frame, BOXES)
    assert out.shape == (3, 512) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    ext = emb.extractor
    for i, (x0, y0, x1, y1) in enumerate([(30, 20, 55, 80), (0, 0, 40, 70), (100, 10, 120, 61)]):
        crop = np.ascontiguousarray(frame[y0:y1, x0:x1, ::-1])  # BGR frame -> RGB crop (floor / ceil of the box)
        one = ext.embed_images([crop], flip=emb.flip)[0]  # the embedder's options go with each call
        np.testing.assert_allclose(out[i], one, atol=1e-5)
    assert ext.flip is True and ext.batch_size == 2  # the shared extractor is never changed
    # the same frame given as RGB with bgr=False gives the same features
    np.testing.assert_allclose(emb.embed(np.ascontiguousarray(frame[:, :, ::-1]), BOXES, bgr=False), out, atol=1e-6)
    assert not np.allclose(out[0], out[1], atol=1e-3)


def test_clipped_boxes_and_empty(weights, frame):
    emb = Embedder(weights, device="cpu")
    a = emb.embed(frame, [[-15, -8, 40, 200]])  # beyond the top-left and the bottom: clipped to the frame
    b = emb.embed(frame, [[0, 0, 40, 90]])
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_array_equal(
        clip_boxes([[-15, -8, 40, 200], [119.5, 3, 130, 4]], 120, 90), [[0, 0, 40, 90], [119, 3, 120, 4]]
    )
    for empty in ([], np.zeros((0, 4)), np.zeros((0, 4), np.float32)):
        z = emb.embed(frame, empty)
        assert z.shape == (0, 512) and z.dtype == np.float32
    with pytest.raises(ReIDError, match="N x 4"):
        emb.embed(frame, [[1, 2, 3]])
    with pytest.raises(ReIDError, match="frame"):
        emb.embed(frame[:, :, 0], BOXES)


def test_onnx_parity(weights, frame, tmp_path):
    from reidkit.export import export_model

    onnx = export_model(weights, "onnx", tmp_path / "tiny.onnx")
    a = Embedder(weights, device="cpu").embed(frame, BOXES)
    b = Embedder(onnx).embed(frame, BOXES)
    assert b.shape == a.shape
    np.testing.assert_allclose(b, a, atol=1e-4)
    assert Embedder(onnx).identity.compatible(Embedder(weights).identity)


def test_drop_in_for_deep_sort(weights, frame):
    """deep_sort_realtime with embedder=None takes our embeddings; a still person keeps one track id."""
    from deep_sort_realtime.deepsort_tracker import DeepSort

    emb = Embedder(weights, device="cpu")
    tracker = DeepSort(max_age=5, n_init=2, embedder=None)
    boxes = BOXES[:2]
    ids = []
    for _ in range(4):
        dets = [([float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], 0.9, "person") for b in boxes]
        tracks = tracker.update_tracks(dets, embeds=emb.embed(frame, boxes))
        ids.append(sorted(t.track_id for t in tracks if t.is_confirmed()))
    assert ids[-1] == ids[-2] and len(ids[-1]) == 2
    # BoxMOT's call order
    np.testing.assert_allclose(emb.get_features(boxes, frame), emb.embed(frame, boxes), atol=1e-6)
