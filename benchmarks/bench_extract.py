"""Feature-extraction throughput: reidkit (uint8 cache on the device, large batches, bf16 on CUDA)
beside a plain reference (DataLoader workers decoding JPEGs with PIL, per-image transforms, fp32,
batch 128).

    python -m benchmarks.bench_extract --params '{"mode": "reidkit", "data_root": "...", ...}'

One side per process. Images: the query + gallery of a synthetic Market-format tree (the real
Market1501 test side is 19,281 images). The decode-once cache build is timed separately
(``cache_build_s``): in a training run it is paid once and shared with training; the reference
decodes every time it extracts. No flip TTA on either side (the bot_r50 recipe's test setting).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from benchmarks.bench_train import recipe_config, sync
from benchmarks.common import children_peak_rss_mb, gpu_peak_mb, vm_hwm_mb, worker_main


def eval_paths(root: str) -> list[str]:
    """Query + gallery image paths of a Market-format tree."""
    from reidkit.data.datasets import load_dataset

    ds = load_dataset("market1501", root)
    return [r.path for r in ds.query] + [r.path for r in ds.gallery]


class _PILImages:
    """Map-style dataset: decode with PIL, resize, to float CHW, normalise (one image per call)."""

    def __init__(self, paths: list[str], size: tuple[int, int], mean: list[float], std: list[float]) -> None:
        self.paths, self.size = paths, size
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        import torch
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB").resize((self.size[1], self.size[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((arr - self.mean) / self.std)


def measure(p: dict[str, Any]) -> dict[str, Any]:
    """One side's extraction throughput (median images/s over repeats, first pass excluded)."""
    import torch

    from reidkit.models.build import build_model

    device = torch.device(p.get("device", "cpu"))
    size = (int(p["size"][0]), int(p["size"][1]))
    fast = p["mode"] == "reidkit"
    cfg = recipe_config({"model.backbone": p.get("backbone", "resnet50"), "model.pretrained": False})
    paths = eval_paths(p["data_root"])[: p.get("max_images") or None]
    torch.manual_seed(0)
    net = build_model(cfg.model, 751).to(device).eval()
    mean = list(cfg.input.mean) if cfg.input.mean is not None else list(net.mean)
    std = list(cfg.input.std) if cfg.input.std is not None else list(net.std)
    extra: dict[str, Any] = {}
    if fast:
        from reidkit.data.pipeline import ImageCache
        from reidkit.inference.features import extract_features

        t0 = time.perf_counter()
        cache = ImageCache.build(paths, size=size)
        extra["cache_build_s"] = time.perf_counter() - t0
        images = torch.from_numpy(cache.images).to(device)
        del cache
        if p.get("channels_last", True):
            net = net.to(memory_format=torch.channels_last)
        amp = device.type == "cuda" and p.get("amp", "bf16") != "none"
        batch = int(p.get("batch_fast", 512))

        def run_once() -> int:
            f = extract_features(
                net, images, batch_size=batch, flip=False, device=device, mean=mean, std=std, size=size, amp=amp
            )
            return int(f.shape[0])
    else:
        ds = _PILImages(paths, size, mean, std)
        batch = int(p.get("batch_ref", 128))
        amp = False

        @torch.no_grad()
        def run_once() -> int:
            loader = torch.utils.data.DataLoader(
                ds, batch_size=batch, num_workers=p["num_workers"], pin_memory=device.type == "cuda"
            )
            n = 0
            for x in loader:
                f = net(x.to(device, non_blocking=True)).float().cpu()
                n += int(f.shape[0])
            return n

    rates = []
    for r in range(p["repeats"] + 1):
        t0 = time.perf_counter()
        n = run_once()
        sync(device)
        if r:  # the first pass pays cudnn autotuning / allocator growth / worker forks
            rates.append(n / (time.perf_counter() - t0))
    return {
        "mode": p["mode"],
        "images_per_s": statistics.median(rates),
        "rates": rates,
        "images": len(paths),
        "batch": batch,
        "size": list(size),
        "backbone": p.get("backbone", "resnet50"),
        "device": str(device),
        # extract_features autocasts in bf16 (its amp_dtype default); the reference is plain fp32.
        "amp": "bf16" if amp else "fp32",
        "num_workers": None if fast else p["num_workers"],
        "repeats": p["repeats"],
        "peak_rss_mb": vm_hwm_mb(),
        "peak_rss_worker_mb": None if fast else children_peak_rss_mb(),
        "peak_gpu_mb": gpu_peak_mb(device),
        **extra,
    }


def main(argv: list[str] | None = None) -> None:
    """Worker entry: measure one side and print its result as the last JSON line."""
    worker_main(measure, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
