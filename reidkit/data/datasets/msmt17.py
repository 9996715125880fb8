"""MSMT17 (V1, V2): image lists per split; pids = list id + 1; optional train+val."""

from __future__ import annotations

import os
from pathlib import Path

from reidkit.errors import ReIDError

from reidkit.data.datasets.core import Record, ReIDDataset
from reidkit.data.datasets.layout import check_choice, check_splits, locate, root_dir


# ----------------------------------------------------------------------------- MSMT17

_MSMT_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
_MSMT_DIRS = {"v1": ("MSMT17_V1", "train", "test"), "v2": ("MSMT17_V2", "mask_train_v2", "mask_test_v2")}


def _msmt_layout(version: str) -> str:
    main, train, test = _MSMT_DIRS[version]
    return (
        f"<root>/{main}/{{{train},{test}}}/0000/0000_000_01_0303morning_0015_0.jpg with "
        f"{', '.join(_MSMT_LISTS)} in <root>/{main}/ (lines 'relative/path pid')"
    )


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
                raise ReIDError(f"msmt17: malformed line {where}: {line.strip()!r}; expected 'relative/path pid'")
            rel = fields[0].replace("\\", "/")
            # Some copies of the lists carry the image folder's name as a prefix.
            if rel.startswith(prefix):
                rel = rel[len(prefix) :]
            parts = os.path.basename(rel).split("_")
            if len(parts) < 3 or not parts[2].isdigit():
                raise ReIDError(
                    f"msmt17: cannot read the camera from {rel} ({where}); expected "
                    f"names like 0000/0000_000_01_0303morning_0015_0.jpg "
                    f"(third field: camera 1-15)"
                )
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
        raise ReIDError(
            f"msmt17: {len(missing)} images listed in {list_path} are missing, first {missing[0]}; expected {layout}"
        )
    return records


def load_msmt17(root: str | os.PathLike[str], *, version: str = "v2", combine_val: bool = True) -> ReIDDataset:
    """MSMT17 from its list files; ``version`` "v1" or "v2" (default) are different sets.

    V2 blurs faces and renames the folders: V1 is ``<root>/MSMT17_V1/{train,test}``, V2 is
    ``<root>/MSMT17_V2/{mask_train_v2,mask_test_v2}``; both hold ``list_train.txt,
    list_val.txt, list_query.txt, list_gallery.txt`` with lines ``relative/path pid``. The
    camera (1-15) is the third underscore field of the file name. ``combine_val=True`` (the
    field's default) merges the validation list into train. pids are the lists' ids plus 1
    (the lists count from 0; reidkit reserves pid 0 for distractors).
    """
    version = check_choice("msmt17", "version", str(version).lower(), ("v1", "v2"))
    layout = _msmt_layout(version)
    main, train_dir, test_dir = _MSMT_DIRS[version]
    top = root_dir(root, "msmt17", layout)
    try:
        base = locate(top, [main], [train_dir, test_dir, *_MSMT_LISTS], "msmt17", layout)
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
    ds = ReIDDataset(
        "msmt17", train, query, gallery, str(base), meta={"version": version, "val": [] if combine_val else val}
    )
    return check_splits(ds, layout)
