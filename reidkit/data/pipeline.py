"""Decode once -> uint8 cache -> batches on the device; plus the simple PIL DataLoader path.

``ImageCache.build`` decodes and resizes every image once (thread pool: PIL releases the
GIL while decoding) into an N x H x W x 3 uint8 array, optionally a memory-mapped ``.npy``
reused by later runs. ``CachedBatchLoader`` moves that array to the device once and gathers
and augments batches there; ``PILBatchLoader`` decodes per image in DataLoader workers with
the same augmentation semantics, for machines where the cache does not fit.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from reidkit.data.augment import BatchAugment, augment_image
from reidkit.errors import ReIDError
from reidkit.utils.images import open_rgb
from reidkit.utils.images import read_image as _read_image

__all__ = ["read_image", "ImageCache", "CachedBatchLoader", "PILBatchLoader"]

_CACHE_VERSION = 1


def _decode_rgb(path: str | os.PathLike[str]) -> Image.Image | None:
    """Open and fully decode an image as upright PIL RGB (EXIF orientation applied); None if unreadable."""
    return open_rgb(path)


def read_image(path: str | os.PathLike[str]) -> np.ndarray | None:
    """Decode an image file to RGB uint8 H x W x 3 (EXIF orientation applied); None if missing or corrupt."""
    return _read_image(path)


def _load_resized(path: str, size: tuple[int, int]) -> np.ndarray | None:
    im = _decode_rgb(path)
    if im is None:
        return None
    if im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def _file_signature(paths: Sequence[str], size: tuple[int, int]) -> str:
    """Hash of (each path with its size and mtime, H, W): any change gives a new cache file."""
    digest = hashlib.sha256(f"reidkit-cache-v{_CACHE_VERSION}|{size[0]}x{size[1]}|{len(paths)}".encode())
    for p in paths:
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"\n{p}|{stamp}".encode())
    return digest.hexdigest()[:24]


def _atomic_json(path: Path, payload: dict[str, Any]) -> None:
    from reidkit.utils.io import write_json

    write_json(path, payload, indent=None)


def _warn_skipped(skipped: list[str]) -> None:
    if skipped:
        shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        warnings.warn(
            f"ImageCache: skipped {len(skipped)} unreadable image(s) (missing or corrupt): {shown}",
            RuntimeWarning,
            stacklevel=3,
        )


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class ImageCache:
    """Decoded, resized uint8 images (N x H x W x 3) with a validity mask; see ``build``.

    Entries that could not be decoded are zeros with ``valid[i] == False``; give them label
    -1 (or leave them out) so the samplers never draw them.
    """

    def __init__(
        self,
        images: np.ndarray,
        valid: np.ndarray,
        paths: Sequence[str],
        size: tuple[int, int],
        cache_path: Path | None = None,
        from_cache: bool = False,
    ) -> None:
        self.images = images
        self.valid = valid
        self.paths = list(paths)
        self.size = size
        self.skipped = [p for p, ok in zip(self.paths, valid) if not ok]
        self.cache_path = cache_path
        self.from_cache = from_cache

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def build(
        cls,
        paths: Iterable[str | os.PathLike[str]],
        size: Sequence[int] = (256, 128),  # (H, W), checked below
        cache_dir: str | os.PathLike[str] | None = None,
        workers: int | None = None,
        step_name: str | None = None,
    ) -> ImageCache:
        """Decode and resize every image once; with `cache_dir`, reuse/write a memory-mapped .npy.

        ``step_name``: the decoding step's name (a bar on a terminal, one line otherwise; not shown
        when the images come from the cache)."""
        path_list = [os.fspath(p) for p in paths]
        if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
            raise ReIDError(f"ImageCache: `size` must be (H, W) with positive entries, got {size!r}")
        hw = (int(size[0]), int(size[1]))
        workers = _default_workers() if workers is None else max(1, int(workers))
        if cache_dir is None:
            images = np.zeros((len(path_list), hw[0], hw[1], 3), dtype=np.uint8)
            valid = cls._fill(images, path_list, hw, workers, step_name)
            cache = cls(images, valid, path_list, hw)
            _warn_skipped(cache.skipped)
            return cache

        root = Path(cache_dir)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReIDError(f"ImageCache: cannot create cache_dir {root}: {exc}") from exc
        key = _file_signature(path_list, hw)
        npy = root / f"images_{hw[0]}x{hw[1]}_{key}.npy"
        meta = root / f"images_{hw[0]}x{hw[1]}_{key}.json"
        cached = cls._open(npy, meta, path_list, hw)
        if cached is not None:
            _warn_skipped(cached.skipped)
            return cached

        tmp = root / f".{npy.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npy"
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(path_list), hw[0], hw[1], 3))
            valid = cls._fill(out, path_list, hw, workers, step_name)
            out.flush()
            del out
            # Metadata first, array last: a present .npy always has its .json beside it.
            _atomic_json(meta, {"version": _CACHE_VERSION, "size": list(hw), "n": len(path_list),
                                "valid": valid.astype(int).tolist()})  # fmt: skip
            os.replace(tmp, npy)
        except OSError as exc:
            raise ReIDError(f"ImageCache: cannot write cache file in {root}: {exc}") from exc
        finally:
            if tmp.exists():
                tmp.unlink()
        written = cls._open(npy, meta, path_list, hw)
        if written is None:
            raise ReIDError(f"ImageCache: cache file {npy} could not be read back after writing")
        written.from_cache = False
        _warn_skipped(written.skipped)
        return written

    @classmethod
    def _open(cls, npy: Path, meta: Path, paths: list[str], hw: tuple[int, int]) -> ImageCache | None:
        if not (npy.exists() and meta.exists()):
            return None
        try:
            info = json.loads(meta.read_text())
            images = np.load(npy, mmap_mode="r")
        except (OSError, ValueError):
            return None  # a damaged cache is rebuilt, not trusted
        if images.shape != (len(paths), hw[0], hw[1], 3) or len(info.get("valid", [])) != len(paths):
            return None
        valid = np.asarray(info["valid"], dtype=bool)
        return cls(images, valid, paths, hw, cache_path=npy, from_cache=True)

    @staticmethod
    def _fill(
        out: np.ndarray, paths: list[str], hw: tuple[int, int], workers: int, step_name: str | None = None
    ) -> np.ndarray:
        from reidkit.utils.progress import step

        valid = np.zeros(len(paths), dtype=bool)

        def work(i: int) -> None:
            arr = _load_resized(paths[i], hw)
            if arr is not None:
                out[i] = arr
                valid[i] = True

        with step(step_name or "", len(paths), show=step_name is not None) as bar:
            if workers == 1 or len(paths) < 2:
                for i in range(len(paths)):
                    work(i)
                    bar.update(1)
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    # consuming the results re-raises any unexpected worker error here instead of losing it.
                    for _ in pool.map(work, range(len(paths))):
                        bar.update(1)
        return valid


def _mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (epoch, batch, item), stable across runs."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _labels_array(labels: Any, n: int, key: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ReIDError(f"loader: `{key}` must be 1-D with {n} entries (one per image), got shape {arr.shape}")
    return arr.astype(np.int64)


class CachedBatchLoader:
    """Fast path: the uint8 cache lives on the device; batches are gathered and augmented there.

    Yields ``(images float NCHW normalised, labels int64, indices int64)``, all on `device`,
    for each batch of the sampler's current epoch. Augmentation randomness comes from a CPU
    generator seeded per (seed, epoch, batch): a resumed sampler reproduces the same batches,
    results do not depend on the device, and ``PILBatchLoader`` with the same seed gives the
    same images (RandomPatch and random erasing fill aside).
    """

    def __init__(
        self,
        cache_images: np.ndarray | torch.Tensor | ImageCache,
        labels: Sequence[int] | np.ndarray,
        sampler: Any,
        augment: BatchAugment,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        seed: int = 0,
        chunk: int = 4096,
    ) -> None:
        if isinstance(cache_images, ImageCache):
            cache_images = cache_images.images
        if not isinstance(augment, BatchAugment):
            raise ReIDError(f"CachedBatchLoader: `augment` must be a BatchAugment, got {type(augment).__name__}")
        self.device = torch.device(device)
        self.images = self._to_device(cache_images, self.device, chunk)
        self.labels = torch.as_tensor(_labels_array(labels, self.images.shape[0]), device=self.device)
        self.sampler = sampler
        self.augment = augment
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.seed = int(seed)
        # The uniforms are tiny (N x R); drawing them on the CPU keeps every device in step.
        self._gen = torch.Generator()

    @staticmethod
    def _to_device(images: Any, device: torch.device, chunk: int) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
                raise ReIDError(
                    "CachedBatchLoader: `cache_images` must be uint8 N x H x W x 3, "
                    f"got {images.dtype} {tuple(images.shape)}"
                )
            return images.to(device)
        arr = np.asarray(images)
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
            raise ReIDError(
                f"CachedBatchLoader: `cache_images` must be uint8 N x H x W x 3, got {arr.dtype} {arr.shape}"
            )
        if device.type == "cpu":
            # Stay on the (possibly memory-mapped) array: pages are read on demand.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # read-only memmap; never written
                return torch.from_numpy(arr)
        out = torch.empty(arr.shape, dtype=torch.uint8, device=device)
        # Chunked copies keep host memory flat when the source is a large memmap.
        for s in range(0, arr.shape[0], chunk):
            out[s : s + chunk].copy_(torch.from_numpy(np.ascontiguousarray(arr[s : s + chunk])))
        return out

    def set_epoch(self, epoch: int) -> None:
        """Forward to the sampler."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        epoch = int(getattr(self.sampler, "epoch", 0))
        step = int(getattr(self.sampler, "position", 0))
        for batch in self.sampler:
            self._gen.manual_seed(_mix_seed(self.seed, epoch, step))
            step += 1
            idx = torch.as_tensor(batch, dtype=torch.long).to(self.device, non_blocking=True)
            imgs = self.images.index_select(0, idx)
            yield self.augment(imgs, self._gen, memory_format=self.memory_format), self.labels[idx], idx


