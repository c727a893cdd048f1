"""The speech script both halves of a clip follow: syllable timing drives the voice and the mouth."""
from __future__ import annotations

import numpy as np

# (F1, F2, F3) of five vowels for an average adult voice; each speaker scales them.
_VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]])


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
    """Loudness at `times`: a rounded bump per syllable. Drives both the voice and the mouth."""
    env = np.zeros_like(times)
    for start, dur, loud, _, _ in syllables:
        x = np.clip((times - start) / dur, 0.0, 1.0)
        env = np.maximum(env, loud * np.sin(np.pi * x) ** 0.8)
    return env
