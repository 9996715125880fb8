"""Batch augmentation on uint8 image tensors, on any device, with the BoT semantics.

Order (as the BoT recipe, with the optional extras in the places the field puts them):
flip (p) -> zero-pad ``pad`` px and random crop back to H x W -> RandomPatch (optional) ->
float in [0, 1] -> colour jitter (optional) -> normalise -> random erasing (p).

All per-sample randomness comes from one ``(N, R)`` draw of uniforms, one row per sample,
with a layout that does not depend on which steps are switched on. On a CPU generator rows
are drawn in order, so augmenting a batch equals augmenting its images one by one from
the same generator state (RandomPatch aside, whose queue is filled per call).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from reidkit.errors import ReIDError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BatchAugment",
    "to_float_normalized",
    "augment_image",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Column layout of the per-sample uniform draw (the attempt blocks follow the fixed part).
(_OY, _OX, _FLIP, _JB, _JC, _JS, _ERASE_P, _EY, _EX,
 _PATCH_P, _SLOT, _PY, _PX, _PFLIP, _CY, _CX) = range(16)  # fmt: skip
_FIXED = 16


def _as_tensor(batch: Any) -> torch.Tensor:
    if isinstance(batch, np.ndarray):
        # torch cannot wrap read-only arrays (PIL buffers, memmaps) safely: copy those.
        arr = np.ascontiguousarray(batch)
        batch = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if not isinstance(batch, torch.Tensor):
        raise ReIDError(f"augment: expected a uint8 tensor or array, got {type(batch).__name__}")
    if batch.dtype != torch.uint8:
        raise ReIDError(f"augment: expected uint8 images (0..255), got dtype {batch.dtype}")
    return batch


def _to_nhwc(batch: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """View a uint8 NHWC or NCHW batch as NHWC (no copy when already NHWC)."""
    if batch.dim() != 4:
        raise ReIDError(f"augment: expected a 4-D batch (NHWC or NCHW), got shape {tuple(batch.shape)}")
    if batch.shape[-1] in (1, channels) and batch.shape[1] not in (1, channels):
        x = batch
    elif batch.shape[1] in (1, channels):
        x = batch.permute(0, 2, 3, 1)
    elif batch.shape[-1] in (1, channels):
        x = batch
    else:
        raise ReIDError(f"augment: cannot find a channel axis of size 1 or {channels} in shape {tuple(batch.shape)}")
    if x.shape[-1] == 1 and channels != 1:
        x = x.expand(-1, -1, -1, channels)
    return x


def _stats(values: Sequence[float], like: torch.Tensor, key: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32, device=like.device)
    if t.dim() != 1:
        raise ReIDError(f"augment: `{key}` must be a sequence of per-channel values, got {values!r}")
    return t


def to_float_normalized(
    batch: torch.Tensor | np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """Deterministic eval transform: uint8 NHWC/NCHW -> float NCHW (x / 255 - mean) / std."""
    x = _to_nhwc(_as_tensor(batch), len(mean))
    m, s = _stats(mean, x, "mean"), _stats(std, x, "std")
    out = x.float().div_(255.0).sub_(m).div_(s)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=memory_format)


def _randint(u: torch.Tensor, high: torch.Tensor | int) -> torch.Tensor:
    """Map uniforms in [0, 1) to integers in [0, high] inclusive (as random.randint(0, high))."""
    high_t = torch.as_tensor(high, device=u.device)
    return torch.minimum((u * (high_t + 1)).floor().long(), high_t.long())


def _rect_sizes(
    u_area: torch.Tensor,
    u_aspect: torch.Tensor,
    h_img: int,
    w_img: int,
    area: tuple[float, float],
    aspect: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First fitting (h, w) over the attempt columns, as the erasing paper's retry loop.

    Returns h, w (N,) and ok (N,): whether any attempt gave a rectangle strictly inside.
    """
    target = h_img * w_img * (area[0] + u_area.double() * (area[1] - area[0]))
    ratio = aspect[0] + u_aspect.double() * (aspect[1] - aspect[0])
    h = torch.round(torch.sqrt(target * ratio)).long()
    w = torch.round(torch.sqrt(target / ratio)).long()
    fits = (h < h_img) & (w < w_img) & (h > 0) & (w > 0)
    first = fits.long().argmax(dim=1, keepdim=True)
    ok = fits.any(dim=1)
    # Zero size where nothing fits keeps later position draws in range; nothing is drawn there.
    zero = torch.zeros((), dtype=torch.long, device=h.device)
    h_first = torch.where(ok, h.gather(1, first)[:, 0], zero)
    w_first = torch.where(ok, w.gather(1, first)[:, 0], zero)
    return h_first, w_first, ok


