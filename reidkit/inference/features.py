"""The batch loop of inference: features with flip test-time augmentation, on CPU or GPU, sharded under torchrun.

``FeatureExtractor`` (``reidkit.inference``) runs every embedding through ``extract_features``;
evaluation (``reidkit.evaluation.evaluator``) and the validation of the trainers call it too. It
imports nothing of models or config: a model is anything that meets ``FeatureModel``.

``extract_features`` types against the small ``FeatureModel`` protocol: a callable
``(x, cams=None) -> B x D`` on a normalised float batch, with ``mean``, ``std``, ``feat_dim``,
``uses_camera`` and ``eval()``. A reidkit ``ReIDModel`` (``load_model``), the ONNX runner and the
TorchScript runner of ``reidkit.export`` all implement it. Another output than the model's own
eval feature (``neck_feat``) is asked of the model through ``forward_features`` /
``forward_head(which=...)``, never by changing the model.

With ``distributed=True`` and an initialised process group of W ranks, rank r extracts the
contiguous slice ``[r*N//W, (r+1)*N//W)`` of the images (reading only its own files), the
slices are all-gathered (padded to the longest, then trimmed) and every rank returns the same
N x D tensor in the original order. Every rank must reach the gather: an unreadable image
raises on the rank that holds it, so callers that skip such files decode with ``load_images``
(strict=False) and gather the rows themselves with ``gather_rows``, as ``reidkit extract`` does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from reidkit.errors import ReIDError
from reidkit.utils.progress import step
from reidkit.utils.runtime import resolve_device

__all__ = [
    "extract_features",
    "FeatureModel",
    "load_images",
    "shard_bounds",
    "gather_rows",
    "init_distributed",
    "dist_world",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class FeatureModel(Protocol):
    """What ``extract_features`` needs of a model (torch, ONNX or TorchScript); it only reads the facts."""

    @property
    def mean(self) -> Sequence[float]: ...

    @property
    def std(self) -> Sequence[float]: ...

    @property
    def feat_dim(self) -> int: ...

    @property
    def uses_camera(self) -> bool: ...

    def __call__(self, x: torch.Tensor, cams: torch.Tensor | None = None) -> torch.Tensor:
        """``B x D`` features of a float ``B x 3 x H x W`` batch normalised with ``mean``/``std``."""
        ...

    def eval(self) -> Any:
        """Switch to inference; returns the model."""
        ...


def _model_device(model: Any) -> torch.device | None:
    """The device of a torch module's first parameter/buffer; None for other runners."""
    if not isinstance(model, torch.nn.Module):
        return None
    for t in model.parameters():
        return t.device
    for b in model.buffers():
        return b.device
    return None


def _features_fn(model: Any, neck_feat: str | None) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """``f(x, cams) -> B x D``: the model's eval feature, or the output ``neck_feat`` names."""
    if neck_feat is not None and neck_feat not in ("after", "before"):
        raise ReIDError(f"neck_feat: expected 'after' or 'before', got {neck_feat!r}")
    net: Any = model.module if isinstance(model, torch.nn.Module) and hasattr(model, "module") else model  # DDP
    if neck_feat is not None and neck_feat != getattr(getattr(net, "head", None), "neck_feat", None):
        if not (hasattr(net, "forward_features") and hasattr(net, "forward_head")):
            raise ReIDError(
                f"neck_feat={neck_feat!r}: the model ({type(net).__name__}) has no "
                "forward_features/forward_head to choose its output; export the model "
                "with the wanted feature or leave neck_feat unset"
            )

        def chosen(x: torch.Tensor, cams: torch.Tensor | None) -> torch.Tensor:
            fmap = net.forward_features(x) if cams is None else net.forward_features(x, cams)
            return cast(torch.Tensor, net.forward_head(fmap, which=neck_feat))

        return chosen

    def plain(x: torch.Tensor, cams: torch.Tensor | None) -> torch.Tensor:
        # Models without a camera input may not accept the keyword at all.
        return cast(torch.Tensor, model(x) if cams is None else model(x, cams=cams))

    return plain


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous ``[start, stop)`` of ``n`` items that ``rank`` of ``world`` handles."""
    return n * rank // world, n * (rank + 1) // world


def dist_world() -> tuple[int, int]:
    """(rank, world) of the initialised default process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(local: torch.Tensor | None, world: int) -> torch.Tensor:
    """All-gather every rank's ``rows x D`` block in rank order (rows may differ, even be 0: pass None).

    Needs an initialised process group; gloo gathers on CPU, nccl on the current CUDA device.
    """
    import torch.distributed as dist

    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    rows = 0 if local is None else int(local.shape[0])
    dim = -1 if local is None else int(local.shape[1])
    shape = torch.tensor([rows, dim], dtype=torch.int64, device=dev)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    sizes = [int(s[0]) for s in shapes]
    dim = max(int(s[1]) for s in shapes)
    if dim < 0:
        raise ReIDError("extract_features: no rank had images to extract")
    block = torch.zeros(max(sizes), dim, dtype=torch.float32, device=dev)
    if local is not None and rows:
        block[:rows] = local.to(dev, torch.float32)
    blocks = [torch.empty_like(block) for _ in range(world)]
    dist.all_gather(blocks, block)
    return torch.cat([b[:n].cpu() for b, n in zip(blocks, sizes)])


