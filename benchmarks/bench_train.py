"""Training throughput of the bot_r50 recipe: reidkit's pipeline beside a plain DataLoader reference.

    python -m benchmarks.bench_train --params '{"mode": "reidkit", "data_root": "...", ...}'

One measurement per process (``benchmarks.run`` starts one per side, so each side's peak RSS and
peak GPU memory are its own). Sides:

- ``reidkit``: decode once (``ImageCache``), uint8 cache on the device, batches gathered there
  (``CachedBatchLoader``), ``BatchAugment`` on the device, channels_last, bf16 autocast on CUDA,
  optional ``torch.compile``.
- ``reference``: ``PILBatchLoader`` (DataLoader workers decode JPEGs with PIL, per-image
  transforms), fp32, contiguous tensors: what the field's trainers do.

Both train the same model/losses/optimisers built from the recipe through the public contract
(``build_model``, ``build_criterion``, ``solver_param_groups``) and take their steps through the trainers' own
``OptimStep`` (``reidkit.engine.optim``): no copy of the training step here.
Warm-up iterations are excluded; the figure is the median images/s over ``repeats`` windows.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from benchmarks.common import children_peak_rss_mb, gpu_peak_mb, vm_hwm_mb, worker_main

RECIPE = "bot_r50"
MARKET_TRAIN_IMAGES = 12936  # Market1501 bounding_box_train


# ----------------------------------------------------------------------------- data
def prepare_synthetic(
    out: str | Path,
    ids: int,
    images_per_id: int,
    size: tuple[int, int],
    n_train: int | None = None,
    seed: int = 0,
    workers: int | None = None,
) -> Path:
    """Generate (or reuse) a synthetic Market1501 tree under `out`, trimmed to `n_train` train images."""
    from reidkit.data.synthetic import generate_report

    rep = generate_report(
        out, ids=ids, images_per_id=images_per_id, cams=6, seed=seed, size=tuple(size), workers=workers
    )
    root = Path(rep.root)
    train_dir = root / "bounding_box_train"
    files = sorted(p for p in train_dir.iterdir() if p.suffix == ".jpg")
    if n_train is not None and len(files) > n_train:
        # The generator has no exact-count knob: drop a seeded random surplus so the train split
        # matches the real dataset's size; every identity keeps almost all of its images.
        rng = np.random.default_rng(seed)
        extra = rng.choice(len(files), len(files) - n_train, replace=False)
        for i in sorted(extra):
            files[i].unlink()
        (root / "trimmed.json").write_text(json.dumps({"train_images": n_train, "removed": len(extra)}))
    return root


def train_split(root: str | Path) -> tuple[list[str], np.ndarray]:
    """Paths and 0..N-1 labels of a Market-format tree's train split."""
    from reidkit.data.datasets import load_dataset, train_labels

    ds = load_dataset("market1501", str(root))
    labels, _ = train_labels(ds.train)
    return [r.path for r in ds.train], labels


