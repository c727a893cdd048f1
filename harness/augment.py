"""Batch augmentations on the device, each switchable from `config.Augment`, on normalised float batches
(B, C, H, W): a masked region is 0, the data mean. Spectrograms: SpecAugment masks, circular time shift,
RawBoost-style corruption, mixup. Images: flip, brightness/contrast, JPEG, downscale, resized crop.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.config import Augment


def _rand(*shape: int, generator: torch.Generator) -> torch.Tensor:
    # Drawn where the generator lives (the training device): no host round trip.
    return torch.rand(*shape, generator=generator, device=generator.device)


def _band_mask(batch: int, length: int, max_frac: float, generator: torch.Generator) -> torch.Tensor:
    """(B, length) bool: one random band per sample, up to max_frac of the axis."""
    widths = (_rand(batch, generator=generator) * max_frac * length).long()
    starts = (_rand(batch, generator=generator) * (length - widths + 1).float()).long()
    pos = torch.arange(length, device=generator.device)
    return (pos >= starts[:, None]) & (pos < (starts + widths)[:, None])


def spec_augment(x: torch.Tensor, cfg: Augment, generator: torch.Generator) -> torch.Tensor:
    b, _, h, w = x.shape
    s = cfg.strength
    if cfg.time_shift * s > 0:
        shifts = ((_rand(b, generator=generator) * 2 - 1) * cfg.time_shift * s * w).long()
        cols = (torch.arange(w, device=x.device)[None, :] - shifts[:, None]) % w
        x = torch.gather(x, 3, cols[:, None, None, :].expand(b, x.shape[1], h, w))
    if cfg.rawboost * s > 0:
        x = _rawboost(x, min(1.0, cfg.rawboost * s), generator)
    if cfg.time_mask * s > 0:
        x = x.masked_fill(_band_mask(b, w, cfg.time_mask * s, generator)[:, None, None, :], 0.0)
    if cfg.freq_mask * s > 0:
        x = x.masked_fill(_band_mask(b, h, cfg.freq_mask * s, generator)[:, None, :, None], 0.0)
    return x


def _rawboost(x: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """RawBoost (Tak et al. 2022) in a log-mel, for a share of the samples: a smooth gain across bands, a noise floor."""
    b, _, h, w = x.shape
    bands = torch.linspace(0, torch.pi, h, device=x.device)
    weights = (_rand(b, 4, generator=generator) * 2 - 1) * 0.4  # in units of the data's std
    gain = sum(weights[:, k, None] * torch.cos(k * bands) for k in range(4))  # (B, H): k = 0 is a level change
    floor = -2.0 + _rand(b, 1, 1, 1, generator=generator) * 1.5
    noise = floor + 0.25 * torch.randn(x.shape, generator=generator, device=generator.device)
    corrupted = torch.maximum(x + gain[:, None, :, None].to(x.dtype), noise.to(x.dtype))
    return torch.where((_rand(b, generator=generator) < probability)[:, None, None, None], corrupted, x)


def image_augment(x: torch.Tensor, cfg: Augment, generator: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    s = cfg.strength
    if cfg.downscale * s > 0:
        x = _downscale(x, min(1.0, cfg.downscale * s), generator)
    if cfg.resized_crop * s > 0:
        x = _resized_crop(x, 1.0 - min(cfg.resized_crop * s, 0.9), generator)
    if cfg.hflip:
        x = torch.where((_rand(b, generator=generator) < 0.5)[:, None, None, None], x.flip(3), x)
    if cfg.colour * s > 0:
        gain = 1 + (_rand(b, 1, 1, 1, generator=generator) * 2 - 1) * cfg.colour * s
        bias = (_rand(b, 1, 1, 1, generator=generator) * 2 - 1) * cfg.colour * s
        x = x * gain + bias
    return x


def _downscale(x: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """A share `probability` of the samples shrunk to 1/2-1/1 of their side and scaled back up (a low-res source)."""
    b, _, h, w = x.shape
    scale = 0.5 + 0.5 * float(_rand(1, generator=generator))  # one size per batch: one resize call
    small = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    back = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return torch.where((_rand(b, generator=generator) < probability)[:, None, None, None], back, x)


def _resized_crop(x: torch.Tensor, min_area: float, generator: torch.Generator) -> torch.Tensor:
    """One random crop per sample (area in [min_area, 1], square-ish), resized back to full size."""
    b, _, h, w = x.shape
    area = min_area + (1 - min_area) * _rand(b, generator=generator)
    side = area.sqrt()
    cx = (_rand(b, generator=generator) * (1 - side)) * 2 - (1 - side)  # centre in [-1+side, 1-side]
    cy = (_rand(b, generator=generator) * (1 - side)) * 2 - (1 - side)
    zero = torch.zeros_like(side)
    theta = torch.stack([torch.stack([side, zero, cx], 1), torch.stack([zero, side, cy], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), [b, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def jpeg_uint8(images, probability: float, rng, lowest: int = 30) -> None:  # noqa: ANN001 - numpy arrays
    """Re-encode a share `probability` of uint8 HWC images in place at a JPEG quality from `lowest` to 90 (on the CPU)."""
    import cv2

    for i in range(len(images)):
        if rng.random() < probability:
            ok, buf = cv2.imencode(".jpg", images[i], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(lowest, 91))])
            if ok:
                images[i] = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).reshape(images[i].shape)


def mixup_inputs(inputs: dict[str, torch.Tensor], y: torch.Tensor, alpha: float,
                 generator: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Mixup of every input with one weight and pairing; a mixed clip keeps an input only if both sources had it."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(y.shape[0], generator=generator, device=generator.device)
    masks = {k: m & m[perm] for k, m in inputs.items() if k.endswith("_present")}
    weight = torch.full_like(y, lam, dtype=torch.float32)
    if masks:
        some = torch.stack(list(masks.values())).any(dim=0)
        weight = torch.where(some, weight, torch.ones_like(weight))
        masks = {k: torch.where(some, m, inputs[k]) for k, m in masks.items()}
    out = dict(masks)
    for key, x in inputs.items():
        if key not in masks:
            w = weight.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
            out[key] = w * x + (1 - w) * x[perm]
    return out, weight * y + (1 - weight) * y[perm]
