"""Public registries: one Registry class, did-you-mean errors, and parts registered from user code
with options of their own (the README's "Your own parts" example, tests/data/parts_example.*, is
executed as it is written)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import procs
import pytest
import torch
import yaml

import reidkit
from reidkit.errors import ReIDError
from reidkit.registry import Registry


def test_registry_errors_name_the_nearest_and_all_names():
    reg: Registry = Registry("widget", "model.widget")
    reg.register("resnet50", 1)
    reg.register("resnet101", 2)
    with pytest.raises(
        ReIDError,
        match=r"unknown widget 'resnet5' \(model.widget\) \(did you mean 'resnet50'\?\); "
        r"valid names: resnet50, resnet101",
    ):
        reg.get("resnet5")
    with pytest.raises(ReIDError, match="already registered"):
        reg.register("resnet50", 3)
    reg.register("resnet50", 3, overwrite=True)
    assert reg.get("resnet50") == 3 and "resnet101" in reg and len(reg) == 2


def test_unknown_names_in_configs_get_did_you_mean(tmp_path):
    from reidkit.data.datasets import load_dataset
    from reidkit.engine.usl import load_usl_config

    with pytest.raises(ReIDError, match="did you mean 'market1501'"):
        load_dataset("market1051", tmp_path)
    with pytest.raises(ReIDError, match="did you mean 'hhcl'"):
        load_usl_config("usl_hhcl", ["usl.method=hhlc"])


def test_importing_the_config_loads_no_engine_module():
    code = (
        "import sys, reidkit.config as c; c.load_config('usl_hhcl'); "
        "print([m for m in sys.modules if m.startswith('reidkit.engine')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


DATA = Path(__file__).parent / "data"


def test_your_own_parts_example_runs_verbatim(tmp_path):
    """The README's "Your own parts": parts.py + parts.yaml, then its shell lines exactly as printed.

    A backbone, a loss and a USL method from a user file, each with an option set on the command
    line; export, extract and test in fresh processes with --plugin; without it, one error naming
    the plug-in the checkpoint recorded (a checkpoint never imports code); an unknown option refused
    with did-you-mean. The README's shell block is this file's lines.
    """
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("```bash\nreidkit train --plugin parts.py", 1)[1].split("```", 1)[0]
    assert ("reidkit train --plugin parts.py" + block).strip() == (DATA / "parts_example.sh").read_text().strip()
    shutil.copy(DATA / "parts_example.py", tmp_path / "parts.py")
    shutil.copy(DATA / "parts_example.yaml", tmp_path / "parts.yaml")
    lines = [ln for ln in (DATA / "parts_example.sh").read_text().splitlines() if ln.strip()]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for i, line in enumerate(lines):
        if line.startswith("#"):
            continue
        argv = shlex.split(line)
        assert argv[0] == "reidkit"
        proc = procs.run(
            [sys.executable, "-m", "reidkit.cli", *argv[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        expected = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].startswith("# error:") else None
        if expected:
            expected = expected.replace("$PWD", str(tmp_path.resolve()))
            assert proc.returncode == 2 and proc.stderr.strip() == expected[2:], proc.stderr
        else:
            assert proc.returncode == 0, (line, proc.stderr[-2000:])
    ckpt = torch.load(tmp_path / "runs" / "parts" / "model.pt", map_location="cpu", weights_only=False)
    assert ckpt["model_cfg"]["backbone"] == "tiny_cnn" and ckpt["model_cfg"]["options"] == {"width": 24}
    assert ckpt["plugins"] == [str((tmp_path / "parts.py").resolve())]
    assert "feat_norm" in (tmp_path / "runs" / "parts" / "train.log").read_text()
    run = yaml.safe_load((tmp_path / "runs" / "parts" / "config.yaml").read_text())
    assert run["loss"]["feat_norm"] == {"scale": 0.001}
    usl = json.loads((tmp_path / "runs" / "parts_usl" / "metrics.json").read_text())
    assert usl["method"] == "centroid_ce" and usl["clusters"][0]["train_loss"] is not None
    usl_cfg = yaml.safe_load((tmp_path / "runs" / "parts_usl" / "config.yaml").read_text())
    assert usl_cfg["usl"]["centroid_ce"] == {"temperature": 0.1}
    assert (tmp_path / "parts.onnx").stat().st_size > 0
    feats = np.load(tmp_path / "query.npz")
    assert feats["features"].shape[1] == 48  # 2 x width 24: the option reached the backbone


def test_plugins_from_the_environment_and_a_clear_error_for_a_missing_one(tmp_path, monkeypatch, capsys):
    from reidkit.cli import main
    from reidkit.config.options import options_class, register_options
    from reidkit.models.backbones import BACKBONES

    plugin = tmp_path / "envparts.py"
    plugin.write_text(
        "from dataclasses import dataclass\nimport reidkit\n"
        "@dataclass\nclass O:\n    depth: int = 2\n"
        "reidkit.register_backbone('env_net', lambda last_stride=1, depth=2: None, options=O)\n"
    )
    monkeypatch.setenv("REIDKIT_PLUGINS", str(plugin))
    try:
        assert main(["recipes", "--options", "env_net"]) == 0
        out = capsys.readouterr().out
        assert "model.options.depth" in out and "int" in out and "2" in out
        assert options_class("backbone", "env_net") is not None
    finally:  # forget the plug-in: later checkpoints of this process must not record it
        from reidkit import plugins

        BACKBONES.unregister("env_net")
        register_options("backbone", "env_net", None)
        plugins._LOADED.pop(str(plugin.resolve()), None)
    monkeypatch.setenv("REIDKIT_PLUGINS", str(tmp_path / "missing.py"))
    assert main(["recipes"]) == 2
    assert capsys.readouterr().err == f"error: plug-in {tmp_path / 'missing.py'}: no such file\n"


def test_user_backbone(tmp_path):
    from reidkit.models import ModelConfig, build_model
    from reidkit.models.backbones import BACKBONES

    class Tiny(torch.nn.Module):
        out_channels = 16

        def __init__(self, last_stride: int = 1) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.conv(x))

    reidkit.register_backbone("tiny_user_net", Tiny)
    try:
        net = build_model(ModelConfig(backbone="tiny_user_net", pretrained=False), 5).eval()
        assert net(torch.zeros(2, 3, 32, 16)).shape == (2, 16)
        with pytest.raises(ReIDError, match="did you mean 'tiny_user_net'"):
            reidkit.build_backbone("tiny_usr_net")
    finally:
        BACKBONES.unregister("tiny_user_net")


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`reidkit ... | head`: the reader is gone before the verb prints: no BrokenPipeError traceback."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "reidkit.cli", "recipes"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    proc.stdout.close()  # long before the interpreter has imported reidkit and printed anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err