class _PILDataset(torch.utils.data.Dataset):
    """Per-image decode + resize + augment; keys are (index, batch seed, slot in batch)."""

    def __init__(self, paths: list[str], labels: np.ndarray, aug_cfg: dict[str, Any]) -> None:
        self.paths = paths
        self.labels = labels
        self.aug_cfg = aug_cfg
        self._aug: BatchAugment | None = None  # built lazily inside each worker process

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, int, int]:
        index, seed, slot = key
        if self._aug is None:
            self._aug = BatchAugment(**self.aug_cfg, device="cpu")
        img = _load_resized(self.paths[index], self._aug.size)
        if img is None:
            raise ReIDError(f"PILBatchLoader: cannot read image {self.paths[index]} (missing or corrupt)")
        gen = torch.Generator().manual_seed(seed)
        if slot:
            # Skip the rows of the earlier batch slots: this image then gets exactly the
            # random numbers the batch path gives slot `slot` of the same batch seed.
            torch.rand(slot * self._aug.columns, generator=gen)
        return augment_image(img, self._aug, gen), int(self.labels[index]), int(index)


class _SeededBatches:
    """Batch sampler yielding (index, batch seed, slot) keys for a list of batches."""

    def __init__(self, batches: list[list[int]], seed: int, epoch: int, start: int) -> None:
        self.batches, self.seed, self.epoch, self.start = batches, seed, epoch, start

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for b, batch in enumerate(self.batches):
            batch_seed = _mix_seed(self.seed, self.epoch, self.start + b)
            yield [(int(i), batch_seed, j) for j, i in enumerate(batch)]