def _rect_mask(
    y: torch.Tensor, x: torch.Tensor, h: torch.Tensor, w: torch.Tensor, on: torch.Tensor, hw: tuple[int, int]
) -> torch.Tensor:
    """(N, H, W, 1) bool mask of per-sample rectangles [y, y + h) x [x, x + w), where `on`."""
    rows = torch.arange(hw[0], device=y.device)[None, :]
    cols = torch.arange(hw[1], device=y.device)[None, :]
    in_r = (rows >= y[:, None]) & (rows < (y + h)[:, None])
    in_c = (cols >= x[:, None]) & (cols < (x + w)[:, None])
    return (in_r[:, :, None] & in_c[:, None, :] & on[:, None, None])[..., None]


def _gather_hw(x: torch.Tensor, img: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """out[n, i, j] = x[img[n], rows[n, i], cols[n, j]] for NHWC `x` (indices already in range)."""
    _, h, w, c = x.shape
    # One flat row gather is faster than 3-D advanced indexing, notably on CPU.
    flat = (img[:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]
    return x.reshape(-1, c).index_select(0, flat.reshape(-1)).view(*flat.shape, c)


def shift_flip(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Flip (where `flip`), zero-pad by `pad` and crop H x W at per-sample offsets (oy, ox) in [0, 2 pad].

    `x` is uint8 NHWC; one gather builds the output, zeros where the crop leaves the image.
    """
    n, h, w, _ = x.shape
    dev = x.device
    rows = torch.arange(h, device=dev)[None, :] + oy[:, None] - pad
    cols = torch.arange(w, device=dev)[None, :] + ox[:, None] - pad
    # The crop reads the flipped, padded image: flipped column c is original column W-1-c.
    cols = torch.where(flip[:, None], w - 1 - cols, cols)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    out = _gather_hw(x, torch.arange(n, device=dev), rows.clamp(0, h - 1), cols.clamp(0, w - 1))
    return out.masked_fill_(~inside[..., None], 0)


ERASE_FILLS = ("mean", "mean_normalized", "random")


class BatchAugment:
    """BoT training augmentation of a uint8 batch: callable (batch, generator) -> float NCHW.

    ``erase_fill``: "mean" (the normalisation mean, i.e. 0 after normalising), "mean_normalized"
    (the mean's values written into the normalised tensor, as reid-strong-baseline's code) or "random"
    (per-pixel standard normal). ``patch_p`` > 0 enables RandomPatch with a queue of
    ``patch_pool`` patches (areas ``patch_area``, aspects ``patch_aspect``) cut from recent
    batches. ``jitter`` is the colour jitter strength s: brightness, contrast and saturation
    factors drawn per sample from [1 - s, 1 + s]. ``attempts`` is the rectangle retry count.
    """

    def __init__(
        self,
        size: tuple[int, int] = (256, 128),
        pad: int = 10,
        flip_p: float = 0.5,
        erase_p: float = 0.5,
        erase_area: tuple[float, float] = (0.02, 0.4),
        erase_aspect: tuple[float, float] = (0.3, 3.33),
        erase_fill: str = "mean",
        patch_p: float = 0.0,
        jitter: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        device: torch.device | str | None = None,
        patch_area: tuple[float, float] = (0.01, 0.5),
        patch_aspect: tuple[float, float] = (0.1, 10.0),
        patch_pool: int = 1024,
        patch_flip_p: float = 0.5,
        attempts: int = 100,
    ) -> None:
        if len(size) != 2 or min(size) < 1:
            raise ReIDError(f"augment: `size` must be (H, W) with positive entries, got {size!r}")
        if pad < 0:
            raise ReIDError(f"augment: `pad` must be >= 0, got {pad}")
        probs = {"flip_p": flip_p, "erase_p": erase_p, "patch_p": patch_p, "patch_flip_p": patch_flip_p}
        for key, val in probs.items():
            if not 0.0 <= val <= 1.0:
                raise ReIDError(f"augment: `{key}` must be a probability in [0, 1], got {val}")
        for key, rng in (("erase_area", erase_area), ("patch_area", patch_area)):
            if not 0.0 < rng[0] <= rng[1] <= 1.0:
                raise ReIDError(f"augment: `{key}` must satisfy 0 < low <= high <= 1, got {rng!r}")
        for key, rng in (("erase_aspect", erase_aspect), ("patch_aspect", patch_aspect)):
            if not 0.0 < rng[0] <= rng[1]:
                raise ReIDError(f"augment: `{key}` must satisfy 0 < low <= high, got {rng!r}")
        if erase_fill not in ERASE_FILLS:
            raise ReIDError(f"augment: `erase_fill` must be one of {', '.join(ERASE_FILLS)}, got {erase_fill!r}")
        if jitter < 0:
            raise ReIDError(f"augment: `jitter` must be >= 0, got {jitter}")
        if len(mean) != len(std):
            raise ReIDError(f"augment: `mean` and `std` need one value per channel, got {mean!r} / {std!r}")
        if any(s <= 0 for s in std):
            raise ReIDError(f"augment: `std` entries must be > 0, got {std!r}")
        if patch_pool < 1 or attempts < 1:
            raise ReIDError(f"augment: `patch_pool` and `attempts` must be >= 1, got {patch_pool}, {attempts}")
        self.size = (int(size[0]), int(size[1]))
        self.pad = int(pad)
        self.flip_p, self.erase_p, self.patch_p = float(flip_p), float(erase_p), float(patch_p)
        self.erase_area, self.erase_aspect = (erase_area[0], erase_area[1]), (erase_aspect[0], erase_aspect[1])
        self.erase_fill = erase_fill
        self.jitter = float(jitter)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.device = torch.device(device) if device is not None else None
        self.patch_area, self.patch_aspect = (patch_area[0], patch_area[1]), (patch_aspect[0], patch_aspect[1])
        self.patch_pool, self.patch_flip_p = int(patch_pool), float(patch_flip_p)
        self.attempts = int(attempts)
        self._stats_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.reset_patches()

    def config(self) -> dict[str, Any]:
        """Constructor kwargs (without device) to rebuild an equivalent augmenter elsewhere."""
        return {
            "size": self.size, "pad": self.pad, "flip_p": self.flip_p, "erase_p": self.erase_p,
            "erase_area": self.erase_area, "erase_aspect": self.erase_aspect,
            "erase_fill": self.erase_fill, "patch_p": self.patch_p, "jitter": self.jitter,
            "mean": self.mean, "std": self.std, "patch_area": self.patch_area,
            "patch_aspect": self.patch_aspect, "patch_pool": self.patch_pool,
            "patch_flip_p": self.patch_flip_p, "attempts": self.attempts,
        }  # fmt: skip

    def reset_patches(self) -> None:
        """Empty the RandomPatch queue."""
        self._pool: torch.Tensor | None = None  # (capacity, H, W, C) uint8, patch at top-left
        self._pool_hw: torch.Tensor | None = None  # (capacity, 2) patch heights and widths
        self._pool_count = 0
        self._pool_next = 0

    @property
    def columns(self) -> int:
        """Uniforms drawn per sample."""
        return _FIXED + 4 * self.attempts

    def _uniforms(self, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        src = generator.device if generator is not None else device
        return torch.rand((n, self.columns), generator=generator, device=src).to(device)

    def __call__(
        self,
        batch: torch.Tensor | np.ndarray,
        generator: torch.Generator | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> torch.Tensor:
        """Augment a uint8 NHWC/NCHW batch; returns float NCHW normalised on the batch's device."""
        x = _as_tensor(batch)
        if self.device is not None:
            x = x.to(self.device, non_blocking=True)
        x = _to_nhwc(x, len(self.mean))
        if tuple(x.shape[1:3]) != self.size:
            x = self._resize(x)
        n, h, w, _ = x.shape
        u = self._uniforms(n, generator, x.device)
        a = self.attempts
        att_erase = u[:, _FIXED : _FIXED + 2 * a].reshape(n, 2, a)
        att_patch = u[:, _FIXED + 2 * a :].reshape(n, 2, a)

        flip = u[:, _FLIP] < self.flip_p
        oy = _randint(u[:, _OY], 2 * self.pad)
        ox = _randint(u[:, _OX], 2 * self.pad)
        x = shift_flip(x, oy, ox, flip, self.pad)

        if self.patch_p > 0:
            x = self._random_patch(x, u, att_patch)

        mean, std = self._mean_std(x.device)
        f = x.float().div_(255.0)
        if self.jitter > 0:
            f = self._color_jitter(f, u)
        f = f.sub_(mean).div_(std)

        if self.erase_p > 0:
            eh, ew, ok = _rect_sizes(att_erase[:, 0], att_erase[:, 1], h, w, self.erase_area, self.erase_aspect)
            # Position drawn independently of the size, uniform over where the rectangle fits.
            ey = _randint(u[:, _EY], h - eh)
            ex = _randint(u[:, _EX], w - ew)
            on = ok & (u[:, _ERASE_P] < self.erase_p)
            mask = _rect_mask(ey, ex, eh, ew, on, (h, w))
            if self.erase_fill == "mean":
                f = f.masked_fill_(mask, 0.0)
            elif self.erase_fill == "mean_normalized":
                # reid-strong-baseline erases after Normalize with the mean's own values
                f = torch.where(mask, mean.to(f.dtype), f)
            else:
                f = torch.where(mask, self._noise(f, generator), f)
        return f.permute(0, 3, 1, 2).contiguous(memory_format=memory_format)

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Built once per device: avoids a small host-to-device copy on every batch.
        if device not in self._stats_cache:
            like = torch.empty(0, device=device)
            self._stats_cache[device] = (_stats(self.mean, like, "mean"), _stats(self.std, like, "std"))
        return self._stats_cache[device]

    @staticmethod
    def _noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Standard normal noise on `like`'s device, reproducible from `generator`."""
        if generator is None or generator.device == like.device:
            return torch.randn(like.shape, generator=generator, device=like.device)
        # Seed a generator on the data's device from the given one instead of copying a
        # full-size noise tensor across devices.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        local = torch.Generator(device=like.device).manual_seed(seed)
        return torch.randn(like.shape, generator=local, device=like.device)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        # Caches are resized once already; this only serves inputs of another size.
        f = x.permute(0, 3, 1, 2).float()
        f = F.interpolate(f, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return f.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)

    def _color_jitter(self, f: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        s = self.jitter
        factor = (1.0 + s * (2.0 * u[:, [_JB, _JC, _JS]] - 1.0)).clamp_(min=0.0)
        fb, fc, fs = (factor[:, i].view(-1, 1, 1, 1) for i in range(3))
        gray_w = torch.tensor([0.299, 0.587, 0.114], device=f.device)
        f = (f * fb).clamp_(0.0, 1.0)
        gray_mean = (f @ gray_w).mean(dim=(1, 2)).view(-1, 1, 1, 1)
        f = ((f - gray_mean) * fc + gray_mean).clamp_(0.0, 1.0)
        gray = (f @ gray_w)[..., None]
        return ((f - gray) * fs + gray).clamp_(0.0, 1.0)

    def _random_patch(self, x: torch.Tensor, u: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        dev = x.device
        if self._pool is None or self._pool.shape[1:] != x.shape[1:] or self._pool.device != dev:
            self._pool = torch.zeros((self.patch_pool, h, w, c), dtype=torch.uint8, device=dev)
            self._pool_hw = torch.zeros((self.patch_pool, 2), dtype=torch.long, device=dev)
            self._pool_count = self._pool_next = 0
        rows = torch.arange(h, device=dev)[None, :]
        cols = torch.arange(w, device=dev)[None, :]
        idx = torch.arange(n, device=dev)

        # Cut this batch's patches first (from the images before anything is pasted on them),
        # but queue them only after pasting, so an image never receives its own patch.
        ph, pw, ok = _rect_sizes(att[:, 0], att[:, 1], h, w, self.patch_area, self.patch_aspect)
        cy = _randint(u[:, _CY], h - ph)
        cx = _randint(u[:, _CX], w - pw)
        cut = _gather_hw(x, idx, (rows + cy[:, None]).clamp(max=h - 1), (cols + cx[:, None]).clamp(max=w - 1))

        if self._pool_count > 0:
            assert self._pool_hw is not None
            slot = _randint(u[:, _SLOT], self._pool_count - 1)
            sh, sw = self._pool_hw[slot, 0], self._pool_hw[slot, 1]
            py = _randint(u[:, _PY], h - sh)
            px = _randint(u[:, _PX], w - sw)
            rr = rows - py[:, None]
            cc = cols - px[:, None]
            cc = torch.where((u[:, _PFLIP] < self.patch_flip_p)[:, None], sw[:, None] - 1 - cc, cc)
            on = u[:, _PATCH_P] < self.patch_p
            inside = (
                ((rr >= 0) & (rr < sh[:, None]))[:, :, None]
                & ((cc >= 0) & (cc < sw[:, None]))[:, None, :]
                & on[:, None, None]
            )
            src = _gather_hw(self._pool, slot, rr.clamp(0, h - 1), cc.clamp(0, w - 1))
            x = torch.where(inside[..., None], src, x)

        keep = torch.nonzero(ok).flatten()[-self.patch_pool :]
        m = int(keep.numel())
        if m:
            slots = (self._pool_next + torch.arange(m, device=dev)) % self.patch_pool
            self._pool[slots] = cut[keep]
            assert self._pool_hw is not None  # made with self._pool above
            self._pool_hw[slots] = torch.stack([ph[keep], pw[keep]], dim=1)
            self._pool_next = (self._pool_next + m) % self.patch_pool
            self._pool_count = min(self.patch_pool, self._pool_count + m)
        return x


def augment_image(
    img: np.ndarray | torch.Tensor,
    aug: BatchAugment,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-image path (DataLoader workers): uint8 HWC/CHW image -> float CHW, same semantics."""
    t = _as_tensor(img)
    if t.dim() == 2:
        t = t[:, :, None]
    if t.dim() != 3:
        raise ReIDError(f"augment: expected one HxWxC or CxHxW image, got shape {tuple(t.shape)}")
    return aug(t[None], generator)[0]
