"""Out-of-sync pairs for fusion models: a real clip's frames with its own audio shifted 0.2-1.0 s
(circularly, either way), or with another real clip's audio, so the model must learn that audio and
face belong together. A whole-clip log-mel's shift is counted at the native hop (`frames_per_second`),
which keeps the offset about right for clips of a few seconds.
"""
from __future__ import annotations

import numpy as np

SHIFT_SECONDS = (0.2, 1.0)


def shift(audio: np.ndarray, donors: np.ndarray, frames_per_second: float, rng: np.random.Generator) -> np.ndarray:
    """`audio` (n, H, T) uint8 log-mels with half of them (on average) rolled in time and the rest
    replaced by `donors` (n, H, T), other real clips' audio. Returns a new array."""
    out = audio.copy()
    swap = rng.random(len(audio)) < 0.5
    out[swap] = donors[swap]
    for i in np.flatnonzero(~swap):
        steps = max(1, round(rng.uniform(*SHIFT_SECONDS) * frames_per_second))
        out[i] = np.roll(audio[i], int(steps * rng.choice([-1, 1])), axis=-1)
    return out
