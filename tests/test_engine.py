"""Training engine (supervised details): outputs of a run, learning, center-loss SGD, schedules, ablation, loaders, demo.

The lifecycle shared by both trainer kinds (resume, NaN guard, precision, channels_last) is in test_lifecycle.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import procs
import pytest
from factories import with_overrides
import torch
import yaml

import reidkit
from reidkit.cli import main as cli_main
from reidkit.config import load_config
from reidkit.data.datasets import load_dataset
from reidkit.engine.optim import lr_factor
from reidkit.engine.supervised import SupervisedTrainer as Trainer
from reidkit.errors import ReIDError

SYN = {"ids": 16, "images_per_id": 8, "cams": 3, "seed": 0}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("engine")
    load_dataset("synthetic", root / "syn", **SYN)  # 8 train ids x 8 images, 19 queries, 56 gallery
    return root


def tiny_cfg(work: Path, out: str, **extra) -> dict:
    """A BoT config shrunk to seconds: resnet18 from scratch at 64x32, 2 batches of 4x4 per epoch."""
    cfg = {
        "_base_": "bot_r50.yaml",
        "data": {
            "datasets": [{"name": "synthetic", "root": str(work / "syn"), "options": dict(SYN)}],
            "size": [64, 32],
        },
        "input": {"mean": None, "std": None},
        "sampler": {"p": 4, "k": 4, "epoch_batches": 2},
        "model": {"backbone": "resnet18", "pretrained": False},
        "solver": {
            "max_epochs": 2,
            "warmup_epochs": 1,
            "warmup_factor": 0.1,
            "sched_epoch_offset": 0,
            "steps": [2],
            "eval_period": 1,
            "log_period": 1,
        },
        "test": {"batch_size": 128},
        "device": "cpu",
        "output_dir": str(work / out),
    }
    return with_overrides(cfg, extra)


def write_cfg(work: Path, name: str, cfg: dict) -> Path:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def full_run(work: Path) -> Path:
    """Two epochs through the CLI, validated after each."""
    path = write_cfg(work, "full", tiny_cfg(work, "full"))
    assert cli_main(["train", "--config", str(path)]) == 0
    return work / "full"


# ----------------------------------------------------------------------------- a run's outputs


def test_train_writes_every_output(full_run: Path):
    for name in ["config.yaml", "train.log", "last.pt", "best.pt", "model.pt", "metrics.json"]:
        assert (full_run / name).is_file(), name
    resolved = load_config(full_run / "config.yaml")
    assert resolved.solver.max_epochs == 2 and resolved.model.backbone == "resnet18"

    metrics = json.loads((full_run / "metrics.json").read_text())
    m = metrics["datasets"]["synthetic"]
    assert set(m) == {"mAP", "rank1", "rank5", "rank10", "mINP", "score"}
    assert 0 < m["mAP"] <= 100 and m["rank1"] <= m["rank5"] <= m["rank10"] <= 100
    assert m["score"] == pytest.approx((m["mAP"] + m["rank1"]) / 2)
    assert metrics["mean"]["score"] == pytest.approx(m["score"])
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    best = max(metrics["history"], key=lambda h: h["score"])
    assert metrics["best"] == {"epoch": best["epoch"], "score": pytest.approx(best["score"])}

    log = (full_run / "train.log").read_text()
    assert "epoch 2 iter 2/2 loss" in log and "img/s" in log and "validation epoch 2" in log

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((full_run / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {
        "train/loss",
        "train/lr",
        "train/softmax",
        "train/triplet",
        "train/center",
        "val/synthetic/mAP",
        "val/mean_score",
    } <= tags
    lrs = [e.value for e in acc.Scalars("train/lr")]
    # warmup_multistep by epoch, 1 warmup epoch: 0.1 x 3.5e-4 in the first epoch, then 3.5e-4.
    assert lrs == pytest.approx([3.5e-5, 3.5e-5, 3.5e-4, 3.5e-4])

    ckpt = torch.load(full_run / "last.pt", map_location="cpu", weights_only=False)
    for key in [
        "model",
        "optim",
        "scheduler",
        "sampler",
        "rng",
        "epoch",
        "best_score",
        "model_cfg",
        "num_classes",
        "input_size",
    ]:
        assert key in ckpt, key
    assert len(ckpt["optim"]["extras"]) == 1  # the center loss's own SGD
    assert ckpt["epoch"] == 2 and ckpt["input_size"] == [64, 32]
    from reidkit.models.loading import load_model

    model = load_model(full_run / "best.pt")
    assert model.input_size == [64, 32]


def test_test_command_reevaluates_weights(full_run: Path, capsys):
    out = full_run.parent / "tested"
    code = cli_main(
        ["test", "--config", str(full_run / "config.yaml"), "--weights", str(full_run / "model.pt"), "--out", str(out)]
    )
    assert code == 0
    again = json.loads((out / "metrics.json").read_text())
    trained = json.loads((full_run / "metrics.json").read_text())
    # model.pt holds the best validated weights: the same numbers as that epoch's validation.
    best = next(h for h in trained["history"] if h["epoch"] == trained["best"]["epoch"])
    assert trained["final_weights"]["weights"] == "best"
    # one copy on disk: model.pt is a hard link of best.pt, not a second 19 MB file (issue 31)
    assert (full_run / "model.pt").stat().st_ino == (full_run / "best.pt").stat().st_ino
    assert trained["final_weights"]["epoch"] == trained["best"]["epoch"]
    assert again["datasets"]["synthetic"]["mAP"] == pytest.approx(best["mAP"], abs=1e-6)
    assert "synthetic" in capsys.readouterr().out
    assert "model.pt = the best validated weights" in (full_run / "train.log").read_text()
    from reidkit.engine.api import test as api_test

    rr = api_test(full_run / "config.yaml", full_run / "model.pt", out_dir=out / "rr", overrides=["test.rerank=true"])
    assert rr["rerank"] is True and 0 < rr["datasets"]["synthetic"]["mAP"] <= 100


def test_test_without_out_keeps_the_training_metrics(full_run: Path, tmp_path: Path):
    # `reidkit test` on a run writes <output_dir>/test/metrics.json, never over the run's own file.
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    before = (run / "metrics.json").read_bytes()
    cfg = load_config(run / "config.yaml", [f"output_dir={run}"])
    cfg_path = tmp_path / "cfg.yaml"
    cfg.to_yaml(cfg_path)
    assert cli_main(["test", "--config", str(cfg_path), "--weights", str(run / "model.pt")]) == 0
    assert (run / "metrics.json").read_bytes() == before
    assert json.loads((run / "test" / "metrics.json").read_text())["weights"].endswith("model.pt")


# ----------------------------------------------------------------------------- NaN guard


def test_exploding_lr_never_overwrites_a_checkpoint(work: Path, full_run: Path, capsys):
    run = work / "nan_lr"
    shutil.copytree(full_run, run)
    before = digest(run / "last.pt")
    # A fresh run into the same folder: Adam moves every weight by ~lr, so 1e30 makes the next
    # forward pass non-finite long before the epoch ends and its checkpoint would be written.
    with pytest.raises(ReIDError, match=r"diverged: the loss is (nan|inf) at iteration 2 \(epoch 1\)"):
        reidkit.train(tiny_cfg(work, "nan_lr"), solver__base_lr=1e30, solver__warmup_epochs=0)
    # reidkit.train() from Python shows the run's progress on the console (no logging set up here)
    assert "training on synthetic: " in capsys.readouterr().err
    assert digest(run / "last.pt") == before


def test_a_failed_run_is_reported_once_on_the_console(work: Path, tmp_path: Path):
    """`reidkit train` that diverges: one `error:` line, not also ignite's "terminating" records."""
    import sys

    path = write_cfg(tmp_path, "diverge", tiny_cfg(work, "diverge", solver__max_epochs=1))
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = procs.run(
        [
            sys.executable,
            "-m",
            "reidkit.cli",
            "train",
            "--config",
            str(path),
            "solver.base_lr=1e30",
            "solver.warmup_epochs=0",
            "data.val=[]",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("diverged") == 1 and "terminating" not in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- learning


def test_tiny_model_learns(work: Path):
    """48 iterations from scratch: retrieval among the training identities improves clearly.

    (Generalising to unseen identities needs far more identities and iterations than a unit test
    can afford; the demo shows that part.)
    """
    import dataclasses

    cfg = tiny_cfg(
        work,
        "learn",
        solver__max_epochs=8,
        solver__eval_period=100,
        solver__warmup_epochs=0,
        solver__base_lr=1e-3,
        solver__steps=[6],
        sampler__epoch_batches=6,
        input__erase_p=0.0,
        solver__checkpoint_period=100,
    )
    trainer = Trainer(cfg).setup()
    train = trainer.joint.parts[0].train
    first: dict[int, object] = {}
    for r in train:
        first.setdefault(r.pid, r)
    seen = dataclasses.replace(
        trainer.joint.parts[0],
        name="seen",
        query=list(first.values()),
        gallery=[r for r in train if first[r.pid] is not r],
    )
    trainer.val_sets, trainer.val_prepared = [seen], None
    untrained = trainer.validate()["mean"]
    trained = trainer.fit()["mean"]
    assert trained["mAP"] > untrained["mAP"] + 20, (untrained, trained)
    assert trained["rank1"] >= untrained["rank1"], (untrained, trained)


# ----------------------------------------------------------------------------- optimisers, precision


def test_center_loss_has_its_own_sgd_with_rescaled_gradient(work: Path):
    trainer = Trainer(tiny_cfg(work, "center", solver__max_epochs=1)).setup()
    centers = trainer.criterion.center.centers
    in_main = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert id(centers) not in in_main
    assert isinstance(trainer.center_optimizer, torch.optim.SGD)
    assert trainer.center_optimizer.param_groups[0]["lr"] == 0.5
    images, labels, _ = next(iter(trainer.loader))
    with torch.no_grad():
        feats = trainer.net.train()(images, labels)["feat"]
        c0 = centers.detach().clone()
        # d(mean ||f - c_y||^2)/dc_y (bot_r50: the code's form, no 1/2), unweighted: the BoT
        # update ignores the 5e-4 loss weight.
        grad = torch.zeros_like(c0)
        grad.index_add_(0, labels, 2.0 * (c0[labels] - feats))
        grad /= len(labels)

    class _State:
        iteration, epoch = 1, 1

    class _Engine:
        state = _State()

    trainer._process(_Engine(), (images, labels, None))
    assert torch.allclose(centers.detach(), c0 - 0.5 * grad, atol=1e-5)
    trainer.close()


def test_schedules():
    cfg = load_config("bot_r50", ["solver.warmup_factor=0.1", "solver.sched_epoch_offset=0"])
    f = [lr_factor(cfg, e) for e in [0, 1, 5, 9, 10, 39, 40, 69, 70, 119]]
    assert f == pytest.approx([0.1, 0.19, 0.55, 0.91, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    assert lr_factor(cfg, 0.5) == pytest.approx(0.1)  # per-epoch: constant inside epoch 0
    it = load_config("bot_r50", ["solver.sched_unit=iter", "solver.warmup_factor=0.1", "solver.sched_epoch_offset=0"])
    assert lr_factor(it, 0.5) == pytest.approx(0.145)
    # the recipe as reid-strong-baseline runs it (factor 0.01, one epoch ahead): tests/test_parity_bot.py
    assert lr_factor(load_config("bot_r50"), 0) == pytest.approx(0.109)
    cos = load_config("bot_r50", ["solver.scheduler=cosine", "solver.max_epochs=10", "solver.sched_epoch_offset=0"])
    assert [lr_factor(cos, e) for e in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    wc = load_config(
        "bot_r50",
        [
            "solver.scheduler=warmup_cosine",
            "solver.max_epochs=12",
            "solver.warmup_epochs=2",
            "solver.warmup_factor=0.1",
            "solver.sched_epoch_offset=0",
        ],
    )
    assert [lr_factor(wc, e) for e in (0, 1, 2, 7, 12)] == pytest.approx([0.1, 0.55, 1.0, 0.5, 0.0])


def test_optimizers_and_layerwise_lrs(work: Path):
    for name, cls in [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)]:
        cfg = tiny_cfg(
            work,
            f"opt_{name}",
            solver__optimizer=name,
            solver__backbone_lr_factor=0.1,
            solver__warmup_epochs=0,
            loss__names=["softmax", "triplet"],
        )
        trainer = Trainer(cfg).setup()
        assert isinstance(trainer.optimizer, cls) and trainer.center_optimizer is None
        lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
        assert lrs["backbone"] == pytest.approx(3.5e-5) and lrs["head"] == pytest.approx(3.5e-4)
        trainer.close()


# ----------------------------------------------------------------------------- ablation


def test_ablate_grid_writes_its_table(work: Path):
    base = write_cfg(work, "abl", tiny_cfg(work, "abl_unused", solver__max_epochs=1, sampler__epoch_batches=1))
    out = work / "ablation"
    code = cli_main(["ablate", "--config", str(base), "--grid", "solver.amp=none,bf16", "--out", str(out)])
    assert code == 0
    rows = json.loads((out / "ablation.json").read_text())
    assert [r["change"] for r in rows] == ["solver.amp=none", "solver.amp=bf16"]
    assert all(0 < r["mAP"] <= 100 and r["backbone"] == "resnet18" for r in rows)
    table = (out / "ablation.md").read_text().splitlines()
    assert table[0] == "| backbone | id | change | mAP | rank-1 | mean |"
    assert table[2].startswith("| resnet18 | 1 | solver.amp=none | ")
    assert len(table) == 4
    assert (out / "02_solver.amp_bf16" / "metrics.json").is_file()


def test_ablate_plans_recipes_and_cartesian_grids():
    from reidkit.experiments.ablate import plan_runs, split_values

    runs = plan_runs(config="bot_r50", grid=["model.last_stride=1,2", "solver.steps=[40,70],[30,60]"])
    assert len(runs) == 4
    assert runs[1]["grid"] == ["model.last_stride=1", "solver.steps=[30, 60]"]
    assert split_values("a,[1,2],{b: 3}") == ["a", "[1,2]", "{b: 3}"]
    ladder = plan_runs(recipes=["baseline_r50", "trick1_warmup"], overrides=["solver.max_epochs=1"])
    assert [r["config"] for r in ladder] == ["baseline_r50", "trick1_warmup"]
    assert all(r["overrides"] == ["solver.max_epochs=1"] for r in ladder)


def test_pil_loader_and_camera_sampler_train(work: Path):
    from reidkit.data.samplers import CameraBalancedPKSampler

    cfg = tiny_cfg(work, "pil", solver__max_epochs=1, sampler__epoch_batches=1, sampler__type="camera")
    cfg["data"].update(loader="pil", num_workers=0, val=[])
    trainer = Trainer(cfg)
    result = trainer.fit()
    assert result["datasets"] == {} and result["train"]["images_per_s"] > 0
    assert (work / "pil" / "last.pt").is_file()
    # the camera sampler, built from the records' cameras: each identity's K images of a batch come from
    # min(K, its cameras) cameras, in the epoch trained and in the next ones (K=4 of 8 images in 3 cameras
    # drawn at random would miss a camera in about a third of the groups)
    sampler = trainer.sampler
    assert isinstance(sampler, CameraBalancedPKSampler)
    records = trainer.train_records
    assert [r.camid for r in records] == list(sampler.camids)
    for batch in (b for epoch in range(1, 11) for b in sampler.global_batches(epoch)):
        for j in range(0, len(batch), 4):
            group = batch[j : j + 4]
            pid = {records[i].pid for i in group}
            assert len(pid) == 1
            cams_of_id = {r.camid for r in records if r.pid in pid}
            got = len({records[i].camid for i in group})
            assert got == min(4, len(cams_of_id)), f"identity {pid}: K images from {got} of {len(cams_of_id)} cameras"


def test_demo_pipeline_end_to_end(work: Path, capsys):
    from reidkit.experiments.demo import format_demo_table, run_demo

    out = work / "demo"
    metrics = run_demo(
        out,
        overrides=[
            "data.datasets.0.options={ids: 12, images_per_id: 6, cams: 3, seed: 0}",
            "data.size=[64, 32]",
            "solver.max_epochs=1",
            "sampler.p=4",
            "sampler.epoch_batches=2",
            "test.batch_size=64",
        ],
        num_pictures=2,
        echo=False,
    )
    for key in ("before", "after", "after_rerank"):
        assert 0 < metrics[key]["mAP"] <= 100
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["before"] == metrics["before"] and saved["model"] == "efficientnet_lite0"
    assert (out / "ranked" / "index.html").is_file() and (out / "ranked" / "query_00001.png").is_file()
    assert (out / "train" / "model.pt").is_file()
    assert "after fine-tuning + re-ranking" in format_demo_table(metrics)
    # issue 21: from Python, with output not a terminal, each long step says when it is done
    err = capsys.readouterr().err
    for step in (
        "demo: synthetic dataset: done in",
        "decoding training images: ",
        "evaluation synthetic query: ",
        "evaluation synthetic ranking (re-ranked): ",
        "demo: synthetic query: ",
        "demo: ranked lists: 2 pictures done in",
    ):
        assert step in err, (step, err)
