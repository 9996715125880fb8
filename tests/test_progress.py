"""Progress of long steps (issue 21): one line per step when output is not a terminal, from the
CLI and from the Python API (pytest's captured stderr is not a terminal, so no bar is drawn)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from factories import tiny_checkpoint
import yaml

from reidkit.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    from reidkit.data.datasets import load_dataset

    w = tmp_path_factory.mktemp("progress")
    syn = w / "syn"
    load_dataset("synthetic", syn, ids=12, images_per_id=6, cams=2, seed=0)
    weights = tiny_checkpoint(w / "model.pt", seed=None, classes=3, size=(32, 16), pooling="avg")
    tiny = {
        "_base_": "bot_r50.yaml",
        "data": {
            "datasets": [
                {
                    "name": "synthetic",
                    "root": str(syn),
                    "options": {"ids": 12, "images_per_id": 6, "cams": 2, "seed": 0},
                }
            ],
            "size": [32, 16],
        },
        "model": {"backbone": "resnet18", "pretrained": False},
        "device": "cpu",
        "output_dir": str(w / "run"),
    }
    (w / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    return {"w": w, "syn": syn, "weights": weights, "tiny": w / "tiny.yaml"}


def done_line(err: str, desc: str) -> re.Match:
    """The step's one line (``desc: [N unit ]done in T s``), which must be there exactly once."""
    lines = re.findall(rf"^{re.escape(desc)}: (?:[\d,]+ \w+ )?done in \d+\.\d s$", err, flags=re.M)
    assert len(lines) == 1, (desc, err)
    return lines[0]


def test_step_logs_one_line_from_python_when_not_a_terminal(capsys):
    from reidkit.utils.progress import console_progress, step

    with console_progress():
        with step("counting", 1234, "images") as bar:
            bar.update(1234)
        with step("quiet", 3, show=False):
            pass
    err = capsys.readouterr().err
    assert "counting: 1,234 images done in" in done_line(err, "counting")
    assert "quiet" not in err


def _extract(world, out):
    return main(
        [
            "extract",
            "--weights",
            str(world["weights"]),
            "--images",
            str(world["syn"]),
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )


def test_extract_shows_its_steps(world, capsys):
    out = world["w"] / "f.npz"
    assert _extract(world, out) == 0
    err = capsys.readouterr().err
    n = len(list(world["syn"].rglob("*.jpg")))
    assert done_line(err, "extract, decoding").startswith(f"extract, decoding: {n} images")
    assert done_line(err, "extract, features").startswith(f"extract, features: {n} images")


def test_visrank_shows_its_steps(world, capsys):
    feats = world["w"] / "vis.npz"
    assert _extract(world, feats) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "visrank",
                "--features",
                str(feats),
                "--dataset",
                "synthetic",
                "--root",
                str(world["syn"]),
                "--out",
                str(world["w"] / "vis"),
                "--max-queries",
                "3",
                "--rerank",
                "-o",
                "ids=12",
                "-o",
                "images_per_id=6",
                "-o",
                "cams=2",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    done_line(err, "visrank: re-ranking")
    assert done_line(err, "visrank: ranked lists").startswith("visrank: ranked lists: 3 pictures")


def test_python_test_shows_evaluation_steps(world, capsys):
    import reidkit

    reidkit.test(world["tiny"], world["weights"], out_dir=world["w"] / "test")
    err = capsys.readouterr().err
    for desc in ("evaluation synthetic query", "evaluation synthetic gallery", "evaluation synthetic ranking"):
        done_line(err, desc)
    # the CLI verb prints the same lines
    assert (
        main(
            [
                "test",
                "--config",
                str(world["tiny"]),
                "--weights",
                str(world["weights"]),
                "--out",
                str(world["w"] / "test2"),
            ]
        )
        == 0
    )
    done_line(capsys.readouterr().err, "evaluation synthetic query")


def test_training_logs_every_log_period_iterations_without_a_terminal(world, capsys):
    """Issue 31: training printed nothing inside an epoch (100-213 s between lines under load): without a
    terminal (no bar), a line every solver.log_period iterations, from the Python API and the CLI verbs."""
    import reidkit

    reidkit.train(
        world["tiny"],
        output_dir=str(world["w"] / "iters"),
        solver__max_epochs=1,
        solver__log_period=2,
        solver__eval_period=100,
        sampler={"p": 4, "k": 2, "epoch_batches": 4},
    )
    err = capsys.readouterr().err
    lines = re.findall(r"^epoch 1 iter (\d+)/4 loss \S+ .* img/s$", err, flags=re.M)
    assert lines == ["2", "4"], err
    assert err.index("epoch 1 iter 2/4") < err.index("epoch 1/1 done in")


@pytest.mark.parametrize(
    "argv,target",
    [
        (["demo", "--out", "{tmp}"], "reidkit.experiments.demo.run_demo"),
        (["ablate", "--config", "demo", "--recipes", "a", "--out", "{tmp}"], "reidkit.experiments.ablate.run_ablation"),
        (
            ["pseudo-label", "--config", "demo", "--weights", "w.pt"],
            "reidkit.experiments.pseudo_label.run_pseudo_label",
        ),
    ],
)
def test_verbs_that_train_echo_iteration_lines_without_a_terminal(argv, target, tmp_path, capsys, monkeypatch):
    from reidkit.utils.progress import log

    def fake(*args, **kwargs):
        log.info("epoch 1 iter 10/40 loss 1.0 () lr 1 1 img/s", extra={"per_iteration": True})
        raise SystemExit(0)

    monkeypatch.setattr(target, fake)
    with pytest.raises(SystemExit):
        main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert "epoch 1 iter 10/40" in capsys.readouterr().err
