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
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.inference import ModelIdentity
from reidkit.retrieval.store import (DEFAULT_COLLECTION, ENTRY_FIELDS, MILVUS_PREFIX, SearchFilter, crash_point,
                                     iter_chunks)

__all__ = ["MilvusStore", "MilvusSnapshot", "MilvusBuilder", "entry_id", "close_client", "ID_BITS", "EXTRA_HINT",
           "MIN_SERVER", "is_server", "parse_version", "files_folder", "files_beside"]

# gRPC's C core prints transport events on stderr itself (``E... chttp2_transport.cc ... Received a GOAWAY
# with error code ENHANCE_YOUR_CALM and debug data equal to "too_many_pings"`` when a Milvus Lite server
# finds pymilvus's keepalive pings too frequent, line after line under load); every failed call reaches the
# user as one ReIDError instead. gRPC reads this once, when it is first imported (pymilvus imports it, and
# only this module imports pymilvus); a GRPC_VERBOSITY the user set wins.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
# A Milvus Lite file is served on this machine: no keepalive pings on an idle connection (pymilvus pings every
# 10 s, idle or not, which is what the server answers with GOAWAY too_many_pings).
_LITE_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": 0}

ID_BITS = 53
EXTRA_HINT = 'pip install -e ".[milvus]"'
_MODEL_KEY = "__reidkit_model__"
_INFO_KEY = "__reidkit_info__"
_PART = 60000  # characters of a state value per row (VARCHAR limit 65535 bytes)
_BATCH = 1000
_MAX_TOPK = 16384  # Milvus's limit on one search
_VARCHAR = {"kind": 16, "path": 4096, "camera": 1024, "tracklet": 1024}  # max_length (a server counts bytes)
_FILES_KEY = "__reidkit_files__"
_RESERVED = (_MODEL_KEY, _INFO_KEY, _FILES_KEY)
MIN_SERVER = (2, 5, 0)  # nullable fields and `is null` (2.5), INVERTED scalar indexes (2.4)
_FIELDS = [f for f in ENTRY_FIELDS if f != "id"] + ["width", "height"]
_INDEX = {"flat": ("FLAT", {}), "ivf": ("IVF_FLAT", {"nlist": 128}), "ivfpq": ("IVF_PQ", {"nlist": 128, "m": 16}),
          "hnsw": ("HNSW", {"M": 32, "efConstruction": 80})}
_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def entry_id(row: dict[str, Any]) -> int:
    """The id of an entry, from its content: an image's path, a tracklet's key (else its path, camera and span)."""
    if row.get("kind") == "tracklet" and row.get("tracklet") is not None:
        key = "tracklet\0" + str(row["tracklet"])
    elif row.get("kind", "image") == "image":
        key = "image\0" + str(row["path"])
    else:
        key = "tracklet\0" + json.dumps([row["path"], row.get("camera"), row.get("frame_start"),
                                         row.get("frame_end"), row.get("t_start")])
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << ID_BITS) - 1)


def _parse(db: str | os.PathLike) -> str:
    """The MilvusClient uri of ``milvus:<uri>`` (a local Milvus Lite file made absolute)."""
    uri = str(db)[len(MILVUS_PREFIX):]
    if not uri:
        raise OptionError("db", f"{db}: expected milvus:<uri> (milvus:./gallery.db or milvus:http://host:19530)")
    if "://" in uri or uri.startswith("unix:"):
        return uri
    path = Path(uri).expanduser().absolute()
    if not path.parent.is_dir():
        raise OptionError("db", f"{db}: the folder {path.parent} does not exist")
    return str(path)


def is_server(uri: str) -> bool:
    """True when the client uri names a server (``http://host:port``, ``unix:``), not a Milvus Lite file."""
    return "://" in uri or uri.startswith("unix:")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a version a server reports ("v2.5.4", "v2.3.5-lite", "2.6.0-rc1"), or None."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    return None if m is None else (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def _check_server(client: Any, uri: str) -> None:
    """One OptionError when the server is older than MIN_SERVER (an unreadable version is let through)."""
    try:
        found = str(client.get_server_version())
    except Exception:  # noqa: BLE001 - a server that does not say: the calls themselves will tell
        return
    version = parse_version(found)
    if version is not None and version < MIN_SERVER:
        need = ".".join(map(str, MIN_SERVER))
        raise OptionError("db", f"the Milvus server at {uri} is version {found}; reidkit needs Milvus {need} or "
                                f"newer (nullable fields and `is null` filters came in 2.5, INVERTED scalar indexes "
                                f"in 2.4): upgrade the server, or use Milvus Lite (milvus:./gallery.db) or a folder")


