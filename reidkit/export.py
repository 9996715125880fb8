"""Model export: ONNX (dynamic batch, preprocessing facts in metadata_props) and TorchScript.

The exported graph maps a float ``N x 3 x H x W`` batch, already normalised with the stored
mean/std, to the model's eval feature (``N x D``, not L2-normalised). Models that use the camera
(``uses_camera = True``: ViT with SIE) take a second input ``camids`` (int64, one per image).
Flip TTA and feature normalisation stay with the caller (``extract_features``), exactly as for the
torch model. ``OnnxFeatureModel`` and ``TorchScriptFeatureModel`` implement the feature-model
protocol (``reidkit.evaluation.features.FeatureModel``); ``load_feature_model`` picks the right
runner for a checkpoint, an .onnx file or a TorchScript archive.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from reidkit.errors import ReIDError

__all__ = [
    "FORMATS", "export_model", "read_export_metadata", "OnnxFeatureModel", "TorchScriptFeatureModel",
    "load_torchscript", "parity", "file_sha256", "load_feature_model", "is_torchscript",
]

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "images"
CAMS_NAME = "camids"
OUTPUT_NAME = "features"
# TorchScript keeps the same facts in an extra file inside the archive.
_TS_META = "reidkit.json"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ReIDError(f"cannot read {path}: {exc}") from exc
    return digest.hexdigest()


class _EvalFeature(nn.Module):
    """The model's eval-mode forward only, so tracing sees tensors in and one tensor out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eval feature of a normalised batch."""
        return self.model(x)


class _EvalFeatureCams(nn.Module):
    """Eval forward of a camera-aware model: ``(images, camids) -> features``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, camids: torch.Tensor) -> torch.Tensor:
        """Eval feature of a normalised batch seen by cameras ``camids``."""
        return self.model(x, cams=camids)


def _load(weights: str | os.PathLike) -> nn.Module:
    from reidkit.models.build import load_model

    return load_model(weights, device="cpu").eval()


def _metadata(model: nn.Module, weights: str | os.PathLike, size: tuple[int, int]) -> dict[str, str]:
    cfg = getattr(model, "model_cfg", None)
    meta: dict[str, Any] = {
        "input_size": [int(size[0]), int(size[1])],
        "mean": [float(v) for v in model.mean],
        "std": [float(v) for v in model.std],
        "feat_dim": int(model.feat_dim),
        "uses_camera": bool(getattr(model, "uses_camera", False)),
        "weights_sha256": file_sha256(weights),
        "input_layout": "NCHW float32, RGB, (x/255 - mean) / std",
        "output": "eval feature (flip TTA and L2 normalisation are the caller's)",
        "producer": "reidkit",
    }
    if cfg is not None:
        import dataclasses

        meta["model_cfg"] = dataclasses.asdict(cfg)
    # ONNX metadata values are strings: store each as JSON so numbers and lists survive.
    return {k: json.dumps(v) for k, v in meta.items()}


def _resolve_size(model: nn.Module, size: Sequence[int] | None) -> tuple[int, int]:
    if size is None:
        size = getattr(model, "input_size", None) or (256, 128)
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
    weights: str | os.PathLike, fmt: str = "onnx", out: str | os.PathLike | None = None,
    opset: int = 17, size: Sequence[int] | None = None, model: nn.Module | None = None,
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
    hw = _resolve_size(model, size)
    if out is None:
        out = weights.with_suffix(".onnx" if fmt == "onnx" else ".ts")
    out = Path(out)
    meta = _metadata(model, weights, hw)
    use_cams = bool(getattr(model, "uses_camera", False))
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
        raise ReIDError(f"export: {fmt} export of {weights} failed: {exc}") from exc
    return out


def _export_onnx(wrapper: nn.Module, dummy: tuple[torch.Tensor, ...], tmp: Path, opset: int,
                 meta: dict[str, str]) -> None:
    import onnx

    names = [INPUT_NAME, CAMS_NAME][: len(dummy)]
    axes = {name: {0: "batch"} for name in names}
    axes[OUTPUT_NAME] = {0: "batch"}
    with torch.no_grad():
        # The TorchScript-based exporter: the dynamo one needs onnxscript, not a dependency here.
        torch.onnx.export(
            wrapper, dummy, str(tmp), dynamo=False, opset_version=int(opset),
            input_names=names, output_names=[OUTPUT_NAME], dynamic_axes=axes,
            do_constant_folding=True,
        )
    proto = onnx.load(str(tmp))
    del proto.metadata_props[:]
    for key, value in meta.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))


def read_export_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The reidkit facts (input_size, mean, std, feat_dim, ...) stored in an exported ONNX/TorchScript file."""
    path = Path(path)
    if not path.is_file():
        raise ReIDError(f"exported model not found: {path}")
    if path.suffix.lower() == ".onnx":
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001
            raise ReIDError(f"cannot read ONNX file {path}: {exc}") from exc
        raw = {p.key: p.value for p in proto.metadata_props}
        try:
            return {k: json.loads(v) for k, v in raw.items()}
        except json.JSONDecodeError as exc:
            raise ReIDError(f"{path}: metadata_props are not reidkit's JSON values") from exc
    extra = {_TS_META: ""}
    try:
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # noqa: BLE001
        raise ReIDError(f"cannot read TorchScript file {path}: {exc}") from exc
    return json.loads(extra[_TS_META]) if extra[_TS_META] else {}


