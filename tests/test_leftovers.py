"""Nothing left behind after a kill, and errors that say what a failure left.

A process is SIGKILLed (by itself, at a chosen point: the moment is exact) in the middle of an int8
quantisation, an ONNX export into the cache, and an `index build`; what it leaves must be one temp named
with its pid in the folder it wrote to (nothing in ``$TMPDIR``), and the next run there removes it. The
gallery's lock files, kept beside its folder, are named by `index check`; a `reidkit video` whose disk fills
after some chunks were committed says what the gallery then holds, not that it is unchanged.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import procs
import pytest
from factories import tiny_checkpoint

from reidkit.cli import main

REPO = Path(__file__).resolve().parents[1]
SIZE = (64, 32)
# a fork of the test server keeps the temp folder the server's tempfile cached: read $TMPDIR as a fresh
# interpreter does (else a file put in the default temp folder would not show in the test's $TMPDIR)
_FRESH_TEMP = "import tempfile; tempfile.tempdir = None\n"
# onnxruntime's native code keeps one small session-id file in $TMPDIR, the same for every run: not a leftover
_ORT_SESSION_FILE = ".ses"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny reidkit model and crops of it, and its float ONNX export (made in a cache of this module)."""
    from PIL import Image

    from reidkit.inference import FeatureExtractor

    root = tmp_path_factory.mktemp("leftovers")
    weights = tiny_checkpoint(root / "tiny.pt", seed=0, size=SIZE, pooling="avg")
    crops = root / "crops"
    crops.mkdir()
    for i in range(4):
        arr = np.random.default_rng(i).integers(0, 255, (64, 32, 3), dtype=np.uint8)
        Image.fromarray(arr).save(crops / f"{i + 1:04d}_c{i % 2 + 1}s1_{i:06d}_00.png")
    old = os.environ.get("REIDKIT_HOME")
    os.environ["REIDKIT_HOME"] = str(root / "home")
    try:
        ext = FeatureExtractor.load(weights, engine="onnx", threads=1)
    finally:
        if old is None:
            del os.environ["REIDKIT_HOME"]
        else:
            os.environ["REIDKIT_HOME"] = old
    assert ext.engine == "onnx"
    onnx = next((root / "home" / "onnx-cache").glob("*.onnx"))  # the float export: <sha256>-64x32.onnx
    return {"root": root, "weights": weights, "crops": crops, "onnx": onnx}


