"""`reidkit reproduce`: a fake two-row table on a generated Market-1501-format set with tiny
schedules writes reproduce.md (published beside ours), resumes finished rows, and --dry-run
lists what would run, what is missing and a GPU-time estimate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from reidkit.cli import main as cli_main
from reidkit.experiments.reproduce import list_tables, load_table
from reidkit.errors import ReIDError

TINY = [
    "model.backbone=resnet18",
    "model.pretrained=false",
    "data.size=[64,32]",
    "input.pad=2",
    "sampler.p=4",
    "sampler.k=4",
    "sampler.epoch_batches=2",
    "solver.max_epochs=1",
    "solver.warmup_epochs=0",
    "solver.eval_period=1",
    "device=cpu",
    "test.batch_size=64",
]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reproduce")
    assert (
        cli_main(
            ["synth", str(root / "data"), "--ids", "16", "--images-per-id", "6", "--size", "64x32", "--workers", "1"]
        )
        == 0
    )
    table = {
        "name": "fake",
        "title": "A fake table",
        "rows": [
            {
                "id": "all_tricks",
                "recipe": "bot_r50",
                "dataset": "market1501",
                "published": {"mAP": 85.9, "rank1": 94.5},
                "source": "Luo et al. 2019",
            },
            {
                "id": "no_center",
                "recipe": "bot_r50",
                "dataset": "market1501",
                "overrides": {"loss.names": ["softmax", "triplet"]},
                "published": {"mAP": 85.7, "rank1": 94.1},
                "source": "Luo et al. 2019",
            },
            {"id": "duke", "recipe": "bot_r50", "dataset": "dukemtmc", "published": {"mAP": 76.4, "rank1": 86.4}},
        ],
    }
    (root / "fake.yaml").write_text(yaml.safe_dump(table))
    return root


def test_dry_run_lists_runnable_and_missing_rows(work, capsys):
    assert (
        cli_main(
            [
                "reproduce",
                str(work / "fake.yaml"),
                "--data-root",
                str(work / "data"),
                "--dry-run",
                "--out",
                str(work / "out_dry"),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    lines = {ln.split()[1]: ln.split()[0] for ln in text.splitlines() if ln.startswith("  ")}
    assert lines == {"all_tricks": "run", "no_center": "run", "duke": "missing"}
    assert "would run 2 of 3 rows; estimated GPU time" in text and "missing: duke" in text
    assert not (work / "out_dry" / "reproduce.md").exists()  # a dry run trains and writes nothing


def test_packaged_bot_table_dry_run(work, capsys):
    assert cli_main(["reproduce", "bot", "--data-root", str(work / "data"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "  run      market_all_tricks" in text and "  missing  duke_all_tricks" in text
    assert {"bot", "bot_backbones", "fastreid_zoo", "osnet", "hhcl", "ssg"} <= set(list_tables())
    for name in list_tables():
        table = load_table(name)
        assert table.rows and all(r.published for r in table.rows)


def test_two_rows_run_write_reproduce_md_and_resume(work, capsys):
    out = work / "out"
    args = ["reproduce", str(work / "fake.yaml"), "--data-root", str(work / "data"), "--out", str(out), *TINY]
    assert cli_main(args) == 0
    md = (out / "reproduce.md").read_text()
    rows = {
        ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[1:-1]]
        for ln in md.splitlines()
        if ln.startswith("| ") and not ln.startswith("| row")
    }
    assert set(rows) == {"all_tricks", "no_center", "duke"}
    for rid, published in (("all_tricks", "85.9 / 94.5"), ("no_center", "85.7 / 94.1")):
        cells = rows[rid]
        assert cells[3] == published and cells[4] != "- / -" and cells[5].startswith(("+", "-"))
        assert cells[6].endswith("min") and cells[7] == "cpu" and cells[8] == "done"
        res = json.loads((out / rid / "result.json").read_text())
        assert 0.0 <= res["ours"]["mAP"] <= 100.0 and (out / rid / "model.pt").exists()
    assert rows["duke"][8].startswith("missing")
    # the center loss is on in one row only: the row's overrides reached its config
    assert "center" not in yaml.safe_load((out / "no_center" / "config.yaml").read_text())["loss"]["names"]
    assert "center" in yaml.safe_load((out / "all_tricks" / "config.yaml").read_text())["loss"]["names"]
    # a second run keeps the finished rows (nothing retrained)
    stamp = (out / "all_tricks" / "model.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert cli_main(args) == 0
    assert (out / "all_tricks" / "model.pt").stat().st_mtime_ns == stamp
    assert json.loads((out / "reproduce.json").read_text())["rows"][0]["status"] == "done"


def test_bad_tables_name_the_problem(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text(yaml.safe_dump({"rows": [{"id": "a", "recipe": "bot_r50", "dataset": "market1501"}]}))
    with pytest.raises(ReIDError, match=r"rows\[0\] has no 'published'"):
        load_table(bad)
    bad.write_text(
        yaml.safe_dump(
            {"rows": [{"id": "a", "recipe": "bot_r50", "dataset": "market1501", "published": {"mAP": 1}, "epochs": 3}]}
        )
    )
    with pytest.raises(ReIDError, match="unknown key"):
        load_table(bad)
    with pytest.raises(ReIDError, match="unknown table 'nope'"):
        load_table("nope")
