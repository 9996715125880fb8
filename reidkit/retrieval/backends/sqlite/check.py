"""Check and repair of the embedded backend, and migration of galleries written by an older reidkit.

``check_folder`` verifies the SQLite database (quick_check, every entry has one vector of the model's
dimension, the IVF quantiser is stored) and reports the state of the faiss cache, leftover temp files
(inside the folder, and a killed build's folder beside it) and the lock files kept beside the folder;
``repair_folder`` converts the schema-1 layout (index.faiss + meta.sqlite without vectors) or drops
entries without a usable vector, each as one generation.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.utils.progress import to_stderr
from reidkit.inference import FeatureExtractor
from reidkit.retrieval.backends.protocol import crash_point
from reidkit.retrieval.backends.sqlite import generations as G
from reidkit.retrieval.backends.sqlite import schema as S
from reidkit.retrieval.backends.sqlite.snapshot import SQLiteSnapshot
from reidkit.inference.chunks import embed_chunks
from reidkit.utils.io import pid_alive

__all__ = ["check_folder", "repair_folder", "lock_files", "VIDEO_LOCKS"]

# The folder of the per-video ingestion locks beside gallery DB (reidkit.video.pipeline.VideoLock makes it;
# retrieval cannot import video, tests/test_leftovers.py checks that the two agree).
VIDEO_LOCKS = ".{name}.video-locks"


def check_folder(db: str | os.PathLike) -> dict[str, Any]:
    """Consistency report of gallery folder `db`; ReIDError naming the problem when it is not consistent.

    Reads only: works on a gallery in a read-only folder or medium.
    """
    import faiss

    db = Path(db).expanduser().absolute()
    writable = G.folder_writable(db) if db.is_dir() else os.access(db.parent, os.W_OK)
    if writable:
        G.recover(db)
    if not (db / S.DB_FILE).is_file():
        raise S.not_a_gallery(db)
    conn = S.connect_read(db / S.DB_FILE, readonly=not writable)
    try:
        conn.execute("BEGIN")  # a read transaction: every count below from one generation
        version = S.schema_version(conn)
        if version == 1:
            n_meta = conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            detail = ""
            try:
                n_idx = faiss.read_index(str(db / S.LEGACY_INDEX)).ntotal
                detail = f"; its {S.LEGACY_INDEX} has {n_idx} rows and {S.DB_FILE} lists {n_meta} images" + (
                    " (they disagree)" if n_idx != n_meta else ""
                )
            except RuntimeError:
                detail = f"; its {S.LEGACY_INDEX} is missing or unreadable ({n_meta} images listed)"
            raise OptionError(
                "db", f"{db} was written by an older reidkit (schema 1){detail}; run `reidkit index repair --db {db}`"
            )
        if version != S.SCHEMA_VERSION:
            raise OptionError("db", f"{db / S.DB_FILE} is not a reidkit gallery database")
        problems = []
        qc = conn.execute("PRAGMA quick_check").fetchone()[0]
        if qc != "ok":
            problems.append(f"SQLite quick_check: {qc}")
        info = S.read_info(conn)
        ident = S.model_identity(conn, db)
        n_entries = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        n_vectors = conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
        no_vec = conn.execute(
            "SELECT COUNT(*) FROM entries LEFT JOIN vectors USING (id) WHERE vectors.id IS NULL"
        ).fetchone()[0]
        orphan = conn.execute(
            "SELECT COUNT(*) FROM vectors LEFT JOIN entries USING (id) WHERE entries.id IS NULL"
        ).fetchone()[0]
        bad_len = conn.execute("SELECT COUNT(*) FROM vectors WHERE length(vec) != ?", (ident.feat_dim * 4,)).fetchone()[
            0
        ]
        if no_vec:
            problems.append(f"{no_vec} entries have no vector")
        if orphan:
            problems.append(f"{orphan} vectors belong to no entry")
        if bad_len:
            problems.append(f"{bad_len} vectors are not {ident.feat_dim}-d float32")
        kind = info.get("index_kind", "flat")
        if (
            kind in ("ivf", "ivfpq")
            and conn.execute("SELECT COUNT(*) FROM blobs WHERE key = 'trained'").fetchone()[0] == 0
        ):
            problems.append(f"the {kind} index has no trained quantiser stored")
        kinds = dict(conn.execute("SELECT kind, COUNT(*) FROM entries GROUP BY kind").fetchall())
        state_keys = conn.execute("SELECT COUNT(*) FROM state").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise OptionError("db", f"{db / S.DB_FILE} is not a readable reidkit gallery database ({exc})") from None
    finally:
        conn.close()
    gen = int(info.get("generation", "0"))
    cached = G.cache_path(db, gen)
    cache = "absent (rebuilt from the store on the next open)"
    if cached.is_file():
        try:
            nt = faiss.read_index(str(cached)).ntotal
            cache = "ok" if nt == n_entries else f"stale ({nt} rows; rebuilt on the next open)"
        except RuntimeError:
            cache = "unreadable (rebuilt on the next open)"
    leftovers = [p.name for p in db.iterdir() if p.name.startswith(".") and ".tmp" in p.name]
    leftovers += [p.name for p in db.glob("index.g*.faiss") if p != cached]
    # a killed build's or publish's folder beside the gallery (.<name>.build.<pid>.<random>.tmp, its owner gone):
    # the next write removes it too
    for pattern in (f".{db.name}.build.*.tmp", f".{db.name}.old.*.tmp"):
        for p in sorted(db.parent.glob(pattern)):
            pid = p.name.split(".")[-3]
            if not (pid.isdigit() and pid_alive(int(pid))):
                leftovers.append(os.path.join("..", p.name))
    report = {
        "db": str(db),
        "consistent": not problems,
        "problems": problems,
        "generation": gen,
        "uid": info.get("uid", ""),
        "entries": n_entries,
        "vectors": n_vectors,
        "images": int(kinds.get("image", 0)),
        "tracklets": int(kinds.get("tracklet", 0)),
        "state_keys": state_keys,
        "index": kind,
        "cache": cache,
        "model": ident.label(),
        "feat_dim": ident.feat_dim,
        "leftover_files": leftovers,
        "lock_files": lock_files(db),
    }
    if problems:
        raise OptionError("db", f"{db} is inconsistent: {'; '.join(problems)}; run `reidkit index repair --db {db}`")
    return report


def lock_files(db: str | os.PathLike) -> list[str]:
    """The lock files of gallery folder `db` that exist; they are kept BESIDE it: ``.<name>.writer.lock`` (one
    writer at a time) and ``.<name>.video-locks/`` (one ingester per video). Not inside: ``index build
    --overwrite`` publishes a new folder by exchanging it with the old one, and a lock inside would go away with
    the old folder while a process holds or waits on it (two writers at once). They hold no data (a pid at
    most): a copied or moved gallery needs none of them (they are made again), and they can be deleted with
    the folder when no reidkit process is using it."""
    db = Path(db).absolute()
    found = [G.lock_path(db), db.parent / VIDEO_LOCKS.format(name=db.name)]
    return [str(p) + (os.sep if p.is_dir() else "") for p in found if p.exists()]


def repair_folder(
    db: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    device: str | None = None,
    batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
    lock_timeout: float | None = None,
) -> dict[str, Any]:
    """Convert a gallery of an older reidkit (or fix an inconsistent one) into the crash-consistent layout.

    Vectors are read back from the old flat / IVF-Flat / HNSW-Flat index where it has them; rows it
    lacks are re-extracted with the recorded model (or `weights`); what can be neither is reported.
    """
    import faiss

    db = Path(db).expanduser().absolute()
    G.recover(db)
    if not (db / S.DB_FILE).is_file():
        raise S.not_a_gallery(db)
    with G.WriterLock(db, timeout=lock_timeout, on_wait=progress or to_stderr):
        G.clean_for_write(db)
        conn = S.connect(db / S.DB_FILE)
        try:
            version = S.schema_version(conn)
            if version == S.SCHEMA_VERSION:
                conn.close()
                try:
                    rep = check_folder(db)
                except ReIDError:
                    rep = None
                if rep is not None:
                    if not rep["cache"] == "ok":
                        SQLiteSnapshot.load(db).close()  # rebuilds and writes the cache
                    G.drop_old_caches(db, keep=rep["generation"])
                    return {
                        "action": "none needed" if rep["cache"] == "ok" else "rebuilt the faiss cache",
                        "entries": rep["entries"],
                        "recovered_from_index": 0,
                        "reextracted": 0,
                        "dropped": [],
                    }
                return _repair_v2(db, progress)
            if version != 1:
                raise OptionError("db", f"{db / S.DB_FILE} is not a reidkit gallery database")
            ident = S.model_identity(conn, db)
            info = S.read_info(conn)
            rows = conn.execute("SELECT id, path, camid, frame, width, height FROM images ORDER BY id").fetchall()
        finally:
            conn.close()
        dim = ident.feat_dim
        vecs: dict[int, np.ndarray] = {}
        note = ""
        n_idx = 0
        try:
            old = faiss.read_index(str(db / S.LEGACY_INDEX))
            n_idx = int(old.ntotal)
            if old.d != dim:
                raise RuntimeError(f"dimension {old.d} != {dim}")
            try:
                faiss.extract_index_ivf(old).make_direct_map()
            except RuntimeError:
                pass
            have = [r[0] for r in rows if r[0] < n_idx]
            if have:
                got = old.reconstruct_batch(np.asarray(have, dtype=np.int64))
                vecs = {i: got[j] for j, i in enumerate(have)}
        except RuntimeError as exc:
            note = f"{S.LEGACY_INDEX} unreadable or without stored vectors ({str(exc).splitlines()[0][:120]})"
            vecs = {}
        missing = [r for r in rows if r[0] not in vecs]
        dropped: list[str] = []
        if missing:
            src = ident.source
            if weights is None and src != "imagenet" and not Path(src).is_file():
                raise OptionError(
                    "weights",
                    f"{db}: {len(missing)} of {len(rows)} images have no vector in {S.LEGACY_INDEX}"
                    + (f" ({note})" if note else "")
                    + f" and the model that built the gallery ({src}) is not there; "
                    "give that model to re-extract them",
                )
            ext = FeatureExtractor.load(
                weights if weights is not None else (None if src == "imagenet" else src),
                device=device,
                batch_size=batch_size,
                size=ident.input_size,
            )
            if not ident.compatible(ext.identity):
                raise ReIDError(f"weights {ext.identity.label()} are not the model that built {db} ({ident.label()})")
            if progress is not None:
                progress(f"re-extracting {len(missing)} images with {ident.label()}")
            paths = [r[1] for r in missing]
            done: set[str] = set()
            for part in embed_chunks(ext, paths, progress=progress):
                by_path = {r[1]: r[0] for r in missing}
                for p, f in zip(part.paths, part.features):
                    vecs[by_path[p]] = f
                    done.add(p)
            dropped = [p for p in paths if p not in done]
        extra_rows = max(0, n_idx - len(rows))
        keep = [r for r in rows if r[0] in vecs]
        new_info = {
            k: v
            for k, v in info.items()
            if k in ("index_kind", "nprobe", "ef_search", "hnsw_m", "nlist", "corrupt_skipped", "created")
        }
        new_info.setdefault("index_kind", "flat")
        tmp = G.new_build_folder(db)
        try:
            conn = S.create_db(tmp / S.DB_FILE, S.model_row(ident), {**new_info, "uid": S.new_uid(), "generation": "1"})
            out_rows = []
            for r in keep:
                cam, frame = r[2], r[3]
                out_rows.append(
                    {
                        "path": r[1],
                        "kind": "image",
                        "camid": cam,
                        "camera": None if cam is None else f"c{cam + 1}",
                        "tracklet": None,
                        "frame_start": frame,
                        "frame_end": frame,
                        "t_start": None,
                        "t_end": None,
                        "width": r[4],
                        "height": r[5],
                        "meta": None,
                    }
                )
            feats = np.stack([vecs[r[0]] for r in keep]) if keep else np.zeros((0, dim), np.float32)
            with S.write_transaction(conn, tmp, immediate=False):
                S.insert_entries(conn, [r[0] for r in keep], out_rows, feats, db)
            kind = new_info["index_kind"]
            nl = int(new_info["nlist"]) if kind == "ivf" and new_info.get("nlist", "0") != "0" else None
            if nl is not None and nl > len(keep):
                nl = None
            G.finish_new(tmp, conn, ident, kind, nl, None, progress)
            conn.close()
            crash_point("build_before_publish")
            G.publish_folder(tmp, db)
        except BaseException:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return {
        "action": "converted to the crash-consistent layout",
        "entries": len(keep),
        "recovered_from_index": len(keep) - (len(missing) - len(dropped)),
        "reextracted": len(missing) - len(dropped),
        "dropped": dropped,
        "index_rows_without_metadata": extra_rows,
        "note": note,
    }


def _repair_v2(db: Path, progress: Callable[[str], None] | None) -> dict[str, Any]:
    """Drop entries without a vector / vectors without an entry / wrong-size vectors, in one generation."""
    conn = S.connect(db / S.DB_FILE)
    try:
        with S.write_transaction(conn, db):
            dim = int(conn.execute("SELECT feat_dim FROM model").fetchone()[0])
            bad = [
                r[0]
                for r in conn.execute(
                    "SELECT entries.id FROM entries LEFT JOIN vectors USING (id) WHERE vectors.id IS NULL "
                    "OR length(vectors.vec) != ?",
                    (dim * 4,),
                )
            ]
            paths = (
                [r[0] for r in conn.execute(f"SELECT path FROM entries WHERE id IN ({','.join('?' * len(bad))})", bad)]
                if bad
                else []
            )
            for i in bad:
                conn.execute("DELETE FROM entries WHERE id = ?", (i,))
                conn.execute("DELETE FROM vectors WHERE id = ?", (i,))
            conn.execute("DELETE FROM vectors WHERE id NOT IN (SELECT id FROM entries)")
            S.bump_generation(conn)
    finally:
        conn.close()
    snap = SQLiteSnapshot.load(db)
    G.drop_old_caches(db, keep=snap.generation)
    n = snap.count
    snap.close()
    if progress is not None:
        progress(f"dropped {len(paths)} entries without a usable vector")
    return {
        "action": "dropped entries without a usable vector",
        "entries": n,
        "recovered_from_index": 0,
        "reextracted": 0,
        "dropped": paths,
    }
