"""reidkit.utils: atomic writes (unique temps, removed on failure, stale ones cleaned), one image-extension
list, output folders, devices."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidkit.errors import ReIDError
from reidkit.utils.io import (
    IMAGE_EXTENSIONS,
    atomic_write,
    clean_stale_temps,
    ensure_dir,
    image_paths,
    is_image_file,
    list_images,
    write_json,
)


def test_atomic_write_replaces_whole_and_cleans_up_on_failure(tmp_path: Path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as fh:
            fh.write('{"v": 2, "half')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}  # the old content, whole
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp left


def test_concurrent_writers_never_collide(tmp_path: Path):
    # A fixed temp name (".tmp") made two writers rename each other's half files; unique names do not.
    target = tmp_path / "metrics.json"
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(40):
                write_json(target, {"writer": k, "i": i, "pad": "x" * 2000})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    data = json.loads(target.read_text())
    assert data["i"] == 39 and len(data["pad"]) == 2000
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_stale_temps_of_dead_writers_are_removed_live_ones_kept(tmp_path: Path):
    dead = tmp_path / ".last.pt.999999.x1.tmp"
    live = tmp_path / f".best.pt.{os.getppid()}.x2.tmp"  # a running process (our parent) may be mid-write
    keep = tmp_path / "model.pt"
    for p in (dead, live, keep):
        p.write_bytes(b"x")
    removed = clean_stale_temps(tmp_path)
    assert removed == [dead] and live.exists() and keep.exists()


def test_ensure_dir_names_the_path(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ReIDError, match=f"output_dir: {blocker}/run: cannot create it"):
        ensure_dir(blocker / "run", "output_dir")
    assert ensure_dir(tmp_path / "a" / "b").is_dir()


def test_one_image_extension_list_includes_netpbm_and_gif(tmp_path: Path):
    assert {".pgm", ".ppm", ".gif", ".jpg", ".png"} <= IMAGE_EXTENSIONS
    for ext in (".pgm", ".ppm", ".gif", ".JPG"):
        Image.fromarray(np.zeros((8, 4, 3), np.uint8)).convert("L" if ext == ".pgm" else "RGB").save(
            tmp_path / f"img{ext}", format={"pgm": "PPM", "ppm": "PPM", "gif": "GIF", "jpg": "JPEG"}[ext[1:].lower()]
        )
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.jpg").write_bytes(b"x")
    assert sorted(p.name for p in list_images(tmp_path)) == ["img.JPG", "img.gif", "img.pgm", "img.ppm"]
    # no second list anywhere in the package
    root = Path(__file__).resolve().parent.parent / "reidkit"
    others = [p for p in root.rglob("*.py") if p.name != "io.py" and '".jpeg"' in p.read_text()]
    assert others == []


def test_folder_of_pgm_crops_loads_every_image(tmp_path: Path, capsys):
    from reidkit.cli import main

    rng = np.random.default_rng(0)
    for pid in range(40):
        d = tmp_path / "pgm" / f"{pid:04d}"
        d.mkdir(parents=True)
        for j in range(10):
            Image.fromarray(rng.integers(0, 255, (32, 16), dtype=np.uint8), mode="L").save(d / f"c{j % 3 + 1}_{j}.pgm")
    assert main(["data", "stats", "folder", "--root", str(tmp_path / "pgm"), "-o", r"cam_regex=c(\d+)_"]) == 0
    out = capsys.readouterr().out
    from reidkit.data.datasets import load_dataset

    ds = load_dataset("folder", tmp_path / "pgm", cam_regex=r"c(\d+)_")
    assert len(ds.train) + len(ds.query) + len(ds.gallery) == 400
    assert "train" in out


def test_link_or_copy_links_atomically_and_a_later_rewrite_of_the_source_keeps_the_copy(tmp_path, monkeypatch):
    from reidkit.utils.io import link_or_copy, write_text

    src, dst = tmp_path / "best.pt", tmp_path / "model.pt"
    write_text(src, "epoch 3")
    write_text(dst, "old")
    assert link_or_copy(src, dst) is True
    assert dst.read_text() == "epoch 3" and dst.stat().st_ino == src.stat().st_ino
    write_text(src, "epoch 5")  # written by rename: a new file; model.pt keeps epoch 3
    assert dst.read_text() == "epoch 3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "model.pt"]  # no temp left

    def no_links(*_a, **_k):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr("os.link", no_links)
    assert link_or_copy(src, dst) is False  # a file system without hard links: a copy
    assert dst.read_text() == "epoch 5" and dst.stat().st_ino != src.stat().st_ino


def test_image_paths_lists_each_file_once_as_its_real_path(tmp_path: Path):
    sub = tmp_path / "crops" / "cam1"
    sub.mkdir(parents=True)
    for name in ("b.jpg", "a.png"):
        Image.fromarray(np.zeros((8, 4, 3), np.uint8)).save(sub / name)
    (tmp_path / "crops" / "same.jpg").symlink_to(sub / "a.png")  # one file under two names: listed once
    got = image_paths(tmp_path / "crops")
    assert got == [str((sub / "a.png").resolve()), str((sub / "b.jpg").resolve())]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReIDError, match=f"^images folder {empty}: no image files"):
        image_paths(empty)
    with pytest.raises(ReIDError, match="^--images: .*nowhere is not a folder"):
        image_paths(tmp_path / "nowhere", what="--images:")


def test_the_one_image_name_test_keeps_its_old_layout_name_deprecated():
    import reidkit.data.datasets.layout as layout

    with pytest.warns(DeprecationWarning, match="moved to reidkit.utils.io.is_image_file"):
        assert layout.is_image is is_image_file
    assert [is_image_file(n) for n in ("a.JPG", "b.png", ".x.jpg", "._y.jpg", "c.txt", "d")] == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    root = Path(__file__).resolve().parent.parent / "reidkit"
    tests = [p.relative_to(root).as_posix() for p in root.rglob("*.py") if "in IMAGE_EXTENSIONS" in p.read_text()]
    assert tests == ["utils/io.py"]


def test_the_one_folder_lister_keeps_its_old_retrieval_name_deprecated():
    import reidkit.retrieval as retrieval

    with pytest.warns(DeprecationWarning, match="moved to reidkit.utils.io.image_paths"):
        assert retrieval.list_images is image_paths
    root = Path(__file__).resolve().parent.parent / "reidkit"
    listers = [p.relative_to(root).as_posix() for p in root.rglob("*.py") if "def list_images(" in p.read_text()]
    assert listers == ["utils/io.py"]