def _child(code: str, env: dict[str, str]) -> subprocess.Popen:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env}
    e.pop("REIDKIT_TEST_CRASH_AT", None)
    return procs.Popen(
        [sys.executable, "-c", _FRESH_TEMP + code], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _dead_pid() -> int:
    p = procs.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def _tmp_left(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n != _ORT_SESSION_FILE)


# ----------------------------------------------------------------------------- the clean-up itself


def test_clean_stale_temps_takes_dead_owners_folders_only_when_asked(tmp_path):
    from reidkit.utils.io import clean_stale_temps, owned_temp_dir

    dead = _dead_pid()
    gone = tmp_path / f".m.onnx.{dead}.abcd1234.tmp"  # a killed owner's work folder
    live = tmp_path / f".m.onnx.{os.getppid()}.abcd1234.tmp"  # a running process's (pytest's parent)
    nopid = tmp_path / ".notes.tmp.d"  # not named by reidkit: never removed
    for d in (gone, live, nopid):
        d.mkdir()
        (d / "x").write_bytes(b"x")
    numbered = tmp_path / f".metrics.2.json.{dead}.k3j_x9q1.tmp"  # the pid is not the name's own number
    numbered.write_text("{")
    assert clean_stale_temps(tmp_path) == [numbered]  # files only, unless asked
    assert clean_stale_temps(tmp_path, dirs=True) == [gone]
    assert live.is_dir() and nopid.is_dir()
    with owned_temp_dir(tmp_path, "work") as work:
        assert work.name.startswith(f".work.{os.getpid()}.") and work.name.endswith(".tmp")
        (work / "big").write_bytes(b"\0" * 100)
        assert clean_stale_temps(tmp_path, dirs=True) == []  # its owner (this process) is alive
    assert not work.exists()


# ----------------------------------------------------------------------------- int8 quantisation

# Where the quantiser is killed: inside onnxruntime's pre-processing (its "pre.quant." temp folder open), or
# inside its calibration (its "ort.quant." temp folder open, holding the augmented model).
_QUANT_KILLS = {
    "pre_process": ("onnxruntime.tools.symbolic_shape_infer", "SymbolicShapeInference", "infer_shapes", "pre.quant."),
    "calibrate": ("onnxruntime.quantization.calibrate", "MinMaxCalibrater", "collect_data", "ort.quant."),
}
_KILL_IN = """
import importlib, os, signal
mod, cls, fn, src, dst = {args!r}
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
setattr(getattr(importlib.import_module(mod), cls), fn, staticmethod(die) if fn == "infer_shapes" else die)
from reidkit.models.quantize import quantize_onnx
quantize_onnx(src, dst, (64, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), n=4)
print("not killed")
"""


@pytest.mark.parametrize("point", sorted(_QUANT_KILLS))
def test_killed_quantisation_leaves_one_pid_named_folder_that_the_next_removes(tiny, tmp_path, point, monkeypatch):
    import tempfile

    from reidkit.models.quantize import quantize_onnx

    mod, cls, fn, ort_prefix = _QUANT_KILLS[point]
    cache, tmpdir = tmp_path / "onnx-cache", tmp_path / "tmpdir"
    cache.mkdir()
    tmpdir.mkdir()
    dst = cache / "m-int8.onnx"
    p = _child(_KILL_IN.format(args=(mod, cls, fn, str(tiny["onnx"]), str(dst))), {"TMPDIR": str(tmpdir)})
    out, err = p.communicate(timeout=300)
    assert p.returncode == -signal.SIGKILL, (out, err[-3000:])
    # what the kill left: one work folder named with the killed pid, onnxruntime's temp folder inside it
    left = sorted(cache.iterdir())
    assert len(left) == 1 and left[0].is_dir(), left
    assert left[0].name.startswith(f".{dst.name}.{p.pid}.") and left[0].name.endswith(".tmp"), left[0].name
    assert [q.name for q in left[0].iterdir() if q.name.startswith(ort_prefix)], sorted(left[0].iterdir())
    assert _tmp_left(tmpdir) == [], "onnxruntime's temp files went to $TMPDIR"
    # a live process's work folder is never touched (it may be mid-quantisation)
    live = cache / f".other-int8.onnx.{os.getppid()}.abcd1234.tmp"
    live.mkdir()
    # the next quantisation there removes the dead one's folder; its own temp files stay in its folder too
    pytmp = tmp_path / "pytmp"
    pytmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(pytmp))
    quantize_onnx(tiny["onnx"], dst, SIZE, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), n=4)
    assert sorted(q.name for q in cache.iterdir()) == [live.name, dst.name]
    assert os.listdir(pytmp) == [] and tempfile.tempdir == str(pytmp)  # restored after the quantisation


def test_a_work_folder_named_by_an_older_reidkit_goes_once_a_day_old(tmp_path):
    from reidkit.models.quantize import clean_stale_leftovers

    old, new = tmp_path / ".int8-abc123", tmp_path / ".int8-def456"  # tempfile names, no pid in them
    for d in (old, new):
        d.mkdir()
        (d / "pre.onnx").write_bytes(b"x")
    os.utime(old, (1e9, 1e9))
    assert clean_stale_leftovers(tmp_path) == [old]
    assert not old.exists() and new.exists()


# ----------------------------------------------------------------------------- the ONNX export cache

_EXPORT_THEN_DIE = """
import os, signal, torch.onnx
real = torch.onnx.export
def export_then_die(*a, **k):
    real(*a, **k)  # the temp file is whole, not yet renamed to the cache entry
    os.kill(os.getpid(), signal.SIGKILL)
torch.onnx.export = export_then_die
from reidkit.inference import FeatureExtractor
FeatureExtractor.load({weights!r}, engine="onnx", threads=1)
print("not killed")
"""


