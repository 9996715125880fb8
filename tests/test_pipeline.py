import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from reidkit.data import pipeline
from reidkit.data.augment import BatchAugment, to_float_normalized
from reidkit.data.pipeline import CachedBatchLoader, ImageCache, PILBatchLoader, read_image
from reidkit.data.samplers import PKSampler
from reidkit.errors import ReIDError

H, W = 32, 16


def test_read_image_converts_every_mode_to_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (10, 6, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(read_image(tmp_path / "rgb.png"), rgb)

    gray = np.arange(60, dtype=np.uint8).reshape(10, 6) * 4
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.pgm")
    for name in ("gray.png", "gray.pgm"):
        out = read_image(tmp_path / name)
        assert out.shape == (10, 6, 3) and out.dtype == np.uint8
        assert all(np.array_equal(out[..., c], gray) for c in range(3))

    # 16-bit PGM written by hand (maxval 65535, big-endian): scaled, not clipped
    g16 = (np.arange(60, dtype=np.uint32).reshape(10, 6) * 1000).astype(">u2")
    (tmp_path / "g16.pgm").write_bytes(b"P5\n6 10\n65535\n" + g16.tobytes())
    out = read_image(tmp_path / "g16.pgm")
    assert np.array_equal(out[..., 0], np.rint(g16.astype(np.float64) / 257).astype(np.uint8))

    pal = Image.new("P", (4, 2))
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    pal.putdata([0, 1, 2, 0, 1, 2, 2, 1])
    pal.save(tmp_path / "pal.png")
    out = read_image(tmp_path / "pal.png")
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == [0, 255, 0] and out[1, 1].tolist() == [0, 0, 255]

    cmyk = Image.new("CMYK", (3, 2), (255, 0, 0, 0))  # pure cyan
    cmyk.save(tmp_path / "cmyk.tif")
    cmyk.save(tmp_path / "cmyk.jpg", quality=100)
    assert read_image(tmp_path / "cmyk.tif")[0, 0].tolist() == [0, 255, 255]
    assert np.abs(read_image(tmp_path / "cmyk.jpg")[0, 0].astype(int) - [0, 255, 255]).max() <= 3

    rgba = np.concatenate([rgb, np.full((10, 6, 1), 17, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)

    yy, xx = np.mgrid[0:16, 0:8]
    smooth = np.stack([yy * 15, xx * 30, 255 - yy * 15], axis=2).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "rgb.jpg", quality=95, subsampling=0)
    out = read_image(tmp_path / "rgb.jpg")
    assert out.shape == (16, 8, 3) and np.abs(out.astype(int) - smooth).mean() < 4


def test_read_image_returns_none_for_missing_or_corrupt(tmp_path):
    assert read_image(tmp_path / "nope.jpg") is None
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    assert read_image(tmp_path / "junk.jpg") is None
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert read_image(tmp_path / "cut.jpg") is None


def _write_dataset(root, n_ids=6, per_id=4, seed=0):
    """Small JPEG folder: identity i's images have a distinct base colour; returns paths, labels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for i in range(n_ids):
        for j in range(per_id):
            img = rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)
            p = root / f"{i:03d}_{j}.png"
            Image.fromarray(img).save(p)
            paths.append(str(p))
            labels.append(i)
    return paths, np.array(labels)


def test_cache_skips_bad_files_with_one_counting_warning(tmp_path):
    paths, _ = _write_dataset(tmp_path / "imgs", n_ids=2, per_id=2)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    paths = paths + [str(tmp_path / "bad.jpg"), str(tmp_path / "missing.jpg")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = ImageCache.build(paths, size=(H, W), workers=2)
    msgs = [str(w.message) for w in caught if "ImageCache" in str(w.message)]
    assert len(msgs) == 1 and "skipped 2" in msgs[0] and "bad.jpg" in msgs[0]
    assert cache.valid.tolist() == [True] * 4 + [False, False]
    assert cache.skipped == paths[4:]
    assert cache.images.shape == (6, H, W, 3) and cache.images.dtype == np.uint8
    # resized once, bilinear with PIL
    want = np.asarray(Image.open(paths[1]).convert("RGB").resize((W, H), Image.BILINEAR))
    assert np.array_equal(cache.images[1], want)
    assert not cache.images[4].any()


def test_memmap_cache_is_reused_without_decoding(tmp_path, monkeypatch):
    paths, _ = _write_dataset(tmp_path / "imgs", n_ids=2, per_id=3)
    first = ImageCache.build(paths, size=(H, W), cache_dir=tmp_path / "cache", workers=1)
    assert not first.from_cache and isinstance(first.images, np.memmap)
    assert first.cache_path.exists() and first.cache_path.suffix == ".npy"
    assert not [p for p in os.listdir(tmp_path / "cache") if p.endswith(".tmp") or ".tmp." in p]

    def forbidden(path):
        raise AssertionError(f"decoded {path} although the cache should be reused")

    monkeypatch.setattr(pipeline, "_decode_rgb", forbidden)
    second = ImageCache.build(paths, size=(H, W), cache_dir=tmp_path / "cache")
    assert second.from_cache and second.cache_path == first.cache_path
    assert np.array_equal(np.asarray(second.images), np.asarray(first.images))
    assert second.valid.all()
    monkeypatch.undo()

    # another size, or a changed file, gives another cache file
    other = ImageCache.build(paths, size=(H // 2, W // 2), cache_dir=tmp_path / "cache")
    assert other.cache_path != first.cache_path and other.images.shape[1:3] == (H // 2, W // 2)
    Image.new("RGB", (20, 40), (9, 9, 9)).save(paths[0])
    os.utime(paths[0], ns=(1, 1))
    changed = ImageCache.build(paths, size=(H, W), cache_dir=tmp_path / "cache")
    assert not changed.from_cache and changed.images[0, 0, 0].tolist() == [9, 9, 9]


def test_cache_size_is_validated(tmp_path):
    with pytest.raises(ReIDError, match="size"):
        ImageCache.build([], size=(0, 4))


def _aug():
    return BatchAugment(size=(H, W), pad=2, jitter=0.1)


def test_cached_loader_yields_labelled_batches_and_resumes(tmp_path):
    paths, labels = _write_dataset(tmp_path / "imgs")
    cache = ImageCache.build(paths, size=(H, W))
    sampler = PKSampler(labels, p=3, k=2, seed=4)
    loader = CachedBatchLoader(cache.images, labels, sampler, _aug(), device="cpu", seed=1)
    batches = list(loader)
    assert len(batches) == len(loader) == len(sampler) > 1
    for images, lab, idx in batches:
        assert images.shape == (6, 3, H, W) and images.dtype == torch.float32
        assert lab.dtype == torch.int64 and idx.dtype == torch.int64
        assert torch.equal(lab, torch.as_tensor(labels)[idx])
        assert len(set(lab.tolist())) == 3

    # resume mid-epoch: same remaining batches, same pixels
    sampler2 = PKSampler(labels, p=3, k=2, seed=4)
    it = iter(CachedBatchLoader(cache.images, labels, sampler2, _aug(), seed=1))
    next(it)
    state = sampler2.state_dict()
    sampler3 = PKSampler(labels, p=3, k=2, seed=4)
    sampler3.load_state_dict(state)
    rest = list(CachedBatchLoader(cache.images, labels, sampler3, _aug(), seed=1))
    assert len(rest) == len(batches) - 1
    for (a, _, ia), (b, _, ib) in zip(batches[1:], rest):
        assert torch.equal(ia, ib) and torch.equal(a, b)

    loader.set_epoch(1)
    assert [i.tolist() for _, _, i in loader] != [i.tolist() for _, _, i in batches]


def test_cached_loader_channels_last_and_bad_input(tmp_path):
    paths, labels = _write_dataset(tmp_path / "imgs", n_ids=3, per_id=2)
    cache = ImageCache.build(paths, size=(H, W))
    loader = CachedBatchLoader(cache, labels, PKSampler(labels, p=3, k=2), _aug(), channels_last=True)
    images, _, _ = next(iter(loader))
    assert images.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ReIDError, match="labels"):
        CachedBatchLoader(cache.images, labels[:-1], PKSampler(labels, p=3, k=2), _aug())
    with pytest.raises(ReIDError, match="cache_images"):
        CachedBatchLoader(cache.images.astype(np.float32), labels, PKSampler(labels, p=3, k=2), _aug())


@pytest.mark.gpu
def test_cached_loader_on_cuda_matches_cpu(tmp_path):
    paths, labels = _write_dataset(tmp_path / "imgs")
    cache = ImageCache.build(paths, size=(H, W))
    cpu = list(CachedBatchLoader(cache.images, labels, PKSampler(labels, p=3, k=2), _aug(), device="cpu"))
    gpu = list(CachedBatchLoader(cache.images, labels, PKSampler(labels, p=3, k=2), _aug(), device="cuda"))
    for (a, la, ia), (b, lb, ib) in zip(cpu, gpu):
        assert b.is_cuda and lb.is_cuda and ib.is_cuda
        assert torch.equal(ia, ib.cpu()) and torch.equal(la, lb.cpu())
        assert torch.allclose(a, b.cpu(), atol=1e-5)


@pytest.mark.parametrize("workers", [0, 1])
def test_pil_loader_matches_cached_loader(tmp_path, workers):
    paths, labels = _write_dataset(tmp_path / "imgs")
    cache = ImageCache.build(paths, size=(H, W))
    cached = list(CachedBatchLoader(cache.images, labels, PKSampler(labels, p=3, k=2, seed=2), _aug(), seed=5))
    pil_sampler = PKSampler(labels, p=3, k=2, seed=2)
    pil = PILBatchLoader(paths, labels, pil_sampler, _aug(), num_workers=workers, device="cpu", seed=5)
    assert len(pil) == len(cached)
    got = []
    for n, batch in enumerate(pil):
        # the sampler advances as batches are consumed, not as workers prefetch them
        assert pil_sampler.state_dict()["position"] == n + 1
        got.append(batch)
    assert pil_sampler.state_dict()["position"] == 0
    assert len(got) == len(cached)
    for (a, la, ia), (b, lb, ib) in zip(cached, got):
        assert b.shape == (6, 3, H, W)
        assert torch.equal(ia, ib) and torch.equal(la, lb)
        assert torch.allclose(a, b, atol=1e-5)


def test_pil_loader_without_augmentation_gives_eval_pixels(tmp_path):
    paths, labels = _write_dataset(tmp_path / "imgs", n_ids=3, per_id=2)
    cache = ImageCache.build(paths, size=(H, W))
    params = dict(size=(H, W), pad=0, flip_p=0.0, erase_p=0.0)
    images, lab, idx = next(iter(PILBatchLoader(paths, labels, PKSampler(labels, p=3, k=2), params, num_workers=0)))
    assert torch.equal(images, to_float_normalized(torch.from_numpy(cache.images[idx.numpy()])))
    with pytest.raises(ReIDError, match="augment"):
        PILBatchLoader(paths, labels, PKSampler(labels, p=3, k=2), {"bogus": 1})


def test_pil_loader_names_an_unreadable_image(tmp_path):
    paths, labels = _write_dataset(tmp_path / "imgs", n_ids=3, per_id=2)
    os.remove(paths[0])
    loader = PILBatchLoader(paths, labels, PKSampler(labels, p=3, k=2), _aug(), num_workers=0)
    with pytest.raises(ReIDError, match="000_0"):
        list(loader)