def _client(uri: str) -> Any:
    """One MilvusClient per uri and process (Milvus Lite starts once per file); a server's version is checked."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise OptionError("db", f"Milvus galleries need the optional packages pymilvus and milvus-lite: "
                        f"{EXTRA_HINT}", value=f"milvus:{uri}") from None
    import logging

    # pymilvus logs every failed call with its traceback before raising; each one reaches the user here as
    # one ReIDError (_Collections.call), so its log would only repeat it as ~20 lines of noise
    logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)
    with _clients_lock:
        client = _clients.get(uri)
        if client is None:
            try:
                client = MilvusClient(uri) if is_server(uri) else MilvusClient(uri, grpc_options=_LITE_GRPC_OPTIONS)
            except Exception as exc:  # noqa: BLE001 - pymilvus raises several kinds; all are "cannot open"
                raise OptionError("db", f"cannot open the Milvus database ({_msg(exc)}); a Milvus Lite "
                                f"file is usable by one process at a time", value=f"milvus:{uri}") from None
            if is_server(uri):
                try:
                    _check_server(client, uri)
                except ReIDError:
                    try:
                        client.close()
                    except Exception:  # noqa: BLE001 - closing is best effort
                        pass
                    raise
            _clients[uri] = client
        return client


# What the string literals of Milvus filter expressions take, measured on Milvus Lite 3.2 and Milvus 2.3.5:
# both read \" \\ \n \r \t; Lite refuses every other escape (\x01, \u0001, \001), 2.3 a raw newline or
# carriage return; both read any other character raw, control characters included.
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPE_RX = re.compile('["\\\\\n\r\t]')


def _check_text(name: str, value: str, limit: int | None = None) -> None:
    """OptionError naming `name` when `value` cannot be sent to Milvus: not UTF-8 encodable, or over `limit` bytes."""
    try:
        n = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise OptionError(name, f"{value!r} is not valid Unicode text (it holds a lone surrogate, e.g. from "
                                f"bytes that are not UTF-8)") from None
    if limit is not None and n > limit:
        raise OptionError(name, f"{value[:40]!r}... is {n} bytes long in UTF-8; a Milvus gallery stores at most {limit}")


def _string_lit(value: str, name: str) -> str:
    """`value` as one double-quoted Milvus string literal (see _ESCAPES)."""
    _check_text(name, value)
    return '"' + _ESCAPE_RX.sub(lambda m: _ESCAPES[m.group(0)], value) + '"'


def _lit(value: Any, name: str = "value") -> str:
    """A Milvus expression literal: a double-quoted, escaped string, an int, a finite float or a list of ints."""
    if isinstance(value, str):
        return _string_lit(value, name)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(int(v)) for v in value) + "]"
    if isinstance(value, float):
        return repr(float(value))
    return str(int(value))


def _expr(template: str, params: dict[str, Any]) -> str:
    """`template` with each {name} replaced by the literal of params[name] (values never parsed as expressions)."""
    return re.sub(r"\{(\w+)\}", lambda m: _lit(params[m.group(1)], m.group(1)), template)


def close_client(db: str | os.PathLike) -> None:
    """Close this process's client of `db` (a Milvus Lite file is then free for another process)."""
    uri = _parse(db)
    with _clients_lock:
        client = _clients.pop(uri, None)
    if client is not None:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
        if "://" not in uri:
            try:
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(uri)
            except (ImportError, AttributeError):
                pass


