"""The README's tracker plug-in (tests/data/tracker_plugin.py, a plain IoU tracker with an option of its own) run
through `reidkit --plugin FILE video --tracker iou --tracker-option min_iou=...` on a tiny generated scene: tracklets
come out, the option reaches the tracker and changes what it does, an unknown option is one error with did-you-mean,
and the README's block is the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from factories import forget_tracker, plugin_video_argv

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "data" / "tracker_plugin.py"
MARK = "<!-- tracker_plugin.py -->"


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory):
    from reidkit.data.scene import generate_scene

    return generate_scene(
        tmp_path_factory.mktemp("plug") / "s", cams=1, ids=3, frames=30, size=(96, 128), fps=10, seed=3, speed=1.5
    )


@pytest.fixture()
def unregister():
    yield
    forget_tracker("iou")


def _video(tiny_scene, db, *extra):
    from reidkit.cli import main

    return main(plugin_video_argv(PLUGIN, tiny_scene, "--tracker", "iou", "--db", str(db), *extra))


def test_the_plugin_tracker_runs_with_its_option(tiny_scene, tmp_path, capsys, unregister):
    from reidkit.retrieval.gallery import Gallery

    assert _video(tiny_scene, tmp_path / "db", "--tracker-option", "min_iou=0.3") == 0, capsys.readouterr().err
    g = Gallery.open(tmp_path / "db")
    rows = g.entries(kind="tracklet")
    state = g.get_state(f"video:{rows[0]['meta']['video_key']}")
    assert state["settings"]["tracker"] == {"name": "iou", "min_iou": 0.3}  # stored: a resume must match
    assert max(r["frame_end"] - r["frame_start"] + 1 for r in rows) >= 10  # a person kept over many frames
    capsys.readouterr()
    # the option changes what the tracker does: people walk ~10 % of a box width a frame, so at IoU 0.9 every box
    # starts a new track and none reaches reidkit video's --min-len 3
    assert _video(tiny_scene, tmp_path / "db9", "--tracker-option", "min_iou=0.9") == 0, capsys.readouterr().err
    assert ": 0 tracklets" in capsys.readouterr().out
    assert _video(tiny_scene, tmp_path / "bad", "--tracker-option", "min_iuo=0.5") == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "tracker.iou.min_iuo" in err and "did you mean 'min_iou'" in err


def test_the_readme_block_is_the_file():
    readme = (ROOT / "README.md").read_text()
    if MARK not in readme:
        pytest.skip(f"README.md has no {MARK} block yet (the README's tracker plug-in example is added by the lead)")
    m = re.search(re.escape(MARK) + r"\s*```python\n(.*?)```", readme, re.S)
    assert m, f"README.md: {MARK} must be followed by a ```python block"
    assert m.group(1) == PLUGIN.read_text()
