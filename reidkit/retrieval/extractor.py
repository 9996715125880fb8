"""The gallery's feature extractor and model identity (to be replaced by reidkit.inference).

A :class:`FeatureExtractor` is a model plus its preprocessing; its :class:`ModelIdentity` records
what made a gallery's features, so a query model can be checked against the gallery's.
"""
from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.errors import ReIDError

__all__ = ["FeatureExtractor", "ModelIdentity", "IMAGENET_IDENTITY", "DEFAULT_SIZE"]

IMAGENET_IDENTITY = "imagenet:efficientnet_lite0"
DEFAULT_SIZE = (256, 128)

@dataclass(frozen=True)
class ModelIdentity:
    """What made a gallery's features: two identities with the same `name` give comparable features."""

    name: str
    source: str
    feat_dim: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def label(self) -> str:
        """Short human form: the name (weights hashes shortened) and where it came from."""
        short = self.name[:19] if self.name.startswith("sha256:") else self.name
        return short if self.source in ("", "imagenet") else f"{short} ({self.source})"

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for /health and reports)."""
        return {"name": self.name, "source": self.source, "feat_dim": self.feat_dim,
                "input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std)}

    def compatible(self, other: ModelIdentity) -> bool:
        """True when features of `other` can be searched against features of this one."""
        return (self.name == other.name and self.feat_dim == other.feat_dim
                and tuple(self.input_size) == tuple(other.input_size))


def _resize_uint8(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """PIL bilinear resize, the same call ImageCache uses, so a file and its decoded copy embed alike."""
    from PIL import Image

    if img.shape[0] == hw[0] and img.shape[1] == hw[1]:
        return img
    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.BILINEAR), dtype=np.uint8)


class FeatureExtractor:
    """A model plus its preprocessing; turns uint8 RGB images into L2-normalised features (flip TTA)."""

    def __init__(self, model: Any, identity: ModelIdentity, device: str | None = None,
                 batch_size: int = 64, flip: bool = True) -> None:
        self.model = model
        self.identity = identity
        self.device = device
        self.batch_size = int(batch_size)
        self.flip = flip
        # torch must not run concurrently on one model (several galleries / service snapshots share it)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, weights: str | os.PathLike | None = None, device: str | None = None,
             batch_size: int = 64, size: Sequence[int] | None = None, fmt: str | None = None) -> FeatureExtractor:
        """Load a checkpoint (reidkit's or another toolkit's: ``fmt`` or detected), an export, or (None) ImageNet."""
        if weights is None or str(weights) in ("", "imagenet"):
            from reidkit.models.build import ModelConfig, build_model

            # No ReID training: ImageNet features, GeM-pooled (better than avg for retrieval),
            # no neck, so the eval output is the pooled 1280-d vector itself.
            cfg = ModelConfig(backbone="efficientnet_lite0", pretrained=True, pooling="gem", neck="none")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = build_model(cfg, num_classes=1).eval()
            hw = tuple(int(v) for v in (size or DEFAULT_SIZE))
            ident = ModelIdentity(IMAGENET_IDENTITY, "imagenet", int(model.feat_dim), hw,  # type: ignore[arg-type]
                                  tuple(model.mean), tuple(model.std))
            return cls(model, ident, device, batch_size)
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ReIDError(f"--weights: {path} is not a file")
        source = str(path.resolve())
        from reidkit.export import is_torchscript

        if path.suffix.lower() == ".onnx" or is_torchscript(path):
            from reidkit.export import load_feature_model

            model = load_feature_model(path)
            # An export carries its checkpoint's hash, so it can query a gallery built with that checkpoint.
            digest = str(model.metadata.get("weights_sha256") or _sha256(path))
            hw = tuple(model.input_size)
        else:
            from reidkit.models.build import load_model

            model = load_model(path, device="cpu", fmt=fmt)
            digest = _sha256(path)
            hw = tuple(int(v) for v in (size or getattr(model, "input_size", DEFAULT_SIZE)))
        ident = ModelIdentity(f"sha256:{digest[:16]}", source, int(model.feat_dim), hw,  # type: ignore[arg-type]
                              tuple(float(v) for v in model.mean), tuple(float(v) for v in model.std))
        return cls(model, ident, device, batch_size)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(N, D) float32 unit-norm features of an N x H x W x 3 uint8 batch at the model's input size."""
        from reidkit.evaluation.features import extract_features

        ident = self.identity
        with self._lock:
            feats = extract_features(self.model, images, batch_size=self.batch_size, flip=self.flip,
                                     device=self.device, mean=ident.mean, std=ident.std,
                                     size=tuple(ident.input_size), normalize=True)
        out = feats.detach().cpu().numpy().astype(np.float32, copy=False)
        # Normalise again: faiss inner product must be cosine even if a caller disabled it upstream.
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Features of RGB uint8 images of any size (resized here like the gallery's)."""
        hw = tuple(self.identity.input_size)
        batch = np.stack([_resize_uint8(np.ascontiguousarray(im, dtype=np.uint8), hw) for im in images])
        return self.embed(batch)


def _sha256(path: Path) -> str:
    from reidkit.export import file_sha256

    return file_sha256(path)