def files_folder(files: str | os.PathLike) -> Path:
    """`files` as an absolute folder path, refused when it is a file or cannot be created or written."""
    path = Path(files).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise OptionError("files", f"{path} exists and is not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OptionError("files", f"{path}: {existing} is not a folder this process can write in")
    return path


def files_beside(path: str | os.PathLike, collection: str | None = None) -> Path:
    """The default side-file folder of a server gallery made from `path`: ``<collection>.files`` in its folder."""
    return Path(path).expanduser().absolute().parent / f"{collection or DEFAULT_COLLECTION}.files"


def _msg(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc).splitlines()[0][:300]


class _Collections:
    """The entry and state collections of one gallery, with Milvus errors turned into ReIDError."""

    def __init__(self, location: str, uri: str, name: str) -> None:
        self.location = location
        self.uri = uri
        self.name = name
        self.state_name = f"{name}_state"
        self.client = _client(uri)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a client call; a Milvus error becomes one ReIDError naming the gallery."""
        try:
            return fn(*args, **kwargs)
        except ReIDError:
            raise
        except Exception as exc:  # noqa: BLE001 - MilvusException and gRPC errors
            if type(exc).__module__.startswith(("pymilvus", "grpc")):
                raise OptionError("db", f"{self.location} (collection {self.name}): Milvus {what} failed: {_msg(exc)}") from None
            raise

    def exists(self) -> bool:
        return bool(self.call("list_collections", self.client.has_collection, self.name))

    def create(self, dim: int, index_kind: str) -> None:
        from pymilvus import DataType, MilvusClient

        s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("id", DataType.INT64, is_primary=True)
        s.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
        s.add_field("kind", DataType.VARCHAR, max_length=_VARCHAR["kind"])
        s.add_field("path", DataType.VARCHAR, max_length=_VARCHAR["path"])
        for f in ("camid", "frame_start", "frame_end", "width", "height"):
            s.add_field(f, DataType.INT64, nullable=True)
        s.add_field("camera", DataType.VARCHAR, max_length=_VARCHAR["camera"], nullable=True)
        s.add_field("tracklet", DataType.VARCHAR, max_length=_VARCHAR["tracklet"], nullable=True)
        s.add_field("t_start", DataType.DOUBLE, nullable=True)
        s.add_field("t_end", DataType.DOUBLE, nullable=True)
        s.add_field("meta", DataType.JSON, nullable=True)
        ip = self.client.prepare_index_params()
        kind, params = _INDEX.get(index_kind, _INDEX["flat"])
        ip.add_index("vector", index_type=kind, metric_type="IP", params=params)
        for f in ("camera", "kind", "tracklet", "t_start", "t_end"):
            ip.add_index(f, index_type="INVERTED")
        self._create(self.name, s, ip)
        st = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        st.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=1100)
        st.add_field("key", DataType.VARCHAR, max_length=1024)
        st.add_field("part", DataType.INT64)
        st.add_field("text", DataType.VARCHAR, max_length=65535)
        st.add_field("v", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs a vector field in every collection
        sip = self.client.prepare_index_params()
        sip.add_index("v", index_type="FLAT", metric_type="L2")
        sip.add_index("key", index_type="INVERTED")
        self._create(self.state_name, st, sip)

    def _create(self, name: str, schema: Any, index_params: Any, timeout_s: float = 60.0) -> None:
        """Create collection `name` with its indexes and load it.

        pymilvus's own ``create_collection(index_params=...)`` sleeps 0.5 s before it first asks whether each
        index is built (4 s for a gallery's eight indexes on an empty collection, where the answer is
        immediate); here each index's state is asked at once, then at growing intervals."""
        self.call("create_collection", self.client.create_collection, name, schema=schema, consistency_level="Strong")
        self.call("create_index", self.client.create_index, name, index_params, sync=False)
        deadline = time.monotonic() + timeout_s
        for field in self.call("list_indexes", self.client.list_indexes, name):
            wait = 0.005
            while True:
                state = str(self.call("describe_index", self.client.describe_index, name, field).get("state", ""))
                if not state or state.endswith("Finished"):  # a server that reports no state: load decides
                    break
                if state.endswith("Failed") or time.monotonic() > deadline:
                    raise OptionError("db", f"{self.location} (collection {name}): Milvus index on {field} "
                                            f"not built ({state} after {timeout_s:.0f} s)")
                time.sleep(wait)
                wait = min(0.5, wait * 2)
        self.call("load_collection", self.client.load_collection, name)

    def load(self) -> None:
        """Load both collections for reading (a renamed or restarted collection starts released)."""
        for n in (self.name, self.state_name):
            state = str(self.call("get_load_state", self.client.get_load_state, n).get("state", ""))
            if "Loaded" not in state:
                self.call("load_collection", self.client.load_collection, n)

    def drop(self) -> None:
        for n in (self.name, self.state_name):
            if self.call("has_collection", self.client.has_collection, n):
                self.call("drop_collection", self.client.drop_collection, n)

    # -- state -----------------------------------------------------------------------------------

    def get_text(self, key: str) -> str | None:
        rows = self.call("query", self.client.query, self.state_name, filter=_expr("key == {k}", {"k": key}),
                         output_fields=["part", "text"], consistency_level="Strong")
        if not rows:
            return None
        return "".join(r["text"] for r in sorted(rows, key=lambda r: r["part"]))

    def put_text(self, items: dict[str, str | None]) -> None:
        rows, stale = [], []
        for key, text in items.items():
            if len(key) > 1024:
                raise ReIDError(f"state key {key[:40]!r}...: longer than 1024 characters")
            parts = [] if text is None else [text[s] for s in iter_chunks(len(text), _PART)] or [""]
            rows += [{"pk": f"{key}#{i}", "key": key, "part": i, "text": p, "v": [0.0, 0.0]} for i, p in enumerate(parts)]
            stale.append((key, len(parts)))
        for s in iter_chunks(len(rows), _BATCH):
            self.call("upsert", self.client.upsert, self.state_name, rows[s])
        for key, n in stale:
            self.call("delete", self.client.delete, self.state_name, filter=_expr("key == {k} and part >= {n}", {"k": key, "n": n}))

    def get_json(self, key: str) -> Any:
        text = self.get_text(key)
        return None if text is None else json.loads(text)

    def info(self) -> dict[str, str]:
        info = self.get_json(_INFO_KEY)
        if info is None:
            raise OptionError("db", f"{self.location} (collection {self.name}) has no reidkit info record; "
                            f"it was not made by `reidkit index build`")
        return info

    def identity(self) -> ModelIdentity:
        m = self.get_json(_MODEL_KEY)
        if m is None:
            raise OptionError("db", f"{self.location} (collection {self.name}) has no model record")
        return ModelIdentity(m["name"], m["source"], int(m["feat_dim"]), tuple(m["input_size"]),  # type: ignore[arg-type]
                             tuple(m["mean"]), tuple(m["std"]))

    def count(self, expr: str = "") -> int:
        rows = self.call("query", self.client.query, self.name, filter=expr, output_fields=["count(*)"],
                         consistency_level="Strong")
        return int(rows[0]["count(*)"]) if rows else 0

    # -- entries ---------------------------------------------------------------------------------

    def upsert(self, ids: Sequence[int], rows: Sequence[dict[str, Any]], vectors: np.ndarray) -> None:
        data = []
        for i, r, v in zip(ids, rows, vectors):
            d = {f: r.get(f) for f in _FIELDS}
            for f, limit in _VARCHAR.items():  # refused here, naming the field, not as Milvus's schema error
                if isinstance(d[f], str):
                    _check_text(f, d[f], limit)
            d["meta"] = json.loads(r["meta"]) if isinstance(r.get("meta"), str) else r.get("meta")
            data.append({"id": int(i), "vector": np.asarray(v, np.float32).tolist(), **d})
        for s in iter_chunks(len(data), _BATCH):
            self.call("upsert", self.client.upsert, self.name, data[s])

    def get(self, ids: Sequence[int], fields: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        ids = [int(i) for i in ids]
        for s in iter_chunks(len(ids), _BATCH):
            if ids[s]:
                out += self.call("get", self.client.get, self.name, ids=ids[s], output_fields=fields,
                                 consistency_level="Strong")
        return out

    def iterate(self, expr: str, params: dict[str, Any], fields: list[str]) -> list[dict[str, Any]]:
        import logging

        logging.getLogger("pymilvus").setLevel(logging.ERROR)  # the Lite server's "no mvccTs" notice per iterator
        it = self.call("query_iterator", self.client.query_iterator, self.name, batch_size=_BATCH,
                       filter=_expr(expr, params) or "id >= 0", output_fields=fields)
        rows: list[dict[str, Any]] = []
        try:
            while True:
                batch = self.call("query_iterator", it.next)
                if not batch:
                    break
                rows += batch
        finally:
            it.close()
        return rows


def _entry(d: dict[str, Any]) -> dict[str, Any]:
    return {"id": int(d["id"]), **{f: d.get(f) for f in _FIELDS}}


# SearchFilter field -> Milvus condition (an entry without the field fails a condition on it, except exclusions)
_CONDITIONS = (("exclude_camid", "(camid is null or camid != {exclude_camid})", int),
               ("exclude_camera", "(camera is null or camera != {exclude_camera})", str),
               ("camera", "camera == {camera}", str), ("kind", "kind == {kind}", str),
               ("t_min", "t_end >= {t_min}", float), ("t_max", "t_start <= {t_max}", float))


def _filter_expr(f: SearchFilter) -> str:
    """The Milvus boolean expression of a search filter ("" for none)."""
    return " and ".join(_expr(tpl, {name: typ(getattr(f, name))}) for name, tpl, typ in _CONDITIONS
                        if getattr(f, name) is not None)


class MilvusSnapshot:
    """Reads of a Milvus gallery at strong consistency (no pinned generation: see the module docstring)."""

    index = None

    def __init__(self, cols: _Collections) -> None:
        self.cols = cols
        self.info = cols.info()
        self.identity = cols.identity()
        self.uid = self.info.get("uid", "")
        self.generation = int(self.info.get("generation", "0"))
        self.count = cols.count()
        self.n_images = cols.count('kind == "image"')
        self.n_tracklets = self.count - self.n_images

    @property
    def key(self) -> tuple[str, int]:
        """(uid, generation) when this snapshot was taken."""
        return self.uid, self.generation

    def search(self, feats: np.ndarray, k: int, filters: Sequence[SearchFilter],
               nprobe: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per row: (ids, scores) of its top k passing its filter (filtered inside Milvus)."""
        k = max(1, min(int(k), _MAX_TOPK))
        params: dict[str, Any] = {"metric_type": "IP"}
        if nprobe is not None:
            params["params"] = {"nprobe": int(nprobe)}
        out = []
        groups: dict[SearchFilter, list[int]] = {}
        for b, f in enumerate(filters):
            groups.setdefault(f, []).append(b)
        found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for f, rows in groups.items():
            res = self.cols.call("search", self.cols.client.search, self.cols.name,
                                 data=[feats[b].tolist() for b in rows], limit=k, filter=_filter_expr(f),
                                 search_params=params, output_fields=[], consistency_level="Strong")
            for b, hits in zip(rows, res):
                found[b] = (np.asarray([h["id"] for h in hits], dtype=np.int64),
                            np.asarray([h["distance"] for h in hits], dtype=np.float32))
        for b in range(len(feats)):
            out.append(found[b])
        return out

    def rows(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Stored fields of the given ids that exist."""
        return {int(d["id"]): _entry(d) for d in self.cols.get(ids, _FIELDS)}

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored vectors of the given ids, in that order."""
        ids = [int(i) for i in ids]
        got = {int(d["id"]): d["vector"] for d in self.cols.get(ids, ["vector"])}
        missing = [i for i in ids if i not in got]
        if missing:
            raise ReIDError(f"gallery: no entry with id {missing[0]}")
        if not ids:
            return np.zeros((0, self.identity.feat_dim), np.float32)
        return np.asarray([got[i] for i in ids], dtype=np.float32)

    def entries(self, kind: str | None = None, tracklet: str | None = None,
                camera: str | None = None) -> list[dict[str, Any]]:
        """Stored entries matching all given filters, in id order."""
        parts, params = [], {}
        for col, v in (("kind", kind), ("tracklet", tracklet), ("camera", camera)):
            if v is not None:
                parts.append(f"{col} == {{{col}}}")
                params[col] = str(v)
        rows = self.cols.iterate(" and ".join(parts), params, ["id", *_FIELDS])
        return sorted((_entry(d) for d in rows), key=lambda e: e["id"])

    def image_paths(self) -> set[str]:
        """Paths of the image entries."""
        return {d["path"] for d in self.cols.iterate('kind == "image"', {}, ["path"])}

    def close(self) -> None:
        """Nothing to release (the client is shared per process)."""


class MilvusStore:
    """A gallery in a Milvus collection (see the module docstring)."""

    readonly = False

    def __init__(self, location: str, uri: str, collection: str) -> None:
        self.location = location
        self.uri = uri
        self.collection = collection
        self.cols = _Collections(location, uri, collection)
        self._files: Path | None = None  # the folder recorded in the gallery, once read
        self._files_uid: str | None = None  # ... for this build of the gallery (a rebuild records its own)

    @property
    def files_dir(self) -> Path:
        """The local folder of the gallery's side files (video thumbnails): the recorded one, else the default."""
        if self._files is None:
            recorded = self.cols.get_json(_FILES_KEY)
            if not (isinstance(recorded, str) and recorded):
                return self.default_files_dir()
            self._files = Path(recorded)
        return self._files

    def default_files_dir(self) -> Path:
        """Where side files go when the gallery records no folder (see the module docstring)."""
        if not is_server(self.uri):
            return Path(self.uri).parent / f"{Path(self.uri).name}.{self.collection}.files"
        base = os.environ.get("XDG_DATA_HOME")
        if not base:
            try:
                base = str(Path.home() / ".local" / "share")
            except RuntimeError:
                raise OptionError("files", f"{self.location} (collection {self.collection}) records no folder for "
                                           f"its files and there is no home folder: give one") from None
        server = re.sub(r"[^A-Za-z0-9._-]+", "_", self.uri.split("://", 1)[-1]).strip("_") or "server"
        return Path(base).absolute() / "reidkit" / "milvus" / server / f"{self.collection}.files"

    def use_files(self, files: str | os.PathLike | None = None,
                  default: str | os.PathLike | None = None) -> Path:
        """Record the folder of the gallery's side files (once) and return it.

        `files` must be the folder already recorded, if any (thumbnails already written name it). Without
        `files`, a server gallery that records none records `default` (else default_files_dir()); a Milvus
        Lite gallery keeps its folder beside its file unrecorded, so that the two move together."""
        want = None if files is None else files_folder(files)
        recorded = self.cols.get_json(_FILES_KEY)
        if isinstance(recorded, str) and recorded:
            if want is not None and want != Path(recorded):
                raise OptionError("files", f"{self.location} (collection {self.collection}) keeps its files in "
                                           f"{recorded}; give that folder or leave the option out", value=files)
            self._files = Path(recorded)
            return self._files
        if want is None:
            if not is_server(self.uri):
                return self.default_files_dir()
            want = files_folder(default) if default is not None else self.default_files_dir()
        self.cols.put_text({_FILES_KEY: json.dumps(str(want))})
        self._files = want
        return want

    @staticmethod
    def _names(db: str | os.PathLike, collection: str | None) -> tuple[str, str, str]:
        uri = _parse(db)
        name = DEFAULT_COLLECTION if collection is None else str(collection)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,199}", name):
            raise OptionError("collection", f"{name!r}: ASCII letters, digits and '_' only, not starting with a "
                                            f"digit, at most 200 characters")
        return MILVUS_PREFIX + uri, uri, name

    @classmethod
    def open(cls, db: str | os.PathLike, collection: str | None = None, readonly: bool = False) -> MilvusStore:
        """Open an existing Milvus gallery."""
        location, uri, name = cls._names(db, collection)
        store = cls(location, uri, name)
        if not store.cols.exists():
            raise OptionError("db", f"{location} has no collection {name!r}; create one with "
                            f"`reidkit index build --db {location}`")
        store.cols.load()
        return store

    @classmethod
    def exists(cls, db: str | os.PathLike, collection: str | None = None) -> bool:
        """True when the collection exists."""
        location, uri, name = cls._names(db, collection)
        return _Collections(location, uri, name).exists()

    @classmethod
    def builder(cls, location: str | os.PathLike, collection: str | None = None, overwrite: bool = False,
                settings: dict[str, Any] | None = None, lock_timeout: float | None = None,
                progress: Callable[[str], None] | None = None) -> MilvusBuilder:
        """A new gallery built in a temporary collection and renamed into place."""
        loc, uri, name = cls._names(location, collection)
        return MilvusBuilder(loc, uri, name, overwrite, settings or {})

    def snapshot(self) -> MilvusSnapshot:
        """Strong-consistency reads of the current content."""
        snap = MilvusSnapshot(self.cols)
        if snap.uid != self._files_uid:  # another build under this name: read its own files folder again
            self._files, self._files_uid = None, snap.uid
        return snap

    def stored_key(self) -> tuple[str, int] | None:
        """(uid, generation) of the info record."""
        try:
            info = self.cols.info()
        except ReIDError:
            return None
        return info.get("uid", ""), int(info.get("generation", "0"))

    def settling(self, key: tuple[str, int]) -> bool:
        """Milvus writers leave no cache to finish."""
        return False

    def check_writable(self) -> None:
        """Milvus galleries are opened for writing (the server decides)."""

    def _check_model(self, identity: ModelIdentity) -> None:
        stored = self.cols.identity()
        if not stored.compatible(identity):
            raise OptionError("db", f"{self.location} was rebuilt with another model ({stored.label()}) since it was "
                            f"opened; nothing was written")

    def _bump(self, corrupt: int | None = None) -> None:
        info = self.cols.info()
        info["generation"] = str(int(info.get("generation", "0")) + 1)
        if corrupt is not None:
            info["corrupt_skipped"] = str(int(info.get("corrupt_skipped", "0")) + int(corrupt))
        self.cols.put_text({_INFO_KEY: json.dumps(info)})

    def write(self, base: Any, identity: ModelIdentity, rows: list[dict[str, Any]], vectors: np.ndarray,
              state: dict[str, str | None] | None = None, skip_existing_images: bool = False,
              corrupt: int | None = None, lock_timeout: float | None = None,
              progress: Callable[[str], None] | None = None) -> tuple[list[int], MilvusSnapshot | None]:
        """Upsert the entries (ids from content), then the state, then bump the generation."""
        state = state or {}
        self._check_model(identity)
        ids = [entry_id(r) for r in rows]
        keep = list(range(len(rows)))
        if skip_existing_images and ids:
            present = {int(d["id"]) for d in self.cols.get(ids, ["id"])}
            keep = [i for i in keep if ids[i] not in present]
        last = {ids[i]: i for i in keep}  # the same entry twice in one batch: the last one wins
        keep = [i for i in keep if last[ids[i]] == i]
        if not keep and not state:
            return [], None
        self.cols.upsert([ids[i] for i in keep], [rows[i] for i in keep], np.asarray(vectors)[keep])
        crash_point("before_commit")
        if state:
            self.cols.put_text(dict(state))
        self._bump(corrupt)
        return [ids[i] for i in keep], self.snapshot()

    def delete(self, base: Any, identity: ModelIdentity, ids: Sequence[int] | None = None,
               tracklet: str | None = None, camera: str | None = None, path: str | None = None,
               lock_timeout: float | None = None) -> tuple[int, MilvusSnapshot | None]:
        """Delete the entries matching ALL given criteria (by expression); (count, new snapshot)."""
        parts, params = [], {}
        if ids is not None:
            parts.append("id in {ids}")
            params["ids"] = [int(i) for i in ids]
        for col, v in (("tracklet", tracklet), ("camera", camera), ("path", path)):
            if v is not None:
                parts.append(f"{col} == {{{col}}}")
                params[col] = str(v)
        sel = [int(d["id"]) for d in self.cols.iterate(" and ".join(parts), params, ["id"])]
        if not sel:
            return 0, None
        for s in iter_chunks(len(sel), _BATCH):
            self.cols.call("delete", self.cols.client.delete, self.collection, ids=sel[s])
        self._bump()
        return len(sel), self.snapshot()

    def get_state(self, key: str) -> Any:
        """The JSON value stored under `key`, or None."""
        if key in _RESERVED:
            return None
        return self.cols.get_json(key)

    def check(self) -> dict[str, Any]:
        """Counts and records of the gallery; ReIDError naming a problem."""
        snap = self.snapshot()
        problems = []
        dim = snap.identity.feat_dim
        keys = [r["key"] for r in self.cols.call("query", self.cols.client.query, self.cols.state_name,
                                                 filter='part == 0', output_fields=["key"], consistency_level="Strong")]
        leftovers = [n for n in self.cols.call("list_collections", self.cols.client.list_collections)
                     if n.startswith(f"{self.collection}__build_")]
        if leftovers and not snap.count:
            problems.append(f"the collection is empty and a build left {leftovers[0]} (an interrupted "
                            f"--overwrite: rebuild)")
        report = {"db": self.location, "collection": self.collection, "consistent": not problems,
                  "problems": problems, "generation": snap.generation, "uid": snap.uid, "entries": snap.count,
                  "vectors": snap.count, "images": snap.n_images, "tracklets": snap.n_tracklets,
                  "state_keys": sum(k not in _RESERVED for k in keys), "index": snap.info.get("index_kind", "flat"),
                  "cache": "none (Milvus indexes itself)", "model": snap.identity.label(), "feat_dim": dim,
                  "leftover_files": leftovers}
        if problems:
            raise OptionError("db", f"{self.location} (collection {self.collection}) is inconsistent: "
                            f"{'; '.join(problems)}")
        return report


class MilvusBuilder:
    """A new Milvus gallery: filled in ``NAME__build_<random>``, then renamed to NAME (the old one dropped)."""

    def __init__(self, location: str, uri: str, name: str, overwrite: bool, settings: dict[str, Any]) -> None:
        self.location = location
        self.uri = uri
        self.name = name
        self.overwrite = overwrite
        self.settings = settings
        self.target = _Collections(location, uri, name)
        if self.target.exists() and not overwrite:
            raise OptionError("db", f"{location} already holds a gallery (collection {name}); use `reidkit index add` "
                            f"to append or --overwrite to rebuild it")
        self.tmp = _Collections(location, uri, f"{name}__build_{secrets.token_hex(4)}")
        self.started = False

    def start(self, identity: ModelIdentity, info: dict[str, str]) -> None:
        """Create the temporary collections with the model and info records."""
        old_gen = 0
        if self.target.exists():
            try:
                old_gen = int(self.target.info().get("generation", "0"))
            except ReIDError:
                old_gen = 0
        self.started = True
        self.tmp.create(identity.feat_dim, self.settings.get("index_kind", "flat"))
        self.tmp.put_text({_MODEL_KEY: json.dumps(identity.as_dict()),
                           _INFO_KEY: json.dumps({**info, "uid": secrets.token_hex(8), "generation": str(old_gen + 1),
                                                  "backend": "milvus"})})

    def append(self, rows: list[dict[str, Any]], vectors: np.ndarray) -> None:
        """Upsert a batch (ids from content)."""
        self.tmp.upsert([entry_id(r) for r in rows], rows, vectors)

    def publish(self, corrupt: int = 0, existing_error: str = "") -> MilvusStore:
        """Replace the target collections with the temporary ones."""
        info = self.tmp.info()
        info["corrupt_skipped"] = str(int(corrupt))
        self.tmp.put_text({_INFO_KEY: json.dumps(info)})
        # seal the segments so Milvus builds the vector index now, not at the first searches
        self.tmp.call("flush", self.tmp.client.flush, self.tmp.name)
        crash_point("build_before_publish")
        if self.target.exists():
            if not self.overwrite:
                raise OptionError("db", existing_error or f"{self.location} already holds a gallery (collection "
                                                        f"{self.name}, built meanwhile); build with overwrite to replace it")
            self.target.drop()
        client = self.tmp.client
        self.tmp.call("rename_collection", client.rename_collection, self.tmp.name, self.name)
        self.tmp.call("rename_collection", client.rename_collection, self.tmp.state_name, self.target.state_name)
        crash_point("build_after_publish")
        store = MilvusStore(self.location, self.uri, self.name)
        store.cols.load()
        return store

    def abort(self) -> None:
        """Drop the temporary collections."""
        if self.started:
            try:
                self.tmp.drop()
            except ReIDError:
                pass
