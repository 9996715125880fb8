import numpy as np
import pytest
import torch

from reidkit.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchAugment,
    augment_image,
    shift_flip,
    to_float_normalized,
)
from reidkit.errors import ReIDError

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _batch(n=4, h=32, w=16, seed=0, low=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, 256, (n, h, w, 3), generator=g, dtype=torch.uint8)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _off(**kw):
    """All randomness switched off except what kw turns on."""
    base = dict(pad=0, flip_p=0.0, erase_p=0.0, patch_p=0.0, jitter=0.0)
    base.update(kw)
    return base


def test_normalisation_is_exact_and_layout_independent():
    x = _batch()
    out = to_float_normalized(x)
    ref = (x.permute(0, 3, 1, 2).double() / 255 - MEAN.double()) / STD.double()
    assert out.shape == (4, 3, 32, 16) and out.dtype == torch.float32
    assert torch.allclose(out.double(), ref, atol=1e-6)
    assert torch.equal(to_float_normalized(x.permute(0, 3, 1, 2).contiguous()), out)
    assert torch.equal(to_float_normalized(x.numpy()), out)


def test_all_probabilities_zero_equals_eval_transform():
    x = _batch()
    aug = BatchAugment(size=(32, 16), **_off())
    assert torch.equal(aug(x, _gen()), to_float_normalized(x))


def test_flip_is_an_exact_mirror():
    x = _batch()
    aug = BatchAugment(size=(32, 16), **_off(flip_p=1.0))
    assert torch.equal(aug(x, _gen()), to_float_normalized(x).flip(-1))


def test_flip_rate_is_about_half():
    x = _batch(n=400, h=8, w=4, seed=1)
    out = BatchAugment(size=(8, 4), **_off(flip_p=0.5))(x, _gen(3))
    plain = to_float_normalized(x)
    flipped = (out == plain.flip(-1)).flatten(1).all(1)
    same = (out == plain).flatten(1).all(1)
    assert torch.all(flipped ^ same)
    assert 0.4 < flipped.float().mean().item() < 0.6


def test_pad_crop_with_known_offsets_is_a_zero_filled_shift():
    x = _batch(n=2, h=12, w=8)
    pad = 3
    oy, ox = torch.tensor([0, 5]), torch.tensor([6, 2])
    out = shift_flip(x, oy, ox, torch.tensor([False, True]), pad)
    for n in range(2):
        img = x[n].numpy()
        if n == 1:
            img = img[:, ::-1]  # flip happens before pad + crop, as in the BoT transform order
        padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
        want = padded[oy[n] : oy[n] + 12, ox[n] : ox[n] + 8]
        assert np.array_equal(out[n].numpy(), want)
    # zeros entered where the crop left the image (sample 0 shifted down by pad rows)
    assert out[0, :pad].eq(0).all()


def test_random_crop_is_a_shift_within_the_padding():
    x = _batch(n=16, h=16, w=8, low=1)  # no zero pixels in the source
    pad = 2
    out = BatchAugment(size=(16, 8), **_off(pad=pad))(x, _gen(1))
    plain = to_float_normalized(x)
    no_flip = torch.tensor([False])

    def shifted(n, dy, dx):
        return to_float_normalized(shift_flip(x[n : n + 1], torch.tensor([dy]), torch.tensor([dx]), no_flip, pad))[0]

    offsets = set()
    for n in range(16):
        span = range(2 * pad + 1)
        found = [(dy, dx) for dy in span for dx in span if torch.equal(out[n], shifted(n, dy, dx))]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 4  # per-sample offsets, not one for the batch
    assert not torch.equal(out, plain)


