"""What a gallery stores and compares across cameras is embedded by the float model while association runs
int8 (reidkit.video.embedder.float_twin, used by reidkit.video.pipeline); the exact resume still holds."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest


class _Int8:
    """Stands for the int8 embedder: features in dims 0-5."""

    dim = 12

    def __init__(self):
        self.calls = 0

    def embed_crops(self, crops):
        self.calls += len(crops)
        f = np.zeros((len(crops), 12), np.float32)
        f[:, :6] = [np.r_[c.mean(axis=(0, 1)), c.std(axis=(0, 1))] + 1 for c in crops]
        return f / np.linalg.norm(f, axis=1, keepdims=True)


class _Float(_Int8):
    """Stands for its float twin: features in dims 6-11."""

    def embed_crops(self, crops):
        return np.roll(super().embed_crops(crops), 6, axis=1)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from reidkit.data.scene import generate_scene

    rep = generate_scene(
        tmp_path_factory.mktemp("fs") / "s", cams=1, ids=3, frames=40, size=(120, 160), fps=10, seed=2, speed=1.0
    )
    return rep.videos[0], rep.gt[0]


@pytest.mark.parametrize("appearance", ["needed", "all"])
def test_stored_features_are_the_float_model_s_and_resume_is_exact(video, monkeypatch, appearance):
    import reidkit.video.pipeline as pl
    from reidkit.video.decode import probe, video_key

    int8, flt = _Int8(), _Float()
    monkeypatch.setattr(pl, "float_twin", lambda e: flt if e is int8 else e)
    path, gt = video
    info = probe(path)
    job = pl.VideoJob(info, "cam1", video_key(info.path, "cam1"), {"kind": "mot", "path": str(gt)}, "mot")
    s = pl.Settings(chunk=7, appearance=appearance)
    full = list(pl.process_video(job, s, int8))
    feats = np.concatenate([c.features for c in full])
    assert len(feats) >= 3 and int8.calls > 0  # tracklets made; the tracker saw the int8 features
    assert np.abs(feats[:, :6]).max() == 0 and np.allclose(np.linalg.norm(feats[:, 6:], axis=1), 1, atol=1e-5)

    def flat(cs):
        return [(c.state["next_frame"], [e["meta"]["boxes"] for e in c.entries], c.features.tolist()) for c in cs]

    for cut in (1, 3):
        rest = list(pl.process_video(job, s, int8, json.loads(json.dumps(full[cut - 1].state))))
        assert flat(rest) == flat(full[cut:])


def test_float_twin_is_the_embedder_itself_unless_int8(tmp_path):
    from reidkit.video.embedder import float_twin

    for engine in ("onnx", "torch"):
        e = SimpleNamespace(extractor=SimpleNamespace(engine=engine))
        assert float_twin(e) is e
    # int8 without its float export beside it: the int8 embedder goes on (nothing to load)
    e = SimpleNamespace(extractor=SimpleNamespace(engine="int8", model=SimpleNamespace(path=tmp_path / "m-int8.onnx")))
    assert float_twin(e) is e
    assert float_twin(object()) is not None
