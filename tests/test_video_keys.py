"""Video and tracklet keys (issue 31): a video named after its camera no longer repeats it (`cam2-331ecdbf.t10`,
not `cam2-cam2-331ecdbf.t10`), and a gallery ingested with the old keys resumes under them without duplicates."""

from __future__ import annotations

import re

import pytest
from factories import tiny_checkpoint

W, H, FRAMES = 128, 96, 36


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from reidkit.data.scene import generate_scene

    root = tmp_path_factory.mktemp("vkeys")
    sc = generate_scene(root / "scene", cams=2, ids=3, frames=FRAMES, size=(H, W), fps=10, seed=1, speed=1.5)
    weights = tiny_checkpoint(root / "tiny.pth")
    kw = {"detections": [str(g) for g in sc.gt], "weights": str(weights), "chunk": 6, "streams": 1}
    return {"root": root, "videos": [str(v) for v in sc.videos], "kw": kw}


def _tracklets(db) -> dict:
    from reidkit.retrieval.gallery import Gallery

    es = Gallery.open(db).entries(kind="tracklet")
    keys = [e["tracklet"] for e in es]
    assert len(keys) == len(set(keys)), "a tracklet stored twice"
    return {e["tracklet"]: (e["camera"], e["frame_start"], e["frame_end"]) for e in es}


def test_a_video_named_after_its_camera_does_not_repeat_it(tmp_path):
    from reidkit.video.decode import legacy_video_keys, video_key

    video = tmp_path / "cam2.mp4"
    key = video_key(video, "cam2")
    assert re.fullmatch(r"cam2-[0-9a-f]{8}", key)
    assert legacy_video_keys(video, "cam2") == [f"cam2-cam2-{key[-8:]}"]
    other = video_key(video, "lobby")  # the file's name says something the camera's does not: kept
    assert other == f"lobby-cam2-{key[-8:]}" and legacy_video_keys(video, "lobby") == []


def test_an_old_format_gallery_resumes_without_duplicates(scene, tmp_path, monkeypatch):
    import reidkit.video.ingest as ing
    from reidkit.video.decode import legacy_video_keys
    from reidkit.video.ingest import ingest

    # the reference: one uninterrupted run with today's keys
    fresh = _tracklets(ingest(tmp_path / "fresh", scene["videos"], progress=None, **scene["kw"])["db"])
    assert fresh and all(re.fullmatch(r"cam[12]-[0-9a-f]{8}\.t\w+", k) for k in fresh), sorted(fresh)

    # a gallery of the earlier release (keys CAMERA-STEM-DIGEST), interrupted after its third commit
    db = tmp_path / "old"
    monkeypatch.setattr(ing, "video_key", lambda path, camera: legacy_video_keys(path, camera)[0])
    real, calls = ing.commit, []

    def commit_then_die(gallery, chunk):
        if len(calls) == 3:
            raise RuntimeError("killed")
        calls.append(chunk.key)
        return real(gallery, chunk)

    monkeypatch.setattr(ing, "commit", commit_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        ingest(db, scene["videos"], progress=None, **scene["kw"])
    monkeypatch.undo()
    from reidkit.retrieval.gallery import Gallery

    old_key = legacy_video_keys(scene["videos"][0], "cam1")[0]
    state = Gallery.open(db).get_state(f"video:{old_key}")
    assert state["next_frame"] == 18 and not state["done"]  # 3 chunks of 6 frames of cam1 committed
    partial = _tracklets(db)
    assert all(k.startswith(old_key + ".t") for k in partial)

    # today's release resumes it under the old keys: the same tracklets as the uninterrupted run, each once
    said: list[str] = []
    ingest(db, scene["videos"], progress=said.append, **scene["kw"])
    assert any("resuming at frame" in line for line in said), said
    got = _tracklets(db)
    assert set(partial) <= set(got)
    prefixes = {v[0]: k.split(".t")[0] for k, v in got.items()}
    # cam1 keeps the keys it was started with; cam2, never started before, gets today's
    assert re.fullmatch(r"cam1-cam1-[0-9a-f]{8}", prefixes["cam1"]) and re.fullmatch(
        r"cam2-[0-9a-f]{8}", prefixes["cam2"]
    )
    assert sorted(got.values()) == sorted(fresh.values())

    # and once done, a third run skips both videos: nothing added
    said.clear()
    ingest(db, scene["videos"], progress=said.append, **scene["kw"])
    assert sum("already ingested" in line for line in said) == 2 and _tracklets(db) == got
