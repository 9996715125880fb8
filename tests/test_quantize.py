"""The int8 engine (reidkit.models.quantize): features close to the float model's on unseen crops, the
same identities found, one quantisation per model cached (a damaged entry made again), metadata kept."""

from __future__ import annotations

import numpy as np
import pytest

from reidkit.inference import FeatureExtractor

SIZE = (128, 64)


def _crops(ids: int = 6, per_id: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic person crops (a seed the calibration never saw) and their identities."""
    from reidkit.data.synthetic.render import Job, render_crop

    ims, pids = [], []
    for k in range(ids):
        for i in range(per_id):
            ims.append(np.asarray(render_crop(Job("", 50 + k, i, i % 3, "person", i % 4), 9, 0, SIZE).convert("RGB")))
            pids.append(k)
    return np.stack(ims), np.asarray(pids)


def _rank1_ids(f: np.ndarray) -> np.ndarray:
    s = f @ f.T
    np.fill_diagonal(s, -np.inf)
    return s.argmax(1)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")  # one ONNX cache for the module: a model is quantised once


def test_int8_features_are_close_and_cached(home, monkeypatch):
    import reidkit.models.quantize as quantize

    monkeypatch.setenv("REIDKIT_HOME", str(home))
    ims, pids = _crops(ids=24)  # 96 crops: on 24, one changed neighbour is 4 points of rank-1
    f32 = FeatureExtractor.load(None, size=SIZE, engine="onnx", threads=1)
    q = FeatureExtractor.load(None, size=SIZE, engine="int8", threads=1)
    assert q.engine == "int8" and q.identity == f32.identity and q.dim == f32.dim == 1280
    a, b = f32.embed(ims, flip=False), q.embed(ims, flip=False)
    cos = (a * b).sum(1)
    assert cos.mean() >= 0.95 and cos.min() >= 0.9, (cos.mean(), cos.min())
    # what ReID asks of a feature: the nearest other crop is about as often the same person as with float.
    # How close depends on the CPU's integer kernels, not on the quantisation (cosine 0.97, min 0.93 on both):
    # an AVX2-only AMD EPYC lost at most 1 of 96 rank-1 hits; an AVX-512 VNNI/AMX Xeon loses 3-4 (35 -> 31 or
    # 32 of 96; ONNX Runtime 1.30 and 1.32), because the ImageNet feature's top two neighbours sit 0.02 apart
    # (median) and int8 moves them. The bound keeps int8 honest on both: at most 6 of 96 lost.
    hits32 = (pids[_rank1_ids(a)] == pids).mean()
    hits8 = (pids[_rank1_ids(b)] == pids).mean()
    assert hits8 >= hits32 - 6 / len(pids), (hits32, hits8)
    assert "quantized" in q.model.session.get_modelmeta().custom_metadata_map
    entry = home / "onnx-cache" / "imagenet_efficientnet_lite0-128x64-int8.onnx"
    assert entry.is_file()
    # a second load reuses the entry: no second quantisation, equal features
    monkeypatch.setattr(quantize, "quantize_onnx", lambda *a, **k: pytest.fail("quantised twice"))
    again = FeatureExtractor.load(None, size=SIZE, engine="int8", threads=1)
    np.testing.assert_allclose(again.embed(ims, flip=False), b, atol=1e-6)
    monkeypatch.undo()
    monkeypatch.setenv("REIDKIT_HOME", str(home))
    entry.write_bytes(entry.read_bytes()[:500])  # damaged: quantised again, the same model
    remade = FeatureExtractor.load(None, size=SIZE, engine="int8", threads=1)
    assert remade.engine == "int8"
    np.testing.assert_allclose(remade.embed(ims, flip=False), b, atol=1e-6)


def test_int8_on_a_gpu_device_is_refused():
    from reidkit.errors import ReIDError

    with pytest.raises(ReIDError, match="engine int8 runs on the CPU"):
        FeatureExtractor.load(None, size=SIZE, engine="int8", device="cuda")


def test_auto_int8_keeps_int8_only_where_it_pays(home, monkeypatch):
    import json

    import reidkit.inference as inference

    monkeypatch.setenv("REIDKIT_HOME", str(home))
    monkeypatch.setenv("REIDKIT_INT8", "auto")  # timed (the suite pins "on")
    record = home / "onnx-cache" / "imagenet_efficientnet_lite0-128x64-int8.json"
    record.unlink(missing_ok=True)
    monkeypatch.setattr(inference, "INT8_GAIN", 1e6)  # int8 is never a million times faster: float
    assert FeatureExtractor.load(None, size=SIZE, engine="auto-int8", threads=1).engine == "onnx"
    timing = json.loads(record.read_text())
    assert timing["int8_pays"] is False and timing["float_ms_per_crop"] > 0 and timing["int8_ms_per_crop"] > 0
    monkeypatch.setattr(inference, "INT8_GAIN", 0.0)  # the verdict is cached: not timed again
    assert FeatureExtractor.load(None, size=SIZE, engine="auto-int8", threads=1).engine == "onnx"
    record.unlink()
    assert FeatureExtractor.load(None, size=SIZE, engine="auto-int8", threads=1).engine == "int8"
    assert json.loads(record.read_text())["int8_pays"] is True


def test_reidkit_int8_pins_the_auto_int8_verdict(home, monkeypatch):
    """$REIDKIT_INT8: "on" int8 and "off" float whatever a timing (cached or not) would say, nothing timed;
    a bad value is one error naming the variable, on any device."""
    import reidkit.inference as inference
    from reidkit.errors import ReIDError

    monkeypatch.setenv("REIDKIT_HOME", str(home))
    record = home / "onnx-cache" / "imagenet_efficientnet_lite0-128x64-int8.json"
    record.unlink(missing_ok=True)
    monkeypatch.setattr(inference, "INT8_GAIN", 1e6)  # a timing would say float
    monkeypatch.setenv("REIDKIT_INT8", "on")
    assert FeatureExtractor.load(None, size=SIZE, engine="auto-int8", threads=1).engine == "int8"
    assert not record.exists()  # not timed
    monkeypatch.setattr(inference, "INT8_GAIN", 0.0)  # a timing would say int8
    monkeypatch.setenv("REIDKIT_INT8", "OFF")
    assert FeatureExtractor.load(None, size=SIZE, engine="auto-int8", threads=1).engine == "onnx"
    assert FeatureExtractor.load(None, size=SIZE, engine="int8", threads=1).engine == "int8"  # named: kept
    assert not record.exists()
    for device in ("cpu", "cuda"):
        monkeypatch.setenv("REIDKIT_INT8", "yes")
        with pytest.raises(ReIDError, match=r"\$REIDKIT_INT8: expected on, off or auto, got 'yes'"):
            FeatureExtractor.load(None, size=SIZE, engine="auto-int8", device=device, threads=1)


def test_a_model_that_cannot_be_quantised_runs_float(tmp_path, monkeypatch, caplog):
    """`reidkit video`'s default must not fail on a quantiser error: one warning, then float."""
    import logging

    import reidkit.models.quantize as quantize

    def broken(*_a, **_k):
        raise ValueError("unsupported operator")

    monkeypatch.setenv("REIDKIT_HOME", str(tmp_path))
    monkeypatch.setenv("REIDKIT_INT8", "on")
    monkeypatch.setattr(quantize, "quantize_onnx", broken)
    with caplog.at_level(logging.WARNING, logger="reidkit.inference"):
        fx = FeatureExtractor.load(None, size=SIZE, engine="auto-int8", threads=1)
    assert fx.engine == "onnx" and "cannot quantise this model (unsupported operator)" in caplog.text


def test_a_video_gallery_keeps_the_engine_its_features_were_made_with(tmp_path):
    """Footage embedded in int8 is recorded so: queries and later videos into that gallery use int8 too;
    an explicit engine still wins. (The session's REIDKIT_HOME: the ImageNet model at 256x128 in int8 is
    quantised once for this and the video tests.)"""
    from reidkit.retrieval.gallery import Gallery
    from reidkit.video.ingest import open_gallery

    db = tmp_path / "g"
    gallery, emb = open_gallery(db, None, None, 8, False, "int8")  # new: made for ImageNet at 256x128
    assert emb.extractor.engine == "int8" and gallery.info["features_engine"] == "int8"
    assert Gallery.open(db).extractor.engine == "int8"  # queries embedded as the tracklets were
    assert Gallery.open(db, engine="torch").extractor.engine == "torch"
    _g, again = open_gallery(db, None, None, 8, False, "auto-int8")
    assert again.extractor.engine == "int8"
    _g, explicit = open_gallery(db, None, None, 8, False, "onnx")
    assert explicit.extractor.engine == "onnx"
    float_db = tmp_path / "f"
    open_gallery(float_db, None, None, 8, False, "onnx")
    assert "features_engine" not in Gallery.open(float_db).info
    _g, later = open_gallery(float_db, None, None, 8, False, "auto-int8")
    assert later.extractor.engine == "onnx"  # a float gallery stays float
    # a gallery of crops built in int8 records it too
    from PIL import Image

    crops = tmp_path / "crops"
    crops.mkdir()
    for i, im in enumerate(_crops(2, 2)[0]):
        Image.fromarray(im).save(crops / f"{i:04d}_c1s1_000001_00.jpg")
    built = Gallery.build(crops, tmp_path / "b", engine="int8", progress=None)
    assert built.info["features_engine"] == "int8" and Gallery.open(tmp_path / "b").extractor.engine == "int8"
