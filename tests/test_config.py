"""Config: recipes, _base_ inheritance, dotted overrides, error messages, YAML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reidkit.config import Config, list_recipes, load_config, parse_overrides
from reidkit.errors import ReIDError

LADDER = [
    "baseline_r50",
    "trick1_warmup",
    "trick2_rea",
    "trick3_ls",
    "trick4_stride1",
    "trick5_bnneck",
    "trick6_center",
]


def test_bot_recipe_is_the_paper():
    cfg = load_config("bot_r50")
    assert cfg.model.backbone == "resnet50" and cfg.model.pretrained is True
    assert (cfg.sampler.p, cfg.sampler.k) == (16, 4)
    assert cfg.data.size == [256, 128] and cfg.input.pad == 10 and cfg.input.flip_p == 0.5
    assert cfg.input.erase_p == 0.5 and cfg.input.erase_area == [0.02, 0.4]
    assert cfg.input.erase_aspect == [0.3, 3.33] and cfg.input.erase_fill == "mean_normalized"
    assert cfg.input.mean == [0.485, 0.456, 0.406] and cfg.input.std == [0.229, 0.224, 0.225]
    assert cfg.loss.label_smooth == 0.1 and cfg.loss.triplet_margin == 0.3
    assert cfg.loss.names == ["softmax", "triplet", "center"]
    assert cfg.loss.center_weight == 5e-4 and cfg.loss.center_lr == 0.5
    assert cfg.model.last_stride == 1 and cfg.model.neck == "bnneck" and cfg.model.neck_feat == "after"
    s = cfg.solver
    assert (s.optimizer, s.base_lr, s.max_epochs, s.steps, s.gamma) == ("adam", 3.5e-4, 120, [40, 70], 0.1)
    assert (s.warmup_epochs, s.warmup_factor, s.sched_epoch_offset) == (10, 0.01, 1)  # the code's (fidelity.md)
    assert cfg.test.metric == "cosine"


def test_trick_ladder_is_cumulative():
    cfgs = [load_config(name) for name in LADDER]
    b = cfgs[0]
    assert b.solver.warmup_epochs == 0 and b.input.erase_p == 0 and b.loss.label_smooth == 0
    assert b.model.last_stride == 2 and b.model.neck == "none" and "center" not in b.loss.names
    # Each step switches on one more trick and keeps the earlier ones.
    assert cfgs[1].solver.warmup_epochs == 10 and cfgs[1].input.erase_p == 0
    assert cfgs[2].input.erase_p == 0.5 and cfgs[2].loss.label_smooth == 0
    assert cfgs[3].loss.label_smooth == 0.1 and cfgs[3].model.last_stride == 2
    assert cfgs[4].model.last_stride == 1 and cfgs[4].model.neck == "none"
    assert cfgs[5].model.neck == "bnneck" and "center" not in cfgs[5].loss.names
    assert "center" in cfgs[6].loss.names
    # The top of the ladder is the full BoT recipe.
    top, bot = cfgs[6].to_dict(), load_config("bot_r50").to_dict()
    for d in (top, bot):
        d.pop("name")
        d.pop("output_dir")
    assert top == bot


def test_packaged_recipes_hold_their_models_and_datasets():
    # (every recipe loads, from any working directory: test_every_packaged_recipe_loads_from_anywhere_and_is_listed)
    names = list_recipes()
    for required in ["bot_r50", "baseline_r50", "bot_r50_ibn_a", "mgn_r50", "joint_market_duke_msmt", "demo"]:
        assert required in names
    mgn = load_config("mgn_r50")
    assert mgn.model.arch == "mgn" and mgn.loss.center_weight == 1e-4 and mgn.input.patch_p == 0.5
    joint = load_config("joint_market_duke_msmt")
    assert [d.name for d in joint.data.datasets] == ["market1501", "dukemtmc", "msmt17"]
    assert load_config("bot_r50_ibn_a").model.backbone == "resnet50_ibn_a"


def test_base_inheritance_relative_path_and_deep_merge(tmp_path: Path):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "parent.yaml").write_text(
        yaml.safe_dump(
            {
                "_base_": "bot_r50.yaml",  # a packaged recipe, found by name
                "solver": {"base_lr": 1e-3, "max_epochs": 7},
                "model": {"backbone": "resnet18"},
            }
        )
    )
    (tmp_path / "child.yaml").write_text("_base_: sub/parent.yaml\nsolver: {max_epochs: 3}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.solver.max_epochs == 3  # child wins
    assert cfg.solver.base_lr == 1e-3  # parent kept (deep merge, not replace)
    assert cfg.solver.steps == [40, 70]  # grandparent kept
    assert cfg.model.backbone == "resnet18" and cfg.model.last_stride == 1


def test_circular_base_is_an_error(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ReIDError, match="circular"):
        load_config(tmp_path / "a.yaml")


def test_dotted_overrides_parse_yaml_values():
    cfg = load_config(
        "bot_r50",
        [
            "model.backbone=resnet50_ibn_a",
            "solver.base_lr=1e-4",
            "solver.steps=[3, 5]",
            "data.datasets.0.root=/elsewhere",
            "test.rerank=true",
            "model.pretrained=/w/r50.pth",
            "data.datasets.0.options={ids: 12}",
            "sampler.epoch_batches=null",
        ],
    )
    assert cfg.model.backbone == "resnet50_ibn_a"
    assert cfg.solver.base_lr == pytest.approx(1e-4) and isinstance(cfg.solver.base_lr, float)
    assert cfg.solver.steps == [3, 5]
    assert cfg.data.datasets[0].root == "/elsewhere" and cfg.data.datasets[0].options == {"ids": 12}
    assert cfg.test.rerank is True and cfg.model.pretrained == "/w/r50.pth"
    assert parse_overrides(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_python_keyword_overrides():
    cfg = load_config("bot_r50", {"solver__max_epochs": 5, "model": {"backbone": "resnet18"}, "seed": 3})
    assert cfg.solver.max_epochs == 5 and cfg.model.backbone == "resnet18" and cfg.seed == 3
    assert cfg.model.last_stride == 1  # a section dict merges, it does not replace


@pytest.mark.parametrize(
    "override, fragment",
    [
        (["model.bakbone=resnet18"], "unknown config key 'model.bakbone' (did you mean 'backbone'?)"),
        (["solvr.base_lr=1"], "valid keys at the top level: name, data, input"),
        (["solver.base_lr=fast"], "config key 'solver.base_lr' expects float, got str 'fast'"),
        (["solver.max_epochs=2.5"], "config key 'solver.max_epochs' expects int, got float 2.5"),
        (["solver.optimizer=rmsprop"], "'solver.optimizer' expects 'adam' | 'sgd' | 'adamw'"),
        (["test.flip=3"], "config key 'test.flip' expects bool, got int 3"),
        (["solver.steps=[1, x]"], "config key 'solver.steps[1]' expects int"),
        (["model.backbone=resnet9000"], "unknown backbone 'resnet9000'"),
        (["loss.names=[softmax, cosine]"], "loss.names"),
        (["data.size=[256]"], "data.size"),
        (["solver.base_lr"], "must look like key=value"),
    ],
)
def test_bad_keys_and_types_raise_clear_errors(override, fragment):
    with pytest.raises(ReIDError) as info:
        load_config("bot_r50", override)
    assert fragment in str(info.value)


def test_unknown_key_lists_valid_keys_of_the_section():
    with pytest.raises(ReIDError) as info:
        load_config({"sampler": {"P": 16}})
    msg = str(info.value)
    assert "valid keys in 'sampler': type, p, k, epoch_batches" in msg


def test_missing_recipe_names_the_path():
    with pytest.raises(ReIDError, match="config file not found: no_such_recipe.yaml"):
        load_config("no_such_recipe.yaml")


def test_to_yaml_round_trip(tmp_path: Path):
    cfg = load_config("mgn_r50", ["solver.max_epochs=9"])
    path = tmp_path / "resolved.yaml"
    cfg.to_yaml(path)
    again = load_config(path)
    assert again == cfg
    assert isinstance(again, Config) and again.solver.max_epochs == 9
    assert "_base_" not in path.read_text()


def test_every_packaged_recipe_loads_from_anywhere_and_is_listed(tmp_path, monkeypatch):
    # the top-level configs/ folder holds no copies that could drift from the packaged recipes
    top = Path(__file__).resolve().parents[1] / "configs"
    assert not list(top.glob("*.yaml"))
    table = (top / "README.md").read_text()
    monkeypatch.chdir(tmp_path)  # found by name, not relative to the working directory
    names = list_recipes()
    assert len(names) >= 21, f"{len(names)} packaged recipes found with the working directory at {tmp_path}"
    for name in names:
        assert f"| `{name}` |" in table, f"configs/README.md does not list recipe {name}"
        assert isinstance(load_config(name), Config), name


def test_import_config_loads_no_torch_nor_engine():
    """`import reidkit.config` (and loading a recipe's YAML) stays free of torch and the engine."""
    import subprocess
    import sys

    code = (
        "import sys, reidkit.config as c; c.load_yaml('usl_demo'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith('reidkit.engine')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
