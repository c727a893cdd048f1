"""What one demo clip is: its fixed format, its entry in the plan, and its random streams."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000
FPS = 12
SIZE = 96


@dataclass(frozen=True)
class _Clip:
    """Everything a worker needs to write one clip; the seed pair makes it independent of the others."""

    name: str
    split: str
    target: int
    audio_fake: float  # artefact strength, 0.0 for genuine audio
    video_fake: float
    seed: int
    index: int
    seconds: float


def _rng(clip: _Clip, part: str) -> np.random.Generator:
    """An independent stream per clip and per part, so that a fake's speaker, room and camera are drawn
    exactly as a genuine clip's are, whatever its artefacts consume."""
    key = ("speech", "voice", "audio fake", "room", "look", "video fake", "camera").index(part)
    return np.random.default_rng(np.random.SeedSequence(clip.seed, spawn_key=(clip.index, key)))
