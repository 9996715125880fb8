"""The synthetic pedestrian generator: layout, naming, counts, determinism, domains, errors."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidkit.data import synthetic
from reidkit.errors import ReIDError

NAME = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
TINY = dict(ids=6, images_per_id=4, cams=3, size=(64, 32), distractors=3, junk=2)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def _parse(root: Path, split: str) -> list[tuple[int, int, str]]:
    out = []
    for p in sorted((root / split).iterdir()):
        m = NAME.match(p.name)
        assert m, f"not a Market name: {p.name}"
        out.append((int(m.group(1)), int(m.group(2)), p.name))
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("synA"), seed=0, workers=1, **TINY)


def test_layout_names_and_counts(tree: Path) -> None:
    assert tree.name == "Market-1501-v15.09.15"
    train, test, query = (_parse(tree, s) for s in synthetic.SPLITS)
    train_ids = {p for p, _, _ in train}
    test_ids = {p for p, _, _ in query}
    assert len(train_ids) == 3 and len(test_ids) == 3 and not train_ids & test_ids
    assert train_ids | test_ids == set(range(1, 7))
    assert len(train) == 3 * 4
    gallery_people = [(p, c) for p, c, _ in test if p > 0]
    assert len(query) + len(gallery_people) == 3 * 4
    assert sum(p == 0 for p, _, _ in test) == 3 and sum(p == -1 for p, _, _ in test) == 2
    assert all(1 <= c <= 3 for _, c, _ in train + test + query)  # cameras 1-based in names
    # Market's rule: each test identity gives one query per camera it appears in, and every
    # identity is seen by at least two cameras, so queries have cross-camera matches
    q_cams: dict[int, list[int]] = defaultdict(list)
    for p, c, _ in query:
        q_cams[p].append(c)
    for pid in test_ids:
        seen = set(q_cams[pid]) | {c for p, c in gallery_people if p == pid}
        assert sorted(q_cams[pid]) == sorted(seen) and len(seen) >= 2
    marker = json.loads((tree / synthetic.MARKER_NAME).read_text())
    assert marker["counts"]["query"] == len(query) and marker["counts"]["gallery"] == len(test)
    assert marker["params"]["seed"] == 0 and marker["format"] == "market1501"


def test_images_are_jpegs_of_requested_size(tree: Path) -> None:
    for p in sorted(tree.rglob("*.jpg"))[:12]:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (32, 64)
            arr = np.asarray(im)
        assert arr.std() > 5  # not a blank image


def test_deterministic_whatever_workers(tree: Path, tmp_path: Path) -> None:
    again = synthetic.generate(tmp_path / "a", seed=0, workers=2, **TINY)
    assert _files(again) == _files(tree)
    other = synthetic.generate(tmp_path / "b", seed=1, workers=1, **TINY)
    a, b = _files(tree), _files(other)
    assert set(a) != set(b) or any(a[k] != b[k] for k in a)


def test_rerun_is_skipped_and_other_params_regenerate(tmp_path: Path) -> None:
    kw = dict(TINY, ids=2, images_per_id=3, cams=2)
    rep = synthetic.generate_report(tmp_path, workers=1, **kw)
    marker = rep.root / synthetic.MARKER_NAME
    stamp = marker.stat().st_mtime_ns
    again = synthetic.generate_report(tmp_path, workers=1, **kw)
    assert again.skipped and not rep.skipped and marker.stat().st_mtime_ns == stamp
    # Other parameters never replace a set silently: an error naming both, unless forced.
    with pytest.raises(ReIDError, match=r"already holds a set generated with .*'seed': 0.*seed=5"):
        synthetic.generate_report(tmp_path, workers=1, **dict(kw, seed=5))
    assert json.loads(marker.read_text())["params"]["seed"] == 0 and marker.stat().st_mtime_ns == stamp
    changed = synthetic.generate_report(tmp_path, workers=1, force=True, **dict(kw, seed=5))
    assert not changed.skipped and json.loads(marker.read_text())["params"]["seed"] == 5


def test_domain_b_differs_statistically(tree: Path, tmp_path: Path) -> None:
    b = synthetic.generate(tmp_path, seed=0, domain="B", workers=1, **TINY)

    def mean_rgb(root: Path) -> np.ndarray:
        return np.stack(
            [np.asarray(Image.open(p), dtype=np.float32).mean(axis=(0, 1)) for p in sorted(root.rglob("*.jpg"))]
        ).mean(axis=0)

    ma, mb = mean_rgb(tree), mean_rgb(b)
    # domain B is indoor / evening: clearly darker on average
    assert ma.mean() - mb.mean() > 20, (ma, mb)


def test_existing_foreign_tree_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / synthetic.MARKET_DIR / "query").mkdir(parents=True)
    (tmp_path / synthetic.MARKET_DIR / "query" / "0001_c1s1_000001_01.jpg").write_bytes(b"x")
    with pytest.raises(ReIDError, match="not a reidkit synthetic set"):
        synthetic.generate(tmp_path, workers=1, **TINY)


@pytest.mark.parametrize("marker", ["[1, 2]", '"reidkit.synthetic"', "null"])
def test_a_marker_that_is_not_a_json_object_is_a_foreign_tree(tmp_path: Path, marker: str) -> None:
    # valid JSON but not an object: the tree is foreign (one ReIDError), not an AttributeError on .get
    root = tmp_path / synthetic.MARKET_DIR
    root.mkdir()
    (root / synthetic.MARKER_NAME).write_text(marker)
    with pytest.raises(ReIDError, match="not a reidkit synthetic set"):
        synthetic.generate(tmp_path, workers=1, **TINY)
    assert synthetic.read_marker(root) is None


@pytest.mark.parametrize(
    "bad, key",
    [
        (dict(ids=1), "ids"),
        (dict(cams=1), "cams"),
        (dict(images_per_id=2), "images_per_id"),
        (dict(domain="C"), "domain"),
        (dict(size=(8, 4)), "size"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_arguments_raise(tmp_path: Path, bad: dict, key: str) -> None:
    with pytest.raises(ReIDError, match=key):
        synthetic.generate(tmp_path, **dict(TINY, **bad))
    assert not (tmp_path / synthetic.MARKET_DIR).exists()


def test_cli_synth(tmp_path: Path, capsys) -> None:
    from reidkit.cli import main

    args = [str(tmp_path), "--ids", "2", *SMALL[2:]]  # SMALL with 2 identities
    assert main(["synth", *args]) == 0
    out = capsys.readouterr().out
    assert "images/s" in out and "train" in out
    assert main(["synth", *args]) == 0 and "skipped" in capsys.readouterr().out
    assert main(["synth", str(tmp_path), "--size", "big"]) == 2


def test_loads_as_market1501(tree: Path) -> None:
    datasets = pytest.importorskip("reidkit.data.datasets")
    ds = datasets.load_dataset("market1501", tree.parent)
    assert len(ds.query) == len(list((tree / "query").iterdir()))
    assert {r.pid for r in ds.gallery} >= {0} and all(r.pid != -1 for r in ds.gallery)
    assert all(0 <= r.camid < 3 for r in ds.train + ds.query + ds.gallery)


SMALL = [
    "--ids",
    "4",
    "--images-per-id",
    "3",
    "--cams",
    "2",
    "--size",
    "64x32",
    "--workers",
    "1",
    "--distractors",
    "1",
    "--junk",
    "1",
]


def test_loader_keeps_the_set_the_user_generated(tmp_path: Path, capsys) -> None:
    """`synth DIR --ids 4 --domain B`, then loading DIR without options loads that set, untouched."""
    from reidkit.cli import main
    from reidkit.data.datasets import load_dataset

    assert main(["synth", str(tmp_path), *SMALL, "--domain", "B"]) == 0
    marker = tmp_path / synthetic.MARKET_DIR / synthetic.MARKER_NAME
    stamp, before = marker.stat().st_mtime_ns, json.loads(marker.read_text())
    ds = load_dataset("synthetic", tmp_path)
    assert ds.num_train_pids == 2 and len(ds.train) == 6  # 4 ids: half train, 3 images each
    assert marker.stat().st_mtime_ns == stamp and json.loads(marker.read_text()) == before
    capsys.readouterr()
    assert main(["data", "stats", "synthetic", "--root", str(tmp_path)]) == 0
    assert json.loads(marker.read_text())["params"]["domain"] == "B" and marker.stat().st_mtime_ns == stamp
    # Explicit options equal to the recorded ones load it too.
    same = load_dataset("synthetic", tmp_path, ids=4, domain="B", size="64x32")
    assert same.train == ds.train
    # Different explicit options: a clear error naming the root, the recorded and requested options.
    with pytest.raises(ReIDError) as err:
        load_dataset("synthetic", tmp_path, ids=100, domain="A")
    msg = str(err.value)
    assert str(tmp_path / synthetic.MARKET_DIR) in msg and "'domain': 'B'" in msg and "ids=100" in msg
    assert "domain='A'" in msg and "--regenerate" in msg
    assert marker.stat().st_mtime_ns == stamp
    # The synth verb refuses too (exit 2, one error line), and replaces the set with --regenerate.
    capsys.readouterr()
    assert main(["synth", str(tmp_path), *SMALL, "--domain", "A"]) == 2
    err_text = capsys.readouterr().err
    assert err_text.startswith("error: ") and "Traceback" not in err_text and str(tmp_path) in err_text
    assert main(["synth", str(tmp_path), *SMALL, "--domain", "A", "--regenerate"]) == 0
    assert json.loads(marker.read_text())["params"]["domain"] == "A"


def test_loader_generates_when_nothing_is_there(tmp_path: Path) -> None:
    from reidkit.data.datasets import load_dataset

    ds = load_dataset("synthetic", tmp_path, ids=2, images_per_id=3, cams=2, size="64x32")
    params = synthetic.read_marker(tmp_path / synthetic.MARKET_DIR)["params"]
    assert (params["ids"], params["images_per_id"], params["cams"], params["size"]) == (2, 3, 2, [64, 32])
    assert ds.num_train_pids == 1


def test_cli_synth_unwritable_out(tmp_path: Path, capsys) -> None:
    from reidkit.cli import main

    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        capsys.readouterr()
        assert main(["synth", str(out), *SMALL]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and str(out) in err
        assert "Traceback" not in err


def test_generated_bytes_are_those_of_the_single_module_generator(tmp_path):
    """The package split (identity, camera, painter, render) draws exactly what synthetic.py drew."""
    import hashlib

    root = synthetic.generate(tmp_path / "s", ids=4, images_per_id=3, cams=2, seed=7, domain="B")
    h = hashlib.sha256()
    files = sorted(root.rglob("*.jpg"))
    for p in files:
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    assert len(files) == 16
    # sha256 of the same set written by reidkit/data/synthetic.py at 7c136e3 (before the split)
    assert h.hexdigest() == "73a42bdb9f14f6dc67c6bcc41e3ef3e7559d67d44c31ef8e4ff0e0bc69aea76b"
    assert synthetic.draw_person is synthetic.painter.draw_person and callable(synthetic.sample_identity)
