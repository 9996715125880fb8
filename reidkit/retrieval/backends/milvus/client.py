"""The Milvus backend's connection layer: the uri, one client per uri, filter literals, side-file folders and
the two collections of a gallery (entries, state)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.inference import ModelIdentity
from reidkit.retrieval.store import ENTRY_FIELDS, iter_chunks
from reidkit.utils.extras import install_hint

__all__ = [
    "entry_id",
    "close_client",
    "ID_BITS",
    "EXTRA_HINT",
    "MIN_SERVER",
    "is_server",
    "parse_version",
    "files_beside",
    "MILVUS_PREFIX",
    "DEFAULT_COLLECTION",
]


MILVUS_PREFIX = "milvus:"
DEFAULT_COLLECTION = "reidkit"
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
EXTRA_HINT = install_hint("pymilvus")
_MODEL_KEY = "__reidkit_model__"
_INFO_KEY = "__reidkit_info__"
_PART = 60000  # characters of a state value per row (VARCHAR limit 65535 bytes)
_BATCH = 1000
_MAX_TOPK = 16384  # Milvus's limit on one search
_VARCHAR = {"kind": 16, "path": 4096, "camera": 1024, "tracklet": 1024}  # max_length (a server counts bytes)
_FILES_KEY = "__reidkit_files__"
# An entry's meta whose compact JSON is over _META_INLINE bytes (a long tracklet's boxes: ~48 bytes a frame) is
# stored as text in the state collection under _META_KEY + id, in _PART-character rows, and the JSON field holds
# {_META_KEY: bytes}. A Milvus server refuses a JSON value over 65536 bytes ("the length (N) of json field (meta)
# exceeds max length (65536)", its proxy's limit); Milvus Lite 3.2 takes ~1 MB, so only this keeps a gallery
# portable. The margin covers orjson's (pymilvus's) encoding differing from json.dumps in float spelling.
_META_KEY = "__reidkit_meta__:"
_META_INLINE = 60000
_RESERVED = (_MODEL_KEY, _INFO_KEY, _FILES_KEY)
MIN_SERVER = (2, 5, 0)  # nullable fields and `is null` (2.5), INVERTED scalar indexes (2.4)
_FIELDS = [f for f in ENTRY_FIELDS if f != "id"] + ["width", "height"]
_INDEX = {
    "flat": ("FLAT", {}),
    "ivf": ("IVF_FLAT", {"nlist": 128}),
    "ivfpq": ("IVF_PQ", {"nlist": 128, "m": 16}),
    "hnsw": ("HNSW", {"M": 32, "efConstruction": 80}),
}
_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def entry_id(row: dict[str, Any]) -> int:
    """The id of an entry, from its content: an image's path, a tracklet's key (else its path, camera and span)."""
    if row.get("kind") == "tracklet" and row.get("tracklet") is not None:
        key = "tracklet\0" + str(row["tracklet"])
    elif row.get("kind", "image") == "image":
        key = "image\0" + str(row["path"])
    else:
        key = "tracklet\0" + json.dumps(
            [row["path"], row.get("camera"), row.get("frame_start"), row.get("frame_end"), row.get("t_start")]
        )
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << ID_BITS) - 1)


def _parse(db: str | os.PathLike) -> str:
    """The MilvusClient uri of ``milvus:<uri>`` (a local Milvus Lite file made absolute)."""
    uri = str(db)[len(MILVUS_PREFIX) :]
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
        raise OptionError(
            "db",
            f"the Milvus server at {uri} is version {found}; reidkit needs Milvus {need} or "
            f"newer (nullable fields and `is null` filters came in 2.5, INVERTED scalar indexes "
            f"in 2.4): upgrade the server, or use Milvus Lite (milvus:./gallery.db) or a folder",
        )


def _client(uri: str) -> Any:
    """One MilvusClient per uri and process (Milvus Lite starts once per file); a server's version is checked."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise OptionError(
            "db",
            f"Milvus galleries need the optional packages pymilvus and milvus-lite: {EXTRA_HINT}",
            value=f"milvus:{uri}",
        ) from None
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
                raise OptionError(
                    "db",
                    f"cannot open the Milvus database ({_msg(exc)}); a Milvus Lite "
                    f"file is usable by one process at a time",
                    value=f"milvus:{uri}",
                ) from None
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
        raise OptionError(
            name, f"{value!r} is not valid Unicode text (it holds a lone surrogate, e.g. from bytes that are not UTF-8)"
        ) from None
    if limit is not None and n > limit:
        raise OptionError(
            name, f"{value[:40]!r}... is {n} bytes long in UTF-8; a Milvus gallery stores at most {limit}"
        )


