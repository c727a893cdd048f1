"""Settings are validated when they are built: names, ranges and types, one line naming the key."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import (
    DETECTORS,
    SEED_AUDIO,
    Augment,
    AudioFeatures,
    RunConfig,
    TrainConfig,
    VideoFeatures,
    check_track,
    from_dict,
    read_config_file,
    replace,
    to_dict,
)
from harness.errors import BadInput, ConfigError


def test_defaults_and_the_tutorial_settings_are_valid() -> None:
    assert RunConfig().train.loss == "bce" and SEED_AUDIO.height == 256
    for modality in ("audio", "video", "fusion", "image"):
        assert RunConfig(modality=modality).modality == modality


def test_validation_imports_neither_torch_nor_cv2() -> None:
    code = ("import sys\nfrom harness.config import RunConfig, TrainConfig\n"
            "from harness.errors import ConfigError\ntry:\n    TrainConfig(loss='foo')\nexcept ConfigError:\n    pass\n"
            "print(','.join(m for m in ('torch', 'cv2', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RunConfig(modality="smell"), "modality: unknown modality 'smell'; choose from audio, video, fusion, image"),
        (lambda: TrainConfig(loss="foo"), "train.loss: unknown loss 'foo'; choose from bce, ce, focal"),
        (lambda: TrainConfig(optimizer="bar"), "train.optimizer: unknown optimizer 'bar'; choose from adamw, sgd, radam"),
        (lambda: TrainConfig(device="tpu"), "train.device: unknown device 'tpu'; choose from auto, cpu, cuda or cuda:N"),
        (lambda: TrainConfig(device="cuda:x"), "train.device: unknown device 'cuda:x'"),
        (lambda: AudioFeatures(interpolation="cubic"),
         "audio.interpolation: unknown interpolation 'cubic'; choose from area, linear"),
        (lambda: VideoFeatures(detector="dlib"), "video.detector: unknown face detector 'dlib'; choose from haar"),
        (lambda: TrainConfig(backbone=""), 'train.backbone: must not be empty, got ""'),
        (lambda: TrainConfig(video_backbone=" "), 'train.video_backbone: must not be empty, got " "'),
    ],
    ids=["modality", "loss", "optimizer", "device", "device-index", "interpolation", "detector", "backbone", "video-backbone"],
)
def test_unknown_names_list_the_choices(build, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build()
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, BadInput) and caught.value.exit_code == 2


def test_a_gpu_index_is_a_device() -> None:
    assert TrainConfig(device="cuda:1").device == "cuda:1"


def test_the_detector_names_are_the_face_registry() -> None:
    from harness.data.faces import DETECTORS as REGISTERED

    assert set(DETECTORS) == set(REGISTERED)


# (class, field, refused value, message); the field's boundary values are accepted below.
RANGES = [
    (TrainConfig, "lr", 0.0, "train.lr: must be > 0, got 0.0"),
    (TrainConfig, "lr", -1, "train.lr: must be > 0, got -1"),
    (TrainConfig, "epochs", 0, "train.epochs: must be >= 1, got 0"),
    (TrainConfig, "batch_size", 1, "train.batch_size: must be >= 2, got 1"),
    (TrainConfig, "weight_decay", -0.1, "train.weight_decay: must be >= 0, got -0.1"),
    (TrainConfig, "warmup_epochs", -1.0, "train.warmup_epochs: must be >= 0"),
    (TrainConfig, "label_smoothing", 1.0, "train.label_smoothing: must lie in [0, 1), got 1.0"),
    (TrainConfig, "drop_rate", 1.5, "train.drop_rate: must lie in [0, 1)"),
    (TrainConfig, "focal_gamma", -2.0, "train.focal_gamma: must be >= 0"),
    (TrainConfig, "grad_clip", -1.0, "train.grad_clip: must be >= 0"),
    (TrainConfig, "patience", -1, "train.patience: must be >= 0"),
    (TrainConfig, "seed", -1, "train.seed: must lie in [0, 4.29497e+09]"),
    (TrainConfig, "max_params", 0.0, "train.max_params: must be > 0"),
    (Augment, "jpeg", 1.5, "train.augment.jpeg: must lie in [0, 1], got 1.5"),
    (Augment, "time_mask", -0.1, "train.augment.time_mask: must lie in [0, 1]"),
    (Augment, "freq_mask", 2.0, "train.augment.freq_mask: must lie in [0, 1]"),
    (Augment, "time_shift", 1.1, "train.augment.time_shift: must lie in [0, 1]"),
    (Augment, "resized_crop", 1.2, "train.augment.resized_crop: must lie in [0, 1]"),
    (Augment, "mixup", -0.2, "train.augment.mixup: must be >= 0"),
    (Augment, "colour", -0.2, "train.augment.colour: must be >= 0"),
    (Augment, "strength", -1.0, "train.augment.strength: must be >= 0"),
    (AudioFeatures, "sample_rate", 0, "audio.sample_rate: must be > 0, got 0"),
    (AudioFeatures, "n_mels", 0, "audio.n_mels: must be >= 1, got 0"),
    (AudioFeatures, "n_fft", 1, "audio.n_fft: must be >= 2"),
    (AudioFeatures, "hop_length", 0, "audio.hop_length: must be >= 1"),
    (AudioFeatures, "width", 0, "audio.width: must be >= 1"),
    (AudioFeatures, "height", 0, "audio.height: must be >= 1"),
    (AudioFeatures, "fmin", -1.0, "audio.fmin: must be >= 0"),
    (AudioFeatures, "top_db", 0.0, "audio.top_db: must be > 0"),
    (AudioFeatures, "min_seconds", -0.5, "audio.min_seconds: must be >= 0"),
    (AudioFeatures, "silence_dbfs", 3.0, "audio.silence_dbfs: must be <= 0"),
    (AudioFeatures, "truncated_ratio", 1.5, "audio.truncated_ratio: must lie in [0, 1]"),
    (VideoFeatures, "frames", 0, "video.frames: must be >= 1, got 0"),
    (VideoFeatures, "size", 0, "video.size: must be >= 1"),
    (VideoFeatures, "margin", -0.1, "video.margin: must be >= 0"),
    (VideoFeatures, "detect_width", 0, "video.detect_width: must be >= 1"),
    (VideoFeatures, "min_face", 1.5, "video.min_face: must lie in [0, 1]"),
    (VideoFeatures, "fallback_crop", 0.0, "video.fallback_crop: must lie in (0, 1], got 0"),
]


@pytest.mark.parametrize(("cls", "field", "value", "message"), RANGES,
                         ids=[f"{c.__name__}.{f}={v}" for c, f, v, _ in RANGES])
def test_values_out_of_range_are_refused(cls: type, field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        cls(**{field: value})
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(("cls", "values"), [
    (TrainConfig, {"lr": 1e-9, "epochs": 1, "batch_size": 2, "label_smoothing": 0.0, "drop_rate": 0.0, "patience": 0,
                   "seed": 2**32 - 1, "grad_clip": 0.0, "warmup_epochs": 0.0}),
    (Augment, {"jpeg": 1.0, "time_mask": 0.0, "freq_mask": 1.0, "resized_crop": 1.0, "strength": 0.0, "mixup": 0.0}),
    (AudioFeatures, {"n_mels": 1, "n_fft": 2, "hop_length": 1, "fmin": 0.0, "fmax": None, "height": None,
                     "silence_dbfs": 0.0, "truncated_ratio": 1.0, "min_seconds": 0.0}),
    (VideoFeatures, {"frames": 1, "size": 1, "margin": 0.0, "min_face": 0.0, "fallback_crop": 1.0}),
])
def test_boundary_values_are_accepted(cls: type, values: dict) -> None:
    built = cls(**values)
    assert all(getattr(built, k) == v for k, v in values.items())


def test_fmax_must_lie_above_fmin() -> None:
    with pytest.raises(ConfigError, match=r"^audio.fmax: must be above fmin \(4000\), got 3000$"):
        AudioFeatures(fmin=4000.0, fmax=3000.0)


def test_not_a_number_and_infinity_are_refused() -> None:
    with pytest.raises(ConfigError, match="^train.lr: expected a finite number, got NaN$"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match="^train.max_params: expected a finite number, got Infinity$"):
        TrainConfig(max_params=float("inf"))


def test_replace_validates_too() -> None:
    # The CLI builds its settings with replace(): `--lr -1` is refused there, before anything runs.
    with pytest.raises(ConfigError, match="^train.lr: must be > 0, got -1$"):
        replace(TrainConfig(), lr=-1)
    assert replace(TrainConfig(), lr=None, epochs=3).epochs == 3  # None: the option was not given


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"train": {"epochs": "1"}}, 'train.epochs: expected an integer, got "1"'),
        ({"train": {"pretrained": "false"}}, 'train.pretrained: expected true or false, got "false"'),
        ({"audio": {"n_mels": "64"}}, 'audio.n_mels: expected an integer, got "64"'),
        ({"train": {"lr": "0.001"}}, 'train.lr: expected a number, got "0.001"'),
        ({"train": {"epochs": 2.5}}, "train.epochs: expected an integer, got 2.5"),
        ({"train": {"epochs": True}}, "train.epochs: expected an integer, got true"),
        ({"train": {"lr": False}}, "train.lr: expected a number, got false"),
        ({"train": {"loss": 3}}, "train.loss: expected a string, got 3"),
        ({"train": {"augment": {"hflip": 1}}}, "train.augment.hflip: expected true or false, got 1"),
        ({"video": {"frames": [8]}}, "video.frames: expected an integer, got [8]"),
        ({"modality": 1}, "modality: expected a string, got 1"),
        ({"audio": {"fmax": "none"}}, 'audio.fmax: expected a number, got "none"'),
    ],
    ids=["epochs-str", "pretrained-str", "n_mels-str", "lr-str", "epochs-float", "epochs-bool", "lr-bool", "loss-int",
         "hflip-int", "frames-list", "modality-int", "fmax-str"],
)
def test_from_dict_checks_each_type_and_names_the_key(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_dict(RunConfig, values)
    assert str(caught.value) == message


def test_an_int_is_a_float_and_null_fits_an_optional() -> None:
    cfg = from_dict(RunConfig, {"train": {"lr": 1, "max_params": 150000}, "audio": {"fmax": None, "height": None}})
    assert cfg.train.lr == 1 and cfg.train.max_params == 150000 and cfg.audio.fmax is None


def test_unknown_keys_and_non_tables_are_named() -> None:
    with pytest.raises(ConfigError, match=r"^train.epoch: unknown setting; known: backbone, pretrained, "):
        from_dict(RunConfig, {"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"^train.augment.flip: unknown setting; known: strength, "):
        from_dict(RunConfig, {"train": {"augment": {"flip": True}}})
    with pytest.raises(ConfigError, match=r"^modalty: unknown setting"):
        from_dict(RunConfig, {"modalty": "audio"})
    with pytest.raises(ConfigError, match=r"^train: expected a table of settings, got 3$"):
        from_dict(RunConfig, {"train": 3})


def test_where_prefixes_the_message() -> None:
    with pytest.raises(ConfigError, match=r'^run abc config.json: train.epochs: expected an integer, got "1"$'):
        from_dict(RunConfig, {"train": {"epochs": "1"}}, where="run abc config.json")


def test_saved_settings_round_trip() -> None:
    cfg = RunConfig(modality="fusion", audio=SEED_AUDIO, video=VideoFeatures(frames=2, size=32),
                    train=TrainConfig(loss="focal", augment=Augment(mixup=0.2, hflip=False), video_backbone="resnet18"))
    assert from_dict(RunConfig, to_dict(cfg)) == cfg
    assert from_dict(RunConfig, to_dict(cfg)).audio.key() == SEED_AUDIO.key()


def test_settings_saved_under_the_old_section_name_still_load() -> None:
    """[features] was the audio section's name: runs, bundles and packs saved with it load as [audio]."""
    assert from_dict(RunConfig, {"features": {"n_mels": 64}}).audio.n_mels == 64
    with pytest.raises(ConfigError, match=r"^features: unknown setting"):  # both names: the old one is not read
        from_dict(RunConfig, {"features": {"n_mels": 64}, "audio": {"n_mels": 32}})


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('modality = "video"\n[train]\nepochs = 2\nlr = 1\n[video]\nframes = 4\n')
    cfg = read_config_file(good)
    assert (cfg.modality, cfg.train.epochs, cfg.train.lr, cfg.video.frames) == ("video", 2, 1, 4)

    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nepochs = "1"\n')
    with pytest.raises(ConfigError) as caught:
        read_config_file(bad)
    assert str(caught.value) == f'{bad}: train.epochs: expected an integer, got "1"'

    broken = tmp_path / "broken.toml"
    broken.write_text("[train\nepochs = 1\n")
    with pytest.raises(ConfigError, match=rf"^{broken}: not valid TOML \("):
        read_config_file(broken)
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'missing.toml'}: cannot read the config file"):
        read_config_file(tmp_path / "missing.toml")


def test_settings_stay_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0  # type: ignore[misc]


def test_the_track_rule_names_the_dataset() -> None:
    check_track("image", "image")
    check_track("clips", "fusion")
    with pytest.raises(ConfigError, match=r"^/d: an image-track dataset \(face images\) has no audio: it trains "
                                          r"modality image, not fusion \(use --modality image\)$"):
        check_track("image", "fusion", where="/d")
    with pytest.raises(ConfigError, match=r"^an image-track dataset \(face images\) trains modality image, not video"):
        check_track("image", "video")
    with pytest.raises(ConfigError, match=r"this dataset holds clips.*\(use --modality video\)$"):
        check_track("clips", "image")
