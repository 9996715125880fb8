"""Crash consistency of the gallery store: writers killed at named points (the publish step included) and at
random moments, concurrent writers, a reader holding the database past the busy timeout, stale temps,
and the check / repair of galleries written by the older layout (index.faiss + meta.sqlite without vectors).

Every kill must leave a gallery that opens, passes `index check`, and holds exactly the old or the new
content (never a mix), with no traceback from any process.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import procs
import pytest
from factories import tiny_checkpoint

from reidkit.cli import main
from reidkit.errors import ReIDError
from reidkit.retrieval.backends.protocol import CRASH_ENV
from reidkit.retrieval.backends.sqlite import generations as store
from reidkit.retrieval.gallery import Gallery
from reidkit.retrieval.maintenance import check_gallery, repair_gallery

REPO = Path(__file__).resolve().parents[1]


def _images(folder: Path, n: int, seed: int, ext: str = ".png", cam: int = 1) -> set[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = set()
    for i in range(n):
        p = folder / f"{seed:02d}{i:02d}_c{cam}s1_{i:06d}_01{ext}"
        Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(p)
        out.add(str(p.resolve()))
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny model, three small image sets, and a template gallery of set A."""

    root = tmp_path_factory.mktemp("store")
    weights = tiny_checkpoint(root / "tiny.pth", seed=0, size=(32, 16))
    a = _images(root / "A", 6, seed=1)
    b = _images(root / "B", 4, seed=2, cam=2)
    c = _images(root / "C", 5, seed=3, ext=".ppm", cam=3)  # a rebuild from PPM crops
    template = root / "template" / "db"
    g = Gallery.build(root / "A", template, weights=weights)
    ext = g.extractor
    del g
    return {"root": root, "weights": weights, "A": a, "B": b, "C": c, "template": template, "ext": ext, "kills": {}}


def _fresh(env, name: str) -> Path:
    dst = env["root"] / "trials" / name / "db"
    if dst.parent.exists():
        shutil.rmtree(dst.parent)
    shutil.copytree(env["template"], dst)
    return dst


