"""Pseudo-fakes (harness.pseudo): each generator seeded and doing its job on the real clips' cached
inputs, the training hook's rate and labels, train_fakes = none, the settings' checks, their place in
a study's space and a bundle's source; one slow demo run."""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import AudioFeatures, RunConfig, TrainConfig, VideoFeatures, with_changes
from harness.data.cache import prepare_features
from harness.data.dataset import SplitArrays, batches, load_arrays
from harness.data.labels import load_dataset
from harness.errors import ConfigError
from harness.pseudo import for_training
from harness.pseudo.blend import blend
from harness.pseudo.shift import shift
from harness.pseudo.vocode import vocode

VIDEO = VideoFeatures(frames=4, size=64)


@pytest.fixture(scope="module")
def clips(shared_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> SplitArrays:
    """The real clips' val split (2 reals, 3 fakes) as a fusion split: log-mels, crops, landmarks."""
    cache, ds = tmp_path_factory.mktemp("cache"), load_dataset(shared_sample)
    with ThreadPoolExecutor(1) as pool:  # in this process: no workers to spawn
        folders = {name: prepare_features(ds, cfg, cache_root=cache, splits=("val",), pool=pool).cache
                   for name, cfg in (("audio", AudioFeatures()), ("video", VIDEO))}
    return load_arrays(folders, "val", audio=AudioFeatures())


def reals(data: SplitArrays) -> dict[str, np.ndarray]:
    return data.arrays(np.flatnonzero(data.labels == 0))


def test_blend_is_seeded_and_changes_the_inner_face(clips: SplitArrays) -> None:
    idx = np.flatnonzero(clips.labels == 0)
    crops, points = clips.arrays(idx)["video"], clips.face_points(idx)[0]
    assert np.isfinite(points).any()  # the masks come from landmarks, not only the fallback ellipse
    once = blend(crops, points, np.random.default_rng(3))
    assert once.shape == crops.shape and once.dtype == np.uint8
    assert np.array_equal(once, blend(crops, points, np.random.default_rng(3)))
    assert not np.array_equal(once, blend(crops, points, np.random.default_rng(4)))
    change = np.abs(once.astype(np.int16) - crops).mean(axis=(0, 1, 4))  # (S, S)
    inner, border = change[16:48, 16:48].mean(), np.concatenate([change[:4].ravel(), change[-4:].ravel()]).mean()
    assert inner > 1.0 and inner > 5 * border, (inner, border)


def test_vocode_is_seeded_differs_and_keeps_the_level(clips: SplitArrays) -> None:
    mel = reals(clips)["audio"][0]
    out = vocode(mel, AudioFeatures(), seed=1)
    assert out.shape == mel.shape and out.dtype == np.uint8
    assert np.array_equal(out, vocode(mel, AudioFeatures(), seed=1))
    difference = np.abs(out.astype(np.int16) - mel)
    assert difference.mean() > 2  # re-synthesised, not copied
    assert abs(float(out.mean()) - float(mel.mean())) < 15  # the same sound's level, within 6% of the range
    frames = np.ascontiguousarray(mel.T)  # a windowed cache's whole clip, time-major
    assert vocode(frames, AudioFeatures(), 1, time_major=True).shape == frames.shape


def test_shift_moves_the_audio_against_the_frames(clips: SplitArrays) -> None:
    audio = reals(clips)["audio"]
    donors = audio[::-1].copy()
    out = shift(audio, donors, 100.0, np.random.default_rng(0))
    assert np.array_equal(out, shift(audio, donors, 100.0, np.random.default_rng(0)))
    for row, before, donor in zip(out, audio, donors):
        lags = [k for k in range(-100, 101) if np.array_equal(row, np.roll(before, k, axis=-1))]
        assert np.array_equal(row, donor) or (lags and min(abs(k) for k in lags) >= 20), "not swapped nor shifted 0.2-1 s"
    assert not np.array_equal(out, audio)


def training(data: SplitArrays, **train: object) -> tuple[SplitArrays, object]:
    return for_training(RunConfig(modality="fusion", video=VIDEO, train=TrainConfig(**train)), data)


def test_pseudo_fakes_replace_the_given_share_of_fakes_labelled_fake(clips: SplitArrays) -> None:
    data, hook = training(clips, pseudo_fakes="blend", pseudo_rate=0.3)
    made, fakes = 0, 0
    # The hook's own draws decide which fakes turn: count them batch by batch against the cache.
    rng = np.random.default_rng(1)
    for _ in range(80):
        order = rng.permutation(len(data))
        batch, y = hook(order, data.take(order), torch.from_numpy(data.labels[order]).float(), rng)
        changed = (batch["video"].numpy() != data.arrays(order)["video"]).any(axis=(1, 2, 3, 4))
        assert (y.numpy()[changed] == 1).all() and (y.numpy() == data.labels[order]).all()  # only fakes' slots
        made, fakes = made + changed.sum(), fakes + (data.labels == 1).sum()
    assert 0.2 < made / fakes < 0.4, made / fakes
    val = next(batches(data, 5, shuffle=False, hook=hook))[0]  # evaluation batches: never touched
    assert np.array_equal(val["video"].numpy(), data.arrays(np.arange(len(data)))["video"])


def test_train_fakes_none_trains_on_reals_and_their_pseudo_fakes(clips: SplitArrays) -> None:
    data, hook = training(clips, pseudo_fakes="blend,shift", train_fakes="none")
    assert len(data) == 2 and (data.labels == 0).all()
    assert set(data.names) == {n for n, label in zip(clips.names, clips.labels) if label == 0}
    labels = np.concatenate([y.numpy() for _ in range(40) for _, y in
                             batches(data, 2, shuffle=True, generator=np.random.default_rng(_), hook=hook)])
    assert 0.3 < labels.mean() < 0.7  # about half of each batch made fake
    assert training(clips)[1] is None and len(training(clips)[0]) == len(clips)  # off by default


@pytest.mark.parametrize("changes, message", [
    ({"modality": "audio", "train.pseudo_fakes": "blend"}, "train.pseudo_fakes: blend needs video input"),
    ({"modality": "video", "train.pseudo_fakes": "shift"}, "train.pseudo_fakes: shift needs audio and video input"),
    ({"train.pseudo_fakes": "vocode,warp"}, "train.pseudo_fakes: unknown pseudo-fake 'warp'"),
    ({"train.train_fakes": "none"}, "train.train_fakes: none leaves no fakes"),
    ({"train.pseudo_rate": 1.5}, "train.pseudo_rate: must lie in [0, 1]"),
])
def test_bad_pseudo_settings_are_one_line_exit_2(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        with_changes(RunConfig(), changes)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value) and caught.value.exit_code == 2


def test_pseudo_settings_are_search_dimensions_and_travel_in_bundles() -> None:
    from harness.bundle.source import is_source
    from harness.tuning.space import Categorical, FloatRange, parse_dimension, set_value

    base = RunConfig(modality="fusion")
    assert parse_dimension("train.pseudo_rate", {"low": 0.1, "high": 0.9}, base) == FloatRange(0.1, 0.9)
    assert parse_dimension("pseudo_fakes", ["", "blend", "blend,shift"], base) == Categorical(("", "blend", "blend,shift"))
    config = dataclasses.asdict(base)
    set_value(config, "pseudo_fakes", "shift", n_mels=128)
    set_value(config, "train.train_fakes", "none", n_mels=128)
    assert with_changes(base, {"train.pseudo_fakes": "shift", "train.train_fakes": "none"}).train.pseudo_fakes == "shift"
    assert config["train"]["pseudo_fakes"] == "shift" and is_source("harness/pseudo/blend.py")


def test_rawboost_corrupts_spectrograms_only_when_asked() -> None:
    from harness.augment import spec_augment
    from harness.config import Augment

    x = torch.randn(6, 1, 32, 40)
    quiet = Augment(time_mask=0, freq_mask=0, time_shift=0)
    assert torch.equal(spec_augment(x, quiet, torch.Generator().manual_seed(0)), x)
    noisy = dataclasses.replace(quiet, rawboost=1.0)
    once = spec_augment(x, noisy, torch.Generator().manual_seed(0))
    assert torch.equal(once, spec_augment(x, noisy, torch.Generator().manual_seed(0)))
    assert (once - x).abs().mean(dim=(1, 2, 3)).min() > 0.05  # every sample corrupted


@pytest.mark.slow
def test_a_demo_run_on_reals_and_blends_finishes_and_logs_its_settings(tmp_path: Path) -> None:
    from harness.data.demo import make_demo_dataset
    from harness.preflight import preflight
    from harness.run import train_run
    from tests.conftest import isolated_home

    cfg = RunConfig(modality="video", video=VIDEO, train=TrainConfig(
        backbone="test_byobnet.r160_in1k", pretrained=False, epochs=1, batch_size=8, device="cpu",
        pseudo_fakes="blend", train_fakes="none"))
    with isolated_home(tmp_path):
        from harness import tracking

        data = make_demo_dataset(tmp_path / "demo", clips=20, seconds=1.5)
        result = train_run(preflight(data, cfg, cache_root=tmp_path / "cache"), experiment="pseudo")
        assert result.status == "FINISHED" and result.fit is not None and result.fit.info["train_clips"] == 6
        params = tracking.setup().get_run(result.run_id).data.params
    assert (params["train.pseudo_fakes"], params["train.train_fakes"], params["train.pseudo_rate"]) == ("blend", "none", "0.5")


def test_vocoded_windows_are_read_from_the_vocoded_clips(shared_sample: Path, tmp_path: Path) -> None:
    """A windowed cache: the reals' whole log-mels are vocoded once, and a pseudo-fake is a window of them."""
    audio = AudioFeatures(window_seconds=1.0)
    with ThreadPoolExecutor(1) as pool:
        folder = prepare_features(load_dataset(shared_sample), audio, cache_root=tmp_path, splits=("val",), pool=pool).cache
    data, hook = for_training(RunConfig(train=TrainConfig(pseudo_fakes="vocode", train_fakes="none")),
                              load_arrays(folder, "val", audio=audio))
    assert hook is not None and hook.vocoded is not None and hook.vocoded.shape == data.inputs["audio"].shape
    made = [hook(np.arange(len(data)), data.take(np.arange(len(data)), np.random.default_rng(0)),
                 torch.zeros(len(data)), np.random.default_rng(seed)) for seed in range(4)]
    batch = {"audio": torch.cat([b["audio"] for b, _ in made])}
    y = torch.cat([y for _, y in made])
    assert batch["audio"].shape == (4 * len(data), audio.n_mels, audio.window_frames) and y.sum() >= 1
    vocoded = hook.vocoded.T  # (H, frames): every window made fake must lie in it
    for window in batch["audio"].numpy()[y.numpy() == 1]:
        assert any(np.array_equal(window, vocoded[:, s:s + audio.window_frames]) for s in range(vocoded.shape[1] - audio.window_frames + 1))
