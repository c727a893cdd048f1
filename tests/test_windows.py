"""Windows (`audio.window_seconds`), silence trimming and clip-level aggregation: the cached whole
log-mels, the windows cut from them in training and scoring, and the cache keys they live under."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import AudioFeatures, TrainConfig
from harness.data.cache import extract, feature_dir, prepare_features
from harness.data.dataset import load_arrays
from harness.data.features import eval_windows, mel_frames, mel_image, trim_silence, window_rows, window_starts
from harness.data.labels import load_dataset
from harness.data.media import TooShort
from harness.engine import aggregate_scores
from harness.errors import ConfigError
from tests.conftest import write_clip, write_labels

WINDOWED = AudioFeatures(window_seconds=1.5, eval_windows=3)


def test_a_short_clip_is_tiled_never_zero_padded() -> None:
    frames = np.arange(1, 8, dtype=np.uint8)[:, None].repeat(4, axis=1)  # 7 frames, none zero
    windows = frames[window_rows(np.zeros(3, np.int64), np.full(3, 7), window_starts(7, 10, 3), 10)]
    assert windows.shape == (3, 10, 4) and (windows > 0).all()
    assert windows[0, :, 0].tolist() == [1, 2, 3, 4, 5, 6, 7, 1, 2, 3]  # the clip again, from its start


def test_evaluation_windows_span_a_long_clip() -> None:
    assert window_starts(100, 30, 3).tolist() == [0, 35, 70]  # first and last full window included
    assert window_starts(30, 30, 2).tolist() == [0, 0]


def test_whole_log_mel_is_the_image_without_its_time_resize() -> None:
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    audio[:3200] = 0  # a silent lead-in reaches the floor, where min-max and the fixed range agree
    frames = mel_frames(audio, WINDOWED)
    image = mel_image(audio, dataclasses.replace(AudioFeatures(), width=len(frames)))
    assert frames.dtype == np.uint8 and frames.shape == (101, 128)
    np.testing.assert_array_equal(frames.T, image)


def test_a_quiet_moment_elsewhere_leaves_a_windows_pixels_alone() -> None:
    """Windows are scaled over a fixed dB range below the clip's peak: a pause added later in the clip
    (or the seam of a looped clip) does not brighten the frames before it, as min-max scaling did."""
    rng = np.random.default_rng(0)
    t = np.arange(3 * 16000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
             + 0.05 * rng.standard_normal(len(t))).astype(np.float32)  # noise keeps every bin above the floor
    paused = np.concatenate([audio[:32000], np.zeros(1600, np.float32), audio[32000:]])
    before, after = mel_frames(audio, WINDOWED), mel_frames(paused, WINDOWED)
    np.testing.assert_array_equal(before[:150], after[:150])  # 1.5 s of frames, well before the pause
    # What min-max over the clip (the whole-clip image's scaling, kept for the tutorial) does instead:
    minmax_before = mel_image(audio, dataclasses.replace(AudioFeatures(), width=len(before)))[:, :150]
    minmax_after = mel_image(paused, dataclasses.replace(AudioFeatures(), width=len(after)))[:, :150]
    assert minmax_after.mean() > minmax_before.mean() + 5  # 143 against 134 here


def test_window_settings_and_their_keys() -> None:
    assert WINDOWED.shape == (128, 150) and AudioFeatures().shape == (128, 256)
    # The cache holds whole clips: every window length and count shares one entry...
    assert AudioFeatures(window_seconds=3.0, eval_windows=9).key() == WINDOWED.key() != AudioFeatures().key()
    assert WINDOWED.cache_settings()["native"] is True
    # ...and the key of whole-clip images is one plain hash of every setting that decides the arrays.
    decided = {k: v for k, v in dataclasses.asdict(AudioFeatures()).items() if k not in ("window_seconds", "eval_windows")}
    blob = json.dumps(decided, sort_keys=True, separators=(",", ":")).encode()
    assert AudioFeatures().key() == "audio-" + hashlib.sha1(blob).hexdigest()[:10]
    assert AudioFeatures(trim_silence=True).key() != AudioFeatures().key()
    with pytest.raises(ConfigError, match="audio.window_seconds: must be > 0"):
        AudioFeatures(window_seconds=0.0)
    with pytest.raises(ConfigError, match="train.aggregate: unknown aggregate 'median'"):
        TrainConfig(aggregate="median")


def test_aggregates() -> None:
    probs = torch.tensor([[0.1, 0.5, 0.9], [0.2, 0.2, 0.2]])
    np.testing.assert_allclose(aggregate_scores(probs, "mean").numpy(), [0.5, 0.2], rtol=1e-6)
    np.testing.assert_allclose(aggregate_scores(probs, "max").numpy(), [0.9, 0.2], rtol=1e-6)
    np.testing.assert_allclose(aggregate_scores(probs, "logit_mean").numpy(), [0.5, 0.2], rtol=1e-6)
    assert aggregate_scores(torch.tensor([[0.01, 0.01, 0.99]]), "logit_mean") < 0.34  # mean of logits, not of p
    one = torch.tensor([[1e-9]])  # one window: its own score under every rule (no logit clipping)
    assert float(aggregate_scores(one, "logit_mean")) == pytest.approx(1e-9, rel=1e-6)


def test_trimming_cuts_leading_and_trailing_silence() -> None:
    sr = 16000
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr).astype(np.float32)
    quiet = np.full(sr // 2, 1e-4, np.float32)
    trimmed = trim_silence(np.concatenate([quiet, tone, quiet]), sr, 40.0)
    assert abs(len(trimmed) - sr) <= sr // 100
    assert np.abs(trimmed[:160]).max() > 0.1  # starts in the tone


def test_a_clip_that_trimming_makes_too_short_is_reported(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4", seconds=3.0, video=False, amplitude=0.3)
    import av  # a short burst in a quiet clip: write it by hand

    samples = np.full(3 * 16000, 1e-4, np.float32)
    samples[16000:19200] = 0.3  # 0.2 s of sound
    path = tmp_path / "burst.wav"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_f32le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None], format="flt", layout="mono")
        frame.sample_rate = 16000
        for p in [*stream.encode(frame), *stream.encode()]:
            out.mux(p)
    trim = AudioFeatures(trim_silence=True)
    assert extract(clip, trim)[0].shape == (128, 256)
    extract(path, AudioFeatures())  # 3 s untrimmed: fine
    with pytest.raises(TooShort, match="once silence is trimmed"):
        extract(path, trim)


@pytest.fixture(scope="module")
def windowed_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A dataset of audio clips 1-4 s long, prepared with windows of 1.5 s."""
    root = tmp_path_factory.mktemp("win") / "ds"
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for i in range(n):
            write_clip(root / f"{split}set" / f"{split}{i}.mp4", seconds=1.0 + i, freq=300 + 100 * i, video=False)
    write_labels(root / "train_label.txt", [(f"train{i}.mp4", i % 2) for i in range(4)])
    write_labels(root / "val_label.txt", [(f"val{i}.mp4", i % 2) for i in range(2)])
    (root / "test_template.csv").write_text("video_name,score\ntest1.mp4,0\ntest0.mp4,0\n")
    ds = load_dataset(root)
    cache = root.parent / "cache"
    report = prepare_features(ds, WINDOWED, cache_root=cache, workers=1)
    assert report.done == 8 and not report.failures
    return root, feature_dir(ds, WINDOWED, cache)


