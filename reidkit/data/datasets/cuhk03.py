"""CUHK03 in the new protocol (CUHK03-NP), labeled or detected boxes."""

from __future__ import annotations

import os

from reidkit.errors import ReIDError

from reidkit.data.datasets.core import ReIDDataset
from reidkit.data.datasets.layout import check_choice, check_splits, locate, regex_parser, root_dir, scan_split
from reidkit.data.datasets.market1501 import MARKET_SPLITS


# ----------------------------------------------------------------------------- CUHK03-NP

CUHK03_LAYOUT = "<root>/cuhk03-np/{labeled,detected}/{bounding_box_train,query,bounding_box_test}/0001_c1_1.png"
# Lenient on purpose: the first integer is the pid, the first c<digits> the camera.
_cuhk03_name = regex_parser(r"^(-?\d+)_.*?c(\d+)")


def load_cuhk03(root: str | os.PathLike[str], *, split: str = "labeled") -> ReIDDataset:
    """CUHK03 in the new protocol (CUHK03-NP), ``split`` "labeled" (default) or "detected".

    Layout ``<root>/cuhk03-np/{labeled,detected}/{bounding_box_train,query,bounding_box_test}``
    with names like ``0001_c1_1.png`` (pid, camera, image index); ``root`` may also be the
    cuhk03-np folder or the labeled/detected folder itself.
    """
    dataset = "cuhk03"
    split = check_choice(dataset, "split", str(split).lower(), ("labeled", "detected"))
    top = root_dir(root, dataset, CUHK03_LAYOUT)
    candidates = [f"cuhk03-np/{split}", f"cuhk03_np/{split}", f"CUHK03-NP/{split}", split]
    base = locate(top, candidates, list(MARKET_SPLITS.values()), dataset, CUHK03_LAYOUT)
    if top == base and top.name.lower() in ("labeled", "detected") and top.name.lower() != split:
        raise ReIDError(
            f"{dataset}: root {top} is the {top.name} set but split={split!r} was asked; expected {CUHK03_LAYOUT}"
        )
    parts = {
        s: scan_split(base / d, s, dataset, _cuhk03_name, "0001_c1_1.png", CUHK03_LAYOUT, None)
        for s, d in MARKET_SPLITS.items()
    }
    ds = ReIDDataset(dataset, parts["train"], parts["query"], parts["gallery"], str(base), meta={"split": split})
    return check_splits(ds, CUHK03_LAYOUT)