def test_killed_onnx_export_leaves_one_pid_named_temp_that_the_next_use_removes(tiny, tmp_path, monkeypatch):
    from reidkit.inference import FeatureExtractor

    home, tmpdir = tmp_path / "home", tmp_path / "tmpdir"
    tmpdir.mkdir()
    p = _child(
        _EXPORT_THEN_DIE.format(weights=str(tiny["weights"])), {"REIDKIT_HOME": str(home), "TMPDIR": str(tmpdir)}
    )
    out, err = p.communicate(timeout=300)
    assert p.returncode == -signal.SIGKILL, (out, err[-3000:])
    cache = home / "onnx-cache"
    entry = cache / tiny["onnx"].name
    left = sorted(cache.iterdir())
    assert len(left) == 1 and left[0].name.startswith(f".{entry.name}.{p.pid}.") and left[0].stat().st_size > 0, left
    assert _tmp_left(tmpdir) == []
    # a quantiser's work folder whose owner is gone, as a kill leaves it (test above)
    dead = cache / f".{entry.stem}-int8.onnx.{_dead_pid()}.abcd1234.tmp"
    dead.mkdir()
    (dead / "pre.onnx").write_bytes(b"\0" * 1000)
    # the next use of the cache removes both, and makes the entry
    monkeypatch.setenv("REIDKIT_HOME", str(home))
    ext = FeatureExtractor.load(tiny["weights"], engine="onnx", threads=1)
    assert ext.engine == "onnx"
    assert sorted(q.name for q in cache.iterdir()) == [entry.name]


# ----------------------------------------------------------------------------- gallery build

