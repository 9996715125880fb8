"""Pseudo-labelling the test set: grouping, association, precision, the manifest, the CLI loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
from factories import demo_overrides
from PIL import Image

from reidkit.errors import ReIDError


def _known_case():
    """Queries of 3 people (two of person 1), gallery with 2x person 1, person 2, a distractor
    that looks like person 3, and an image like nobody."""
    e = np.eye(5)
    qf = np.stack([e[0], e[0] + 0.05 * e[4], e[1], e[2]])
    gf = np.stack([e[0] + 0.1 * e[3], e[0] - 0.1 * e[3], e[1] + 0.1 * e[4], e[2] + 0.2 * e[3], e[3]])
    q_true = np.array([1, 1, 2, 3])
    g_true = np.array([1, 1, 2, 0, 4])
    return qf, gf, q_true, g_true


def test_grouping_association_and_precision_on_a_known_case():
    from reidkit.experiments.pseudo_label import group_queries, label_precision, pseudo_identities

    qf, gf, q_true, g_true = _known_case()
    groups = group_queries(qf, 0.3)
    assert groups[0] == groups[1] and len(set(groups.tolist())) == 3  # the duplicate query merged
    ql, gl = pseudo_identities(qf, gf, dedup_threshold=0.3, threshold=0.7)
    assert gl[4] == -1  # the image like nobody stays unlabelled
    assert gl[0] == gl[1] == ql[0] and gl[2] == ql[2] and gl[3] == ql[3]
    rep = label_precision(np.concatenate([ql, gl]), np.concatenate([q_true, g_true]))
    # 8 labelled: 4 of person 1, 2 of person 2, person 3 + a distractor -> 7 right
    assert rep["labelled"] == 8 and rep["identities"] == 3
    assert rep["precision"] == pytest.approx(7 / 8)
    assert rep["pair_precision"] == pytest.approx(7 / 8)  # 6 + 1 right pairs, 1 wrong
    assert rep["pair_recall"] == pytest.approx(1.0)
    # a stricter threshold leaves the distractor (similarity 0.98) out only above it
    ql2, gl2 = pseudo_identities(qf, gf, 0.3, threshold=0.99)
    assert gl2[3] == -1 and ql2[3] == -1  # person 3 alone is below min_size


def test_manifest_is_loadable_by_the_csv_loader(tmp_path):
    from reidkit.data.datasets import Record, load_dataset
    from reidkit.experiments.pseudo_label import write_manifest

    recs = []
    for i in range(5):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 16), (i * 40, 0, 0)).save(p)
        recs.append(Record(str(p), pid=0, camid=i % 2, dataset="target"))
    path = write_manifest(tmp_path / "m" / "pseudo.csv", recs, [0, 0, 1, -1, 1])
    ds = load_dataset("csv", path, dataset_name="pseudo")
    assert len(ds.train) == 4 and not ds.query and not ds.gallery
    assert sorted({r.pid for r in ds.train}) == [1, 2]
    assert [r.camid for r in ds.train] == [0, 1, 0, 0]


def test_bad_arguments_raise():
    from reidkit.experiments.pseudo_label import group_queries, label_precision

    with pytest.raises(ReIDError, match="threshold"):
        group_queries(np.eye(3), 0.0)
    with pytest.raises(ReIDError):
        label_precision([0, 1], [1])


def test_cli_labels_the_test_set_and_retrains(tmp_path, capsys):
    from reidkit.cli import main
    from reidkit.data.datasets import load_dataset
    from reidkit.models.build import ModelConfig, build_model, save_model

    root = tmp_path / "data"
    net = build_model(ModelConfig(backbone="mobilenetv2", pretrained=True, pooling="avg"), 6)
    weights = save_model(tmp_path / "base.pt", net, ModelConfig(backbone="mobilenetv2", pooling="avg"), 6, [64, 32])
    common = ["--config", "demo", *demo_overrides(root, 12, 5, tmp_path / "run")]
    code = main(
        ["pseudo-label", "--weights", str(weights), "--threshold", "0.8", "--out", str(tmp_path / "pl"), *common]
    )
    assert code == 0
    summary = json.loads((tmp_path / "pl" / "pseudo_label.json").read_text())
    it = summary["iterations"][0]
    manifest = load_dataset("csv", it["manifest"], dataset_name="pseudo")
    assert len(manifest.train) == it["labelled_query"] + it["labelled_gallery"] > 0
    p = it["precision"]
    assert 0 < p["precision"] <= 1 and p["labelled"] == len(manifest.train)
    assert it["metrics"]["mAP"] > 0  # retrained on train + pseudo set, evaluated on the test split
    assert (tmp_path / "pl" / "iter_1" / "train" / "model.pt").is_file()
    assert "precision" in capsys.readouterr().out


def test_nothing_labelled_says_why_and_names_no_final_weights(tmp_path, capsys):
    from reidkit.cli import main
    from reidkit.models.build import ModelConfig, build_model, save_model

    net = build_model(ModelConfig(backbone="mobilenetv2", pretrained=True, pooling="avg"), 6)
    weights = save_model(tmp_path / "base.pt", net, ModelConfig(backbone="mobilenetv2", pooling="avg"), 6, [64, 32])
    opts = "{ids: 6, images_per_id: 4, cams: 2, seed: 5}"
    code = main(
        [
            "pseudo-label",
            "--weights",
            str(weights),
            "--threshold",
            "1.0",
            "--dedup-threshold",
            "0.0001",
            "--out",
            str(tmp_path / "pl"),
            "--config",
            "demo",
            f"data.datasets=[{{name: synthetic, root: '{tmp_path / 'data'}', options: {opts}}}]",
            "data.size=[64,32]",
            "model.backbone=mobilenetv2",
            "model.pooling=avg",
            "device=cpu",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "0 query groups" in out and "nothing labelled: " in out and "lower --threshold (e.g. " in out
    assert "no model retrained" in out
    assert "final weights" not in out and str(weights) not in out  # never the input weights
    # issue 31: a readable ending, not a raw JSON line, that says the setting is transductive
    last = out.strip().splitlines()[-1]
    assert not last.startswith("{") and "labels the test set" in last and "on that same test set" in last
    assert json.loads((tmp_path / "pl" / "pseudo_label.json").read_text())["weights"] == str(weights)


def test_defaults_label_the_synthetic_demo_data(tmp_path, capsys):
    """issue 21: with its defaults, pseudo-label on the demo recipe's synthetic data labelled nothing
    ("0 query groups": a fixed cosine threshold of 0.7 that a trained BNNeck model's centred features
    never reach). The default threshold now follows the model's own scale."""
    from reidkit.cli import main

    opts = "{ids: 12, images_per_id: 6, cams: 3, seed: 0}"
    common = [
        "--config",
        "demo",
        f"data.datasets=[{{name: synthetic, root: '{tmp_path / 'data'}', options: {opts}}}]",
        "data.size=[64,32]",
        "device=cpu",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    assert (
        main(
            [
                "train",
                *common,
                "solver.max_epochs=2",
                "sampler.p=4",
                "sampler.epoch_batches=4",
                f"output_dir={tmp_path / 'run'}",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "pseudo-label",
                "--weights",
                str(tmp_path / "run" / "model.pt"),
                "--no-retrain",
                "--out",
                str(tmp_path / "pl"),
                *common,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    it = json.loads((tmp_path / "pl" / "pseudo_label.json").read_text())["iterations"][0]
    assert it["query_groups"] > 0 and it["labelled_gallery"] > 0, out
    assert it["precision"]["precision"] >= 0.5, it  # sensible: most labels are right
    assert "(auto)" in out and "nothing labelled" not in out and "no model retrained (--no-retrain)" in out


def test_summary_ends_in_words_with_the_final_weights_and_the_setting():
    """Issue 31: the summary ended with a raw JSON line and never said the mAP is on the labelled test set."""
    from reidkit.experiments.pseudo_label import format_summary

    it = {
        "iteration": 1,
        "threshold": 0.5,
        "query_groups": 3,
        "labelled_query": 3,
        "labelled_gallery": 4,
        "metrics": {"mAP": 50.0, "rank1": 60.0},
        "manifest": "m.csv",
    }
    lines = format_summary({"threshold": 0.5, "iterations": [it], "final_weights": "/x/model.pt"}).splitlines()
    assert "retrained mAP 50.0 rank-1 60.0 (on the same test set)" in lines[0]
    assert lines[1] == "final weights: /x/model.pt" and lines[2].startswith("note: transductive setting")
    assert not any(ln.lstrip().startswith("{") for ln in lines)