# ----------------------------------------------------------------------------- measurement helpers
def sync(device: Any) -> None:
    """Wait for queued device work so wall-clock windows measure it."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def recipe_config(overrides: dict[str, Any] | None = None) -> Any:
    """The packaged bot_r50 recipe (reidkit.config.Config) with `overrides` ("a.b": value)."""
    from reidkit.config import load_config

    return load_config(RECIPE, overrides or None)


def windows(step: Callable[[], int], warmup: int, iters: int, repeats: int, device: Any) -> list[float]:
    """Run `warmup` steps, then `repeats` windows of `iters` steps; items/s of each window."""
    for _ in range(warmup):
        step()
    sync(device)
    rates = []
    for _ in range(repeats):
        n = 0
        t0 = time.perf_counter()
        for _ in range(iters):
            n += step()
        sync(device)
        rates.append(n / (time.perf_counter() - t0))
    return rates


def _endless(loader: Any) -> Iterator[Any]:
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


# ----------------------------------------------------------------------------- the benchmark
def measure(p: dict[str, Any]) -> dict[str, Any]:
    """One side's training throughput; `p` holds the parameters ``benchmarks.run`` passes."""
    import torch

    from reidkit.data import pipeline
    from reidkit.data.augment import BatchAugment
    from reidkit.data.samplers import PKSampler
    from reidkit.engine.data import build_augment
    from reidkit.engine.optim import ExtraOptimizer, OptimStep, build_optimizer
    from reidkit.engine.supervised import to_float
    from reidkit.losses.criterion import build_criterion
    from reidkit.engine.optim import solver_param_groups
    from reidkit.models.build import build_model

    torch.manual_seed(0)
    mode = p["mode"]
    fast = mode == "reidkit"
    device = torch.device(p.get("device", "cpu"))
    size = (int(p["size"][0]), int(p["size"][1]))
    cfg = recipe_config({"model.backbone": p.get("backbone", "resnet50"), "model.pretrained": False})
    paths, labels = train_split(p["data_root"])
    num_classes = int(labels.max()) + 1
    iters_total = p["warmup"] + p["iters"] * p["repeats"]
    # One sampler "epoch" covers every measured step: no epoch boundary inside a window.
    sampler = PKSampler(labels, p=p["p"], k=p["k"], epoch_batches=iters_total + 1, seed=0)
    net = build_model(cfg.model, num_classes)
    mean = list(cfg.input.mean) if cfg.input.mean is not None else list(net.mean)
    std = list(cfg.input.std) if cfg.input.std is not None else list(net.std)
    aug_kwargs = build_augment(cfg.input, size, mean, std, device)
    aug_kwargs.pop("device")
    channels_last = fast and p.get("channels_last", True)
    amp = torch.bfloat16 if (fast and p.get("amp", "bf16") == "bf16" and device.type == "cuda") else None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    extra: dict[str, Any] = {}
    t0 = time.perf_counter()
    if fast:
        cache = pipeline.ImageCache.build(paths, size=size, cache_dir=None)
        extra["cache_build_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        loader: Any = pipeline.CachedBatchLoader(
            cache,
            labels,
            sampler,
            BatchAugment(**aug_kwargs, device=device),
            device=device,
            channels_last=channels_last,
        )
        sync(device)
        extra["cache_to_device_s"] = time.perf_counter() - t1
        del cache
    else:
        loader = pipeline.PILBatchLoader(
            paths, labels, sampler, aug_kwargs, num_workers=p["num_workers"], device=device
        )
    net = net.to(device, memory_format=fmt)
    criterion = build_criterion(cfg.loss, num_classes, net.feat_dim).to(device)
    s = cfg.solver
    groups = solver_param_groups(net, s)
    extras = (
        [
            ExtraOptimizer(
                torch.optim.SGD(criterion.center.parameters(), lr=cfg.loss.center_lr), criterion.rescale_center_grad
            )
        ]
        if criterion.center is not None
        else []
    )
    optim = OptimStep(
        build_optimizer(s, groups),
        device,
        amp="bf16" if amp is not None else "none",
        grad_clip=s.grad_clip,
        extras=extras,
    )
    model: Any = torch.compile(net) if (fast and p.get("compile")) else net
    model.train()
    stream = _endless(loader)

    def step() -> int:
        images, y, _ = next(stream)
        with optim.autocast():
            out = model(images, y)
        # Losses in fp32, as the trainer does: softmax and triplet distances are precision-sensitive.
        total, _ = criterion(to_float(out), y)
        optim.update(total)
        return int(images.shape[0])

    t_first = time.perf_counter()
    rates = windows(step, p["warmup"], p["iters"], p["repeats"], device)
    extra["first_to_last_s"] = time.perf_counter() - t_first
    return {
        "mode": mode,
        "images_per_s": statistics.median(rates),
        "rates": rates,
        "batch": p["p"] * p["k"],
        "size": list(size),
        "backbone": p.get("backbone", "resnet50"),
        "train_images": len(paths),
        "num_classes": num_classes,
        "device": str(device),
        "amp": "bf16" if amp is not None else "fp32",
        "channels_last": channels_last,
        "compile": bool(fast and p.get("compile")),
        "num_workers": None if fast else p["num_workers"],
        "warmup": p["warmup"],
        "iters": p["iters"],
        "repeats": p["repeats"],
        "peak_rss_mb": vm_hwm_mb(),
        "peak_rss_worker_mb": children_peak_rss_mb() if not fast else None,
        "peak_gpu_mb": gpu_peak_mb(device),
        **extra,
    }


def main(argv: list[str] | None = None) -> None:
    """Worker entry: measure one side and print its result as the last JSON line."""
    worker_main(measure, argv, __doc__.splitlines()[0])


__all__ = [
    "prepare_synthetic",
    "train_split",
    "measure",
    "windows",
    "recipe_config",
    "MARKET_TRAIN_IMAGES",
    "vm_hwm_mb",
    "gpu_peak_mb",
    "sync",
    "children_peak_rss_mb",
]

if __name__ == "__main__":
    main()