def _cli(
    args: list[str], crash_at: str | None = None, extra_env: dict | None = None, exit_after: float = 0.0
) -> subprocess.Popen:
    """`reidkit ARGS` in its own process; `exit_after` seconds more before it exits (at interpreter exit), as a
    fresh interpreter's teardown takes (tests/procs.py forks the process: its exit is immediate)."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    e.pop(CRASH_ENV, None)
    if crash_at:
        e[CRASH_ENV] = crash_at
    e.update(extra_env or {})
    cmd = [sys.executable, "-m", "reidkit.cli", *args]
    if exit_after:
        cmd = [
            sys.executable,
            "-c",
            f"import atexit, sys, time; atexit.register(time.sleep, {exit_after}); "
            "from reidkit.cli import main; sys.exit(main(sys.argv[1:]))",
            *args,
        ]
    return procs.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _contents(db: Path) -> set[str]:
    """Paths in the gallery, after checking it opens consistent and searches return only its own entries."""
    rep = check_gallery(db)
    assert rep["consistent"] and rep["entries"] == rep["vectors"]
    g = Gallery.open(db)
    paths = {e["path"] for e in g.entries()}
    assert len(paths) == len(g) == rep["entries"]
    # every stored vector finds itself first, with its own path: index and metadata agree
    ids = [e["id"] for e in g.entries()]
    feats = g.features(ids)
    for i, res in zip(ids, g.search_features(feats, k=1)):
        assert res[0]["id"] == i and res[0]["path"] in paths
    return paths


def _judge(
    db: Path, proc: subprocess.Popen, allowed: list[set[str]], output: tuple[str, str] | None = None
) -> str | None:
    """What was wrong after a kill (None: the gallery came out whole and holds one of the `allowed` contents)."""
    out, err = output if output is not None else proc.communicate(timeout=120)
    if "Traceback" in err + out:
        return f"a traceback: {err[-2000:]}"
    try:
        got = _contents(db)
    except (AssertionError, ReIDError) as exc:  # does not open, inconsistent, or index and metadata disagree
        return f"an unusable gallery ({exc})"
    if got not in allowed:
        return f"a mix of old and new content ({sorted(got)})"
    return None


def _trials(env, name: str, run) -> dict[str, str | None]:
    """The kill trials `name` ({what: problem or None}), run once per session by whichever test asks first: the
    tests of each kill and the figure (test_kills_survived_figure) share them, in any order, or run alone."""
    if name not in env["kills"]:
        env["kills"][name] = run()
    return env["kills"][name]


ADD_POINTS = ["add_embedded", "add_locked", "before_commit", "after_commit", "cache_temp_written"]
BUILD_POINTS = ["build_embedded", "build_before_publish", "build_after_publish", "cache_temp_written"]


def _add_args(env, db: Path) -> list[str]:
    return ["index", "add", "--db", str(db), "--images", str(env["root"] / "B")]


def _build_args(env, db: Path) -> list[str]:
    return [
        "index",
        "build",
        "--db",
        str(db),
        "--images",
        str(env["root"] / "C"),
        "--overwrite",
        "--weights",
        str(env["weights"]),
    ]


def _named_kill(env, verb: str, point: str) -> tuple[Path, str | None]:
    """`index add` / `index build --overwrite` on a fresh copy of the template, killed at `point`: (db, problem)."""
    db = env["root"] / "trials" / f"{verb}_{point}" / "db"

    def run() -> dict[str, str | None]:
        fresh = _fresh(env, f"{verb}_{point}")
        p = _cli(_add_args(env, fresh) if verb == "add" else _build_args(env, fresh), crash_at=point)
        code = p.wait(timeout=120)
        if code != 137:
            return {f"{verb}@{point}": f"exit {code}: not killed at {point} ({p.communicate()[1][-2000:]})"}
        allowed = [env["A"], env["A"] | env["B"]] if verb == "add" else [env["A"], env["C"]]
        return {f"{verb}@{point}": _judge(fresh, p, allowed)}

    return db, _trials(env, f"{verb}@{point}", run)[f"{verb}@{point}"]


@pytest.mark.parametrize("point", ADD_POINTS)
def test_add_killed_at_named_point(env, point):
    db, problem = _named_kill(env, "add", point)
    assert problem is None, problem
    # committed before the kill: the new content; killed before: the old
    expect = env["A"] | env["B"] if point in ("after_commit", "cache_temp_written") else env["A"]
    assert _contents(db) == expect


@pytest.mark.parametrize("point", BUILD_POINTS)
def test_build_overwrite_killed_at_named_point(env, point):
    db, problem = _named_kill(env, "build", point)
    assert problem is None, problem
    assert _contents(db) == (env["C"] if point == "build_after_publish" else env["A"])
    leftovers = list(db.parent.glob(".db.build.*.tmp"))
    assert leftovers, "a killed build leaves its temp folder ..."
    g = Gallery.open(db, extractor=env["ext"])
    g.add(env["root"] / "B")  # ... which the next write removes
    assert not list(db.parent.glob(".db.*.tmp")) and not [p for p in db.iterdir() if p.name.endswith(".tmp")]
    assert len(list(db.glob("index.g*.faiss"))) == 1


def _stderr_reader(proc: subprocess.Popen, marker: str) -> tuple[list[str], threading.Event, threading.Thread]:
    """Collect `proc`'s stderr lines in a thread; the event is set once a line contains `marker` (or at the end
    of the stream, so that a waiter never outlives the writer: check `lines` for the marker)."""
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if marker in line:
                seen.set()
        seen.set()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return lines, seen, t


def _random_kills(env) -> dict[str, str | None]:
    """SIGKILL `index add` and `index build --overwrite` at random moments of their run, each one still running.

    Trials 0-1 draw the moment from the whole run (start-up included); trials 2-3 wait until the writer has
    embedded its images (its `embedded` progress line) and kill it a random moment into its writes. Every
    kill must hit a live writer: one that finished first (exit 0) tested nothing, and is a problem.
    """
    rng = random.Random(12)
    results: dict[str, str | None] = {}
    for trial in range(4):
        build = trial % 2 == 1
        writing = trial >= 2
        db = _fresh(env, f"random_{trial}")
        p = _cli(_build_args(env, db) if build else _add_args(env, db), exit_after=2.0)
        lines, embedded, reader = _stderr_reader(p, "embedded ")
        what = f"random {'build' if build else 'add'} #{trial}"
        if writing:
            # the writes follow the progress line within ~0.1 s; exit comes 2 s later (`exit_after`)
            embedded.wait(timeout=120)
            if not any("embedded " in ln for ln in lines):
                p.kill()
                results[what] = f"no `embedded` line (exit {p.wait(timeout=60)})"
                continue
            time.sleep(rng.uniform(0.0, 0.2))
        else:
            # before the progress line, or at most 0.2 s after it: never past the writer's end
            delay = rng.uniform(0.05, 1.0)
            if embedded.wait(timeout=delay):
                time.sleep(rng.uniform(0.0, 0.2))
        if p.poll() is not None:
            results[what] = f"the writer finished before the kill (exit {p.returncode})"
            continue
        p.send_signal(signal.SIGKILL)
        if p.wait(timeout=60) != -signal.SIGKILL:
            results[what] = f"not killed mid-run (exit {p.returncode})"
            continue
        reader.join(timeout=60)
        out = p.stdout.read()  # type: ignore[union-attr]
        allowed = [env["A"], env["C"]] if build else [env["A"], env["A"] | env["B"]]
        phase = "writing" if any("embedded " in ln for ln in lines) else "start-up"
        results[f"{what} ({phase})"] = _judge(db, p, allowed, (out, "".join(lines)))
    return results


def test_random_kills(env):
    results = _trials(env, "random", lambda: _random_kills(env))
    assert len(results) == 4
    lost = {what: problem for what, problem in results.items() if problem is not None}
    assert not lost, lost


def test_two_concurrent_writers(env):
    """Two `index add` at once: one waits for the other (saying so) or finds nothing left to add; both exit 0."""
    db = _fresh(env, "concurrent")
    p1 = _cli(["index", "add", "--db", str(db), "--images", str(env["root"] / "B")])
    p2 = _cli(["index", "add", "--db", str(db), "--images", str(env["root"] / "B")])
    outs = [p.communicate(timeout=120) for p in (p1, p2)]
    assert [p1.returncode, p2.returncode] == [0, 0], outs
    assert all("Traceback" not in o + e for o, e in outs)
    added = sorted(int(o.split("index add: ")[1].split()[0]) for o, _ in outs)
    assert added == [0, 4]  # the images were added once
    assert _contents(db) == env["A"] | env["B"]
    with sqlite3.connect(db / "meta.sqlite") as conn:
        gen = int(conn.execute("SELECT value FROM info WHERE key = 'generation'").fetchone()[0])
    assert gen == 2  # build = 1, one add = 2; the writer with nothing to add wrote nothing


def test_second_writer_waits_then_fails_cleanly(env):
    db = _fresh(env, "locked")
    with store.WriterLock(db):
        p = _cli(
            ["index", "add", "--db", str(db), "--images", str(env["root"] / "B")],
            extra_env={"REIDKIT_LOCK_TIMEOUT": "1"},
        )
        out, err = p.communicate(timeout=120)
    assert p.returncode == 2
    assert f"waiting for the writer lock on {db} (held by pid {os.getpid()})" in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(db) in errors[0] and "writer lock" in errors[0]
    assert "Traceback" not in err
    assert _contents(db) == env["A"]


def test_reader_holding_the_database_past_busy_timeout(env):
    """A reader with an open transaction does not stop `index add` (WAL); a foreign write lock makes it fail cleanly."""
    db = _fresh(env, "reader")
    reader = sqlite3.connect(db / "meta.sqlite", isolation_level=None)
    reader.execute("BEGIN")
    before = reader.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    p = _cli(
        ["index", "add", "--db", str(db), "--images", str(env["root"] / "B")], extra_env={"REIDKIT_BUSY_TIMEOUT": "1"}
    )
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "Traceback" not in err, err
    # the reader still sees its generation, whole
    assert reader.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == before == len(env["A"])
    reader.execute("COMMIT")
    assert _contents(db) == env["A"] | env["B"]

    db2 = _fresh(env, "writer_blocked")
    blocker = sqlite3.connect(db2 / "meta.sqlite", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds SQLite's write lock longer than the busy timeout
    p = _cli(
        ["index", "add", "--db", str(db2), "--images", str(env["root"] / "B")], extra_env={"REIDKIT_BUSY_TIMEOUT": "1"}
    )
    out, err = p.communicate(timeout=120)
    blocker.execute("ROLLBACK")
    blocker.close()
    assert p.returncode == 2 and "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "locked" in errors[0] and "unchanged" in errors[0]
    assert _contents(db2) == env["A"]


def test_kills_survived_figure(env):
    """The figure for the report: how many of the kills tried left a whole gallery. The kills are this test's
    own (each run once per session, shared with the tests of each kill): the same figure alone or in any order."""
    results: dict[str, str | None] = {}
    for verb, points in (("add", ADD_POINTS), ("build", BUILD_POINTS)):
        for point in points:
            results[f"{verb}@{point}"] = _named_kill(env, verb, point)[1]
    results.update(_trials(env, "random", lambda: _random_kills(env)))
    tried = list(results)
    survived = [what for what in tried if results[what] is None]
    assert len(tried) >= 10
    print(f"\nkills survived: {len(survived)}/{len(tried)} ({', '.join(survived)})")
    lost = {what: results[what] for what in tried if results[what] is not None}
    assert not lost, f"kills not survived: {lost}"


# ----------------------------------------------------------------------------- old galleries


def _legacy(db: Path, env, rows: int, index_rows: int) -> np.ndarray:
    """A gallery in the old layout: index.faiss (flat) with `index_rows` rows, meta.sqlite listing `rows` images."""
    import faiss

    db.mkdir(parents=True)
    paths = sorted(env["A"] | env["B"])
    feats = env["ext"].embed_images([np.asarray(__import__("PIL.Image").Image.open(p).convert("RGB")) for p in paths])
    index = faiss.IndexFlatIP(feats.shape[1])
    index.add(np.ascontiguousarray(feats[:index_rows]))
    faiss.write_index(index, str(db / "index.faiss"))
    ident = env["ext"].identity
    with sqlite3.connect(db / "meta.sqlite") as conn:
        conn.executescript("""
            CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, camid INTEGER, frame INTEGER,
                                 width INTEGER NOT NULL, height INTEGER NOT NULL);
            CREATE TABLE model (identity TEXT NOT NULL, source TEXT NOT NULL, feat_dim INTEGER NOT NULL,
                                input_h INTEGER NOT NULL, input_w INTEGER NOT NULL, mean TEXT NOT NULL, std TEXT NOT NULL);
            CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL);""")
        conn.execute(
            "INSERT INTO model VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                ident.name,
                ident.source,
                ident.feat_dim,
                ident.input_size[0],
                ident.input_size[1],
                json.dumps(list(ident.mean)),
                json.dumps(list(ident.std)),
            ),
        )
        conn.executemany("INSERT INTO info VALUES (?, ?)", [("schema_version", "1"), ("index_kind", "flat")])
        conn.executemany(
            "INSERT INTO images VALUES (?, ?, ?, ?, 16, 32)", [(i, p, 0, i) for i, p in enumerate(paths[:rows])]
        )
    return feats


def test_check_and_repair_old_gallery(env, capsys):
    # the failure of issue 12: index.faiss has more rows than meta.sqlite (add killed between the two)
    db = env["root"] / "legacy" / "db"
    feats = _legacy(db, env, rows=6, index_rows=10)
    assert main(["index", "check", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "older reidkit" in err and "10 rows" in err and "6 images" in err
    with pytest.raises(ReIDError, match="index repair"):
        Gallery.open(db)
    assert main(["index", "repair", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "6 entries (6 vectors read back from the old index, 0 re-extracted)" in out and "dropped 4 index rows" in out
    assert main(["index", "check", "--db", str(db)]) == 0
    assert "consistent, generation 1: 6 entries" in capsys.readouterr().out
    g = Gallery.open(db)
    np.testing.assert_allclose(g.features(range(6)), feats[:6], atol=1e-6)
    assert [e["path"] for e in g.entries()] == sorted(env["A"] | env["B"])[:6]

    # no usable index: the vectors are re-extracted with the recorded model
    db2 = env["root"] / "legacy2" / "db"
    feats = _legacy(db2, env, rows=10, index_rows=3)
    (db2 / "index.faiss").write_bytes(b"not an index")
    rep = repair_gallery(db2)
    assert rep["reextracted"] == 10 and rep["dropped"] == []
    np.testing.assert_allclose(Gallery.open(db2).features(range(10)), feats, atol=1e-5)

    # ... and when the recorded model is gone too, it says exactly what it cannot do
    db3 = env["root"] / "legacy3" / "db"
    _legacy(db3, env, rows=5, index_rows=2)
    with sqlite3.connect(db3 / "meta.sqlite") as conn:
        conn.execute("UPDATE model SET source = '/nowhere/model.pth'")
    assert main(["index", "repair", "--db", str(db3)]) == 2
    err = capsys.readouterr().err
    assert "3 of 5 images have no vector" in err and "/nowhere/model.pth" in err and "--weights" in err
    # another model's weights: the library names the weights, not the CLI flag (issue 21)
    other = tiny_checkpoint(env["root"] / "other.pth", size=(32, 16))
    with pytest.raises(ReIDError) as info:
        repair_gallery(db3, weights=other)
    msg = str(info.value)
    assert msg.startswith("weights sha256:") and f"({other}) are not the model that built {db3}" in msg, msg


def test_check_reports_inconsistent_store(env, capsys):
    db = _fresh(env, "tampered")
    with sqlite3.connect(db / "meta.sqlite") as conn:
        conn.execute("DELETE FROM vectors WHERE id = 2")
    assert main(["index", "check", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "1 entries have no vector" in err and "Traceback" not in err
    assert main(["index", "repair", "--db", str(db)]) == 0
    assert len(_contents(db)) == len(env["A"]) - 1


def test_service_like_reader_keeps_old_snapshot_across_rebuild(env):
    """A Gallery opened before `build --overwrite` keeps answering from its own generation, whole."""
    db = _fresh(env, "snapshot")
    old = Gallery.open(db, extractor=env["ext"])
    new = Gallery.build(env["root"] / "C", db, overwrite=True, extractor=env["ext"])
    assert {e["path"] for e in old.entries()} == env["A"]
    res = old.search_features(old.features([0, 1]), k=3)
    assert all(r["path"] in env["A"] for rows in res for r in rows)
    assert {e["path"] for e in new.entries()} == env["C"]
    assert old.refresh() and {e["path"] for e in old.entries()} == env["C"]


def test_threads_writing_and_reading_in_one_process(env):
    """add_entries from two threads while a third searches: ids unique, every answer from one generation."""
    db = _fresh(env, "threads")
    base = Gallery.open(db, extractor=env["ext"])
    dim = base.identity.feat_dim
    errors: list[str] = []

    def writer(tag: str) -> None:
        g = Gallery.open(db, extractor=env["ext"])
        rng = np.random.default_rng(len(tag))
        for i in range(5):
            g.add_entries(
                rng.standard_normal((2, dim)).astype(np.float32),
                [
                    {"path": f"/v/{tag}.mp4", "kind": "tracklet", "tracklet": f"{tag}:{i}:{j}", "camera": tag}
                    for j in range(2)
                ],
                state={f"video:{tag}": {"chunk": i}},
            )

    def reader() -> None:
        g = Gallery.open(db, extractor=env["ext"])
        q = g.features([0])
        for _ in range(30):
            g.refresh()
            n = len(g)
            res = g.search_features(q, k=50)[0]
            if len(res) != min(50, n) or any(not r["path"] for r in res):
                errors.append(f"{len(res)} results for {n} entries")

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("camA", "camB")] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    g = Gallery.open(db)
    trk = g.entries(kind="tracklet")
    assert len(trk) == 20 and len({e["id"] for e in trk}) == 20
    assert g.get_state("video:camA") == {"chunk": 4} and g.generation == 1 + 10
    assert g.delete(camera="camA") == 10 and len(g.entries(kind="tracklet")) == 10
    assert check_gallery(db)["consistent"]


def test_publish_without_exchange_and_recovery(env, monkeypatch):
    """Where renameat2 is missing: two renames; a crash between them is rolled back on the next open."""
    monkeypatch.setattr(store, "_exchange", lambda a, b: False)
    db = _fresh(env, "fallback")
    Gallery.build(env["root"] / "C", db, overwrite=True, extractor=env["ext"])
    assert _contents(db) == env["C"]
    dead = procs.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    old = db.parent / f".db.old.{int(dead.stdout)}.abcd.tmp"
    os.rename(db, old)  # the state a kill between the two renames leaves
    assert not db.exists()
    assert _contents(db) == env["C"] and not old.exists()


# ----------------------------------------------------------------------------- full and read-only storage

_LIMITED = (
    "import resource, signal, sys; from reidkit.cli import main; "
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); sys.exit(main(sys.argv[1:]))"
)


def _cli_fsize(args: list[str], limit: int) -> subprocess.CompletedProcess:
    """The CLI with every file write past `limit` bytes failing (EFBIG): a full disk, as the process sees it."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    e.pop(CRASH_ENV, None)
    return procs.run(
        [sys.executable, "-c", _LIMITED.format(limit=limit), *args], env=e, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("verb", ["add", "build", "delete"])
def test_full_disk_mid_write_is_one_error_and_changes_nothing(env, verb):
    db = _fresh(env, f"full_{verb}")
    args = {
        "add": _add_args(env, db),
        "build": _build_args(env, db),
        "delete": ["index", "delete", "--db", str(db), "--camera", "c1"],
    }[verb]
    before = _contents(db)
    p = _cli_fsize(args, limit=4096)
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert len(errors) == 1 and "nothing was changed" in errors[0], errors
    assert any(w in errors[0] for w in ("disk is full", "file size limit", "disk I/O error")), errors[0]
    assert _contents(db) == before
    # space freed: the same command now succeeds
    p = _cli(args)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert _contents(db) == {"add": env["A"] | env["B"], "build": env["C"], "delete": set()}[verb]


def test_add_entries_on_full_disk_raises_one_error(env):
    db = _fresh(env, "full_entries")
    code = (
        "import numpy as np; from reidkit.retrieval.gallery import Gallery; from reidkit.errors import ReIDError\n"
        "g = Gallery.open(sys.argv[2])\n"
        "try:\n"
        "    g.add_entries(np.ones((64, g.identity.feat_dim), np.float32), [{'path': '/v.mp4', 'kind': 'tracklet', "
        "'tracklet': str(i)} for i in range(64)], state={'video:v': {'chunk': 1}})\n"
        "except ReIDError as exc:\n"
        "    print('error:', exc); sys.exit(2)\n"
    )
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    src = _LIMITED.format(limit=4096).replace("sys.exit(main(sys.argv[1:]))", "exec(sys.argv[1])")
    p = procs.run([sys.executable, "-c", src, code, str(db)], env=e, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "nothing was changed" in p.stdout and "Traceback" not in p.stderr, p.stderr[-3000:]
    g = Gallery.open(db)
    assert g.entries(kind="tracklet") == [] and g.get_state("video:v") is None and _contents(db) == env["A"]


def test_search_and_check_at_zero_bytes_free(env):
    """No file can grow at all: search and check still read the gallery (read-only, then immutable open)."""
    db = _fresh(env, "zero_free")
    for p in db.glob("meta.sqlite-*"):
        p.unlink()
    q = sorted(env["A"])[0]
    p = _cli_fsize(["search", "--db", str(db), "--image", q, "--topk", "3", "--json"], limit=0)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout)["results"][0]["path"] == q
    p = _cli_fsize(["index", "check", "--db", str(db)], limit=0)
    assert p.returncode == 0 and "consistent" in p.stdout, p.stderr[-3000:]


# The read-only storage for a root: the process moves to its own mount namespace (as `unshare -m` does) and
# binds the gallery onto itself read-only before reidkit runs; nothing outside the process sees the mount.
_READ_ONLY_MOUNT = (
    "import ctypes, os, subprocess, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS\n"
    "    sys.exit('unshare: ' + os.strerror(ctypes.get_errno()))\n"
    "db = os.environ['RO_DB']\n"
    "for cmd in (['mount', '--make-rprivate', '/'], ['mount', '--bind', db, db], ['mount', '-o', 'remount,bind,ro', db, db]):\n"
    "    subprocess.run(cmd, check=True)\n"
)


def _read_only_runner(db: Path) -> str | None:
    """Code to run before the CLI so that `db` is on read-only storage: a read-only bind mount in a private mount
    namespace (root), or nothing once the folder is chmod 0555 (not root); None when neither works."""
    if os.geteuid() != 0:
        for p in [db, *db.iterdir()]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        return ""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        return None
    return _READ_ONLY_MOUNT


def test_read_only_gallery_opens_for_search_and_check(env):
    db = _fresh(env, "read_only")
    for p in db.glob("index.g*.faiss"):
        p.unlink()  # the faiss cache must then be rebuilt in memory, never written
    listing = sorted(p.name for p in db.iterdir())
    prefix = _read_only_runner(db)
    if prefix is None:
        pytest.skip("cannot make read-only storage here: root without `unshare -m` (mount namespaces)")
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "RO_DB": str(db)}
    e.pop(CRASH_ENV, None)
    code = prefix + "from reidkit.cli import main\nsys.exit(main(sys.argv[1:]))\n"

    def run(*args: str) -> subprocess.CompletedProcess:
        p = procs.run([sys.executable, "-c", code, *args], env=e, capture_output=True, text=True, timeout=300)
        assert "unshare:" not in p.stderr and "CalledProcessError" not in p.stderr, p.stderr[-3000:]
        return p

    q = sorted(env["A"])[0]
    p = run("search", "--db", str(db), "--image", q, "--topk", "3", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout)["results"][0]["path"] == q
    p = run("index", "check", "--db", str(db))
    assert p.returncode == 0 and "consistent" in p.stdout, p.stderr[-3000:]
    for args in (
        ["index", "add", "--db", str(db), "--images", str(env["root"] / "B")],
        ["index", "delete", "--db", str(db), "--camera", "c1"],
    ):
        p = run(*args)
        errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
        assert len(errors) == 1 and "read-only" in errors[0] and "nothing was changed" in errors[0], errors
    if prefix == "":
        for p in [db, *db.iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert sorted(p.name for p in db.iterdir()) == listing  # no cache, WAL or temp file was written
    assert _contents(db) == env["A"]


def test_read_only_open_in_process(env):
    """readonly=True: search and state reads work, writes refused with one error, no file written."""
    db = _fresh(env, "read_only_flag")
    for p in db.glob("index.g*.faiss"):
        p.unlink()
    g = Gallery.open(db, readonly=True, extractor=env["ext"])
    assert g.readonly and len(g.search(sorted(env["A"])[0], k=2)) == 2
    with pytest.raises(ReIDError, match="read-only.*nothing was changed"):
        g.add(env["root"] / "B")
    assert not list(db.glob("index.g*.faiss"))
