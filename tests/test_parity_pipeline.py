"""The GPU path is the same training: the cached on-device pipeline (``CachedBatchLoader``) and the
PIL DataLoader path (``PILBatchLoader``) give the same augmentation distributions with fixed seeds
(benchmarks/parity.py compares the final mAP of whole runs; this is its fast, exact part).

Images are lossless PNGs whose pixels encode their own position (R = 8 * row, G = 15 * column + 5,
B = 128), so every augmentation can be read back from the output: the horizontal flip from the
direction of G, the crop offset from the position the centre pixel came from, random erasing from
the pixels whose B equals the fill, padding from the zeros. Measured over a few epochs on both
paths: flip rate, crop offsets, erased area and aspect, pixel statistics, per-identity counts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reidkit.data import pipeline
from reidkit.data.augment import BatchAugment
from reidkit.data.samplers import PKSampler

H, W, PAD = 32, 16, 4
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
AUG = dict(
    size=(H, W),
    pad=PAD,
    flip_p=0.5,
    erase_p=0.5,
    erase_area=(0.02, 0.4),
    erase_aspect=(0.3, 3.33),
    erase_fill="mean",
    patch_p=0.0,
    mean=MEAN,
    std=STD,
)
EPOCHS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline_parity")
    yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    img = np.stack([8 * yy, 15 * xx + 5, np.full_like(yy, 128)], axis=-1).astype(np.uint8)
    paths, labels = [], []
    for pid in range(8):
        for j in range(3 + pid % 3):  # 3..5 images per identity: uneven counts
            p = root / f"{pid:04d}_{j}.png"
            Image.fromarray(img).save(p)
            paths.append(str(p))
            labels.append(pid)
    return paths, np.array(labels)


def collect(loader, sampler) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        for x, y, _ in loader:
            images.append(x.float())
            labels.append(y)
    x = torch.cat(images)
    pix = (x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255.0
    return pix.permute(0, 2, 3, 1).numpy(), torch.cat(labels).numpy()


def read_back(pix: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: flipped, crop offset (dy, dx), erased (area fraction, aspect h / w)."""
    fill_b = MEAN[2] * 255.0
    erased_px = np.abs(pix[..., 2] - fill_b) < 1.0
    real = np.abs(pix[..., 2] - 128.0) < 1.0
    flips, dys, dxs, areas, aspects = [], [], [], [], []
    for k in range(len(pix)):
        g, r, ok = pix[k, ..., 1], pix[k, ..., 0], real[k]
        rows = [row for row in range(H) if ok[row].sum() >= 3]
        # G falls along x in a flipped image
        slope = np.mean([np.polyfit(np.flatnonzero(ok[row]), g[row][ok[row]], 1)[0] for row in rows])
        flip = slope < 0
        ys, xs = np.nonzero(ok)
        y0, x0 = ys[0], xs[0]
        src_y = round(r[y0, x0] / 8.0)
        src_x = round((g[y0, x0] - 5) / 15.0)
        # output (y, x) shows source (y + dy, x + dx) (x mirrored when flipped)
        dys.append(src_y - y0)
        dxs.append(src_x - ((W - 1 - x0) if flip else x0))
        flips.append(flip)
        e = erased_px[k]
        if e.any():
            ey, ex = np.nonzero(e)
            h, w = ey.max() - ey.min() + 1, ex.max() - ex.min() + 1
            areas.append(h * w / (H * W))
            aspects.append(h / w)
        else:
            areas.append(0.0)
            aspects.append(np.nan)
    return {
        "flip": np.array(flips),
        "dy": np.array(dys),
        "dx": np.array(dxs),
        "area": np.array(areas),
        "aspect": np.array(aspects),
    }


@pytest.fixture(scope="module")
def both(data):
    paths, labels = data
    out = {}
    for kind in ("cached", "pil"):
        sampler = PKSampler(labels, p=4, k=4, epoch_batches=6, seed=3)
        if kind == "cached":
            cache = pipeline.ImageCache.build(paths, size=(H, W))
            loader = pipeline.CachedBatchLoader(cache, labels, sampler, BatchAugment(**AUG), seed=7)
        else:
            loader = pipeline.PILBatchLoader(paths, labels, sampler, AUG, num_workers=0, seed=7)
        pix, lab = collect(loader, sampler)
        out[kind] = (pix, lab, read_back(pix))
    return out


def test_same_augmentation_distributions(both):
    (pc, lc, c), (pp, lp, p) = both["cached"], both["pil"]
    n = len(lc)
    assert n == len(lp) == EPOCHS * 6 * 16
    # per-identity counts
    assert np.array_equal(np.bincount(lc, minlength=8), np.bincount(lp, minlength=8))
    # flip rate, crop offsets, erasing rate / area / aspect: the same histograms
    assert c["flip"].mean() == p["flip"].mean() and 0.35 < c["flip"].mean() < 0.65
    for key, bins in (("dy", np.arange(-PAD, PAD + 2)), ("dx", np.arange(-PAD, PAD + 2))):
        hc, _ = np.histogram(c[key], bins)
        hp, _ = np.histogram(p[key], bins)
        assert np.array_equal(hc, hp), key
        assert (hc > 0).sum() >= 2 * PAD, f"{key}: offsets not spread over [-{PAD}, {PAD}]: {hc}"
    erased_c, erased_p = c["area"] > 0, p["area"] > 0
    assert erased_c.mean() == erased_p.mean() and 0.3 < erased_c.mean() < 0.7
    for key, bins in (("area", np.linspace(0, 0.45, 10)), ("aspect", np.geomspace(0.25, 4.0, 9))):
        hc, _ = np.histogram(c[key][erased_c], bins)
        hp, _ = np.histogram(p[key][erased_p], bins)
        assert np.array_equal(hc, hp), key
    assert c["area"][erased_c].min() >= 0.015 and c["area"][erased_c].max() <= 0.42
    # pixel statistics
    for ch in range(3):
        assert abs(pc[..., ch].mean() - pp[..., ch].mean()) < 0.5
        assert abs(pc[..., ch].std() - pp[..., ch].std()) < 0.5


def test_batches_identical_with_the_same_seed(both):
    (pc, lc, _), (pp, lp, _) = both["cached"], both["pil"]
    assert np.array_equal(lc, lp)
    assert np.abs(pc - pp).max() < 1e-3
