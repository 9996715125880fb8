"""A CSV manifest of (path, pid, camid, split) rows."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from reidkit.errors import ReIDError

from reidkit.data.datasets.core import SPLITS, Record, ReIDDataset
from reidkit.data.datasets.layout import check_splits, root_dir


# ----------------------------------------------------------------------------- CSV

CSV_LAYOUT = (
    "a CSV file with header path,pid,camid,split (split: train, query or gallery; "
    "relative paths resolved against the CSV's folder; camid 0-based or empty)"
)


def load_csv(root: str | os.PathLike[str], *, dataset_name: str = "csv") -> ReIDDataset:
    """A manifest CSV with columns ``path,pid,camid,split``; ``root`` is the CSV file.

    Relative paths resolve against the CSV's folder. ``camid`` is 0-based; an empty camid
    gives the image its own camera. pid -1 rows are junk and dropped; pid 0 (distractor) is
    only allowed in the gallery. A manifest may be train-only (no query and gallery rows) or
    evaluation-only (no train rows). ``dataset_name`` sets ``Record.dataset``.
    """
    dataset = str(dataset_name)
    path = root_dir(root, dataset, CSV_LAYOUT)
    if not path.is_file():
        raise ReIDError(f"{dataset}: {path} is not a file; expected {CSV_LAYOUT}")
    base = path.parent
    rows: list[tuple[str, int, int | None, str, int]] = []
    missing: list[str] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        absent = [c for c in ("path", "pid", "camid", "split") if c not in header]
        if absent:
            raise ReIDError(
                f"{dataset}: {path} lacks column(s) {', '.join(absent)} "
                f"(header: {','.join(header) or 'none'}); expected {CSV_LAYOUT}"
            )
        reader.fieldnames = header
        for lineno, row in enumerate(reader, 2):
            where = f"{path}:{lineno}"
            values = {k: (row.get(k) or "").strip() for k in ("path", "pid", "camid", "split")}
            if not any(values.values()):
                continue
            split = values["split"].lower()
            if split not in SPLITS:
                raise ReIDError(
                    f"{dataset}: split {values['split']!r} at {where}; expected one of train, query, gallery"
                )
            try:
                pid = int(values["pid"])
                camid = int(values["camid"]) if values["camid"] else None
            except ValueError:
                raise ReIDError(
                    f"{dataset}: pid/camid must be integers at {where} "
                    f"(got pid={values['pid']!r}, camid={values['camid']!r})"
                ) from None
            if camid is not None and camid < 0:
                raise ReIDError(f"{dataset}: camid {camid} at {where} must be >= 0 (0-based)")
            if pid == -1:
                continue
            if pid < 0 or (pid == 0 and split != "gallery"):
                raise ReIDError(
                    f"{dataset}: pid {pid} at {where} is not allowed in {split}: "
                    f"pids are >= 1, 0 marks a gallery-only distractor, -1 junk"
                )
            if not values["path"]:
                raise ReIDError(f"{dataset}: empty path at {where}")
            img = Path(os.path.expanduser(values["path"]))
            img = img if img.is_absolute() else base / img
            img_path = os.path.abspath(str(img))
            if not os.path.isfile(img_path):
                missing.append(f"{img_path} ({where})")
                continue
            rows.append((img_path, pid, camid, split, lineno))
    if missing:
        raise ReIDError(f"{dataset}: {len(missing)} images listed in {path} do not exist, first {missing[0]}")
    # Rows without a camera each get a fresh id above every given one.
    next_cam = max((c for _, _, c, _, _ in rows if c is not None), default=-1) + 1
    out: dict[str, list[Record]] = {s: [] for s in SPLITS}
    for img_path, pid, camid, split, _ in rows:
        if camid is None:
            camid, next_cam = next_cam, next_cam + 1
        out[split].append(Record(img_path, pid, camid, dataset))
    ds = ReIDDataset(dataset, out["train"], out["query"], out["gallery"], str(path))
    if not any(out.values()):
        raise ReIDError(f"{dataset}: no rows in {path}; expected {CSV_LAYOUT}")
    return check_splits(ds, CSV_LAYOUT, user_data=True)
