"""Records and datasets: the typed results every loader returns, and training labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


SPLITS = ("train", "query", "gallery")


@dataclass(frozen=True)
class Record:
    """One image: absolute path, the dataset's own pid, 0-based camera, dataset name, frame."""

    path: str
    pid: int
    camid: int
    dataset: str
    frame: int = -1


@dataclass
class ReIDDataset:
    """A dataset's train / query / gallery record lists."""

    name: str
    train: list[Record]
    query: list[Record]
    gallery: list[Record]
    root: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_train_pids(self) -> int:
        """Number of distinct training identities."""
        return len({r.pid for r in self.train})

    @property
    def num_train_cams(self) -> int:
        """Number of distinct training cameras."""
        return len({r.camid for r in self.train})

    def stats(self) -> list[dict[str, Any]]:
        """The field's standard table: one row per split with ids, images and cameras."""
        return [_split_row(split, getattr(self, split)) for split in SPLITS]

    def format_stats(self) -> str:
        """The stats table as printable text."""
        title = f"{self.name}  ({self.root})" if self.root else self.name
        return _format_table(title, self.stats())

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, s))}" for s in SPLITS)
        return f"ReIDDataset({self.name!r}, {sizes})"


@dataclass
class JointDataset:
    """Several datasets trained together: ``train`` is their union, ``parts`` the originals."""

    name: str
    train: list[Record]
    parts: list[ReIDDataset]

    @property
    def num_train_pids(self) -> int:
        """Number of distinct (dataset, pid) training identities."""
        return len({(r.dataset, r.pid) for r in self.train})

    def stats(self) -> list[dict[str, Any]]:
        """Per-part rows (with a ``dataset`` key) followed by the joint training row."""
        rows: list[dict[str, Any]] = []
        for part in self.parts:
            rows.extend({"dataset": part.name, **row} for row in part.stats())
        joint = _split_row("train", self.train)
        joint["ids"] = self.num_train_pids
        joint["cameras"] = len({(r.dataset, r.camid) for r in self.train})
        rows.append({"dataset": self.name, **joint})
        return rows

    def format_stats(self) -> str:
        """One table per part plus the joint training row."""
        tables = [part.format_stats() for part in self.parts]
        joint = [row for row in self.stats() if row["dataset"] == self.name][-1]
        joint = {k: v for k, v in joint.items() if k != "dataset"}
        tables.append(_format_table(f"{self.name}  (joint training set)", [joint]))
        return "\n\n".join(tables)


def _split_row(split: str, records: Sequence[Record]) -> dict[str, Any]:
    return {
        "split": split,
        "ids": len({r.pid for r in records}),
        "images": len(records),
        "cameras": len({r.camid for r in records}),
    }


def _format_table(title: str, rows: list[dict[str, Any]]) -> str:
    cols = ("split", "ids", "images", "cameras")
    cells = [[str(row[c]) for c in cols] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(cols)]

    def fmt(values: Sequence[str]) -> str:
        first = values[0].ljust(widths[0])
        rest = [v.rjust(w) for v, w in zip(values[1:], widths[1:])]
        return "  " + " | ".join([first, *rest])

    sep = "  " + "-+-".join("-" * w for w in widths)
    return "\n".join([title, fmt(cols), sep, *(fmt(line) for line in cells)])


def train_labels(records: Sequence[Record]) -> tuple[np.ndarray, dict[tuple[str, int], int]]:
    """Training labels 0..N-1 per (dataset, pid), in sorted key order, and the key -> label map."""
    keys = sorted({(r.dataset, r.pid) for r in records})
    mapping = {key: i for i, key in enumerate(keys)}
    labels = np.fromiter((mapping[(r.dataset, r.pid)] for r in records), dtype=np.int64, count=len(records))
    return labels, mapping
