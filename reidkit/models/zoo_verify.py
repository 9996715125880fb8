"""What a file must be to enter the weights cache of reidkit.models.zoo: it loads, without trust, as the
catalogue's declared format (the safe reader's allowlist only, never full unpickling; a TorchScript archive
is refused; an ONNX detector must parse as a self-contained model, never run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reidkit.errors import ReIDError
from reidkit.models.zoo_catalogue import WeightsEntry

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER (torch's pre-zip format)


def _known_formats() -> list[str]:
    from reidkit.models.interop import FORMATS

    return ["reidkit", *FORMATS.names(), "onnx"]


def _check_onnx(path: Path) -> None:
    """Refuse a file that is not a self-contained ONNX model with an input and an output (parsed as data:
    nothing runs; tensors stored outside the file are refused, so a model never reads another file)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any protobuf failure means "not an ONNX model"
        raise ReIDError(f"it does not parse as an ONNX model ({type(exc).__name__})") from None
    graph = model.graph
    if not graph.input or not graph.output:
        raise ReIDError("it is an ONNX graph without an input or an output")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        raise ReIDError("its weights are stored in other files (external data); the cache holds single files")


def _load_strict(path: Path) -> Any:
    """Read a checkpoint with the safe reader's allowlist only: never full unpickling, whatever the caller's
    --trust-checkpoint says (a file enters the cache only if it loads without trust); TorchScript refused."""
    import pickle
    import zipfile

    import torch

    from reidkit.models.checkpoint import allowed_globals, is_torchscript

    if is_torchscript(path):
        raise ReIDError("it is a TorchScript program (a zip of code), not a training checkpoint")
    allowed = allowed_globals()

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            obj = allowed.get(f"{module}.{name}")
            if obj is None:
                raise pickle.UnpicklingError(f"it needs the global {module}.{name}, which loading could run")
            return obj

        def persistent_load(self, pid: Any) -> Any:
            raise pickle.UnpicklingError("persistent ids outside torch.save's format")

    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as fh:
                first = Restricted(fh, encoding="latin1").load()
            if not (type(first) is int and first == _LEGACY_MAGIC):
                return first
        with torch.serialization.safe_globals([(obj, name) for name, obj in allowed.items()]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means "not a safe checkpoint"
        lines = str(exc).strip().splitlines()
        raise ReIDError(
            f"it does not load with the safe reader ({type(exc).__name__}: {lines[0][:300] if lines else ''})"
        ) from None


def _check_format(path: Path, entry: WeightsEntry, origin: str) -> None:
    """Refuse a file that does not load, without trust, as the catalogue's declared format."""
    from collections.abc import Mapping

    def refuse(why: str) -> ReIDError:
        return ReIDError(
            f"weights {entry.name}: {origin} is not a {entry.fmt} checkpoint: {why}; it was not "
            "cached and its hash was not recorded"
        )

    if entry.fmt == "onnx":
        try:
            return _check_onnx(path)
        except ReIDError as exc:
            raise refuse(str(exc)) from None
    try:
        obj = _load_strict(path)
    except ReIDError as exc:
        raise refuse(str(exc)) from None
    if not isinstance(obj, Mapping):
        raise refuse(f"it holds a {type(obj).__name__}, not a checkpoint dict")
    if entry.fmt == "reidkit":
        if "model_cfg" not in obj:
            raise refuse("it has no model_cfg (not a reidkit checkpoint)")
        return
    from reidkit.models.interop import FORMATS
    from reidkit.models.interop.common import unwrap_state

    try:
        state = unwrap_state(obj, origin)
    except ReIDError as exc:
        raise refuse(str(exc)) from None
    if not FORMATS.get(entry.fmt).detect(state):
        raise refuse("its tensor names are not that layout's")
