"""Person re-identification datasets in their official layouts, behind one registry.

Every loader returns a :class:`ReIDDataset` of :class:`Record` lists (absolute path, the
dataset's own pid, 0-based camera id). ``load_dataset(name, root, **options)`` is the one
entry point; ``DATASETS`` maps each name to its loader, so a new dataset is one function plus
one registry line. Loaders only list files: images are decoded later, by the pipeline.
"""
from __future__ import annotations

import csv
import inspect
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from reidkit.errors import ReIDError

from reidkit.registry import Registry
from reidkit.utils.io import IMAGE_EXTENSIONS

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


# ----------------------------------------------------------------------------- helpers


def _is_image(name: str) -> bool:
    # Hidden files include macOS "._x.jpg" resource forks, which carry an image extension.
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _image_names(directory: str) -> list[str]:
    """Sorted image file names directly inside a directory (other files ignored)."""
    with os.scandir(directory) as it:
        return sorted(e.name for e in it if e.is_file() and _is_image(e.name))


def _root_dir(root: str | os.PathLike[str], dataset: str, layout: str) -> Path:
    if root is None or str(root) == "":
        raise ReIDError(f"{dataset}: no dataset root given; expected layout {layout}")
    path = Path(os.path.abspath(os.path.expanduser(str(root))))
    if not path.exists():
        raise ReIDError(f"{dataset}: dataset root {path} does not exist; expected layout {layout}")
    return path


def _listing(path: Path, limit: int = 6) -> str:
    try:
        names = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    except OSError:
        return "unreadable"
    if not names:
        return "empty"
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _locate(root: Path, candidates: Sequence[str], required: Sequence[str], dataset: str,
            layout: str) -> Path:
    """The first of root/<candidate> or root itself that holds every required entry."""
    if not root.is_dir():
        raise ReIDError(f"{dataset}: dataset root {root} is not a folder (extract archives "
                        f"first); expected {layout}")
    bases = [*(root / c for c in candidates), root]
    for base in bases:
        if all((base / r).exists() for r in required):
            return base
    # A partial tree is the common mistake: name what is missing rather than list the root.
    for base in bases:
        have = [r for r in required if (base / r).exists()]
        if base.is_dir() and have:
            missing = ", ".join(r for r in required if r not in have)
            raise ReIDError(f"{dataset}: {base} lacks {missing}; expected {layout}")
    raise ReIDError(
        f"{dataset}: no matching layout under {root} (found: {_listing(root)}); "
        f"expected {layout}"
    )


NameParser = Callable[[str], "tuple[int, int, int] | None"]


def _regex_parser(pattern: str) -> NameParser:
    """A parser returning (pid, 1-based camera, frame or -1) from a file name, or None."""
    rx = re.compile(pattern)

    def parse(name: str) -> tuple[int, int, int] | None:
        m = rx.match(name)
        if m is None:
            return None
        frame = m.group(3) if rx.groups >= 3 else None
        return int(m.group(1)), int(m.group(2)), int(frame) if frame else -1

    return parse


def _scan_split(directory: Path, split: str, dataset: str, parse: NameParser, example: str,
                layout: str, max_cam: int | None, force_pid: int | None = None) -> list[Record]:
    """Records of one official split folder: junk (-1) dropped, distractors (0) gallery-only."""
    if not directory.is_dir():
        raise ReIDError(f"{dataset}: missing folder {directory}; expected {layout}")
    records = []
    for name in _image_names(str(directory)):
        parsed = parse(name)
        path = str(directory / name)
        if parsed is None:
            raise ReIDError(
                f"{dataset}: cannot parse image name {path}: expected names like {example} "
                f"in {layout}"
            )
        pid, cam, frame = parsed
        if cam < 1 or (max_cam is not None and cam > max_cam):
            limit = f"1..{max_cam}" if max_cam is not None else ">= 1"
            raise ReIDError(f"{dataset}: camera {cam} out of range {limit} in {path}")
        if pid == -1 or (pid == 0 and split != "gallery"):
            continue
        if force_pid is not None:
            pid = force_pid
        records.append(Record(path, pid, cam - 1, dataset, frame))
    return records


def _check_splits(ds: ReIDDataset, layout: str, user_data: bool = False) -> ReIDDataset:
    """Refuse a dataset that cannot be evaluated (empty query) or trained on.

    A user's own data may be train-only (no query and no gallery) or evaluation-only (no train).
    """
    if user_data and ds.train and not ds.query and not ds.gallery:
        return ds
    for split in ("query", "gallery", "train"):
        if split == "train" and user_data:
            continue
        if not getattr(ds, split):
            what = "query set" if split == "query" else f"{split} split"
            raise ReIDError(f"{ds.name}: empty {what} under {ds.root}; expected {layout}")
    return ds