def test_random_erasing_rectangle_area_aspect_and_fill():
    h, w = 128, 64
    x = _batch(n=48, h=h, w=w, seed=2)
    out = BatchAugment(size=(h, w), **_off(erase_p=1.0))(x, _gen(5))
    plain = to_float_normalized(x)
    for n in range(48):
        mask = (out[n] != plain[n]).any(0)
        assert mask.any()  # at 128 x 64 a fitting rectangle is always found within 100 tries
        rows, cols = torch.nonzero(mask, as_tuple=True)
        eh, ew = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        region = out[n, :, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert torch.all(region == 0.0)  # filled with the mean == 0 after normalisation
        frac = (eh * ew).item() / (h * w)
        # rounding h and w to whole pixels moves the area by at most about one row + column
        slack = (eh + ew).item() / (h * w)
        assert 0.02 - slack <= frac <= 0.4 + slack
        assert 0.3 * 0.9 <= (eh / ew).item() <= 3.33 * 1.1
        assert eh < h and ew < w


def test_random_erasing_probability_and_random_fill():
    x = _batch(n=300, h=32, w=16, seed=3)
    plain = to_float_normalized(x)
    out = BatchAugment(size=(32, 16), **_off(erase_p=0.5))(x, _gen(2))
    erased = (out != plain).flatten(1).any(1).float().mean().item()
    assert 0.4 < erased < 0.6
    rnd = BatchAugment(size=(32, 16), **_off(erase_p=1.0, erase_fill="random"))(x, _gen(2))
    vals = rnd[rnd != plain]
    assert vals.numel() > 1000 and abs(vals.std().item() - 1.0) < 0.1


def test_random_patch_pastes_a_patch_cut_from_another_image():
    h, w = 32, 16
    donors = _batch(n=4, h=h, w=w, seed=4, low=100)
    aug = BatchAugment(size=(h, w), **_off(patch_p=1.0, patch_flip_p=0.0))
    # queue empty: nothing pasted on the first batch, but its patches are queued
    assert torch.equal(aug(donors, _gen(0)), to_float_normalized(donors))
    assert aug._pool_count > 0
    target = torch.full((3, h, w, 3), 7, dtype=torch.uint8)
    out = aug(target, _gen(1))
    windows = np.lib.stride_tricks.sliding_window_view  # all sub-rectangles of the donors
    for n in range(3):
        changed = (out[n] != to_float_normalized(target)[n]).any(0)
        assert changed.any()
        rows, cols = torch.nonzero(changed, as_tuple=True)
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert changed[y0:y1, x0:x1].all()  # one solid rectangle
        region = out[n, :, y0:y1, x0:x1]
        donor_norm = to_float_normalized(donors).numpy()
        win = windows(donor_norm, (3, int(y1 - y0), int(x1 - x0)), axis=(1, 2, 3))
        match = np.all(win == region.numpy(), axis=(-3, -2, -1))
        assert match.any(), "pasted region is not a sub-image of the earlier batch"


def test_colour_jitter_changes_images_per_sample_and_stays_in_range():
    x = _batch(n=8, seed=6)
    out = BatchAugment(size=(32, 16), **_off(jitter=0.4))(x, _gen(0))
    plain = to_float_normalized(x)
    assert not torch.equal(out, plain)
    pixels = out * STD + MEAN
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    # brightness differs per sample: the ratio of mean intensities is not constant
    ratio = pixels.mean((1, 2, 3)) / (plain * STD + MEAN).mean((1, 2, 3))
    assert ratio.std() > 0.01


def test_seeded_generator_is_deterministic():
    x = _batch(n=6)
    aug = BatchAugment(size=(32, 16), pad=2)
    assert torch.equal(aug(x, _gen(9)), aug(x, _gen(9)))
    assert not torch.equal(aug(x, _gen(9)), aug(x, _gen(10)))


def test_batch_and_per_image_paths_agree_on_the_same_seed():
    x = _batch(n=5, seed=7)
    aug = BatchAugment(size=(32, 16), pad=3, jitter=0.2)
    batch = aug(x, _gen(11))
    g = _gen(11)
    single = torch.stack([augment_image(x[i].numpy(), aug, g) for i in range(5)])
    assert torch.allclose(batch, single, atol=1e-6)
    assert augment_image(x[0].numpy(), aug, _gen(0)).shape == (3, 32, 16)


def test_other_input_size_is_resized_and_nchw_accepted():
    x = _batch(n=2, h=64, w=32)
    aug = BatchAugment(size=(32, 16), **_off())
    out = aug(x.permute(0, 3, 1, 2), _gen())
    assert out.shape == (2, 3, 32, 16)
    assert out.is_contiguous()
    cl = aug(x, _gen(), memory_format=torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, out)


@pytest.mark.gpu
def test_cuda_matches_cpu_with_a_cpu_generator():
    x = _batch(n=8)
    aug = BatchAugment(size=(32, 16), pad=2, jitter=0.2, patch_p=0.5)
    cpu = aug(x, _gen(1))
    aug.reset_patches()
    gpu = aug(x.cuda(), _gen(1))
    assert gpu.is_cuda and torch.allclose(cpu, gpu.cpu(), atol=1e-5)


def test_user_errors():
    with pytest.raises(ReIDError, match="uint8"):
        BatchAugment(size=(32, 16))(torch.zeros(2, 32, 16, 3), _gen())
    with pytest.raises(ReIDError, match="erase_fill"):
        BatchAugment(erase_fill="noise")
    with pytest.raises(ReIDError, match="flip_p"):
        BatchAugment(flip_p=1.5)
