"""Decoding and log-mel images on real and generated clips."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.config import SEED_AUDIO, AudioFeatures
from harness.data.features import _filters, audio_features, mel_filterbank, mel_image, mel_power
from harness.data.media import EmptyFile, NoAudio, Silent, TooShort, Truncated, Undecodable, decode_audio
from tests.conftest import write_truncated_clip


def test_real_clips_decode_to_declared_length(shared_sample: Path) -> None:
    for clip in sorted(shared_sample.glob("*set/*.mp4")):
        audio, declared = decode_audio(clip, 16000)
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert abs(len(audio) / 16000 - declared) < 0.05, clip.name
        assert 0.01 < np.abs(audio).max() <= 1.0


def test_image_shape_and_range(shared_sample: Path) -> None:
    clip = next(shared_sample.glob("trainset/*.mp4"))
    cfg = AudioFeatures()
    img = audio_features(clip, cfg)
    assert img.shape == (128, 256) and img.dtype == np.uint8
    assert img.min() == 0 and img.max() > 200  # min-max scaled, then area-averaged in time
    assert audio_features(clip, SEED_AUDIO).shape == (256, 256)


@pytest.mark.parametrize(
    ("sample_rate", "n_fft", "n_mels", "fmin", "fmax"),
    [(16000, 512, 128, 0.0, 8000.0), (22050, 2048, 128, 0.0, None), (44100, 1024, 64, 300.0, 12000.0), (16000, 511, 40, 20.0, 7600.0)],
)
def test_filterbank_and_window_are_librosas(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> None:
    import librosa

    ref = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    ours = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    assert ours.shape == ref.shape and np.abs(ours - ref).max() <= 1e-6 * ref.max()
    window = _filters(sample_rate, n_fft, n_mels, fmin, fmax)[0]
    assert np.abs(window - librosa.filters.get_window("hann", n_fft, fftbins=True)).max() < 1e-6


def test_feature_workers_do_not_import_librosa(shared_sample: Path) -> None:
    """librosa.filters costs ~0.9 s to import: a worker (or the bundle's api) must not pay it."""
    import subprocess
    import sys

    clip = next(shared_sample.glob("trainset/*.mp4"))
    code = (f"import sys; from harness.data.features import audio_features; from harness.config import AudioFeatures; "
            f"audio_features({str(clip)!r}, AudioFeatures()); print('librosa' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_mel_power_matches_librosa() -> None:
    import librosa

    cfg = AudioFeatures()
    y = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32)
    ours = mel_power(y, cfg)
    ref = librosa.feature.melspectrogram(
        y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax
    )
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() / ref.max() < 1e-4


def test_image_is_the_plain_db_minmax_resize_of_the_mel_power(shared_sample: Path) -> None:
    """mel_image reorders the arithmetic for speed; the plain order gives the same picture."""
    import cv2
    import librosa

    for cfg in (AudioFeatures(), SEED_AUDIO):
        clip = next(shared_sample.glob("valset/*.mp4"))
        audio, _ = decode_audio(clip, cfg.sample_rate)
        db = librosa.power_to_db(mel_power(audio, cfg), ref=np.max, top_db=cfg.top_db)
        scaled = cv2.normalize(db, None, 0, 255, cv2.NORM_MINMAX)
        method = cv2.INTER_AREA if cfg.interpolation == "area" else cv2.INTER_LINEAR
        plain = np.rint(cv2.resize(scaled, cfg.shape[::-1], interpolation=method))
        ours = mel_image(audio, cfg).astype(np.float64)
        assert ours.shape == plain.shape
        assert np.abs(ours - plain).max() <= 1 and (ours != plain).mean() < 1e-3  # rounding at .5 only
    flat = mel_image(np.zeros(16000, np.float32), AudioFeatures())  # nothing to stretch: black, not NaN
    assert flat.shape == (128, 256) and not flat.any()


def test_seed_settings_reproduce_the_tutorial_images(shared_sample: Path, tmp_path: Path) -> None:
    """Same settings, same picture: the fast path against ../shared/bench/seed_mel.py itself."""
    import sys

    sys.path.insert(0, str(shared_sample.parent.parent / "bench"))
    from seed_mel import seed_mel_image

    clip = shared_sample / "trainset" / "6e14a72bccaaf5567209fc356ce04ab9.mp4"
    ref = seed_mel_image(str(clip), str(tmp_path / "a.wav")).astype(np.float32)
    ours = audio_features(clip, SEED_AUDIO).astype(np.float32)
    assert np.abs(ref - ours).mean() < 1.5  # grey levels out of 255


def test_a_tone_lands_in_the_right_mel_band(clip_factory) -> None:
    cfg = AudioFeatures()
    img = audio_features(clip_factory("tone.mp4", seconds=2.0, freq=1000.0), cfg)
    import librosa

    centres = librosa.mel_frequencies(n_mels=cfg.n_mels + 2, fmin=cfg.fmin, fmax=cfg.fmax)[1:-1]
    expected = int(np.argmin(np.abs(centres - 1000.0)))
    assert abs(int(img.mean(axis=1).argmax()) - expected) <= 1


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda f, p: f("noaudio.mp4", audio=False), NoAudio),
        (lambda f, p: f("silent.mp4", amplitude=0.0), Silent),
        (lambda f, p: f("short.mp4", seconds=0.2), TooShort),
        (lambda f, p: write_truncated_clip(p / "cut.mp4"), Truncated),
    ],
    ids=["no-audio", "silent", "too-short", "truncated"],
)
def test_bad_clips_are_named(clip_factory, tmp_path: Path, make, error) -> None:
    clip = make(clip_factory, tmp_path)
    with pytest.raises(error) as info:
        audio_features(clip, AudioFeatures())
    assert str(clip) in str(info.value) and "\n" not in str(info.value)


def test_random_bytes_and_zero_bytes(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    with pytest.raises(Undecodable):
        audio_features(junk, AudioFeatures())
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(EmptyFile):
        audio_features(empty, AudioFeatures())