def _check_choice(dataset: str, key: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ReIDError(f"{dataset}: option {key}={value!r} is not one of {', '.join(choices)}")
    return value


# ----------------------------------------------------------------------------- Market / Duke

MARKET_DIR = "Market-1501-v15.09.15"
_MARKET_SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
MARKET_LAYOUT = f"<root>/{MARKET_DIR}/{{bounding_box_train,query,bounding_box_test}}/0002_c1s1_000451_03.jpg"
_market_name = _regex_parser(r"^(-?\d+)_c(\d+)(?:s\d+_(\d+))?")


def _load_market_tree(root: str | os.PathLike[str], dataset: str, max_cam: int | None,
                      extra_gallery: bool = False) -> ReIDDataset:
    top = _root_dir(root, dataset, MARKET_LAYOUT)
    base = _locate(top, [MARKET_DIR, f"market1501/{MARKET_DIR}", "market1501"],
                   list(_MARKET_SPLITS.values()), dataset, MARKET_LAYOUT)
    example = "0002_c1s1_000451_03.jpg"
    parts = {s: _scan_split(base / d, s, dataset, _market_name, example, MARKET_LAYOUT, max_cam)
             for s, d in _MARKET_SPLITS.items()}
    if extra_gallery:
        extra = base / "images"
        if not extra.is_dir():
            raise ReIDError(f"{dataset}: market1501_500k=True needs the distractor folder {extra} "
                            f"(the 500k distractor images beside bounding_box_test)")
        # Every image of the 500k set is a distractor, whatever its file name says.
        parts["gallery"] += _scan_split(extra, "gallery", dataset, _market_name, example,
                                        f"{base}/images/<distractor>.jpg", max_cam, force_pid=0)
    ds = ReIDDataset(dataset, parts["train"], parts["query"], parts["gallery"], str(base))
    return _check_splits(ds, MARKET_LAYOUT)


def load_market1501(root: str | os.PathLike[str], *, market1501_500k: bool = False) -> ReIDDataset:
    """Market-1501: ``<root>/Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}``.

    Names like ``0002_c1s1_000451_03.jpg`` (pid, camera 1-6, sequence, frame). Junk (pid -1) is
    dropped; distractors (pid 0) stay in the gallery only. ``root`` may also be the
    Market-1501-v15.09.15 folder itself. ``market1501_500k=True`` adds the 500k distractors of
    ``<Market-1501-v15.09.15>/images`` to the gallery (all with pid 0).
    """
    return _load_market_tree(root, "market1501", 6, extra_gallery=market1501_500k)


DUKE_DIR = "DukeMTMC-reID"
DUKE_LAYOUT = f"<root>/{DUKE_DIR}/{{bounding_box_train,query,bounding_box_test}}/0001_c2_f0046182.jpg"
_duke_name = _regex_parser(r"^(-?\d+)_c(\d+)(?:_f(\d+))?")


def load_dukemtmc(root: str | os.PathLike[str]) -> ReIDDataset:
    """DukeMTMC-reID: ``<root>/DukeMTMC-reID/{bounding_box_train,query,bounding_box_test}``.

    Names like ``0001_c2_f0046182.jpg`` (pid, camera 1-8, frame). ``root`` may also be the
    DukeMTMC-reID folder itself.
    """
    dataset = "dukemtmc"
    top = _root_dir(root, dataset, DUKE_LAYOUT)
    base = _locate(top, [DUKE_DIR, f"dukemtmc-reid/{DUKE_DIR}", f"dukemtmcreid/{DUKE_DIR}"],
                   list(_MARKET_SPLITS.values()), dataset, DUKE_LAYOUT)
    parts = {s: _scan_split(base / d, s, dataset, _duke_name, "0001_c2_f0046182.jpg",
                            DUKE_LAYOUT, 8)
             for s, d in _MARKET_SPLITS.items()}
    ds = ReIDDataset(dataset, parts["train"], parts["query"], parts["gallery"], str(base))
    return _check_splits(ds, DUKE_LAYOUT)


# ----------------------------------------------------------------------------- MSMT17

_MSMT_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
_MSMT_DIRS = {"v1": ("MSMT17_V1", "train", "test"), "v2": ("MSMT17_V2", "mask_train_v2", "mask_test_v2")}


def _msmt_layout(version: str) -> str:
    main, train, test = _MSMT_DIRS[version]
    return (f"<root>/{main}/{{{train},{test}}}/0000/0000_000_01_0303morning_0015_0.jpg with "
            f"{', '.join(_MSMT_LISTS)} in <root>/{main}/ (lines 'relative/path pid')")


def _msmt_list(list_path: Path, image_dir: Path, layout: str) -> list[Record]:
    records: list[Record] = []
    missing: list[str] = []
    prefix = image_dir.name + "/"
    with open(list_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            where = f"{list_path}:{lineno}"
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise ReIDError(f"msmt17: malformed line {where}: {line.strip()!r}; "
                                f"expected 'relative/path pid'")
            rel = fields[0].replace("\\", "/")
            # Some copies of the lists carry the image folder's name as a prefix.
            if rel.startswith(prefix):
                rel = rel[len(prefix):]
            parts = os.path.basename(rel).split("_")
            if len(parts) < 3 or not parts[2].isdigit():
                raise ReIDError(f"msmt17: cannot read the camera from {rel} ({where}); expected "
                                f"names like 0000/0000_000_01_0303morning_0015_0.jpg "
                                f"(third field: camera 1-15)")
            cam = int(parts[2])
            if not 1 <= cam <= 15:
                raise ReIDError(f"msmt17: camera {cam} out of range 1..15 in {rel} ({where})")
            path = image_dir / rel
            if not path.is_file():
                missing.append(str(path))
                continue
            # The lists number identities from 0; shift by one so pid 0 keeps reidkit's
            # meaning (distractor), which MSMT17 does not have.
            records.append(Record(str(path), int(fields[1]) + 1, cam - 1, "msmt17"))
    if missing:
        raise ReIDError(f"msmt17: {len(missing)} images listed in {list_path} are missing, "
                        f"first {missing[0]}; expected {layout}")
    return records


def load_msmt17(root: str | os.PathLike[str], *, version: str = "v2",
                combine_val: bool = True) -> ReIDDataset:
    """MSMT17 from its list files; ``version`` "v1" or "v2" (default) are different sets.

    V2 blurs faces and renames the folders: V1 is ``<root>/MSMT17_V1/{train,test}``, V2 is
    ``<root>/MSMT17_V2/{mask_train_v2,mask_test_v2}``; both hold ``list_train.txt,
    list_val.txt, list_query.txt, list_gallery.txt`` with lines ``relative/path pid``. The
    camera (1-15) is the third underscore field of the file name. ``combine_val=True`` (the
    field's default) merges the validation list into train. pids are the lists' ids plus 1
    (the lists count from 0; reidkit reserves pid 0 for distractors).
    """
    version = _check_choice("msmt17", "version", str(version).lower(), ("v1", "v2"))
    layout = _msmt_layout(version)
    main, train_dir, test_dir = _MSMT_DIRS[version]
    top = _root_dir(root, "msmt17", layout)
    try:
        base = _locate(top, [main], [train_dir, test_dir, *_MSMT_LISTS], "msmt17", layout)
    except ReIDError as exc:
        other = "v1" if version == "v2" else "v2"
        if (top / _MSMT_DIRS[other][0]).is_dir() or top.name == _MSMT_DIRS[other][0]:
            raise ReIDError(f"{exc} (found {_MSMT_DIRS[other][0]}: pass version={other!r})") from None
        raise
    lists = {name: base / name for name in _MSMT_LISTS}
    train = _msmt_list(lists["list_train.txt"], base / train_dir, layout)
    val = _msmt_list(lists["list_val.txt"], base / train_dir, layout)
    query = _msmt_list(lists["list_query.txt"], base / test_dir, layout)
    gallery = _msmt_list(lists["list_gallery.txt"], base / test_dir, layout)
    if combine_val:
        # Val images are disjoint from train ones but share its identity numbering.
        train = train + val
    ds = ReIDDataset("msmt17", train, query, gallery, str(base),
                     meta={"version": version, "val": [] if combine_val else val})
    return _check_splits(ds, layout)


# ----------------------------------------------------------------------------- CUHK03-NP

CUHK03_LAYOUT = ("<root>/cuhk03-np/{labeled,detected}/{bounding_box_train,query,bounding_box_test}"
                 "/0001_c1_1.png")
# Lenient on purpose: the first integer is the pid, the first c<digits> the camera.
_cuhk03_name = _regex_parser(r"^(-?\d+)_.*?c(\d+)")


def load_cuhk03(root: str | os.PathLike[str], *, split: str = "labeled") -> ReIDDataset:
    """CUHK03 in the new protocol (CUHK03-NP), ``split`` "labeled" (default) or "detected".

    Layout ``<root>/cuhk03-np/{labeled,detected}/{bounding_box_train,query,bounding_box_test}``
    with names like ``0001_c1_1.png`` (pid, camera, image index); ``root`` may also be the
    cuhk03-np folder or the labeled/detected folder itself.
    """
    dataset = "cuhk03"
    split = _check_choice(dataset, "split", str(split).lower(), ("labeled", "detected"))
    top = _root_dir(root, dataset, CUHK03_LAYOUT)
    candidates = [f"cuhk03-np/{split}", f"cuhk03_np/{split}", f"CUHK03-NP/{split}", split]
    base = _locate(top, candidates, list(_MARKET_SPLITS.values()), dataset, CUHK03_LAYOUT)
    if top == base and top.name.lower() in ("labeled", "detected") and top.name.lower() != split:
        raise ReIDError(f"{dataset}: root {top} is the {top.name} set but split={split!r} was "
                        f"asked; expected {CUHK03_LAYOUT}")
    parts = {s: _scan_split(base / d, s, dataset, _cuhk03_name, "0001_c1_1.png", CUHK03_LAYOUT, None)
             for s, d in _MARKET_SPLITS.items()}
    ds = ReIDDataset(dataset, parts["train"], parts["query"], parts["gallery"], str(base),
                     meta={"split": split})
    return _check_splits(ds, CUHK03_LAYOUT)


# ----------------------------------------------------------------------------- folder

FOLDER_LAYOUT = "ROOT/<identity>/<image> (train only) or ROOT/{train,query,gallery}/<identity>/<image>"


def _identity_images(split_dir: Path, dataset: str) -> dict[str, list[str]]:
    """{identity folder name: sorted image paths relative to it (searched recursively)}."""
    out: dict[str, list[str]] = {}
    with os.scandir(split_dir) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            if _is_image(entry.name):
                raise ReIDError(f"{dataset}: image {entry.path} lies directly in {split_dir}; "
                                f"expected {FOLDER_LAYOUT}")
            continue
        images: list[str] = []
        for dirpath, dirnames, filenames in os.walk(entry.path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = os.path.relpath(dirpath, entry.path)
            for name in sorted(filenames):
                if _is_image(name):
                    images.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
        if images:
            out[entry.name] = images
    return out


def _folder_split(images: dict[str, list[tuple[str, int]]], split_test: float, seed: int,
                  has_cameras: bool) -> tuple[set[str], dict[str, tuple[list[int], list[int]]]]:
    """Choose test identities and, inside each, query / gallery image indices."""
    names = sorted(images)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    n_test = min(max(int(round(split_test * len(names))), 1), len(names) - 1)
    test = sorted(names[i] for i in order[:n_test])
    chosen: dict[str, tuple[list[int], list[int]]] = {}
    for name in test:
        items = images[name]
        if has_cameras:
            by_cam: dict[int, list[int]] = {}
            for idx, (_, cam) in enumerate(items):
                by_cam.setdefault(cam, []).append(idx)
            groups = [by_cam[c] for c in sorted(by_cam)]
        else:
            groups = [list(range(len(items)))]
        query: list[int] = []
        for group in groups:
            pick = group[int(rng.integers(len(group)))]
            trial = query + [pick]
            gallery_cams = {items[i][1] for i in range(len(items)) if i not in trial}
            # Keep a pick only if every query still has a true match in another camera, so no
            # query is made useless by the same-pid-same-camera removal of evaluation.
            if all(gallery_cams - {items[q][1]} for q in trial):
                query = trial
        chosen[name] = (sorted(query), [i for i in range(len(items)) if i not in query])
    return set(test), chosen


def load_folder(root: str | os.PathLike[str], *, cam_regex: str | None = None,
                split_test: float = 0.5, seed: int = 0,
                dataset_name: str = "folder") -> ReIDDataset:
    """A user's own crops: ``ROOT/<identity>/<image>`` or ``ROOT/{train,query,gallery}/<identity>/<image>``.

    Identities are folder names (the same name in two splits is the same person); pids are
    1..N over the sorted names (``meta["identities"][pid - 1]`` gives the name back). Images may
    sit in subfolders of an identity. ``cam_regex`` (one group, searched in the image path
    relative to its identity folder, e.g. ``r"c(\\d+)"``) gives cameras, numbered 0..C-1 in
    sorted order; without it every image gets its own camera, so same-camera removal at
    evaluation never removes a true match.

    Without a query/gallery split, ``split_test`` (default 0.5, 0 = train only) of the
    identities, drawn by a permutation seeded by ``seed``, become test identities (at least one,
    and at least one identity stays in train); the others are train. From each test identity
    one image per camera (one image when there are no cameras), drawn with the same seed,
    becomes a query, the rest gallery; a pick is kept only while every query of the identity
    still has a gallery image of it from another camera, so test identities with a single
    image (or seen by one camera only) stay in the gallery only. ``dataset_name`` sets
    ``Record.dataset`` (give two folders different names to train on both jointly).
    """
    dataset = str(dataset_name)
    top = _root_dir(root, dataset, FOLDER_LAYOUT)
    if not top.is_dir():
        raise ReIDError(f"{dataset}: root {top} is not a folder; expected {FOLDER_LAYOUT}")
    rx = None
    if cam_regex:
        try:
            rx = re.compile(cam_regex)
        except re.error as exc:
            raise ReIDError(f"{dataset}: option cam_regex={cam_regex!r} is not a valid regex "
                            f"({exc})") from None
        if rx.groups != 1:
            raise ReIDError(f"{dataset}: option cam_regex={cam_regex!r} must have exactly one group "
                            f"(the camera), e.g. r'c(\\d+)'")
    try:
        split_test, seed = float(split_test), int(seed)
    except (TypeError, ValueError):
        raise ReIDError(f"{dataset}: options split_test={split_test!r} and seed={seed!r} must be "
                        f"a number in [0, 1) and an integer") from None
    if not 0 <= split_test < 1:
        raise ReIDError(f"{dataset}: option split_test={split_test!r} must be in [0, 1)")

    subdirs = sorted(e.name for e in os.scandir(top) if e.is_dir() and not e.name.startswith("."))
    present = [s for s in SPLITS if s in subdirs]
    if present == ["train"] and subdirs == ["train"]:
        split_dirs = {"train": top / "train"}
    elif present:
        if "query" not in present or "gallery" not in present or len(present) != len(subdirs):
            raise ReIDError(f"{dataset}: {top} mixes split folders ({', '.join(present)}) with "
                            f"others ({', '.join(s for s in subdirs if s not in SPLITS) or 'none'}); "
                            f"expected {FOLDER_LAYOUT} with both query and gallery")
        split_dirs = {s: top / s for s in present}
    else:
        split_dirs = {"train": top}
    per_split = {s: _identity_images(d, dataset) for s, d in split_dirs.items()}
    if not any(per_split.values()):
        raise ReIDError(f"{dataset}: no images under {top} (found: {_listing(top)}); "
                        f"expected {FOLDER_LAYOUT}")

    # Cameras are numbered over all splits at once so query and gallery agree.
    raw_cams: dict[tuple[str, str, str], str] = {}
    if rx is not None:
        for split, ids in per_split.items():
            for ident, rels in ids.items():
                for rel in rels:
                    m = rx.search(rel)
                    if m is None or m.group(1) is None:
                        raise ReIDError(f"{dataset}: cam_regex {cam_regex!r} does not match "
                                        f"{split_dirs[split] / ident / rel}")
                    raw_cams[(split, ident, rel)] = m.group(1)
        values = set(raw_cams.values())
        numeric = all(v.isdigit() for v in values)
        ordered = sorted(values, key=(lambda v: int(v)) if numeric else None)
        cam_index = {v: i for i, v in enumerate(ordered)}
    identities = sorted({ident for ids in per_split.values() for ident in ids})
    pid_of = {ident: i + 1 for i, ident in enumerate(identities)}

    next_cam = 0
    out: dict[str, list[Record]] = {s: [] for s in SPLITS}
    items_of: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for split, ids in per_split.items():
        for ident, rels in ids.items():
            items = []
            for rel in rels:
                if rx is not None:
                    cam = cam_index[raw_cams[(split, ident, rel)]]
                else:
                    cam, next_cam = next_cam, next_cam + 1
                items.append((str(split_dirs[split] / ident / rel), cam))
            items_of[(split, ident)] = items

    meta: dict[str, Any] = {"identities": identities, "has_cameras": rx is not None}
    if set(split_dirs) == {"train"} and split_test > 0:
        if len(identities) < 2:
            raise ReIDError(f"{dataset}: split_test={split_test} needs at least 2 identities "
                            f"under {split_dirs['train']}, found {len(identities)}")
        images = {ident: items_of[("train", ident)] for ident in identities}
        test, chosen = _folder_split(images, float(split_test), int(seed), rx is not None)
        for ident in identities:
            items = images[ident]
            if ident not in test:
                out["train"] += [Record(p, pid_of[ident], c, dataset) for p, c in items]
                continue
            q_idx, g_idx = chosen[ident]
            out["query"] += [Record(items[i][0], pid_of[ident], items[i][1], dataset) for i in q_idx]
            out["gallery"] += [Record(items[i][0], pid_of[ident], items[i][1], dataset) for i in g_idx]
        meta["split_test"] = {"fraction": float(split_test), "seed": int(seed),
                              "test_identities": sorted(test)}
    else:
        for (split, ident), items in items_of.items():
            out[split] += [Record(p, pid_of[ident], c, dataset) for p, c in items]
    ds = ReIDDataset(dataset, out["train"], out["query"], out["gallery"], str(top), meta=meta)
    train_only = set(split_dirs) == {"train"} and split_test == 0
    if set(split_dirs) == {"train"} and split_test > 0 and not ds.query:
        raise ReIDError(f"{dataset}: empty query set after split_test={split_test} under {top}: "
                        f"no test identity has images in two cameras (or, without cameras, "
                        f"two images) to give a query with a true match")
    if "query" in split_dirs and not ds.query:
        raise ReIDError(f"{dataset}: empty query set: no images under {top / 'query'}; "
                        f"expected {FOLDER_LAYOUT}")
    if "gallery" in split_dirs and not ds.gallery:
        raise ReIDError(f"{dataset}: empty gallery split: no images under {top / 'gallery'}; "
                        f"expected {FOLDER_LAYOUT}")
    if train_only and not ds.train:
        raise ReIDError(f"{dataset}: no images under {top}; expected {FOLDER_LAYOUT}")
    return ds


# ----------------------------------------------------------------------------- CSV

CSV_LAYOUT = ("a CSV file with header path,pid,camid,split (split: train, query or gallery; "
              "relative paths resolved against the CSV's folder; camid 0-based or empty)")


def load_csv(root: str | os.PathLike[str], *, dataset_name: str = "csv") -> ReIDDataset:
    """A manifest CSV with columns ``path,pid,camid,split``; ``root`` is the CSV file.

    Relative paths resolve against the CSV's folder. ``camid`` is 0-based; an empty camid
    gives the image its own camera. pid -1 rows are junk and dropped; pid 0 (distractor) is
    only allowed in the gallery. A manifest may be train-only (no query and gallery rows) or
    evaluation-only (no train rows). ``dataset_name`` sets ``Record.dataset``.
    """
    dataset = str(dataset_name)
    path = _root_dir(root, dataset, CSV_LAYOUT)
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
            raise ReIDError(f"{dataset}: {path} lacks column(s) {', '.join(absent)} "
                            f"(header: {','.join(header) or 'none'}); expected {CSV_LAYOUT}")
        reader.fieldnames = header
        for lineno, row in enumerate(reader, 2):
            where = f"{path}:{lineno}"
            values = {k: (row.get(k) or "").strip() for k in ("path", "pid", "camid", "split")}
            if not any(values.values()):
                continue
            split = values["split"].lower()
            if split not in SPLITS:
                raise ReIDError(f"{dataset}: split {values['split']!r} at {where}; expected one "
                                f"of train, query, gallery")
            try:
                pid = int(values["pid"])
                camid = int(values["camid"]) if values["camid"] else None
            except ValueError:
                raise ReIDError(f"{dataset}: pid/camid must be integers at {where} "
                                f"(got pid={values['pid']!r}, camid={values['camid']!r})") from None
            if camid is not None and camid < 0:
                raise ReIDError(f"{dataset}: camid {camid} at {where} must be >= 0 (0-based)")
            if pid == -1:
                continue
            if pid < 0 or (pid == 0 and split != "gallery"):
                raise ReIDError(f"{dataset}: pid {pid} at {where} is not allowed in {split}: "
                                f"pids are >= 1, 0 marks a gallery-only distractor, -1 junk")
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
        raise ReIDError(f"{dataset}: {len(missing)} images listed in {path} do not exist, first "
                        f"{missing[0]}")
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
    return _check_splits(ds, CSV_LAYOUT, user_data=True)


# ----------------------------------------------------------------------------- synthetic


class _DefaultInt(int):
    """An int default that can be told apart from the same value given explicitly (by identity)."""


class _DefaultStr(str):
    """A str default that can be told apart from the same value given explicitly (by identity)."""


_SYN_DEFAULTS = {"ids": _DefaultInt(100), "images_per_id": _DefaultInt(16), "cams": _DefaultInt(6),
                 "seed": _DefaultInt(0), "domain": _DefaultStr("A"), "size": _DefaultStr("128x64")}


def load_synthetic(root: str | os.PathLike[str], *, ids: int = _SYN_DEFAULTS["ids"],
                   images_per_id: int = _SYN_DEFAULTS["images_per_id"], cams: int = _SYN_DEFAULTS["cams"],
                   seed: int = _SYN_DEFAULTS["seed"], domain: str = _SYN_DEFAULTS["domain"],
                   size: str | Sequence[int] = _SYN_DEFAULTS["size"]) -> ReIDDataset:
    """Procedural persons in Market-1501 format under ``root``: generated, or the existing set loaded.

    ``size`` is the crop size written to disk, as ``"HxW"`` or ``[H, W]`` (Market's own is 128x64).

    The generator (``reidkit.data.synthetic``) records its options in ``synthetic.json`` beside the
    tree. A set already at ``root`` is loaded as it is when no option was given explicitly (e.g.
    one made by ``reidkit synth ROOT --ids 16 --domain B``); options given that differ from the
    recorded ones raise ReIDError naming both: a set is never regenerated over silently.
    """
    if root is None or str(root) == "":
        raise ReIDError(f"synthetic: no root given; expected a folder to write {MARKET_LAYOUT} into")
    top = Path(os.path.abspath(os.path.expanduser(str(root))))
    requested = {"ids": ids, "images_per_id": images_per_id, "cams": cams, "seed": seed, "domain": domain,
                 "size": size}
    given = {k: v for k, v in requested.items() if v is not _SYN_DEFAULTS[k]}
    try:
        from reidkit.data import synthetic
    except ImportError as exc:
        if not (top / MARKET_DIR).is_dir():
            raise ReIDError(f"synthetic: the generator reidkit.data.synthetic is not available "
                            f"({exc}); cannot create {top / MARKET_DIR}") from None
        return _load_market_tree(top, "synthetic", None)
    marker = synthetic.read_marker(top / MARKET_DIR)
    params = (marker or {}).get("params") if isinstance(marker, dict) else None
    if isinstance(params, dict) and marker.get("generator") == "reidkit.synthetic":
        want = {k: (list(_parse_size(v)) if k == "size" else v) for k, v in given.items()}
        differ = {k: v for k, v in want.items() if params.get(k) != v}
        if differ:
            have = {k: params.get(k) for k in ("ids", "images_per_id", "cams", "seed", "domain", "size")}
            raise ReIDError(
                f"synthetic: {top / MARKET_DIR} already holds a set generated with {have}, but "
                f"{', '.join(f'{k}={v!r}' for k, v in differ.items())} was requested; use another root "
                f"for the new set, drop those options to load the existing one, or replace it with "
                f"`reidkit synth {top} --regenerate` and the new options"
            )
        return _load_market_tree(top, "synthetic", None)
    synthetic.generate(top, ids=int(ids), images_per_id=int(images_per_id), cams=int(cams), seed=int(seed),
                       domain=str(domain), size=_parse_size(size))
    return _load_market_tree(top, "synthetic", None)


def _parse_size(size: str | Sequence[int]) -> tuple[int, int]:
    """``"256x128"`` or ``[256, 128]`` -> (256, 128)."""
    parts = str(size).lower().split("x") if isinstance(size, str) else list(size)
    try:
        h, w = (int(v) for v in parts)
    except (TypeError, ValueError):
        raise ReIDError(f"synthetic: option size={size!r} must be HxW, e.g. 256x128") from None
    return h, w


# ----------------------------------------------------------------------------- registry

# A loader is ``loader(root, *, option=default, ...) -> ReIDDataset``; its keyword-only options
# (with their defaults) are what `reidkit data list` shows and what `load_dataset` accepts.
DATASETS: Registry[Callable[..., ReIDDataset]] = Registry("dataset", "data.datasets[].name")
for _name, _fn in (("market1501", load_market1501), ("dukemtmc", load_dukemtmc), ("msmt17", load_msmt17),
                   ("cuhk03", load_cuhk03), ("folder", load_folder), ("csv", load_csv),
                   ("synthetic", load_synthetic)):
    DATASETS.register(_name, _fn)


def register_dataset(name: str, loader: Callable[..., ReIDDataset] | None = None, *, overwrite: bool = False) -> Any:
    """Register a dataset loader ``loader(root, *, options...) -> ReIDDataset`` (decorator or call)."""
    return DATASETS.register(str(name).strip().lower(), loader, overwrite=overwrite)


def _loader(name: str) -> tuple[str, Callable[..., ReIDDataset]]:
    key = str(name).strip().lower()
    return key, DATASETS.get(key)


def dataset_options(name: str) -> dict[str, Any]:
    """The options a dataset accepts, with their defaults."""
    _, loader = _loader(name)
    params = inspect.signature(loader).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def parse_options(name: str, items: Iterable[str]) -> dict[str, Any]:
    """Turn ``key=value`` strings into typed options (types follow the loader's defaults)."""
    accepted = dataset_options(name)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ReIDError(f"option {item!r} must look like key=value")
        if key not in accepted:
            raise ReIDError(f"{name}: unknown option {key!r}; expected one of "
                            f"{', '.join(accepted) or '(none)'}")
        default = accepted[key]
        try:
            if isinstance(default, bool):
                low = value.strip().lower()
                if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                out[key] = low in ("1", "true", "yes", "on")
            elif isinstance(default, int):
                out[key] = int(value)
            elif isinstance(default, float):
                out[key] = float(value)
            else:
                out[key] = value
        except ValueError:
            kind = type(default).__name__
            raise ReIDError(f"{name}: option {key}={value!r} is not a valid {kind}") from None
    return out


def load_dataset(name: str, root: str | os.PathLike[str] | None, **options: Any) -> ReIDDataset:
    """Load a registered dataset by name from ``root`` with its options."""
    key, loader = _loader(name)
    accepted = dataset_options(key)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ReIDError(f"{key}: unknown option(s) {', '.join(unknown)}; expected one of "
                        f"{', '.join(accepted) or '(none)'}")
    return loader(root, **options)


def load_datasets(specs: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]],
                  root: str | os.PathLike[str] | None = None) -> JointDataset:
    """Load several datasets for joint training; each spec is a name or ``{name, root, **options}``.

    ``root`` is used for specs that name no root. Datasets keep their own pids; use
    :func:`train_labels` to get disjoint training labels per (dataset, pid).
    """
    if isinstance(specs, str):
        specs = [s for s in re.split(r"[,+]", specs) if s.strip()]
    elif isinstance(specs, Mapping):
        specs = [specs]
    if not specs:
        raise ReIDError("load_datasets: no dataset specs given; expected a list of names or "
                        "{name, root, **options} dicts")
    parts: list[ReIDDataset] = []
    for spec in specs:
        if isinstance(spec, str):
            name, part_root, options = spec.strip(), root, {}
        elif isinstance(spec, Mapping):
            if "name" not in spec:
                raise ReIDError(f"load_datasets: spec {dict(spec)!r} has no 'name' key; expected "
                                f"{{name, root, **options}}")
            options = {k: v for k, v in spec.items() if k not in ("name", "root")}
            name, part_root = str(spec["name"]), spec.get("root", root)
        else:
            raise ReIDError(f"load_datasets: spec {spec!r} must be a name or a "
                            f"{{name, root, **options}} dict")
        if part_root is None:
            raise ReIDError(f"load_datasets: no root for dataset {name!r}; give 'root' in its "
                            f"spec or as the default root")
        parts.append(load_dataset(name, part_root, **options))
    names = [p.name for p in parts]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        # Identities are namespaced by dataset name, so two parts sharing one would merge people.
        raise ReIDError(f"load_datasets: dataset name(s) {', '.join(dupes)} appear twice; "
                        f"give each folder/csv part its own 'dataset_name' option")
    train = [r for part in parts for r in part.train]
    return JointDataset("+".join(names), train, parts)


def train_labels(records: Sequence[Record]) -> tuple[np.ndarray, dict[tuple[str, int], int]]:
    """Training labels 0..N-1 per (dataset, pid), in sorted key order, and the key -> label map."""
    keys = sorted({(r.dataset, r.pid) for r in records})
    mapping = {key: i for i, key in enumerate(keys)}
    labels = np.fromiter((mapping[(r.dataset, r.pid)] for r in records), dtype=np.int64,
                         count=len(records))
    return labels, mapping