def init_distributed(device: str | torch.device) -> tuple[int, int, bool]:
    """Under torchrun (WORLD_SIZE > 1): join the process group; returns (rank, world, created by us)."""
    import torch.distributed as dist

    from reidkit.utils.runtime import dist_env

    rank, world, _ = dist_env()
    if world <= 1:
        return 0, 1, False
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))  # gather_rows gathers on the current device
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), True


def _resize(batch: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Bilinear (antialiased) resize of a float NCHW batch when its size differs."""
    if size is None or tuple(batch.shape[-2:]) == tuple(size):
        return batch
    return F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def _decode_resized(path: str, size: tuple[int, int]) -> np.ndarray | None:
    """One image as H x W x 3 uint8 at ``size``; None when missing, empty or corrupt."""
    from reidkit.utils.images import read_image

    img = read_image(str(path))
    if img is None:
        return None
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    t = _resize(t, size).round_().clamp_(0, 255)
    return t[0].permute(1, 2, 0).to(torch.uint8).numpy()


def load_images(
    paths: Sequence[str | Path], size: tuple[int, int], strict: bool = True, step_name: str | None = None
) -> tuple[np.ndarray, list[int], list[str]]:
    """Decode and resize images: ``(N' x H x W x 3 uint8, kept indices, skipped paths)``.

    ``strict``: an unreadable (missing, empty, corrupt) file raises ReIDError naming it;
    otherwise it is skipped and listed, so the caller can count and report it.
    ``step_name``: the step's name for its bar / line (:func:`reidkit.utils.progress.step`).
    """
    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    kept: list[int] = []
    skipped: list[str] = []
    with step(step_name or "", len(paths), show=step_name is not None) as bar:
        for i, p in enumerate(paths):
            img = _decode_resized(str(p), size)
            bar.update(1)
            if img is None:
                if strict:
                    raise ReIDError(f"images: cannot read {p} (missing, empty or corrupt image)")
                skipped.append(str(p))
                continue
            out[len(kept)] = img
            kept.append(i)
    return out[: len(kept)], kept, skipped


def _as_images(
    images: np.ndarray | torch.Tensor | Sequence[str | os.PathLike], size: tuple[int, int] | None
) -> torch.Tensor:
    if isinstance(images, (str, Path)):
        raise ReIDError("images: expected an N x H x W x 3 uint8 array or a list of image paths, got one path")
    if isinstance(images, (list, tuple)):
        if not images:
            raise ReIDError("images: the list of paths is empty")
        return torch.from_numpy(load_images(images, size or (256, 128))[0])
    t = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ReIDError(f"images: expected an N x H x W x 3 uint8 array, got shape {tuple(t.shape)}")
    if t.dtype != torch.uint8:
        raise ReIDError(f"images: expected dtype uint8, got {t.dtype}")
    if t.shape[0] == 0:
        raise ReIDError("images: the image array is empty (N = 0)")
    return t


def _as_camids(camids: Any, n: int) -> torch.Tensor | None:
    if camids is None:
        return None
    c = torch.as_tensor(np.asarray(camids), dtype=torch.long).reshape(-1)
    if c.numel() != n:
        raise ReIDError(f"camids: expected one camera id per image ({n}), got {c.numel()}")
    return c


@torch.no_grad()
def extract_features(
    model: FeatureModel | torch.nn.Module,
    images: np.ndarray | torch.Tensor | Sequence[str | os.PathLike],
    batch_size: int = 256,
    flip: bool = True,
    device: str | torch.device | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    size: tuple[int, int] | None = None,
    normalize: bool = True,
    amp: bool = False,
    neck_feat: str | None = None,
    amp_dtype: str = "bf16",
    camids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    distributed: bool = False,
    autocast: Any = None,
    step_name: str | None = None,
) -> Any:
    """N x D float32 CPU features of uint8 NHWC images or image paths (flip TTA, L2-normalised).

    ``amp=True`` runs the model under ``torch.autocast`` on the extraction device (CUDA or CPU)
    in ``amp_dtype``: "bf16" (the default, on both; it keeps float32's range, so no overflow in
    un-normalised features) or "fp16". Features come back as float32 either way. Models that are
    not torch modules (an ONNX session) are unaffected by autocast. ``neck_feat`` ("after" or
    "before") asks a reidkit model for that output instead of its configured one. ``camids``
    (one per image) are passed to models with ``uses_camera``. ``distributed``: under an
    initialised process group, each rank extracts its contiguous shard and all ranks get the
    gathered N x D result in order (see the module docstring). A model whose output is a dict of
    ``B x D`` tensors (e.g. USL feature spaces) gives a dict of ``N x D`` features, one per key.
    ``autocast``: a context-manager factory used instead of ``amp`` (the trainer's own).
    ``step_name``: the step's name: a bar on a terminal, one line when done otherwise (rank 0).
    """
    if batch_size < 1:
        raise ReIDError(f"batch_size: expected a positive integer, got {batch_size}")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp_dtype not in dtypes:
        raise ReIDError(f"amp_dtype: expected 'bf16' or 'fp16', got {amp_dtype!r}")
    if size is None and isinstance(images, (list, tuple)):
        size = tuple(getattr(model, "input_size", (256, 128)))
    rank, world = dist_world() if distributed else (0, 1)
    if world > 1:
        if isinstance(images, (str, Path)):
            _as_images(images, size)  # the one-path error
        n = len(images) if isinstance(images, (list, tuple)) else int(_as_images(images, size).shape[0])
        cams_all = _as_camids(camids, n)
        a, b = shard_bounds(n, rank, world)
        local = None
        if b > a:
            local = extract_features(
                model,
                images[a:b],
                batch_size=batch_size,
                flip=flip,
                device=device,
                mean=mean,
                std=std,
                size=size,
                normalize=False,
                amp=amp,
                neck_feat=neck_feat,
                amp_dtype=amp_dtype,
                camids=None if cams_all is None else cams_all[a:b],
                distributed=False,
                autocast=autocast,
                step_name=step_name,
            )
        return _map_out(_gather_out(local, world, model), lambda t: F.normalize(t, dim=1) if normalize else t)
    imgs = _as_images(images, size)
    cams = _as_camids(camids, int(imgs.shape[0]))
    if not getattr(model, "uses_camera", False):
        cams = None
    dev = resolve_device(device)
    mean = tuple(mean if mean is not None else getattr(model, "mean", IMAGENET_MEAN))
    std = tuple(std if std is not None else getattr(model, "std", IMAGENET_STD))
    m = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    fn = _features_fn(model, neck_feat)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    model_dev = _model_device(model)
    # a torch module on another device is moved for the loop and back after it
    moved = model if isinstance(model, torch.nn.Module) and model_dev is not None and model_dev != dev else None
    if moved is not None:
        moved.to(dev)
    if autocast is not None:
        ctx = autocast()
    else:
        ctx = torch.autocast(device_type=dev.type, dtype=dtypes[amp_dtype]) if amp else contextlib.nullcontext()
    feats: list[Any] = []
    try:
        with ctx, step(step_name or "", int(imgs.shape[0]), show=step_name is not None) as bar:
            for b in range(0, imgs.shape[0], batch_size):
                x = imgs[b : b + batch_size].to(dev, non_blocking=True).permute(0, 3, 1, 2).float()
                x = _resize(x, size).div_(255.0).sub_(m).div_(s)
                c = None if cams is None else cams[b : b + batch_size].to(dev)
                f = _map_out(fn(x, c), _check_2d)
                if flip:
                    g = _map_out(fn(torch.flip(x, dims=[3]), c), _check_2d)
                    f = {k: (v + g[k]) / 2.0 for k, v in f.items()} if isinstance(f, dict) else (f + g) / 2.0
                feats.append(_map_out(f, lambda t: t.cpu()))
                bar.update(int(x.shape[0]))
    finally:
        if moved is not None:
            moved.to(model_dev)
        if was_training and hasattr(model, "train"):
            model.train(True)
    out = {k: torch.cat([f[k] for f in feats]) for k in feats[0]} if isinstance(feats[0], dict) else torch.cat(feats)
    return _map_out(out, lambda t: F.normalize(t, dim=1) if normalize else t)


def _check_2d(f: torch.Tensor) -> torch.Tensor:
    if f.ndim != 2:
        raise ReIDError(f"model: expected eval output of shape B x D, got {tuple(f.shape)}")
    return f.float()


def _map_out(out: Any, fn: Any) -> Any:
    """``fn`` on a tensor, or on each value of a dict of tensors (multi-output models)."""
    return {k: fn(v) for k, v in out.items()} if isinstance(out, dict) else fn(out)


def _gather_out(local: Any, world: int, model: Any) -> Any:
    """All-gather a rank's block (a tensor or a dict of tensors; None for an empty shard)."""
    keys = getattr(model, "spaces", None)
    if isinstance(local, dict) or (local is None and keys):
        return {k: gather_rows(None if local is None else local[k], world) for k in (keys or list(local or {}))}
    return gather_rows(local, world)
