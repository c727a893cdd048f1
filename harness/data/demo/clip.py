"""One demo clip: its format, plan entry, random streams, the syllables driving voice and mouth, Gaussian smoothing."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000
FPS = 12
SIZE = 96
# (F1, F2, F3) of five vowels for an average adult voice; each speaker scales them.
_VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]])


@dataclass(frozen=True)
class _Clip:
    """Everything a worker needs to write one clip; the seed pair makes it independent of the others."""

    name: str
    split: str
    target: int
    audio_fake: float  # artefact strength, 0.0 for genuine audio
    video_fake: float
    method: str  # `real`, or a key of dataset.METHODS
    seed: int
    index: int
    seconds: float


def _rng(clip: _Clip, part: str) -> np.random.Generator:
    """A stream per clip and part: a fake's speaker, room and camera are drawn exactly as a genuine clip's."""
    key = ("speech", "voice", "audio fake", "room", "look", "video fake", "camera").index(part)
    return np.random.default_rng(np.random.SeedSequence(clip.seed, spawn_key=(clip.index, key)))


def _syllables(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Rows of (start, duration, loudness, vowel, has_fricative): a speaker's rhythm with pauses."""
    rate = rng.uniform(3.0, 6.0)  # syllables per second
    t, rows = rng.uniform(0.0, 0.3), []
    while t < seconds - 0.1:
        dur = rng.uniform(0.55, 0.9) / rate
        rows.append((t, dur, rng.uniform(0.4, 1.0), rng.integers(len(_VOWELS)), rng.random() < 0.6))
        t += dur + rng.uniform(0.1, 0.5) / rate
        if rng.random() < 0.12:  # a pause between phrases
            t += rng.uniform(0.15, 0.45)
    return np.array(rows, dtype=float).reshape(-1, 5)


def _envelope(syllables: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Loudness at `times`: a rounded bump per syllable."""
    env = np.zeros_like(times)
    for start, dur, loud, _, _ in syllables:
        x = np.clip((times - start) / dur, 0.0, 1.0)
        env = np.maximum(env, loud * np.sin(np.pi * x) ** 0.8)
    return env


def _gaussian(x: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """Gaussian smoothing along one axis, edges extended; a weighted sum of shifts, cheap for small sigma."""
    if sigma <= 0:
        return x
    radius = max(1, int(np.ceil(2.5 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(x.real.dtype)
    pad = [(radius, radius) if i == axis else (0, 0) for i in range(x.ndim)]
    padded = np.moveaxis(np.pad(x, pad, mode="edge"), axis, 0)
    length = x.shape[axis]
    return np.moveaxis(sum(w * padded[i : i + length] for i, w in enumerate(kernel)), 0, axis)
