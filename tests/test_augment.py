from __future__ import annotations

import numpy as np
import torch

from harness.augment import image_augment, jpeg_uint8, mixup_inputs, spec_augment
from harness.config import Augment

OFF = Augment(time_mask=0, freq_mask=0, time_shift=0, hflip=False, colour=0)


def test_all_off_is_identity() -> None:
    x = torch.randn(4, 1, 16, 32)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(spec_augment(x, OFF, g), x)
    img = torch.randn(2, 3, 8, 8)
    assert torch.equal(image_augment(img, OFF, g), img)


def test_time_shift_is_a_circular_roll() -> None:
    x = torch.arange(8, dtype=torch.float32).repeat(2, 1, 3, 1)  # (2, 1, 3, 8)
    out = spec_augment(x, Augment(time_mask=0, freq_mask=0, time_shift=0.5), torch.Generator().manual_seed(3))
    for b in range(2):
        shift = int((out[b, 0, 0, 0] - x[b, 0, 0, 0]).item()) % 8
        assert torch.equal(out[b], torch.roll(x[b], -shift, dims=-1))


def test_masks_zero_one_band_each() -> None:
    x = torch.ones(16, 1, 20, 40)
    out = spec_augment(x, Augment(time_mask=0.25, freq_mask=0, time_shift=0), torch.Generator().manual_seed(1))
    zero_cols = (out[:, 0] == 0).all(dim=1).sum(dim=1)  # masked columns per sample
    assert zero_cols.max() <= 10 and zero_cols.sum() > 0
    out = spec_augment(x, Augment(time_mask=0, freq_mask=0.25, time_shift=0), torch.Generator().manual_seed(1))
    assert (out[:, 0] == 0).all(dim=2).sum(dim=1).max() <= 5


def test_strength_zero_turns_everything_off() -> None:
    x = torch.randn(4, 1, 16, 32)
    assert torch.equal(spec_augment(x, Augment(strength=0.0), torch.Generator()), x)


def test_mixup_mixes_pairs_and_targets() -> None:
    torch.manual_seed(0)
    x = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    y = torch.tensor([0.0, 1.0])
    mixed, my = mixup_inputs({"x": x}, y, 0.4, torch.Generator().manual_seed(0))
    assert torch.allclose(mixed["x"].mean(dim=(1, 2, 3)), my)  # the image mix and the label mix agree


def test_image_flip_and_crop_keep_shape() -> None:
    x = torch.randn(8, 3, 24, 24)
    out = image_augment(x, Augment(hflip=True, colour=0, resized_crop=0.5), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)


def test_jpeg_changes_pixels_but_not_shape() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    before = images.copy()
    jpeg_uint8(images, 1.0, rng)
    assert images.shape == before.shape and not np.array_equal(images, before)
    assert np.abs(images.astype(int) - before).mean() < 80


def test_downscale_blurs_the_picked_samples_only() -> None:
    x = torch.randn(64, 3, 24, 24)
    off = Augment(hflip=False, colour=0)
    out = image_augment(x, Augment(hflip=False, colour=0, downscale=0.5), torch.Generator().manual_seed(0))
    changed = (out - x).flatten(1).abs().amax(dim=1) > 1e-6
    assert 10 < int(changed.sum()) < 54  # about half of them
    assert out[changed].std() < x[changed].std()  # a round trip through fewer pixels smooths
    assert torch.equal(image_augment(x, off, torch.Generator().manual_seed(0)), x)


def test_lowest_jpeg_quality_sets_the_strength() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    errors = {}
    for lowest in (5, 89):
        work = images.copy()
        jpeg_uint8(work, 1.0, np.random.default_rng(1), lowest)
        errors[lowest] = np.abs(work.astype(int) - images).mean()
    assert errors[5] > errors[89]
