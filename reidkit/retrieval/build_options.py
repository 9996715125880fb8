"""The settings of a gallery build (:meth:`reidkit.retrieval.gallery.Gallery.build`), one frozen object."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from reidkit.errors import OptionError
from reidkit.retrieval.ann import (
    DEFAULT_APPROX_INDEX,
    DEFAULT_EF_SEARCH,
    DEFAULT_NPROBE,
    DEFAULT_REFINE_K,
    HNSW_M,
    INDEX_KINDS,
)
from reidkit.utils.validate import check_positive

__all__ = ["BuildOptions"]


@dataclass(frozen=True)
class BuildOptions:
    """How `Gallery.build` embeds and indexes a folder of images (the CLI builds one from its flags).

    Model: ``weights`` (None: ImageNet), ``device``, ``batch_size``, ``size`` (input HxW), ``engine`` (how the
    model runs: "torch", "onnx", "auto", "int8": reidkit.inference), ``trust_checkpoint`` (load weights that
    run code; the gallery records a program's file hash and later opens load it only when trusted again).
    Index: ``index`` (flat | ivf | ivfpq | hnsw, or "approx" for the measured default approximate kind),
    ``nlist``, ``nprobe``, ``pq_m``, ``refine_k`` (IVF, IVF-PQ), ``hnsw_m``, ``ef_search`` (HNSW).
    Writing: ``overwrite`` (build beside the old gallery and swap it in at the end; the old one stays
    searchable until then), ``strict`` (an unreadable image fails the build instead of being skipped),
    ``lock_timeout`` (seconds to wait for another writer), ``collection`` (a Milvus gallery's collection).
    """

    weights: str | os.PathLike | None = None
    device: str | None = None
    batch_size: int = 64
    size: Sequence[int] | None = None
    engine: str = "torch"
    trust_checkpoint: bool = False
    index: str = "flat"
    nlist: int | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    hnsw_m: int = HNSW_M
    pq_m: int | None = None
    refine_k: int = DEFAULT_REFINE_K
    overwrite: bool = False
    strict: bool = False
    lock_timeout: float | None = None
    collection: str | None = None

    @classmethod
    def of(cls, options: BuildOptions | None = None, **changes: Any) -> BuildOptions:
        """`options` (default: all defaults) with `changes` (keyword arguments of Gallery.build) applied, checked:
        "approx" resolved to its index kind, every count >= 1."""
        unknown = sorted(set(changes) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown gallery build options: {', '.join(unknown)}")
        o = replace(options if options is not None else cls(), **changes)
        if o.index == "approx":
            o = replace(o, index=DEFAULT_APPROX_INDEX)
        if o.index not in INDEX_KINDS:
            raise OptionError("index", f"expected one of {', '.join(INDEX_KINDS)}, got {o.index!r}")
        for name in ("nlist", "nprobe", "ef_search", "pq_m", "hnsw_m", "refine_k", "batch_size"):
            check_positive(name, getattr(o, name))
        return o

    def index_info(self) -> dict[str, str]:
        """What the gallery records of its index (search defaults included) and when it was made."""
        return {
            "index_kind": self.index,
            "nprobe": str(int(self.nprobe or DEFAULT_NPROBE)),
            "ef_search": str(int(self.ef_search or DEFAULT_EF_SEARCH)),
            "hnsw_m": str(int(self.hnsw_m)),
            "refine_k": str(int(self.refine_k)),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
