"""Crash-consistent gallery storage: vectors and metadata in one SQLite file; faiss is only a cache.

A gallery folder ``DB`` holds

- ``meta.sqlite`` (WAL mode): ``entries`` (one row per image or tracklet: path, kind, camera,
  frame span, time span, JSON meta), ``vectors`` (the float32 feature of each entry, as a blob),
  ``model`` (what made the features), ``info`` (index settings, ``generation``, ``uid``),
  ``state`` (key -> JSON, e.g. video-ingestion progress) and ``blobs`` (the trained, empty faiss
  index of IVF kinds, so a rebuild never re-trains);
- ``index.g<N>.faiss``: the faiss index of generation N. It is a cache: when the file for the
  current generation is missing (a writer was killed after its commit) it is rebuilt from the
  vectors in SQLite.

Consistency by construction:

- Every write (add, delete, state) is ONE SQLite transaction that also increments
  ``info.generation``. The commit publishes the generation; a crash before it leaves the old
  generation whole (SQLite rolls the journal back), a crash after it leaves the new one whole
  (its faiss cache is rebuilt on the next open). Nothing outside SQLite has to agree with it.
- ``build --overwrite`` writes a complete new gallery in a sibling temp folder and publishes it
  by exchanging the two folders in one ``renameat2(RENAME_EXCHANGE)`` call (Linux); the old
  folder stays whole until then. Processes that had the old database open keep reading the old
  files through their open descriptors. Where the exchange is not available two renames are used
  and an interrupted publish is rolled forward/back by :func:`recover` on the next open.
- One writer at a time: an exclusive ``fcntl.flock`` on ``.<name>.writer.lock`` beside the
  folder (beside, so it survives the folder exchange). A second writer waits, saying who holds
  it, up to a timeout, then fails with a :class:`ReIDError`.
- Readers take a WAL read transaction: they see one generation for as long as they hold it and
  never block writers (nor are blocked by them).

Modules, along those seams: :mod:`.schema` (the schema, connections, transactions, entry and model rows),
:mod:`.generations` (the writer lock, faiss caches, build folders, publish and recovery), :mod:`.snapshot`
(a pinned generation), :mod:`.store` (``SQLiteStore``, ``SQLiteBuilder``; registered as ``embedded``, the
backend of a ``--db`` without a scheme), :mod:`.check` (``index check`` / ``index repair``, migration).

Test hook: ``REIDKIT_TEST_CRASH_AT=<point>`` makes the process ``os._exit(137)`` at that named
point (see ``reidkit.retrieval.backends.protocol.CRASH_POINTS``), so the fault-injection tests can kill writers inside the
publish step deterministically.
"""
