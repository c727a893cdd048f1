"""Typed, frozen settings. Nothing here is mutated during a run: overrides build a new object.

Each settings class flattens to a dict of plain values for logging (`flat`) and hashes to a short
key (`key`) so that caches and checkpoints name exactly the settings that produced them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any


def _stable_hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dataclasses into `{"a.b": value}` for MLflow params."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flat(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def replace(obj: Any, **changes: Any) -> Any:
    """A copy with `changes` applied, ignoring None values (unset CLI options)."""
    return dataclasses.replace(obj, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class AudioFeatures:
    """Log-mel image settings. Defaults suit 3-20 s speech clips: 16 kHz, 32 ms window, 10 ms hop.

    The image is `n_mels` x `width` uint8 (power in dB relative to the clip's peak, floored at
    `-top_db`, min-max scaled), the time axis resized to `width` as the tutorial does.
    `height` other than None resizes the mel axis too (the tutorial uses 256).
    """

    sample_rate: int = 16000
    n_fft: int = 512
    hop_length: int = 160
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = 8000.0
    top_db: float = 80.0
    width: int = 256
    height: int | None = None
    interpolation: str = "area"  # "area" or "linear" (the tutorial's) for the time-axis resize
    min_seconds: float = 0.5  # shorter clips are reported "too short", not guessed at
    silence_dbfs: float = -70.0  # peak below this is reported "silent"
    truncated_ratio: float = 0.5  # decoded/declared length below this is reported "truncated"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height or self.n_mels, self.width)

    def key(self) -> str:
        return "audio-" + _stable_hash(dataclasses.asdict(self))


# The tutorial's settings (../shared/bench/seed_mel.py): librosa defaults at 22050 Hz, 256x256.
SEED_AUDIO = AudioFeatures(
    sample_rate=22050, n_fft=2048, hop_length=512, n_mels=128, fmax=None, width=256, height=256,
    interpolation="linear",
)
