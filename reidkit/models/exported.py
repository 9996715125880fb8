"""Runners for exported models (ONNX on onnxruntime, TorchScript), implementing the feature-model protocol.

An export maps a float ``N x 3 x H x W`` batch, normalised with the stored mean/std, to the
model's eval feature (``N x D``); camera-aware models take a second input ``camids``. The
preprocessing facts live in the file (ONNX ``metadata_props``, a ``reidkit.json`` extra file in
TorchScript), and the runners answer ``info`` (a :class:`~reidkit.models.info.ModelInfo`) from them.
onnxruntime sessions use one intra-op thread count and a passive wait (no spinning threads
competing with the rest of the process on a shared CPU).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from reidkit.errors import OptionError, ReIDError
from reidkit.models.info import ModelInfo

__all__ = [
    "INPUT_NAME",
    "CAMS_NAME",
    "OUTPUT_NAME",
    "OnnxFeatureModel",
    "TorchScriptFeatureModel",
    "read_export_metadata",
    "load_torchscript",
    "ort_session",
    "open_exported",
]

INPUT_NAME = "images"
CAMS_NAME = "camids"
OUTPUT_NAME = "features"
# TorchScript keeps the same facts in an extra file inside the archive.
TS_META = "reidkit.json"


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
    from reidkit.models.checkpoint import torchscript_extra

    text = torchscript_extra(path, TS_META)  # read from the zip: loading the program would run it
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise ReIDError(f"{path}: {TS_META} is not reidkit's JSON metadata") from exc


def _require_meta(meta: dict[str, Any], path: Path) -> None:
    missing = [k for k in ("input_size", "mean", "std", "feat_dim") if k not in meta]
    if missing:
        raise ReIDError(
            f"{path}: not a reidkit export (metadata lacks {', '.join(missing)}); export it with `reidkit export`"
        )


class _ExportedFeatureModel:
    """Shared part of the exported runners: metadata facts and input checks (inference only)."""

    source_format: str  # each runtime's own ("onnx", "torchscript")

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
            raise ReIDError(
                f"{self.path.name}: exported for input size {self.input_size[0]}x"
                f"{self.input_size[1]}, got {x.shape[2]}x{x.shape[3]}"
            )
        if not self.uses_camera:
            return None
        if cams is None:
            raise ReIDError(
                f"{self.path.name}: this model uses the camera id of each image (SIE); "
                "give camids (reidkit extract reads them from file names with --cam-regex)"
            )
        cams = torch.as_tensor(cams, dtype=torch.int64).reshape(-1).cpu()
        if cams.numel() != x.shape[0]:
            raise ReIDError(f"{self.path.name}: {cams.numel()} camera ids for a batch of {x.shape[0]}")
        return cams

    def eval(self) -> "_ExportedFeatureModel":
        """An exported graph is always in inference mode; returns self."""
        return self

    @property
    def info(self) -> ModelInfo:
        """The model facts stored in the export (``sha256`` is the exported checkpoint's)."""
        return ModelInfo(
            source_format=self.source_format,
            feat_dim=self.feat_dim,
            input_size=(self.input_size[0], self.input_size[1]),
            mean=tuple(self.mean),
            std=tuple(self.std),
            uses_camera=self.uses_camera,
            sha256=self.metadata.get("weights_sha256"),
            path=str(self.path),
            model_cfg=self.metadata.get("model_cfg"),
        )


RUN_BATCH = 16  # images per onnxruntime run


class OnnxFeatureModel(_ExportedFeatureModel):
    source_format = "onnx"

    """An exported ONNX model on onnxruntime (CPU), implementing the feature-model protocol.

    Call it with a float ``N x 3 x H x W`` tensor (normalised with ``.mean``/``.std``), plus the
    ``camids`` of the images when ``uses_camera``, and get the ``N x feat_dim`` features back on
    the input's device.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ReIDError(f"exported model not found: {self.path}")
        self.session = ort_session(self.path, threads)
        # the session holds the file's metadata_props: no second parse (and no `import onnx`, 0.7 s)
        raw = self.session.get_modelmeta().custom_metadata_map
        try:
            meta = {k: json.loads(v) for k, v in raw.items()}
        except json.JSONDecodeError as exc:
            raise ReIDError(f"{self.path}: metadata_props are not reidkit's JSON values") from exc
        self._init_meta(meta)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor, cams: torch.Tensor | None = None) -> torch.Tensor:
        """Features of a normalised float NCHW batch (a float32 tensor on ``x``'s device).

        Runs in slices of at most RUN_BATCH images: on a CPU larger runs are slower per image (their
        activations leave the cache; measured in benchmarks/bench_embed.py)."""
        cams = self._check(x, cams)
        xs = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        outs = []
        for i in range(0, max(len(xs), 1), RUN_BATCH):
            feeds = {self.input_name: xs[i : i + RUN_BATCH]}
            if cams is not None:
                feeds[CAMS_NAME] = np.ascontiguousarray(cams[i : i + RUN_BATCH].numpy())
            outs.append(self.session.run(None, feeds)[0])
        return torch.from_numpy(np.concatenate(outs) if len(outs) > 1 else outs[0]).to(x.device)


class TorchScriptFeatureModel(_ExportedFeatureModel):
    source_format = "torchscript"

    """An exported TorchScript archive (CPU), implementing the feature-model protocol.

    TorchScript is a program: it loads only with ``trust`` (or inside ``checkpoint.trusted()``)."""

    def __init__(self, path: str | os.PathLike, trust: bool = False, warn: bool = True) -> None:
        self.path = Path(path)
        self.module, meta = load_torchscript(self.path, trust=trust, warn=warn)
        self._init_meta(meta)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, cams: torch.Tensor | None = None) -> torch.Tensor:
        """Features of a normalised float NCHW batch (a float32 tensor on ``x``'s device)."""
        cams = self._check(x, cams)
        xc = x.detach().to("cpu", torch.float32)
        out = self.module(xc) if cams is None else self.module(xc, cams)
        return cast(torch.Tensor, out.float().to(x.device))


def ort_session(path: str | os.PathLike, threads: int | None = None, what: str = "") -> Any:
    """An onnxruntime CPU session for ``path`` (``threads`` intra-op threads, default torch's count; passive wait).

    One ReIDError naming the file when it cannot load (an OptionError naming ``what``, a parameter, when given).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads) if threads else max(1, torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle intra-op threads sleep instead of spinning: on a shared CPU spinning steals the cores
    # other stages (decode, detection) and other processes need.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        msg = f"onnxruntime cannot load {path}: {exc}"
        raise (OptionError(what, msg) if what else ReIDError(msg)) from None


def load_torchscript(
    path: str | os.PathLike, trust: bool = False, warn: bool = True
) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load an exported TorchScript model (eval, CPU) with its reidkit metadata.

    Loading runs the program's code, so it needs ``trust`` (CLI ``--trust-checkpoint``) or an enclosing
    ``checkpoint.trusted()``; the metadata is checked before the program is loaded."""
    path = Path(path)
    if not path.is_file():
        raise ReIDError(f"exported model not found: {path}")
    from reidkit.models.checkpoint import require_program_trust

    meta = read_export_metadata(path)  # from the zip, before anything runs
    _require_meta(meta, path)
    require_program_trust(path, trust, warn)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise ReIDError(f"cannot read TorchScript file {path}: {exc}") from exc
    return module.eval(), meta


def open_exported(path: str | os.PathLike, threads: int | None = None, trust: bool = False) -> Any:
    """The runner of an exported model: ONNX (by suffix) or TorchScript (a program: only with ``trust``)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return OnnxFeatureModel(path, threads=threads)
    return TorchScriptFeatureModel(path, trust=trust)
