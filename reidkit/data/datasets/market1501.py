"""Market-1501 (+500k distractors) and DukeMTMC-reID: one folder per split, ids and cameras in the file names."""

from __future__ import annotations

import os

from reidkit.errors import ReIDError

from reidkit.data.datasets.core import ReIDDataset
from reidkit.data.datasets.layout import check_splits, locate, regex_parser, root_dir, scan_split


# ----------------------------------------------------------------------------- Market / Duke

MARKET_DIR = "Market-1501-v15.09.15"
MARKET_SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}  # split -> folder
MARKET_LAYOUT = f"<root>/{MARKET_DIR}/{{bounding_box_train,query,bounding_box_test}}/0002_c1s1_000451_03.jpg"
_market_name = regex_parser(r"^(-?\d+)_c(\d+)(?:s\d+_(\d+))?")


def load_market_tree(
    root: str | os.PathLike[str], dataset: str, max_cam: int | None, extra_gallery: bool = False
) -> ReIDDataset:
    """Any set in Market-1501's layout, named ``dataset``: ``<root>[/Market-1501-v15.09.15]/<MARKET_SPLITS>``.

    Names like ``0002_c1s1_000451_03.jpg`` or ``0002_c1_...``; cameras above ``max_cam`` (None: no limit)
    are refused. ``extra_gallery`` adds ``<base>/images`` to the gallery as distractors (Market's 500k).
    A loader of your own for a set in this layout is ``lambda root: load_market_tree(root, "mysite", None)``.
    """
    top = root_dir(root, dataset, MARKET_LAYOUT)
    base = locate(
        top,
        [MARKET_DIR, f"market1501/{MARKET_DIR}", "market1501"],
        list(MARKET_SPLITS.values()),
        dataset,
        MARKET_LAYOUT,
    )
    example = "0002_c1s1_000451_03.jpg"
    parts = {
        s: scan_split(base / d, s, dataset, _market_name, example, MARKET_LAYOUT, max_cam)
        for s, d in MARKET_SPLITS.items()
    }
    if extra_gallery:
        extra = base / "images"
        if not extra.is_dir():
            raise ReIDError(
                f"{dataset}: market1501_500k=True needs the distractor folder {extra} "
                f"(the 500k distractor images beside bounding_box_test)"
            )
        # Every image of the 500k set is a distractor, whatever its file name says.
        parts["gallery"] += scan_split(
            extra, "gallery", dataset, _market_name, example, f"{base}/images/<distractor>.jpg", max_cam, force_pid=0
        )
    ds = ReIDDataset(dataset, parts["train"], parts["query"], parts["gallery"], str(base))
    return check_splits(ds, MARKET_LAYOUT)


def load_market1501(root: str | os.PathLike[str], *, market1501_500k: bool = False) -> ReIDDataset:
    """Market-1501: ``<root>/Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}``.

    Names like ``0002_c1s1_000451_03.jpg`` (pid, camera 1-6, sequence, frame). Junk (pid -1) is
    dropped; distractors (pid 0) stay in the gallery only. ``root`` may also be the
    Market-1501-v15.09.15 folder itself. ``market1501_500k=True`` adds the 500k distractors of
    ``<Market-1501-v15.09.15>/images`` to the gallery (all with pid 0).
    """
    return load_market_tree(root, "market1501", 6, extra_gallery=market1501_500k)


DUKE_DIR = "DukeMTMC-reID"
DUKE_LAYOUT = f"<root>/{DUKE_DIR}/{{bounding_box_train,query,bounding_box_test}}/0001_c2_f0046182.jpg"
_duke_name = regex_parser(r"^(-?\d+)_c(\d+)(?:_f(\d+))?")


def load_dukemtmc(root: str | os.PathLike[str]) -> ReIDDataset:
    """DukeMTMC-reID: ``<root>/DukeMTMC-reID/{bounding_box_train,query,bounding_box_test}``.

    Names like ``0001_c2_f0046182.jpg`` (pid, camera 1-8, frame). ``root`` may also be the
    DukeMTMC-reID folder itself.
    """
    dataset = "dukemtmc"
    top = root_dir(root, dataset, DUKE_LAYOUT)
    base = locate(
        top,
        [DUKE_DIR, f"dukemtmc-reid/{DUKE_DIR}", f"dukemtmcreid/{DUKE_DIR}"],
        list(MARKET_SPLITS.values()),
        dataset,
        DUKE_LAYOUT,
    )
    parts = {
        s: scan_split(base / d, s, dataset, _duke_name, "0001_c2_f0046182.jpg", DUKE_LAYOUT, 8)
        for s, d in MARKET_SPLITS.items()
    }
    ds = ReIDDataset(dataset, parts["train"], parts["query"], parts["gallery"], str(base))
    return check_splits(ds, DUKE_LAYOUT)