def test_windowed_cache_packs_whole_clips_with_offsets(windowed_cache: tuple[Path, Path]) -> None:
    root, folder = windowed_cache
    data = load_arrays(folder, "train", audio=WINDOWED)
    lengths = data.spans[:, 1]
    assert np.abs(lengths - [101, 201, 301, 401]).max() <= 5  # 1-4 s at a 10 ms hop (AAC adds a few)
    assert data.spans[:, 0].tolist() == [0, *np.cumsum(lengths)[:-1].tolist()]
    assert data.inputs["audio"].shape == (lengths.sum(), 128)
    train = data.arrays(np.arange(4), np.random.default_rng(0))["audio"]
    assert train.shape == (4, 128, 150)
    evaluation = data.arrays(np.arange(4))["audio"]
    assert evaluation.shape == (4, 3, 128, 150)
    for i in range(4):  # the very windows that predict cuts from the clip itself
        clip = extract(root / "trainset" / f"train{i}.mp4", WINDOWED)[0]
        np.testing.assert_array_equal(evaluation[i], eval_windows(clip, WINDOWED))
    # the random window of a clip is a run of its own frames
    whole = extract(root / "trainset" / "train3.mp4", WINDOWED)[0]
    found = [s for s in range(len(whole) - 149) if (whole[s : s + 150].T == train[3]).all()]
    assert found
    with pytest.raises(ValueError, match="the cache holds whole log-mels, the settings ask for images"):
        load_arrays(folder, "train", audio=AudioFeatures())


def test_a_second_prepare_reuses_the_windowed_cache(windowed_cache: tuple[Path, Path]) -> None:
    root, _ = windowed_cache
    other = dataclasses.replace(WINDOWED, window_seconds=3.0)  # another window: the same cache entry
    report = prepare_features(load_dataset(root), other, cache_root=root.parent / "cache", workers=1)
    assert report.reused == 8 and report.done == 0 and not report.repairs


def test_studies_search_windowed_settings() -> None:
    from harness.tuning import load_spec
    from tests.conftest import ROOT

    spec = load_spec(ROOT / "studies" / "ffdv-audio.toml", check_models=False)
    assert {"window_seconds", "eval_windows", "aggregate", "trim_silence", "ema"} <= set(spec.searched)
    # every window length and count reads one cache entry per trimming choice: two to prepare
    assert len({f.key() for f in spec.feature_configs()}) == 2
    cfg = spec.config_for({"window_seconds": 3.0, "eval_windows": 9, "aggregate": "max", "trim_silence": True, "ema": 0.999})
    assert (cfg.audio.window_seconds, cfg.audio.eval_windows, cfg.train.aggregate) == (3.0, 9, "max")
    assert cfg.audio.trim_silence and cfg.train.ema_decay == 0.999


def test_device_resident_windows_match_the_host_draws(windowed_cache: tuple[Path, Path]) -> None:
    """The accelerator path (tried here on the CPU) cuts the same windows from the same draws."""
    from harness.data.dataset import DeviceResident, batches

    _, folder = windowed_cache
    data = load_arrays(folder, "train", audio=WINDOWED)
    resident = DeviceResident(data, torch.device("cpu"))
    on_device = [(b["audio"].numpy(), y.numpy()) for b, y in resident.batches(2, generator=np.random.default_rng(3))]
    on_host = [(b["audio"].numpy(), y.numpy()) for b, y in batches(data, 2, shuffle=True, generator=np.random.default_rng(3))]
    assert len(on_device) == len(on_host) == 2
    for (a, ya), (b, yb) in zip(on_device, on_host):
        assert a.shape == (2, 128, 150)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ya, yb)