def _string_lit(value: str, name: str) -> str:
    """`value` as one double-quoted Milvus string literal (see _ESCAPES)."""
    _check_text(name, value)
    return '"' + _ESCAPE_RX.sub(lambda m: _ESCAPES[m.group(0)], value) + '"'


def _lit(value: Any, name: str = "value") -> str:
    """A Milvus expression literal: a double-quoted, escaped string, an int, a finite float or a list of those."""
    if isinstance(value, str):
        return _string_lit(value, name)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_string_lit(v, name) if isinstance(v, str) else str(int(v)) for v in value) + "]"
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
        self._spills: bool | None = None

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a client call; a Milvus error becomes one ReIDError naming the gallery."""
        try:
            return fn(*args, **kwargs)
        except ReIDError:
            raise
        except Exception as exc:  # noqa: BLE001 - MilvusException and gRPC errors
            if type(exc).__module__.startswith(("pymilvus", "grpc")):
                raise OptionError(
                    "db", f"{self.location} (collection {self.name}): Milvus {what} failed: {_msg(exc)}"
                ) from None
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
                    raise OptionError(
                        "db",
                        f"{self.location} (collection {name}): Milvus index on {field} "
                        f"not built ({state} after {timeout_s:.0f} s)",
                    )
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
        rows = self.call(
            "query",
            self.client.query,
            self.state_name,
            filter=_expr("key == {k}", {"k": key}),
            output_fields=["part", "text"],
            consistency_level="Strong",
        )
        if not rows:
            return None
        return "".join(r["text"] for r in sorted(rows, key=lambda r: r["part"]))

    def put_text(self, items: Mapping[str, str | None]) -> None:
        rows, stale = [], []
        for key, text in items.items():
            if len(key) > 1024:
                raise ReIDError(f"state key {key[:40]!r}...: longer than 1024 characters")
            parts = [] if text is None else [text[s] for s in iter_chunks(len(text), _PART)] or [""]
            rows += [
                {"pk": f"{key}#{i}", "key": key, "part": i, "text": p, "v": [0.0, 0.0]} for i, p in enumerate(parts)
            ]
            stale.append((key, len(parts)))
        for s in iter_chunks(len(rows), _BATCH):
            self.call("upsert", self.client.upsert, self.state_name, rows[s])
        for key, n in stale:
            self.call(
                "delete",
                self.client.delete,
                self.state_name,
                filter=_expr("key == {k} and part >= {n}", {"k": key, "n": n}),
            )

    def get_json(self, key: str) -> Any:
        text = self.get_text(key)
        return None if text is None else json.loads(text)

    def info(self) -> dict[str, str]:
        info = self.get_json(_INFO_KEY)
        if info is None:
            raise OptionError(
                "db",
                f"{self.location} (collection {self.name}) has no reidkit info record; "
                f"it was not made by `reidkit index build`",
            )
        return cast(dict[str, str], info)  # the info record reidkit wrote (a JSON object of strings)

    def identity(self) -> ModelIdentity:
        m = self.get_json(_MODEL_KEY)
        if m is None:
            raise OptionError("db", f"{self.location} (collection {self.name}) has no model record")
        return ModelIdentity(
            m["name"],
            m["source"],
            int(m["feat_dim"]),
            tuple(m["input_size"]),
            tuple(m["mean"]),
            tuple(m["std"]),
        )

    def count(self, expr: str = "") -> int:
        rows = self.call(
            "query", self.client.query, self.name, filter=expr, output_fields=["count(*)"], consistency_level="Strong"
        )
        return int(rows[0]["count(*)"]) if rows else 0

    # -- entries ---------------------------------------------------------------------------------

    def upsert(self, ids: Sequence[int], rows: Sequence[dict[str, Any]], vectors: np.ndarray) -> None:
        data, spilled = [], {}
        for i, r, v in zip(ids, rows, vectors):
            d = {f: r.get(f) for f in _FIELDS}
            for f, limit in _VARCHAR.items():  # refused here, naming the field, not as Milvus's schema error
                value = d[f]
                if isinstance(value, str):
                    _check_text(f, value, limit)
            meta = json.loads(r["meta"]) if isinstance(r.get("meta"), str) else r.get("meta")
            text = None if meta is None else json.dumps(meta, separators=(",", ":"))  # ASCII: a char is a byte
            if text is not None and len(text) > _META_INLINE:
                spilled[_META_KEY + str(int(i))] = text
                meta = {_META_KEY: len(text)}
            data.append({"id": int(i), "vector": np.asarray(v, np.float32).tolist(), **d, "meta": meta})
        if spilled:  # before the entries that point to it: a crash leaves text no entry names, never the reverse
            self.put_text(spilled)
            self._spills = True
        inline = [_META_KEY + str(d["id"]) for d in data if _META_KEY + str(d["id"]) not in spilled]
        for s in iter_chunks(len(data), _BATCH):
            self.call("upsert", self.client.upsert, self.name, data[s])
        self.drop_meta(inline, only_if_spilled=True)

    def drop_meta(self, keys: Sequence[str], only_if_spilled: bool = False) -> None:
        """Delete the stored meta text of these ``_META_KEY + id`` keys (an entry deleted, or re-added smaller)."""
        if only_if_spilled and not self.spills:
            return
        for s in iter_chunks(len(keys), _BATCH):
            if keys[s]:
                self.call("delete", self.client.delete, self.state_name, filter=_expr("key in {k}", {"k": keys[s]}))

    @property
    def spills(self) -> bool:
        """True once any entry of this gallery had its meta stored as text (asked once per process and gallery)."""
        if self._spills is None:
            rows = self.call(
                "query",
                self.client.query,
                self.state_name,
                filter=_expr("key >= {a} and key < {b}", {"a": _META_KEY, "b": _META_KEY[:-1] + ";"}),
                output_fields=["key"],
                limit=1,
                consistency_level="Strong",
            )
            self._spills = bool(rows)
        return self._spills

    def _resolve(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows with each stored-as-text meta (a {_META_KEY: bytes} stand-in) read back whole."""
        want = {}
        for r in rows:
            m = r.get("meta")
            if isinstance(m, str):
                m = r["meta"] = json.loads(m)
            if isinstance(m, dict) and _META_KEY in m:
                want[_META_KEY + str(int(r["id"]))] = r
        keys = list(want)
        parts: dict[str, list[tuple[int, str]]] = {}
        for s in iter_chunks(len(keys), _BATCH):
            for p in self.call(
                "query",
                self.client.query,
                self.state_name,
                filter=_expr("key in {k}", {"k": keys[s]}),
                output_fields=["key", "part", "text"],
                consistency_level="Strong",
            ):
                parts.setdefault(p["key"], []).append((int(p["part"]), p["text"]))
        for key, r in want.items():
            text = "".join(t for _, t in sorted(parts.get(key, [])))
            if len(text) != r["meta"][_META_KEY]:
                raise ReIDError(
                    f"{self.location} (collection {self.name}): entry {r['id']} ({r.get('tracklet') or r.get('path')}):"
                    f" its meta text holds {len(text)} of {r['meta'][_META_KEY]} bytes; rebuild or re-add the entry"
                )
            r["meta"] = json.loads(text)
        return rows

    def get(self, ids: Sequence[int], fields: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        ids = [int(i) for i in ids]
        for s in iter_chunks(len(ids), _BATCH):
            if ids[s]:
                out += self.call(
                    "get", self.client.get, self.name, ids=ids[s], output_fields=fields, consistency_level="Strong"
                )
        return self._resolve(out) if "meta" in fields else out

    def iterate(self, expr: str, params: dict[str, Any], fields: list[str]) -> list[dict[str, Any]]:
        import logging

        logging.getLogger("pymilvus").setLevel(logging.ERROR)  # the Lite server's "no mvccTs" notice per iterator
        it = self.call(
            "query_iterator",
            self.client.query_iterator,
            self.name,
            batch_size=_BATCH,
            filter=_expr(expr, params) or "id >= 0",
            output_fields=fields,
        )
        rows: list[dict[str, Any]] = []
        try:
            while True:
                batch = self.call("query_iterator", it.next)
                if not batch:
                    break
                rows += batch
        finally:
            it.close()
        return self._resolve(rows) if "meta" in fields else rows
