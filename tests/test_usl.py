"""Unsupervised / UDA trainers: a short CPU run of each method, recipes, the eps rule, errors."""

from __future__ import annotations

import json

import numpy as np
import procs
import pytest
import torch

from reidkit.errors import ReIDError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A tiny unsupervised recipe (as a dict) on 16 synthetic identities of domain B."""
    root = tmp_path_factory.mktemp("usl_data")
    return {
        "data": {
            "datasets": [
                {
                    "name": "synthetic",
                    "root": str(root),
                    "options": {"ids": 16, "images_per_id": 6, "cams": 3, "seed": 3, "domain": "B"},
                }
            ],
            "size": [64, 32],
        },
        "input": {"pad": 4, "mean": None, "std": None},
        "model": {
            "backbone": "mobilenetv2",
            "pretrained": True,
            "pooling": "avg",
            "neck": "bnneck",
            "neck_feat": "after",
        },
        "solver": {
            "optimizer": "adam",
            "base_lr": 3.5e-4,
            "warmup_epochs": 0,
            "steps": [100],
            "max_epochs": 1,
            "eval_period": 1,
            "log_period": 1,
        },
        "test": {"batch_size": 64},
        "usl": {
            "k1": 6,
            "k2": 3,
            "eps": 0.6,
            "min_samples": 2,
            "batch_size": 16,
            "num_instances": 4,
            "iters_per_epoch": 2,
        },
        "device": "cpu",
        "seed": 0,
    }


METHODS = {
    "cluster_contrast": {"method": "cluster_contrast", "memory": "cluster"},
    "hhcl": {"method": "hhcl", "memory": "hybrid", "hard_weight": 0.5},
    "ssg": {
        "method": "ssg",
        "ssg": {"spaces": ["global", "upper", "lower"]},
        "eps": None,
        "rho": 0.05,
        "fix_eps": True,
    },
    "dec": {"method": "dec", "dec": {"clusters": 6, "update_period": 1}},
}


def test_the_usl_demo_reports_the_model_before_training(tiny, tmp_path):
    """issue 31: usl_demo ended at an mAP with nothing to compare it with; the recipe evaluates the model before
    training first (epoch 0, never "best"), and the log says which line that is."""
    from reidkit.engine.usl import ClusterTrainer, load_usl_config

    assert load_usl_config("usl_demo").usl.eval_initial
    cfg = {**tiny, "usl": {**tiny["usl"], **METHODS["hhcl"], "eval_initial": True}, "output_dir": str(tmp_path)}
    result = ClusterTrainer(cfg).fit()
    assert [h["epoch"] for h in result["history"]] == [0, 1]
    log = (tmp_path / "train.log").read_text()
    assert "validation before training (epoch 0): synthetic: mAP " in log and "validation epoch 1: " in log


@pytest.mark.parametrize("method", list(METHODS))
def test_each_trainer_runs_one_epoch(tiny, tmp_path, method):
    from reidkit.engine.usl import ClusterTrainer
    from reidkit.models.loading import load_model

    cfg = {**tiny, "usl": {**tiny["usl"], **METHODS[method]}, "output_dir": str(tmp_path / method)}
    trainer = ClusterTrainer(cfg)
    result = trainer.fit()
    out = tmp_path / method
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["method"] == method and saved["epoch"] == 1
    m = saved["datasets"]["synthetic"]
    assert 0 < m["mAP"] <= 100 and 0 <= m["rank1"] <= 100
    rep = saved["clusters"][0]
    # the clustering found structure, was scored against the true labels, and training happened
    assert rep["n_clusters"] >= 2 and 0 < rep["purity"] <= 1 and -1 <= rep["ari"] <= 1
    assert rep["train_loss"] is not None and np.isfinite(rep["train_loss"])
    assert "clusters:" in (out / "train.log").read_text()
    model = load_model(out / "model.pt")
    assert model.feat_dim == trainer.net.feat_dim
    assert (out / "last.pt").is_file() and result["history"][0]["epoch"] == 1
    if method == "ssg":
        # an image that is an outlier in any space is left out of training
        assert set(rep) >= {"upper", "lower"}
        worst = max(rep["n_outliers"], rep["upper"]["n_outliers"], rep["lower"]["n_outliers"])
        assert rep["kept"] <= rep["n_samples"] - worst
        assert trainer.fixed_eps.keys() == {"global", "upper", "lower"}
    if method == "dec":
        assert trainer.method.head.centres.shape[0] == 6 and rep["n_outliers"] == 0


def test_training_moves_the_memory_loss_and_resume_continues(tiny, tmp_path):
    from reidkit.engine.usl import ClusterTrainer

    cfg = {**tiny, "usl": {**tiny["usl"], **METHODS["hhcl"]}, "output_dir": str(tmp_path / "r")}
    ClusterTrainer(cfg).fit()
    before = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    again = {**cfg, "solver": {**cfg["solver"], "max_epochs": 2}, "resume": True}
    result = ClusterTrainer(again).fit()
    assert [c["epoch"] for c in result["clusters"]] == [1, 2]  # epoch 1 restored, epoch 2 re-clustered
    after = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    assert after["epoch"] == 2
    key = next(k for k in after["model"] if k.endswith("weight") and "backbone" in k)
    assert not torch.equal(before["model"][key], after["model"][key])


def test_recipes_follow_the_papers():
    from reidkit.engine.usl import dataset_eps, load_usl_config

    cc = load_usl_config("usl_cluster_contrast")
    u = cc.usl
    assert (u.method, u.eps, u.k1, u.k2, u.min_samples, u.memory) == ("cluster_contrast", 0.6, 30, 6, 4, "cluster")
    assert (u.batch_size, u.num_instances, u.iters_per_epoch, u.momentum, u.temperature) == (256, 16, 200, 0.1, 0.05)
    assert (cc.solver.optimizer, cc.solver.base_lr, cc.solver.weight_decay, cc.solver.max_epochs) == (
        "adam",
        3.5e-4,
        5e-4,
        50,
    )
    assert cc.model.pooling == "gem"
    hh = load_usl_config("usl_hhcl")
    assert (hh.usl.method, hh.usl.memory, hh.usl.hard_weight, hh.solver.max_epochs) == ("hhcl", "hybrid", 0.5, 60)
    assert dataset_eps(hh.usl, "market1501") == 0.45
    assert dataset_eps(hh.usl, "dukemtmc") == 0.6 and dataset_eps(hh.usl, "msmt17") == 0.6
    ssg = load_usl_config("uda_ssg")
    s = ssg.usl
    assert (s.method, s.k1, s.k2, s.rho, s.fix_eps, s.options().triplet_margin) == ("ssg", 20, 6, 1.6e-3, True, 0.5)
    assert (
        s.options().spaces == ["global", "upper", "lower"] and s.init_weights and dataset_eps(s, "market1501") is None
    )
    assert (s.source.enabled, s.source.datasets[0]["name"], s.source.weight, s.source.k) == (True, "dukemtmc", 0.1, 6)
    dec = load_usl_config("usl_dec")
    assert dec.usl.method == "dec" and dec.usl.options().alpha == 1.0 and dec.usl.options("dec").update_period == 100
    demo = load_usl_config("usl_demo")
    assert demo.device == "cpu" and demo.usl.method == "hhcl"


def test_bad_usl_keys_raise_clear_errors():
    from reidkit.engine.usl import load_usl_config

    with pytest.raises(ReIDError, match="usl.method"):
        load_usl_config("usl_hhcl", ["usl.method=kmeans"])
    with pytest.raises(ReIDError, match="usl.spaces"):
        load_usl_config("usl_hhcl", ["usl.spaces=[global,upper]"])
    with pytest.raises(ReIDError, match="usl.batch_size"):
        load_usl_config("usl_hhcl", ["usl.batch_size=8"])
    with pytest.raises(ReIDError, match="usl.source"):
        load_usl_config("usl_hhcl", ["usl.source.enabled=true"])
    with pytest.raises(ReIDError, match=r"usl.dec.alpa' \(did you mean 'alpha'\?\)"):
        load_usl_config("usl_dec", ["usl.dec.alpa=2"])


def test_flat_usl_keys_of_0_1_still_load_with_a_warning_naming_the_new_key():
    from reidkit.engine.usl import load_usl_config

    with pytest.warns(FutureWarning, match="'usl.dec_alpha' has moved to 'usl.dec.alpha'"):
        old = load_usl_config("usl_dec", ["usl.dec_alpha=2.0", "usl.dec_clusters=5"])
    assert old.usl.options() == load_usl_config("usl_dec", ["usl.dec.alpha=2.0", "usl.dec.clusters=5"]).usl.options()
    with pytest.warns(FutureWarning, match="usl.source.datasets"):
        src = load_usl_config(
            "usl_hhcl", ["usl.use_source=true", "usl.source=[{name: market1501}]", "usl.source_lambda=0.2"]
        )
    assert (src.usl.source.enabled, src.usl.source.weight) == (True, 0.2)
    with pytest.warns(FutureWarning, match="usl.ssg.spaces"):
        ssg = load_usl_config("uda_ssg", ["usl.spaces=[global, upper]"])
    assert ssg.usl.options().spaces == ["global", "upper"]


def test_part_spaces_pool_top_and_bottom_halves():
    from reidkit.engine.usl import space_features
    from reidkit.models.build import ModelConfig, build_model

    net = build_model(ModelConfig(backbone="resnet18", pretrained=False, pooling="avg", neck="bnneck"), 2).eval()
    fmap = torch.zeros(1, net.head.pool(torch.zeros(1, 512, 1, 1)).shape[1], 4, 2)
    fmap[:, :, :2] = 1.0  # top half ones, bottom half zeros
    f = space_features(net, fmap, ["global", "upper", "lower"], neck_after=False)
    assert torch.allclose(f["upper"], torch.ones_like(f["upper"]))
    assert torch.allclose(f["lower"], torch.zeros_like(f["lower"]))
    assert torch.allclose(f["global"], torch.full_like(f["global"], 0.5))


def test_cli_usl_verb(tiny, tmp_path, capsys):
    import yaml

    from reidkit.cli import main

    cfg = {**tiny, "usl": {**tiny["usl"], **METHODS["cluster_contrast"]}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["train-usl", "--config", str(path), f"output_dir={tmp_path / 'cli'}", "usl.iters_per_epoch=1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "synthetic: mAP" in printed and "purity" in printed
    assert (tmp_path / "cli" / "metrics.json").is_file()
    assert main(["usl", "--config", str(path), "usl.method=nope"]) == 2


def test_camera_norm_centres_each_camera_before_clustering():
    from reidkit.engine.usl import camera_centred

    # Two identities seen by two cameras; each camera adds a strong style offset. On the raw
    # features the nearest neighbours are the same camera; after camera centring, the same identity.
    ident = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    style = torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, 5.0], [0.0, 0.0, -5.0], [0.0, 0.0, -5.0]])
    raw = torch.nn.functional.normalize(ident + style, dim=1)
    assert float(raw[0] @ raw[1]) > float(raw[0] @ raw[2])
    cent = camera_centred(raw, np.array([0, 0, 1, 1]))
    assert torch.allclose(cent.norm(dim=1), torch.ones(4))
    assert float(cent[0] @ cent[2]) > 0.99 and float(cent[0] @ cent[1]) < 0


def test_ssg_with_camera_norm_runs(tiny, tmp_path):
    from reidkit.engine.usl import ClusterTrainer

    cfg = {
        **tiny,
        "usl": {**tiny["usl"], **METHODS["ssg"], "camera_norm": True, "iters_per_epoch": 1},
        "output_dir": str(tmp_path / "cam"),
    }
    result = ClusterTrainer(cfg).fit()
    assert result["clusters"][0]["n_samples"] == 48 and "upper" in result["clusters"][0]


def test_uda_ssg_as_shipped_names_the_source_key_and_reports_a_failed_clustering_once(tmp_path):
    """issue 21: `reidkit usl` on the shipped uda_ssg recipe. A missing source root names the config key
    `usl.source.datasets`; a clustering that finds nothing is one `error:` line, printed once (a real
    process, so ignite's and Python's own logging would show up too)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    syn = {
        "name": "synthetic",
        "root": str(tmp_path / "syn"),
        "options": {"ids": 8, "images_per_id": 4, "cams": 2, "seed": 0},
    }
    cfg = {
        "_base_": "uda_ssg.yaml",
        "data": {"datasets": [syn], "size": [32, 16]},
        "model": {"backbone": "resnet18", "pretrained": False},
        "solver": {"max_epochs": 1},
        "usl": {"init_weights": None, "batch_size": 4, "num_instances": 2, "iters_per_epoch": 1, "k1": 4, "k2": 2},
        "device": "cpu",
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "ssg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def usl(*overrides: str) -> subprocess.CompletedProcess:
        return procs.run(
            [sys.executable, "-m", "reidkit.cli", "usl", "--config", str(path), *overrides],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=600,
        )

    # the recipe's source domain, dukemtmc under ./data, is not there
    proc = usl()
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "'usl.source.datasets'" in errors[0] and "dukemtmc" in errors[0] and str(tmp_path / "data") in errors[0]

    # a source that is there, and an eps so small that DBSCAN finds no cluster
    proc = usl("usl.source.datasets=[" + yaml.safe_dump(syn, default_flow_style=True).strip() + "]", "usl.rho=0.0001")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("clustering found 0 usable pseudo identities") == 1, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("error: epoch 1: clustering found 0"), proc.stderr