_CLI = _FRESH_TEMP + "import sys; from reidkit.cli import main; sys.exit(main(sys.argv[1:]))"


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env}
    return procs.run([sys.executable, "-c", _CLI, *args], env=e, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
def test_killed_index_build_leaves_its_build_folder_that_check_names_and_the_next_build_removes(
    tiny, tmp_path, overwrite
):
    from reidkit.retrieval.backends.protocol import CRASH_ENV

    db, tmpdir = tmp_path / "g" / "db", tmp_path / "tmpdir"
    tmpdir.mkdir()
    build = [
        "index",
        "build",
        "--db",
        str(db),
        "--images",
        str(tiny["crops"]),
        "--weights",
        str(tiny["weights"]),
        "--engine",
        "torch",
    ] + (["--overwrite"] if overwrite else [])
    env = {"REIDKIT_HOME": str(tmp_path / "home")}
    if overwrite:
        assert _cli(build, env).returncode == 0
    p = _cli(build, {**env, "TMPDIR": str(tmpdir), CRASH_ENV: "build_embedded"})
    assert p.returncode == 137 and "Traceback" not in p.stderr, p.stderr[-3000:]
    left = sorted(q.name for q in db.parent.iterdir() if q.name != "db")
    builds = [n for n in left if n.startswith(".db.build.")]
    assert len(builds) == 1 and ".db.writer.lock" not in builds, left  # the lock is no leftover
    assert _tmp_left(tmpdir) == []
    if overwrite:  # the gallery is whole, and `index check` names the dead build's folder
        c = _cli(["index", "check", "--db", str(db), "--json"], env)
        assert c.returncode == 0, c.stderr
        assert json.loads(c.stdout)["leftover_files"] == [os.path.join("..", builds[0])]
    q = _cli(build, env)
    assert q.returncode == 0, q.stderr[-3000:]
    assert [n for n in os.listdir(db.parent) if n.endswith(".tmp")] == []
    c = _cli(["index", "check", "--db", str(db), "--json"], env)
    assert json.loads(c.stdout)["leftover_files"] == []


# ----------------------------------------------------------------------------- lock files beside the gallery


def test_index_check_names_the_lock_files_kept_beside_the_gallery(tiny, tmp_path, capsys):
    from reidkit.retrieval.gallery import Gallery
    from reidkit.retrieval.maintenance import check_gallery
    from reidkit.retrieval.backends.sqlite.generations import lock_path
    from reidkit.video.pipeline import VideoLock

    db = tmp_path / "g" / "db"
    Gallery.build(tiny["crops"], db, weights=tiny["weights"], engine="torch")
    assert check_gallery(db)["lock_files"] == [str(lock_path(db))]  # the build took the writer lock
    with VideoLock(db, "cam1-abc") as lock:
        pass
    videos = db.parent / ".db.video-locks"
    assert lock.path.parent == videos  # where the video code makes them is where check looks
    rep = check_gallery(db)
    assert rep["lock_files"] == [str(db.parent / ".db.writer.lock"), str(videos) + os.sep]
    assert not [p for p in db.iterdir() if p.name.endswith(".lock")]  # beside the folder, not inside
    assert main(["index", "check", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "lock files" in ln)
    assert "beside the folder" in line and str(db.parent / ".db.writer.lock") in line and str(videos) in line


# ----------------------------------------------------------------------------- a full disk in `reidkit video`


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from reidkit.data.scene import generate_scene

    return generate_scene(
        tmp_path_factory.mktemp("scene") / "s", cams=1, ids=2, frames=40, size=(96, 128), fps=10, seed=0, speed=1.0
    )


def _video(tiny, scene, db: Path) -> list[str]:
    return [
        "video",
        str(scene.videos[0]),
        "--detections",
        str(scene.gt[0]),
        "--db",
        str(db),
        "--chunk",
        "10",
        "--weights",
        str(tiny["weights"]),
        "--engine",
        "torch",
        "--streams",
        "1",
    ]


@pytest.mark.parametrize("where", ["database", "thumbnail"])
def test_video_on_a_disk_that_fills_after_a_commit_says_what_the_gallery_holds(
    tiny, scene, tmp_path, capsys, monkeypatch, where
):
    """The disk fills once the run has moved the gallery's generation (a chunk committed): the error must not
    say the gallery is unchanged; it says where the gallery stands, and the same command resumes from there."""
    from reidkit.retrieval.backends.sqlite import store as store_sqlite  # where _commit looks it up
    from reidkit.retrieval.gallery import Gallery
    from reidkit.utils import io

    monkeypatch.setenv("REIDKIT_HOME", str(tmp_path / "home"))
    db = tmp_path / "db"
    moved = []  # generations published by this run's writes
    real_bump, real_write = store_sqlite.bump_generation, io.atomic_write_bytes

    def bump(conn):
        if moved and where == "database":  # SQLite's ENOSPC, in the transaction of the next chunk
            raise sqlite3.OperationalError("database or disk is full")
        moved.append(real_bump(conn))
        return moved[-1]

    def write_thumb(path, data):
        if moved and where == "thumbnail":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(path, data)

    monkeypatch.setattr(store_sqlite, "bump_generation", bump)
    monkeypatch.setattr(io, "atomic_write_bytes", write_thumb)
    assert main(_video(tiny, scene, db)) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    msg = errors[0]
    assert moved, "no chunk was committed before the failure: nothing to test"
    assert "unchanged" not in msg and "nothing was" not in msg, msg
    assert ("the disk is full" if where == "database" else "No space left on device") in msg, msg
    # what it says is what the gallery holds
    g = Gallery.open(db)
    with sqlite3.connect(db / "meta.sqlite") as conn:
        rows = conn.execute("SELECT value FROM state").fetchall()
    assert len(rows) == 1, rows
    state = json.loads(rows[0][0])
    assert g.generation == moved[-1] >= 2
    assert f"generation {g.generation} " in msg, msg
    assert f"up to frame {state['next_frame']} with {state['tracklets']} tracklets" in msg, msg
    assert "run the same command again" in msg
    # space freed: the same command resumes where the gallery stands and finishes
    monkeypatch.undo()
    monkeypatch.setenv("REIDKIT_HOME", str(tmp_path / "home"))
    assert main(_video(tiny, scene, db)) == 0
    err = capsys.readouterr().err
    assert f"resuming at frame {state['next_frame'] + 1}" in err, err[-2000:]
