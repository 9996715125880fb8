"""ONNX / TorchScript export of the new backbones: ViT with SIE (camera ids as a second input), JPM, OSNet, Swin."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reidkit.export import OnnxFeatureModel, TorchScriptFeatureModel, export_model, parity
from reidkit.models.build import ModelConfig, build_model, save_model

CASES = {
    "vit_sie": dict(backbone="vit_small_patch16", stride_size=12, sie=True, num_cameras=3),
    "transreid_jpm": dict(
        arch="transreid", backbone="vit_small_patch16", stride_size=12, sie=True, num_cameras=3, jpm=True
    ),
    "osnet": dict(backbone="osnet_x0_25"),
    "swin": dict(backbone="swin_tiny", semantic_weight=0.2),
}


def _checkpoint(tmp_path: Path, name: str) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    cfg = ModelConfig(pretrained=False, **CASES[name])
    model = build_model(cfg, 5).eval()
    return save_model(tmp_path / f"{name}.pt", model, cfg, 5, (64, 32)), model


@pytest.mark.parametrize("name", list(CASES))
def test_onnx_parity(tmp_path: Path, name: str):
    weights, model = _checkpoint(tmp_path, name)
    out = export_model(weights, "onnx", tmp_path / f"{name}.onnx", size=(64, 32))
    assert parity(weights, out, batch_sizes=(1, 3)) <= 1e-4
    runner = OnnxFeatureModel(out)
    assert runner.uses_camera == model.uses_camera
    if model.uses_camera:
        # The camera input is live in the graph: other ids, other features, as in torch.
        x = torch.randn(2, 3, 64, 32)
        cams = torch.tensor([2, 0])
        with torch.no_grad():
            ref = model(x, cams=cams)
        got = runner(x, cams)
        assert (got - ref).abs().max() <= 1e-4
        assert (runner(x, torch.tensor([0, 0])) - got).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["vit_sie", "osnet"])
def test_torchscript_parity(tmp_path: Path, name: str):
    weights, model = _checkpoint(tmp_path, name)
    out = export_model(weights, "torchscript", tmp_path / f"{name}.ts", size=(64, 32))
    assert parity(weights, out, batch_sizes=(1, 3), trust=True) <= 1e-4
    assert TorchScriptFeatureModel(out, trust=True).uses_camera == model.uses_camera


@pytest.mark.parametrize("name", ["vit_sie", "osnet"])
def test_cli_export_then_extract_onnx_equals_torch(tmp_path: Path, name: str):
    """`reidkit export` + `reidkit extract --onnx` give the features of `reidkit extract --weights`."""
    import numpy as np
    from PIL import Image

    from reidkit.cli import main

    weights, _ = _checkpoint(tmp_path, name)
    crops = tmp_path / "crops"
    crops.mkdir()
    for i in range(5):
        arr = (np.random.default_rng(i).random((64, 32, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(crops / f"{i + 1:04d}_c{i % 3 + 1}s1_{i:06d}_00.jpg")  # cameras 1..3
    onnx = tmp_path / "m.onnx"
    assert (
        main(["export", "--weights", str(weights), "--format", "onnx", "--out", str(onnx), "--size", "64", "32"]) == 0
    )
    a, b = tmp_path / "torch.npz", tmp_path / "onnx.npz"
    assert main(["extract", "--weights", str(weights), "--images", str(crops), "--out", str(a), "--no-flip"]) == 0
    assert main(["extract", "--onnx", str(onnx), "--images", str(crops), "--out", str(b), "--no-flip"]) == 0
    fa, fb = np.load(a)["features"], np.load(b)["features"]
    assert fa.shape == fb.shape == (5, fa.shape[1]) and np.abs(fa - fb).max() <= 1e-4
