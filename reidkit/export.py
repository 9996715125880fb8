"""Model export: ONNX (dynamic batch, preprocessing facts in metadata_props) and TorchScript.

The exported graph maps a float ``N x 3 x H x W`` batch, already normalised with the stored
mean/std, to the model's eval feature (``N x D``, not L2-normalised). Models that use the camera
(``uses_camera = True``: ViT with SIE) take a second input ``camids`` (int64, one per image).
Flip TTA and feature normalisation stay with the caller (``extract_features``), exactly as for the
torch model. ``OnnxFeatureModel`` and ``TorchScriptFeatureModel`` implement the feature-model
protocol (``reidkit.inference.features.FeatureModel``); they live in ``reidkit.models.exported``
and ``reidkit.models.loading.load_feature_model`` picks the right runner for a checkpoint, an .onnx
file or a TorchScript archive (both names are re-exported here).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence, cast

import torch
from torch import nn

from reidkit.errors import ReIDError
from reidkit.models.checkpoint import file_sha256, is_torchscript
from reidkit.models.exported import (
    CAMS_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    TS_META,
    OnnxFeatureModel,
    TorchScriptFeatureModel,
    load_torchscript,
    ort_session,
    read_export_metadata,
)
from reidkit.models.build import ReIDModel
from reidkit.models.loading import load_feature_model, load_model

__all__ = [
    "FORMATS",
    "export_model",
    "export_model_to",
    "read_export_metadata",
    "OnnxFeatureModel",
    "TorchScriptFeatureModel",
    "load_torchscript",
    "parity",
    "file_sha256",
    "load_feature_model",
    "is_torchscript",
    "ort_session",
]

FORMATS = ("onnx", "torchscript")
_TS_META = TS_META


class _EvalFeature(nn.Module):
    """The model's eval-mode forward only, so tracing sees tensors in and one tensor out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eval feature of a normalised batch."""
        return cast(torch.Tensor, self.model(x))


class _EvalFeatureCams(nn.Module):
    """Eval forward of a camera-aware model: ``(images, camids) -> features``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, camids: torch.Tensor) -> torch.Tensor:
        """Eval feature of a normalised batch seen by cameras ``camids``."""
        return cast(torch.Tensor, self.model(x, cams=camids))


def _load(weights: str | os.PathLike) -> ReIDModel:
    return load_model(weights, device="cpu").eval()


def _metadata(model: ReIDModel, weights: str | os.PathLike | None, size: tuple[int, int]) -> dict[str, str]:
    info = model.info
    meta: dict[str, Any] = {
        "input_size": [int(size[0]), int(size[1])],
        "mean": list(info.mean),
        "std": list(info.std),
        "feat_dim": info.feat_dim,
        "uses_camera": info.uses_camera,
        "weights_sha256": info.sha256 or (file_sha256(weights) if weights is not None else None),
        "input_layout": "NCHW float32, RGB, (x/255 - mean) / std",
        "output": "eval feature (flip TTA and L2 normalisation are the caller's)",
        "producer": "reidkit",
    }
    if info.model_cfg is not None:
        meta["model_cfg"] = info.model_cfg
    # ONNX metadata values are strings: store each as JSON so numbers and lists survive.
    return {k: json.dumps(v) for k, v in meta.items()}


def _resolve_size(model: ReIDModel, size: Sequence[int] | None) -> tuple[int, int]:
    if size is None:
        size = model.info.input_size
    if len(size) != 2 or int(size[0]) < 8 or int(size[1]) < 8:
        raise ReIDError(f"export: size must be (H, W) with both >= 8, got {tuple(size)!r}")
    return int(size[0]), int(size[1])


def _atomic_target(out: Path) -> None:
    if out.is_dir():
        raise ReIDError(f"export: --out {out} is a folder; give a file name such as {out / 'model.onnx'}")
    from reidkit.utils.io import output_target

    output_target(out)  # a FIFO, device or socket is refused before the export runs


def _dummy_cams(model: nn.Module, n: int) -> torch.Tensor:
    """Camera ids for tracing: distinct where the model knows its camera count."""
    cams = int(getattr(model, "num_cameras", 0) or getattr(getattr(model, "backbone", None), "num_cameras", 0) or 1)
    return torch.arange(n, dtype=torch.int64) % max(cams, 1)


def export_model(
    weights: str | os.PathLike,
    fmt: str = "onnx",
    out: str | os.PathLike | None = None,
    opset: int = 17,
    size: Sequence[int] | None = None,
    model: ReIDModel | None = None,
) -> Path:
    """Export a checkpoint's eval feature to ONNX or TorchScript (dynamic batch axis); returns the file.

    ``model`` (optional) is the already-built model of ``weights`` (skips loading it again).
    Camera-aware models (``uses_camera``) get a second input ``camids`` (int64, N).
    """
    if fmt not in FORMATS:
        raise ReIDError(f"export: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    weights = Path(weights)
    if model is None:
        model = _load(weights)
    if out is None:
        out = weights.with_suffix(".onnx" if fmt == "onnx" else ".ts")
    return export_model_to(model, out, fmt=fmt, opset=opset, size=size, weights=weights)


def export_model_to(
    model: ReIDModel,
    out: str | os.PathLike,
    fmt: str = "onnx",
    opset: int = 17,
    size: Sequence[int] | None = None,
    weights: str | os.PathLike | None = None,
) -> Path:
    """Export an in-memory model's eval feature (``model.info`` gives the facts stored as metadata)."""
    if fmt not in FORMATS:
        raise ReIDError(f"export: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    hw = _resolve_size(model, size)
    out = Path(out)
    meta = _metadata(model, weights, hw)
    use_cams = model.info.uses_camera
    wrapper = (_EvalFeatureCams(model) if use_cams else _EvalFeature(model)).eval()
    # Two samples so no op specialises on a batch of one; the batch axis is declared dynamic.
    dummy: tuple[torch.Tensor, ...] = (torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(0)),)
    if use_cams:
        dummy = (*dummy, _dummy_cams(model, 2))
    _atomic_target(out)
    from reidkit.utils.io import atomic_path

    try:
        with atomic_path(out) as tmp, warnings.catch_warnings():
            # The tracer warns about Python ints taken from shapes (e.g. 'SAME' padding): they are
            # constants for the fixed H x W stored in the metadata, which is what we want.
            warnings.simplefilter("ignore")
            if fmt == "onnx":
                _export_onnx(wrapper, dummy, tmp, opset, meta)
            else:
                with torch.no_grad():
                    traced = torch.jit.trace(wrapper, dummy, check_trace=False)
                plain = {k: json.loads(v) for k, v in meta.items()}
                torch.jit.save(traced, str(tmp), _extra_files={_TS_META: json.dumps(plain)})
    except ReIDError:
        raise
    except Exception as exc:  # noqa: BLE001 - exporter failures are reported with the model named
        raise ReIDError(f"export: {fmt} export of {weights or type(model).__name__} failed: {exc}") from exc
    return out