def _require_meta(meta: dict[str, Any], path: Path) -> None:
    missing = [k for k in ("input_size", "mean", "std", "feat_dim") if k not in meta]
    if missing:
        raise ReIDError(f"{path}: not a reidkit export (metadata lacks {', '.join(missing)}); "
                        f"export it with `reidkit export`")


class _ExportedFeatureModel:
    """Shared part of the exported runners: metadata facts and input checks (inference only)."""

    path: Path
    metadata: dict[str, Any]

    def _init_meta(self, meta: dict[str, Any]) -> None:
        _require_meta(meta, self.path)
        self.metadata = meta
        from reidkit.utils.validate import check_hw

        self.input_size = list(check_hw(meta["input_size"], f"{self.path}: input_size"))
        self.mean = [float(v) for v in meta["mean"]]
        self.std = [float(v) for v in meta["std"]]
        self.feat_dim = int(meta["feat_dim"])
        self.uses_camera = bool(meta.get("uses_camera", False))

    def _check(self, x: torch.Tensor, cams: torch.Tensor | None) -> torch.Tensor | None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ReIDError(f"{self.path.name}: expected an N x 3 x H x W batch, got {tuple(x.shape)}")
        if list(x.shape[2:]) != self.input_size:
            raise ReIDError(f"{self.path.name}: exported for input size {self.input_size[0]}x"
                            f"{self.input_size[1]}, got {x.shape[2]}x{x.shape[3]}")
        if not self.uses_camera:
            return None
        if cams is None:
            raise ReIDError(f"{self.path.name}: this model uses the camera id of each image (SIE); "
                            "give camids (reidkit extract reads them from file names with --cam-regex)")
        cams = torch.as_tensor(cams, dtype=torch.int64).reshape(-1).cpu()
        if cams.numel() != x.shape[0]:
            raise ReIDError(f"{self.path.name}: {cams.numel()} camera ids for a batch of {x.shape[0]}")
        return cams

    def eval(self) -> "_ExportedFeatureModel":
        """An exported graph is always in inference mode; returns self."""
        return self


