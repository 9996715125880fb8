"""Batched feature extraction with flip test-time augmentation, on CPU or GPU."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reidkit.errors import ReIDError
from reidkit.evaluation.distance import pick_device

__all__ = ["extract_features", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@contextlib.contextmanager
def _neck_feat(model: torch.nn.Module, value: str | None) -> Iterator[None]:
    """Temporarily set `neck_feat` on the model and every submodule that has it."""
    if value is None:
        yield
        return
    if value not in ("after", "before"):
        raise ReIDError(f"neck_feat: expected 'after' or 'before', got {value!r}")
    owners = [m for m in model.modules() if hasattr(m, "neck_feat") and isinstance(m.neck_feat, str)]
    saved = [m.neck_feat for m in owners]
    try:
        for m in owners:
            m.neck_feat = value
        yield
    finally:
        for m, v in zip(owners, saved):
            m.neck_feat = v


def _resize(batch: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Bilinear (antialiased) resize of a float NCHW batch when its size differs."""
    if size is None or tuple(batch.shape[-2:]) == tuple(size):
        return batch
    return F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def _load_paths(paths: Sequence[str], size: tuple[int, int]) -> np.ndarray:
    """Decode and resize images listed by path into an N x H x W x 3 uint8 array."""
    from reidkit.data.pipeline import read_image

    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        img = read_image(str(p))
        if img is None:
            raise ReIDError(f"images: cannot read {p} (missing or corrupt image)")
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
        t = _resize(t, size).round_().clamp_(0, 255)
        out[i] = t[0].permute(1, 2, 0).to(torch.uint8).numpy()
    return out


def _as_images(images, size):
    if isinstance(images, (str, Path)):
        raise ReIDError("images: expected an N x H x W x 3 uint8 array or a list of image paths, got one path")
    if isinstance(images, (list, tuple)):
        if not images:
            raise ReIDError("images: the list of paths is empty")
        return torch.from_numpy(_load_paths(images, size or (256, 128)))
    t = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ReIDError(f"images: expected an N x H x W x 3 uint8 array, got shape {tuple(t.shape)}")
    if t.dtype != torch.uint8:
        raise ReIDError(f"images: expected dtype uint8, got {t.dtype}")
    if t.shape[0] == 0:
        raise ReIDError("images: the image array is empty (N = 0)")
    return t


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    images,
    batch_size: int = 256,
    flip: bool = True,
    device=None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    size: tuple[int, int] | None = None,
    normalize: bool = True,
    amp: bool = False,
    neck_feat: str | None = None,
    amp_dtype: str = "bf16",
) -> torch.Tensor:
    """N x D float32 CPU features of uint8 NHWC images or image paths (flip TTA, L2-normalised).

    ``amp=True`` runs the model under ``torch.autocast`` on the extraction device (CUDA or CPU)
    in ``amp_dtype``: "bf16" (the default, on both; it keeps float32's range, so no overflow in
    un-normalised features) or "fp16". Features come back as float32 either way. Models that are
    not torch modules (an ONNX session) are unaffected by autocast.
    """
    if batch_size < 1:
        raise ReIDError(f"batch_size: expected a positive integer, got {batch_size}")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp_dtype not in dtypes:
        raise ReIDError(f"amp_dtype: expected 'bf16' or 'fp16', got {amp_dtype!r}")
    if size is None and isinstance(images, (list, tuple)):
        size = tuple(getattr(model, "input_size", (256, 128)))
    imgs = _as_images(images, size)
    dev = pick_device(device)
    mean = tuple(mean if mean is not None else getattr(model, "mean", IMAGENET_MEAN))
    std = tuple(std if std is not None else getattr(model, "std", IMAGENET_STD))
    m = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    was_training = model.training
    model.eval()
    model_dev = next(iter(model.parameters()), torch.empty(0)).device
    if model_dev != dev:
        model.to(dev)
    autocast = torch.autocast(device_type=dev.type, dtype=dtypes[amp_dtype]) if amp else contextlib.nullcontext()
    feats = []
    try:
        with _neck_feat(model, neck_feat), autocast:
            for b in range(0, imgs.shape[0], batch_size):
                x = imgs[b : b + batch_size].to(dev, non_blocking=True).permute(0, 3, 1, 2).float()
                x = _resize(x, size).div_(255.0).sub_(m).div_(s)
                f = model(x).float()
                if f.ndim != 2:
                    raise ReIDError(f"model: expected eval output of shape B x D, got {tuple(f.shape)}")
                if flip:
                    f = (f + model(torch.flip(x, dims=[3])).float()) / 2.0
                feats.append(f.cpu())
    finally:
        if model_dev != dev:
            model.to(model_dev)
        model.train(was_training)
    out = torch.cat(feats)
    return F.normalize(out, dim=1) if normalize else out
