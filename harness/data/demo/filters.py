"""Gaussian smoothing shared by the audio (vocoder smear) and the video (blur)."""
from __future__ import annotations

import numpy as np


def _gaussian(x: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """Gaussian smoothing along one axis, edges extended; a weighted sum of shifts, cheap for small sigma."""
    if sigma <= 0:
        return x
    radius = max(1, int(np.ceil(2.5 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(x.real.dtype)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    padded = np.moveaxis(np.pad(x, pad, mode="edge"), axis, 0)
    length = x.shape[axis]
    return np.moveaxis(sum(w * padded[i : i + length] for i, w in enumerate(kernel)), 0, axis)
