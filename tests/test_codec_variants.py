"""Codec variants (`audio.codec_variants`): re-encoded copies of training clips, cached as extra
rows tied to their source, drawn from in training and never seen in validation or test."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import AudioFeatures
from harness.data.cache import feature_dir, prepare_features
from harness.data.codecs import CODECS, Variant, codec_round_trip, draw_variant
from harness.data.dataset import load_arrays
from harness.data.labels import load_dataset
from tests.conftest import write_clip, write_labels


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_round_trip_keeps_the_sound(codec: str) -> None:
    rate = 16000
    t = np.arange(2 * rate) / rate
    audio = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = codec_round_trip(audio, rate, Variant(codec, 32_000, 8000, 0.0))
    # AAC in ADTS keeps its priming (1024 samples at the codec rate) and pads the last frame, as real files do
    assert abs(len(out) - len(audio)) < 0.2 * rate
    # the tone survives: its spectrum peaks at 440 Hz (the middle second, away from the edges)
    middle = out[rate // 2 : rate // 2 + rate]
    assert np.argmax(np.abs(np.fft.rfft(middle))) == pytest.approx(440, abs=2)
    assert not np.allclose(out[: len(audio)][: rate], audio[: rate], atol=1e-3)  # but it is not the same signal


def test_draws_cover_every_codec() -> None:
    rng = np.random.default_rng(0)
    draws = [draw_variant(rng) for _ in range(60)]
    assert {d.codec for d in draws} == set(CODECS)
    assert all(d.rate in CODECS[d.codec][2] and abs(d.gain_db) <= 6 for d in draws)


@pytest.mark.parametrize("window", [None, 1.0])
def test_training_clips_get_variants_tied_to_their_source(tmp_path: Path, window: float | None) -> None:
    root = tmp_path / "ds"
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        for i in range(n):
            write_clip(root / f"{split}set" / f"{split}{i}.mp4", seconds=1.0 + i, freq=300 + 100 * i, video=False)
    write_labels(root / "train_label.txt", [(f"train{i}.mp4", i % 2) for i in range(3)])
    write_labels(root / "val_label.txt", [(f"val{i}.mp4", i % 2) for i in range(2)])
    (root / "test_template.csv").write_text("video_name,score\ntest0.mp4,0\n")
    ds = load_dataset(root)
    cfg = AudioFeatures(codec_variants=2, window_seconds=window)
    prepare_features(ds, cfg, cache_root=tmp_path / "cache", workers=1)
    folder = feature_dir(ds, cfg, tmp_path / "cache")
    train = load_arrays(folder, "train", audio=cfg)
    assert train.names == ["train0.mp4", "train1.mp4", "train2.mp4"]  # one sample per clip, as before
    assert train.variants.tolist() == [[3, 4], [5, 6], [7, 8]]
    val = load_arrays(folder, "val", audio=cfg)
    assert val.variants is None and "source" not in (folder / "val.csv").read_text().splitlines()[0]
    # training draws the source or a copy; evaluation always reads the source
    rng = np.random.default_rng(0)
    drawn = {train.arrays(np.array([1]), rng)["audio"].tobytes() for _ in range(40)}
    assert len(drawn) >= 3 if window is None else len(drawn) > 3
    sources = [train.arrays(np.array([1]))["audio"].tobytes() for _ in range(3)]
    assert len(set(sources)) == 1
    from harness.data.dataset import DeviceResident, batches  # the accelerator path draws the same copies

    device = [b["audio"].numpy() for b, _ in DeviceResident(train, torch.device("cpu")).batches(2, generator=np.random.default_rng(5))]
    host = [b["audio"].numpy() for b, _ in batches(train, 2, shuffle=True, generator=np.random.default_rng(5))]
    assert all(np.array_equal(a, b) for a, b in zip(device, host, strict=True))
    again = prepare_features(ds, cfg, cache_root=tmp_path / "cache", workers=1)
    assert again.done == 0 and not again.repairs