class OnnxFeatureModel(_ExportedFeatureModel):
    """An exported ONNX model on onnxruntime (CPU), implementing the feature-model protocol.

    Call it with a float ``N x 3 x H x W`` tensor (normalised with ``.mean``/``.std``), plus the
    ``camids`` of the images when ``uses_camera``, and get the ``N x feat_dim`` features back on
    the input's device.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = Path(path)
        self._init_meta(read_export_metadata(self.path))
        self.session = ort_session(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor, cams: torch.Tensor | None = None) -> torch.Tensor:
        """Features of a normalised float NCHW batch (a float32 tensor on ``x``'s device)."""
        cams = self._check(x, cams)
        feeds = {self.input_name: np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())}
        if cams is not None:
            feeds[CAMS_NAME] = np.ascontiguousarray(cams.numpy())
        out = self.session.run(None, feeds)[0]
        return torch.from_numpy(out).to(x.device)


class TorchScriptFeatureModel(_ExportedFeatureModel):
    """An exported TorchScript archive (CPU), implementing the feature-model protocol."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.module, meta = load_torchscript(self.path)
        self._init_meta(meta)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, cams: torch.Tensor | None = None) -> torch.Tensor:
        """Features of a normalised float NCHW batch (a float32 tensor on ``x``'s device)."""
        cams = self._check(x, cams)
        xc = x.detach().to("cpu", torch.float32)
        out = self.module(xc) if cams is None else self.module(xc, cams)
        return out.float().to(x.device)


def is_torchscript(path: str | os.PathLike) -> bool:
    """True when ``path`` is a TorchScript archive (a zip with a ``code/`` folder), not a torch.save file."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in n or n.endswith("/constants.pkl") for n in zf.namelist())
    except OSError:
        return False


def ort_session(path: str | os.PathLike, threads: int | None = None, what: str = "") -> Any:
    """An onnxruntime CPU session for ``path``; one ReIDError naming the file when it cannot load."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise ReIDError(f"{what + ': ' if what else ''}onnxruntime cannot load {path}: {exc}") from None


def _refuse_format_for_export(path: Path, fmt: str | None) -> None:
    """``--from FORMAT`` names a checkpoint layout; an exported model has none, so the two together are a mistake."""
    if fmt is None:
        return
    kind = "ONNX" if path.suffix.lower() == ".onnx" else ("TorchScript" if path.is_file() and is_torchscript(path)
                                                          else None)
    if kind is not None:
        raise ReIDError(f"--from {fmt}: {path} is an exported {kind} model, not a {fmt} checkpoint "
                        f"(--from applies to checkpoints only; drop it)")


def load_feature_model(path: str | os.PathLike, device: str = "cpu", fmt: str | None = None) -> Any:
    """A ``FeatureModel`` for a path: ONNX runner (.onnx), TorchScript runner, or a checkpoint (eval).

    Checkpoints of other toolkits load too (format detected from the keys, or named by ``fmt``).
    """
    path = Path(path)
    _refuse_format_for_export(path, fmt)
    if path.suffix.lower() == ".onnx":
        return OnnxFeatureModel(path)
    if path.is_file() and is_torchscript(path):
        return TorchScriptFeatureModel(path)
    from reidkit.models.build import load_model

    return load_model(path, device=device, fmt=fmt)


def load_torchscript(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load an exported TorchScript model (eval, CPU) with its reidkit metadata."""
    path = Path(path)
    if not path.is_file():
        raise ReIDError(f"exported model not found: {path}")
    extra = {_TS_META: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # noqa: BLE001
        raise ReIDError(f"cannot read TorchScript file {path}: {exc}") from exc
    meta = json.loads(extra[_TS_META]) if extra[_TS_META] else {}
    _require_meta(meta, path)
    return module.eval(), meta


def parity(weights: str | os.PathLike, exported: str | os.PathLike, batch_sizes: Sequence[int] = (1, 3),
           seed: int = 0, model: nn.Module | None = None) -> float:
    """Max abs difference between the checkpoint's torch features and the export's, over the batch sizes."""
    exported = Path(exported)
    if model is None:
        model = _load(weights)
    runner: _ExportedFeatureModel = (OnnxFeatureModel(exported) if exported.suffix.lower() == ".onnx"
                                     else TorchScriptFeatureModel(exported))
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
