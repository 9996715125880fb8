"""Public registries: one Registry class, did-you-mean errors, and parts registered from user code
(the README's example is executed as it is written)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import reidkit
from reidkit.errors import ReIDError
from reidkit.registry import Registry

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(title: str) -> str:
    """The first ```python block after the README heading `title`."""
    text = README.read_text()
    at = text.index(title)
    m = re.search(r"```python\n(.*?)```", text[at:], re.S)
    assert m, f"no python block after {title!r}"
    return m.group(1)


def test_registry_errors_name_the_nearest_and_all_names():
    reg: Registry = Registry("widget", "model.widget")
    reg.register("resnet50", 1)
    reg.register("resnet101", 2)
    with pytest.raises(ReIDError, match=r"unknown widget 'resnet5' \(model.widget\) \(did you mean 'resnet50'\?\); "
                                        r"valid names: resnet50, resnet101"):
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
    code = ("import sys, reidkit.config as c; c.load_config('usl_hhcl'); "
            "print([m for m in sys.modules if m.startswith('reidkit.engine')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture(scope="module")
def user_parts():
    """Execute the README's "Your own parts" block: a dataset, a loss and a USL method."""
    names = {"dataset": "campus", "loss": "feat_norm", "usl": "centroid_ce"}
    ns: dict = {}
    exec(compile(readme_block("### Your own parts"), "README.md", "exec"), ns)  # noqa: S102
    yield names
    from reidkit.data.datasets import DATASETS
    from reidkit.engine.usl.methods import USL_METHODS
    from reidkit.losses import LOSSES

    DATASETS.unregister(names["dataset"])
    LOSSES.unregister(names["loss"])
    USL_METHODS.unregister(names["usl"])


def test_user_dataset_and_loss_train(user_parts, tmp_path):
    cfg = {
        "_base_": "bot_r50.yaml",
        "data": {"datasets": [{"name": "campus", "root": str(tmp_path / "campus"), "options": {"ids": 8}}],
                 "size": [64, 32]},
        "sampler": {"p": 4, "k": 4, "epoch_batches": 2},
        "model": {"backbone": "resnet18", "pretrained": False},
        "loss": {"names": ["softmax", "triplet", "feat_norm"]},
        "solver": {"max_epochs": 1, "warmup_epochs": 0, "log_period": 1},
        "test": {"batch_size": 64},
        "device": "cpu",
        "output_dir": str(tmp_path / "run"),
    }
    result = reidkit.train(cfg)
    assert 0 < result["mean"]["mAP"] <= 100
    assert "feat_norm" in (tmp_path / "run" / "train.log").read_text()


def test_user_usl_method_trains(user_parts, tmp_path):
    from reidkit.engine.usl import ClusterTrainer

    cfg = {
        "_base_": "usl_cluster_contrast.yaml",
        "data": {"datasets": [{"name": "campus", "root": str(tmp_path / "campus"), "options": {"ids": 8}}],
                 "size": [64, 32]},
        "model": {"backbone": "resnet18", "pretrained": False},
        "solver": {"max_epochs": 1, "warmup_epochs": 0, "log_period": 1},
        "usl": {"method": "centroid_ce", "k1": 6, "k2": 3, "min_samples": 2, "batch_size": 8,
                "num_instances": 4, "iters_per_epoch": 2, "outliers": "singleton"},
        "test": {"batch_size": 64},
        "device": "cpu",
        "output_dir": str(tmp_path / "usl"),
    }
    trainer = ClusterTrainer(cfg)
    result = trainer.fit()
    assert type(trainer.method).__name__ == "CentroidCE"
    assert result["clusters"][0]["train_loss"] is not None and 0 < result["mean"]["mAP"] <= 100


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
