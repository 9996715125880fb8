"""``ModelInfo``: the typed facts about a loaded model that inference and export need.

Every model reidkit hands out (a ``ReIDModel`` built, loaded from reidkit's or another toolkit's
checkpoint, or an ONNX / TorchScript runner) answers ``model.info`` with one of these, so
callers read one typed record instead of probing attributes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ModelInfo", "IMAGENET_MEAN", "IMAGENET_STD", "DEFAULT_INPUT_SIZE"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = (256, 128)


@dataclass(frozen=True)
class ModelInfo:
    """Where a model came from and what its input and output are.

    ``source_format``: "reidkit", a foreign layout ("fastreid", "torchreid", ...), "onnx",
    "torchscript" or "imagenet"; ``source_arch``: the foreign architecture inferred from its keys;
    ``input_size`` (H, W) and ``mean``/``std`` (0-1 units) are the preprocessing; ``sha256`` is the
    hash of the weights file (an export carries its checkpoint's), None for a model not from a file.
    """

    source_format: str = "reidkit"
    feat_dim: int = 0
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    uses_camera: bool = False
    source_arch: str | None = None
    sha256: str | None = None
    path: str | None = None
    model_cfg: dict[str, Any] | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        out = asdict(self)
        out["input_size"], out["mean"], out["std"] = list(self.input_size), list(self.mean), list(self.std)
        return out
