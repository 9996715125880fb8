"""Cross-validation by identity: disjoint folds, the min-images rule, distractors, the table."""

from __future__ import annotations

import csv
import json

import pytest
from factories import demo_overrides

from reidkit.data.datasets import Record
from reidkit.errors import ReIDError


def _records() -> list[Record]:
    recs = []
    for pid in range(1, 21):
        n = 1 if pid % 5 == 0 else 4  # every fifth identity has a single image
        cams = [0] * n if pid % 7 == 0 else [i % 3 for i in range(n)]  # pid 7, 14: one camera
        recs += [Record(f"/x/{pid}_{i}.jpg", pid, cams[i], "s") for i in range(n)]
    return recs


def test_folds_are_identity_disjoint_and_respect_min_images():
    from reidkit.experiments.cv import make_folds

    recs = _records()
    folds = make_folds(recs, folds=4, seed=1, min_images=2)
    held = []
    for f in folds:
        train_ids = {r.pid for r in f["train"]}
        val_ids = {r.pid for r in f["query"] + f["gallery"]}
        assert not train_ids & val_ids
        assert train_ids | val_ids == set(range(1, 21))
        assert len(f["train"]) + len(f["query"]) + len(f["gallery"]) == len(recs)
        q_ids = [r.pid for r in f["query"]]
        assert len(q_ids) == len(set(q_ids))  # one query per identity
        assert not {5, 10, 15, 20, 7, 14} & set(q_ids)  # too few images / one camera: never queries
        held.append(val_ids)
    assert set().union(*held) == set(range(1, 21)) and sum(map(len, held)) == 20
    again = make_folds(recs, folds=4, seed=1, min_images=2)
    assert [[r.path for r in f["query"]] for f in again] == [[r.path for r in f["query"]] for f in folds]
    other = make_folds(recs, folds=4, seed=2, min_images=2)
    assert [[r.pid for r in f["query"]] for f in other] != [[r.pid for r in f["query"]] for f in folds]
    for f in make_folds(recs, folds=7, seed=3):  # 14 eligible identities: 2 queries per fold
        assert len(f["query"]) == 2
    with pytest.raises(ReIDError, match="no usable query"):
        make_folds(recs, folds=2, seed=1, min_images=5)  # nobody has 5 images


def test_fold_manifest_adds_distractors_to_the_gallery(tmp_path):
    from reidkit.experiments.cv import make_folds, write_fold_manifest

    recs = _records()
    fold = make_folds(recs, folds=4, seed=0)[0]
    extra = [Record("/x/test_a.jpg", 900, 1, "s"), Record("/x/test_b.jpg", 901, 2, "s")]
    path = write_fold_manifest(tmp_path / "f.csv", fold, extra)
    rows = list(csv.DictReader(open(path)))
    dis = [r for r in rows if r["path"].startswith("/x/test_")]
    assert len(dis) == 2 and all(r["pid"] == "0" and r["split"] == "gallery" for r in dis)
    assert sum(r["split"] == "query" for r in rows) == len(fold["query"])


def test_cli_cv_trains_each_fold_and_writes_the_table(tmp_path, capsys):
    from reidkit.cli import main

    root = tmp_path / "data"
    out = tmp_path / "cv"
    code = main(
        [
            "cv",
            "--config",
            "demo",
            "--folds",
            "2",
            "--min-images",
            "3",
            "--out",
            str(out),
            *demo_overrides(root, 16, 2, tmp_path / "run"),
        ]
    )
    assert code == 0
    summary = json.loads((out / "cv.json").read_text())
    assert [r["fold"] for r in summary["rows"]] == [1, 2]
    for r in summary["rows"]:
        assert r["query"] > 0 and r["distractors"] > 0 and 0 < r["mAP"] <= 100
    table = (out / "cv.md").read_text()
    assert table.count("\n| 1 |") == 1 and "| mean |" in table and "| std |" in table
    assert "| mean |" in capsys.readouterr().out
