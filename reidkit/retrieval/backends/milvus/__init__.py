"""Milvus gallery backend (``--db milvus:<uri>``) through ``pymilvus.MilvusClient``.

``<uri>`` is what MilvusClient takes: a local ``*.db`` file runs Milvus Lite inside this process
(one process at a time per file), ``http://host:19530`` a Milvus standalone or distributed cluster.

Layout: collection ``NAME`` holds one row per entry (vector, kind, path, camid, camera, tracklet,
frame and time spans, width, height, JSON meta) with an INVERTED scalar index on camera, kind,
tracklet and the time span, so filtered searches filter inside Milvus; ``NAME_state`` holds the
key -> JSON state (ingestion progress, global identities), the model identity and the gallery's
info record (uid, generation, index settings), long values split into parts.

What it promises (different from the embedded backend, by design of Milvus):

- Idempotent writes: an entry's id is a 53-bit hash of its content key (an image's path, a
  tracklet's key), and writes are upserts. Writing the same image or tracklet twice gives one
  entry, so a killed writer re-run neither loses nor duplicates; entries are written before the
  state that records them, so a resumed ingestion redoes at most its last chunk. 53 bits keep
  ids exact in JavaScript (the web page) and JSON.
- Reads at strong consistency: a search sees every write that returned before it started. There
  is no multi-row transaction and no pinned snapshot: a reader may see a batch half-written while
  a writer is inside it; ``build --overwrite`` builds a temporary collection and renames it into
  place (a kill between dropping the old collection and the rename leaves the new one under its
  temporary name, reported by ``index check``).
- The change key polled by the service is (uid, generation) in the info record, bumped after
  each write.

Servers: Milvus 2.5 or newer (``MIN_SERVER``). The schema uses nullable scalar fields and ``is null``
filters (Milvus 2.5) and INVERTED scalar indexes (2.4); an older server is refused when the client
connects, with one error naming the version it reports (2.3.5, the newest server wheel on PyPI,
rejects INVERTED, NULL values and ``is null``: measured). Milvus Lite (a local file) is not checked.

Side files (video thumbnails) live in a local folder: the one recorded in the gallery (``use_files``,
an absolute path under the state key ``__reidkit_files__``; `reidkit index build` and `reidkit video`
record ``--files``, by default ``<collection>.files`` beside the images folder or the first video),
else, for Milvus Lite, ``<file>.<collection>.files`` beside the ``.db`` file (they move together),
and for a server gallery that recorded none, a per-user folder keyed by the server and collection
(``$XDG_DATA_HOME/reidkit/milvus/...``), never the current directory.

Filter values are quoted for the grammar of every backend measured (Milvus Lite 3.x accepts only
the escapes \\" \\\\ \\n \\r \\t, Milvus 2.3's lexer refuses a raw newline or carriage return;
both take every other character raw): a value is always one string literal, never expression text.
"""