class PILBatchLoader:
    """Reference path: DataLoader workers decode JPEGs with PIL and augment per image.

    Yields the same ``(images, labels, indices)`` triples as ``CachedBatchLoader``, and with
    the same seed the same images. `augment` is a ``BatchAugment`` (its settings are used;
    workers build CPU copies) or a dict of its kwargs. The result does not depend on
    ``num_workers``.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        labels: Sequence[int] | np.ndarray,
        sampler: Any,
        augment: BatchAugment | dict[str, Any] | None = None,
        num_workers: int = 2,
        device: torch.device | str = "cpu",
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.labels = _labels_array(labels, len(self.paths))
        if augment is None:
            cfg: dict[str, Any] = {}
        elif isinstance(augment, BatchAugment):
            cfg = augment.config()
        elif isinstance(augment, dict):
            cfg = {k: v for k, v in augment.items() if k != "device"}
            try:
                BatchAugment(**cfg)
            except TypeError as exc:
                raise ReIDError(f"PILBatchLoader: bad `augment` parameters: {exc}") from exc
        else:
            raise ReIDError(f"PILBatchLoader: `augment` must be a BatchAugment or dict, got {type(augment).__name__}")
        self.aug_cfg = cfg
        self.sampler = sampler
        self.num_workers = max(0, int(num_workers))
        self.device = torch.device(device)
        self.seed = int(seed)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._dataset = _PILDataset(self.paths, self.labels, cfg)

    def set_epoch(self, epoch: int) -> None:
        """Forward to the sampler."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        epoch = int(getattr(self.sampler, "epoch", 0))
        start = int(getattr(self.sampler, "position", 0))
        if hasattr(self.sampler, "rank_batches"):
            remaining = [list(b) for b in self.sampler.rank_batches()[start:]]
            consumed: Iterator[Any] | None = iter(self.sampler)
        else:  # a plain batch sampler: no position to keep in step
            remaining, consumed = [list(b) for b in self.sampler], None
        loader = torch.utils.data.DataLoader(
            self._dataset,
            batch_sampler=_SeededBatches(remaining, self.seed, epoch, start),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for images, labels, indices in loader:
            # Advance the sampler only as batches are consumed (workers prefetch ahead), so
            # its state_dict resumes after the last batch the caller actually received.
            if consumed is not None:
                next(consumed, None)
            yield (
                images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format),
                labels.to(self.device, dtype=torch.long, non_blocking=True),
                indices.to(self.device, dtype=torch.long, non_blocking=True),
            )
        if consumed is not None:
            next(consumed, None)  # run the sampler's generator to its end: the epoch is done
