r"""Helpers for dataset loaders (the built-in ones and yours): find a layout under a root, scan a split.

A Market-style loader is four calls (see market1501.py)::

    root = root_dir(root, "mysite", LAYOUT)                 # exists, or an error naming the layout
    base = locate(root, ["MySite-v1"], ["train", "query", "gallery"], "mysite", LAYOUT)
    parse = regex_parser(r"(-?\d+)_c(\d+)_f(\d+)")        # file name -> (pid, 1-based camera, frame)
    train = scan_split(base / "train", "train", "mysite", parse, "0002_c1_f000451.jpg", LAYOUT, max_cam=None)

then ``check_splits(ReIDDataset("mysite", train, query, gallery, str(base)), LAYOUT)`` (refuses an empty
query or gallery) and ``register_dataset("mysite", loader)``. A keyword option with a fixed set of values
is checked by ``check_choice``; ``reidkit.utils.io.is_image_file`` and ``listing`` help a loader of another layout
(see folder.py) skip non-images and say what it found instead. A set already in Market-1501's layout needs none of
this: ``reidkit.data.datasets.market1501.load_market_tree(root, "mysite", max_cam=None)``.
Every helper raises one ReIDError naming the dataset, the path and the layout expected.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from reidkit.errors import ReIDError

from reidkit._lazy import lazy_getattr
from reidkit.utils.io import is_image_file
from reidkit.data.datasets.core import Record, ReIDDataset

__all__ = [
    "NameParser",
    "check_choice",
    "check_splits",
    "listing",
    "locate",
    "regex_parser",
    "root_dir",
    "scan_split",
]

# `is_image` was this module's; the one test of an image file name is reidkit.utils.io.is_image_file
__getattr__ = lazy_getattr(__name__, {}, moved={"is_image": "reidkit.utils.io.is_image_file"})


# ----------------------------------------------------------------------------- helpers


def _image_names(directory: str) -> list[str]:
    """Sorted image file names directly inside a directory (other files ignored)."""
    with os.scandir(directory) as it:
        return sorted(e.name for e in it if e.is_file() and is_image_file(e.name))


def root_dir(root: str | os.PathLike[str], dataset: str, layout: str) -> Path:
    """``root`` as an absolute path that exists; else ReIDError naming ``dataset`` and the ``layout`` expected."""
    if root is None or str(root) == "":
        raise ReIDError(f"{dataset}: no dataset root given; expected layout {layout}")
    path = Path(os.path.abspath(os.path.expanduser(str(root))))
    if not path.exists():
        raise ReIDError(f"{dataset}: dataset root {path} does not exist; expected layout {layout}")
    return path


def listing(path: Path, limit: int = 6) -> str:
    """What ``path`` holds, for an error message: its first ``limit`` visible names, "empty" or "unreadable"."""
    try:
        names = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    except OSError:
        return "unreadable"
    if not names:
        return "empty"
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def locate(root: Path, candidates: Sequence[str], required: Sequence[str], dataset: str, layout: str) -> Path:
    """The first of ``root/<candidate>`` or ``root`` itself that holds every ``required`` entry.

    A partial tree raises an error naming what is missing; nothing matching, one listing the root.
    """
    if not root.is_dir():
        raise ReIDError(f"{dataset}: dataset root {root} is not a folder (extract archives first); expected {layout}")
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
    raise ReIDError(f"{dataset}: no matching layout under {root} (found: {listing(root)}); expected {layout}")


NameParser = Callable[[str], "tuple[int, int, int] | None"]


def regex_parser(pattern: str) -> NameParser:
    """A parser returning (pid, 1-based camera, frame or -1) from a file name, or None."""
    rx = re.compile(pattern)

    def parse(name: str) -> tuple[int, int, int] | None:
        m = rx.match(name)
        if m is None:
            return None
        frame = m.group(3) if rx.groups >= 3 else None
        return int(m.group(1)), int(m.group(2)), int(frame) if frame else -1

    return parse


def scan_split(
    directory: Path,
    split: str,
    dataset: str,
    parse: NameParser,
    example: str,
    layout: str,
    max_cam: int | None,
    force_pid: int | None = None,
) -> list[Record]:
    """Records of the images directly in ``directory`` (one split), parsed by ``parse``.

    Junk (pid -1) is dropped, distractors (pid 0) are kept only in the gallery; cameras outside
    1..``max_cam`` and names ``parse`` rejects raise ReIDError (``example`` shows a valid name);
    ``force_pid`` gives every image that pid. Record camids are 0-based (file ``c1`` -> 0).
    """
    if not directory.is_dir():
        raise ReIDError(f"{dataset}: missing folder {directory}; expected {layout}")
    records = []
    for name in _image_names(str(directory)):
        parsed = parse(name)
        path = str(directory / name)
        if parsed is None:
            raise ReIDError(f"{dataset}: cannot parse image name {path}: expected names like {example} in {layout}")
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


def check_splits(ds: ReIDDataset, layout: str, user_data: bool = False) -> ReIDDataset:
    """``ds`` itself, or ReIDError if it cannot be evaluated (empty query or gallery) or trained on (empty train).

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


def check_choice(dataset: str, key: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` of a loader option ``key`` if it is one of ``choices``; else ReIDError naming the dataset and them."""
    if value not in choices:
        raise ReIDError(f"{dataset}: option {key}={value!r} is not one of {', '.join(choices)}")
    return str(value)
