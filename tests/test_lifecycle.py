"""The shared training lifecycle, run for both trainer kinds (supervised and cluster/USL).

Exact resume, resume=auto, the NaN guard, fp16 refused on CPU, bf16 and channels_last, TensorBoard,
console lines, final weights after a resume at the last epoch, temp files of killed writes. (The
supervised-only engine details are in test_engine.py; nothing is tested in both files.)
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from factories import with_overrides
import torch

from reidkit.data.datasets import load_dataset
from reidkit.engine.api import ClusterTrainer, SupervisedTrainer
from reidkit.errors import ReIDError

SYN = {"ids": 12, "images_per_id": 6, "cams": 3, "seed": 4, "domain": "B"}
KINDS = ["supervised", "cluster"]


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("life") / "syn"
    load_dataset("synthetic", root, **SYN)
    return root


def make_cfg(kind: str, syn: Path, out: Path, **over) -> dict:
    """A seconds-long recipe of either kind: resnet18 from scratch at 64x32, 2 iterations per epoch."""
    cfg: dict = {
        "data": {"datasets": [{"name": "synthetic", "root": str(syn), "options": dict(SYN)}], "size": [64, 32]},
        "input": {"pad": 4},
        "model": {"backbone": "resnet18", "pretrained": False},
        "solver": {
            "max_epochs": 2,
            "warmup_epochs": 0,
            "steps": [10],
            "eval_period": 1,
            "log_period": 1,
            "base_lr": 3.5e-4,
        },
        "test": {"batch_size": 64},
        "device": "cpu",
        "seed": 3,
        "output_dir": str(out),
    }
    if kind == "supervised":
        cfg["_base_"] = "bot_r50.yaml"
        cfg["sampler"] = {"p": 3, "k": 4, "epoch_batches": 2}
        cfg["solver"]["warmup_epochs"] = 0
    else:
        cfg["_base_"] = "usl_cluster_contrast.yaml"
        cfg["usl"] = {
            "k1": 6,
            "k2": 3,
            "eps": 0.6,
            "min_samples": 2,
            "batch_size": 12,
            "num_instances": 4,
            "iters_per_epoch": 2,
            "outliers": "singleton",
        }
    return with_overrides(cfg, over)


def trainer_cls(kind: str):
    return SupervisedTrainer if kind == "supervised" else ClusterTrainer


def run(kind: str, syn: Path, out: Path, **over) -> dict:
    return trainer_cls(kind)(make_cfg(kind, syn, out, **over)).fit()


@pytest.fixture(scope="module")
def one_epoch(syn, tmp_path_factory):
    """`one_epoch(kind, dst)`: a copy at `dst` of the 1-epoch run of that kind, and that run's result.

    Trained once per module and kind, with resume="auto" into an empty folder (a fresh run: what
    test_resume_auto_starts_fresh_then_continues checks of it); the other tests resume it or kill it.
    """
    made: dict[str, tuple[Path, dict]] = {}

    def copy(kind: str, dst: Path) -> tuple[Path, dict]:
        if kind not in made:
            src = tmp_path_factory.mktemp(f"one_epoch_{kind}") / "run"
            made[kind] = (src, run(kind, syn, src, resume="auto", solver__max_epochs=1))
        shutil.copytree(made[kind][0], dst)
        return dst, made[kind][1]

    return copy


@pytest.mark.parametrize("kind", KINDS)
def test_resume_equals_the_uninterrupted_run(kind, syn, tmp_path, one_epoch):
    full = run(kind, syn, tmp_path / "full")
    one_epoch(kind, tmp_path / "cut")  # a run "killed" after its first checkpoint
    resumed = run(kind, syn, tmp_path / "cut", resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["mean"] == pytest.approx(full["mean"], abs=1e-9)
    assert resumed["datasets"] == full["datasets"]
    assert resumed["history"] == full["history"] and resumed["best"] == full["best"]
    assert "resumed from" in (tmp_path / "cut" / "train.log").read_text()
    for name in ("last.pt", "model.pt"):  # the last state and the final (best) weights, tensor for tensor
        a = torch.load(tmp_path / "full" / name, map_location="cpu", weights_only=False)["model"]
        b = torch.load(tmp_path / "cut" / name, map_location="cpu", weights_only=False)["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize("kind", KINDS)
def test_resume_auto_starts_fresh_then_continues(kind, syn, tmp_path, one_epoch):
    out, first = one_epoch(kind, tmp_path / "auto")  # resume="auto", no last.pt yet: a fresh run, no error
    assert [h["epoch"] for h in first["history"]] == [1]
    assert "resumed from" not in (out / "train.log").read_text()
    second = run(kind, syn, out, resume="auto")
    assert [h["epoch"] for h in second["history"]] == [1, 2]
    assert "resumed from" in (out / "train.log").read_text()
    assert torch.load(out / "last.pt", map_location="cpu", weights_only=False)["epoch"] == 2
    with pytest.raises(ReIDError, match="no checkpoint at .*last.pt"):
        run(kind, syn, tmp_path / "none", resume=True)


@pytest.mark.parametrize("kind", KINDS)
def test_resumed_at_the_last_epoch_still_writes_final_weights(kind, syn, tmp_path, one_epoch):
    out, _ = one_epoch(kind, tmp_path / "done")
    (out / "model.pt").unlink()  # killed after its final checkpoint, before the final weights
    (out / "metrics.json").unlink()
    result = run(kind, syn, out, solver__max_epochs=1, resume=True)
    assert (out / "model.pt").is_file() and (out / "metrics.json").is_file()
    assert result["final_weights"]["weights"] == "best"


@pytest.mark.parametrize("kind", KINDS)
def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(kind, syn, tmp_path, one_epoch):
    out, _ = one_epoch(kind, tmp_path / "nan")
    before = (out / "last.pt").read_bytes()
    trainer = trainer_cls(kind)(make_cfg(kind, syn, out, resume=True))
    # the second iteration of epoch 2 (2 iterations per epoch): one good update, then NaN
    trainer.loss_hook = lambda t, loss: loss * float("nan") if t.engine.state.iteration == 4 else loss
    with pytest.raises(ReIDError) as info:
        trainer.fit()
    msg = str(info.value)
    assert "training diverged: the loss is nan at iteration 4 (epoch 2)" in msg and "last.pt" in msg
    assert (out / "last.pt").read_bytes() == before
    assert torch.load(out / "last.pt", map_location="cpu", weights_only=False)["epoch"] == 1
    assert "training stopped: training diverged" in (out / "train.log").read_text()


@pytest.mark.parametrize("kind", KINDS)
def test_fp16_is_refused_on_cpu(kind, syn, tmp_path):
    with pytest.raises(ReIDError, match="solver.amp.*fp16.*CUDA"):
        trainer_cls(kind)(make_cfg(kind, syn, tmp_path / "fp16", solver__amp="fp16")).setup()


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_channels_last_tensorboard_and_console_lines(kind, syn, tmp_path, capsys):
    from reidkit.engine.handlers import console_logging

    seen: list[tuple] = []  # (dtype of conv1's output, weight in NHWC, input in NHWC) per training step

    def spy(module, inputs, output):
        if module.training:
            seen.append(
                (
                    output.dtype,
                    module.weight.is_contiguous(memory_format=torch.channels_last),
                    inputs[0].is_contiguous(memory_format=torch.channels_last),
                )
            )

    handler = console_logging(show_iterations=False)
    try:
        out = tmp_path / "fast"
        trainer = trainer_cls(kind)(
            make_cfg(kind, syn, out, solver__amp="bf16", data__channels_last=True, solver__max_epochs=1)
        )
        trainer.setup()
        trainer.net.backbone.conv1.register_forward_hook(spy)
        result = trainer.fit()
    finally:
        logging.getLogger("reidkit.train").removeHandler(handler)
    # every training forward ran in bf16 autocast on NHWC weights and batches
    assert len(seen) == 2 and set(seen) == {(torch.bfloat16, True, True)}
    err = capsys.readouterr().err
    # one console line per epoch (no per-iteration lines on the console), plus validation
    assert "epoch 1/1 done in" in err and "validation epoch 1" in err
    assert "iter 1/2" not in err
    assert 0 < result["mean"]["mAP"] <= 100
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((out / "tb").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/mean_score", "train/epoch_images_per_s"} <= tags
    if kind == "cluster":
        assert {"cluster/n_clusters", "cluster/purity"} <= tags
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final_weights"]["file"].endswith("model.pt") and (out / "last.pt").is_file()


@pytest.mark.parametrize("kind", KINDS)
def test_temp_files_of_killed_writes_are_removed_and_the_mean_loss_counts_every_iteration(kind, syn, tmp_path):
    out = tmp_path / "temps"
    out.mkdir()
    stale = out / ".last.pt.999999.abcd.tmp"  # a temp whose writer (pid 999999) is gone
    stale.write_bytes(b"x" * 100)
    result = run(kind, syn, out, solver__max_epochs=1, solver__log_period=5)
    assert not stale.exists()
    # the epoch's mean loss is over every iteration, logged or not (log_period 5 > 2 iterations)
    assert re.search(r"epoch 1/1 done in .* mean loss \d+\.\d{4}", (out / "train.log").read_text())
    if kind == "cluster":
        assert result["clusters"][0]["train_loss"] is not None
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("kind", KINDS)
def test_corrupt_training_images_are_counted_in_the_log_and_metrics(kind, syn, tmp_path):
    root = tmp_path / "syn"
    shutil.copytree(syn, root)
    train_dir = next(root.rglob("bounding_box_train"))
    bad = sorted(train_dir.glob("*.jpg"))[:2]
    for p in bad:
        p.write_bytes(b"")  # zero bytes: unreadable
    n_train = len(list(train_dir.glob("*.jpg")))
    out = tmp_path / "run"
    cfg = make_cfg(kind, root, out, solver__max_epochs=1)
    cfg["data"]["datasets"][0]["root"] = str(root)
    result = trainer_cls(kind)(cfg).fit()
    assert result["skipped_images"]["train"] == 2
    assert {Path(p).name for p in result["skipped_images"]["files"]} == {p.name for p in bad}
    log = (out / "train.log").read_text()
    assert "2 unreadable train image(s) skipped" in log
    if kind == "supervised":
        assert f": {n_train - 2} images," in log  # the start line counts only the readable ones
    else:
        assert result["clusters"][0]["n_samples"] == n_train - 2


def test_freeze_backbone_keeps_weights_and_batchnorm_statistics(syn, tmp_path):
    trainer = SupervisedTrainer(
        make_cfg(
            "supervised",
            syn,
            tmp_path / "frozen",
            solver__max_epochs=1,
            solver__freeze_backbone=True,
            solver__eval_period=5,
        )
    )
    trainer.setup()
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    trainer.fit()
    after = trainer.net.state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone)
    assert all(torch.equal(before[k], after[k]) for k in backbone)  # weights and BN statistics
    assert not torch.equal(before["head.classifier.fc.weight"], after["head.classifier.fc.weight"])
    assert not any(p.requires_grad for p in trainer.net.backbone.parameters())
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for p in trainer.net.backbone.parameters())