def _export_onnx(
    wrapper: nn.Module, dummy: tuple[torch.Tensor, ...], tmp: Path, opset: int, meta: dict[str, str]
) -> None:
    import onnx

    names = [INPUT_NAME, CAMS_NAME][: len(dummy)]
    axes = {name: {0: "batch"} for name in names}
    axes[OUTPUT_NAME] = {0: "batch"}
    with torch.no_grad():
        # The TorchScript-based exporter: the dynamo one needs onnxscript, not a dependency here.
        torch.onnx.export(
            wrapper,
            dummy,
            str(tmp),
            dynamo=False,
            opset_version=int(opset),
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    proto = onnx.load(str(tmp))
    del proto.metadata_props[:]
    for key, value in meta.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))


def parity(
    weights: str | os.PathLike,
    exported: str | os.PathLike,
    batch_sizes: Sequence[int] = (1, 3),
    seed: int = 0,
    model: ReIDModel | None = None,
    trust: bool = False,
) -> float:
    """Max abs difference between the checkpoint's torch features and the export's, over the batch sizes.

    A TorchScript export is a program: it loads only with ``trust`` (e.g. the file this process just wrote;
    no warning is printed then)."""
    exported = Path(exported)
    if model is None:
        model = _load(weights)
    runner: Any = (
        OnnxFeatureModel(exported)
        if exported.suffix.lower() == ".onnx"
        else TorchScriptFeatureModel(exported, trust=trust, warn=False)
    )
    hw = runner.input_size
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    with torch.no_grad():
        for b in batch_sizes:
            x = torch.randn(int(b), 3, *hw, generator=gen)
            cams = _dummy_cams(model, int(b)) if runner.uses_camera else None
            ref = model(x) if cams is None else model(x, cams=cams)
            got = runner(x, cams)
            if got.shape != ref.shape:
                raise ReIDError(f"export parity: shape {tuple(got.shape)} != torch {tuple(ref.shape)} at batch {b}")
            worst = max(worst, float((ref - got).abs().max()))
    return worst
