"""Gallery.compact: a long-running writer that always holds a snapshot (reidkit watch) would grow the embedded
store's write-ahead log without end (SQLite rewinds it only when no reader holds an older view)."""

import numpy as np

from reidkit.retrieval.gallery import Gallery


def test_compact_truncates_the_wal_that_a_held_snapshot_lets_grow(tmp_path):
    g = _make(tmp_path)
    wal = tmp_path / "g" / "meta.sqlite-wal"
    rng = np.random.default_rng(0)
    for i in range(60):  # each write: a new generation, while this object always holds the previous snapshot
        feats = rng.standard_normal((20, g.identity.feat_dim)).astype(np.float32)
        g.add_entries(
            feats,
            [
                {
                    "path": f"/x/{i}_{j}.jpg",
                    "kind": "tracklet",
                    "tracklet": f"t{i}.{j}",
                    "camera": "cam1",
                    "meta": {"pad": "x" * 2000},
                }
                for j in range(20)
            ],
        )
    grown = wal.stat().st_size
    assert grown > 1_000_000, grown
    n = len(g.entries())
    import sqlite3

    other = sqlite3.connect(tmp_path / "g" / "meta.sqlite")  # another process's idle connection (a server)
    other.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # it has the database (and its WAL) open
    try:
        g.compact()  # closing our snapshot alone is not enough while another connection keeps the WAL
        assert wal.stat().st_size == 0
    finally:
        other.close()
    assert len(g.entries()) == n == 1200  # the same generation, readable after
    hits = g.search_features(g.features([g.entries()[5]["id"]]), k=1)
    assert hits[0][0]["id"] == g.entries()[5]["id"]
    assert Gallery.open(tmp_path / "g").generation == g.generation


def _make(tmp_path):
    """An empty gallery for the ImageNet EfficientNet-Lite0 (what `reidkit video` creates)."""
    from reidkit.video.embedder import Embedder
    from reidkit.video.ingest import create_gallery

    return create_gallery(tmp_path / "g", Embedder(None), None)
