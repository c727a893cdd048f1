"""Video and fusion models: the gates count the whole module, missing inputs still get a score,
and the engine trains them on face crops."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import AudioFeatures, RunConfig, TrainConfig, VideoFeatures
from harness.data.dataset import SplitArrays
from harness.engine import fit
from harness.modalities import FusionNet, build_model, check_run, input_stats
from harness.predict import FALLBACK_SCORE, Predictor
from tests.conftest import write_clip

TINY = TrainConfig(backbone="test_efficientnet.r160_in1k", pretrained=False, epochs=4, batch_size=16, lr=3e-3,
                   patience=0, device="cpu")


def config(modality: str) -> RunConfig:
    return RunConfig(modality=modality, audio=AudioFeatures(width=64), video=VideoFeatures(frames=2, size=32), train=TINY)


@pytest.mark.parametrize("modality", ["audio", "video", "fusion"])
def test_the_gates_count_every_parameter_of_the_module(modality: str) -> None:
    cfg = config(modality)
    report = check_run(cfg)
    built = sum(p.numel() for p in build_model(cfg).parameters())
    assert report.ok and report.params == built and report.thop_params == built


def test_fusion_over_the_cap_is_refused_though_each_branch_fits() -> None:
    cfg = config("fusion")
    one = check_run(config("audio")).params
    capped = RunConfig(modality="fusion", audio=cfg.audio, video=cfg.video,
                       train=TrainConfig(**{**TINY.__dict__, "max_params": one * 1.5}))
    assert check_run(config("audio")).ok
    report = check_run(capped)
    assert not report.ok and "exceed" in report.summary()


def test_fusion_scores_a_clip_from_the_input_it_has() -> None:
    torch.manual_seed(0)
    model = build_model(config("fusion")).eval()
    assert isinstance(model, FusionNet)
    audio, video = torch.randn(3, 1, 128, 64), torch.randn(3, 2, 3, 32, 32)
    no_audio = torch.tensor([False, False, False])
    with torch.no_grad():
        a = model(audio, video, audio_present=no_audio)
        b = model(torch.randn_like(audio), video, audio_present=no_audio)  # the audio does not matter
        c = model(audio, video)
        d = model(audio, video, video_present=no_audio)
    assert torch.equal(a, b) and not torch.allclose(a, c) and not torch.allclose(c, d)


@pytest.fixture(scope="module")
def fusion_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("fusion") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(config("fusion")).state_dict().items()}, str(path))
    return path


def test_a_clip_with_unreadable_video_or_audio_still_gets_a_fusion_score(fusion_weights: Path, tmp_path: Path) -> None:
    both = write_clip(tmp_path / "both.mp4", seconds=1.5)
    audio_only = write_clip(tmp_path / "audio_only.mp4", seconds=1.5, video=False)
    video_only = write_clip(tmp_path / "video_only.mp4", seconds=1.5, audio=False)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(np.random.default_rng(0).bytes(4000))
    predictor = Predictor(config("fusion"), fusion_weights)
    rows = predictor.score_many([both, audio_only, video_only, broken])
    assert [r.ok for r in rows] == [True, True, True, False]
    assert rows[3].score == FALLBACK_SCORE and rows[3].reason == "undecodable"
    assert len({round(r.score, 9) for r in rows[:3]}) == 3 and all(0 < r.score < 1 for r in rows[:3])
    # the audio-only clip is scored by the audio head: the same as its audio with any video
    feats = predictor.features(audio_only)
    assert not feats["video_present"] and feats["audio_present"]
    other = {**feats, "video": np.full_like(feats["video"], 200)}
    assert predictor.score_inputs({k: v[None] for k, v in other.items()})[0] == pytest.approx(rows[1].score, abs=1e-6)


def crops(n: int, seed: int) -> SplitArrays:
    """Face-crop arrays where fakes carry a faint bright patch in one frame: learnable, not trivial."""
    rng = np.random.default_rng(seed)
    video = rng.integers(60, 200, (n, 2, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    for i in np.flatnonzero(labels):
        y, x = rng.integers(4, 20, 2)
        video[i, rng.integers(0, 2), y : y + 10, x : x + 10] = 235
    return SplitArrays(inputs={"video": video}, labels=labels.astype(np.int64), names=[f"c{i}.mp4" for i in range(n)])


@pytest.mark.slow
def test_the_engine_learns_from_face_crops(tmp_path: Path) -> None:
    cfg = config("video")
    torch.manual_seed(0)
    model = build_model(cfg)
    result = fit(cfg.train, model, train=crops(96, 0), val=crops(48, 1), stats=input_stats(cfg, model),
                 out_dir=tmp_path)
    aucs = [h.metrics["val_auc"] for h in result.history]
    assert max(aucs) > 0.9, aucs


@pytest.mark.slow
def test_fusion_trains_with_clips_missing_one_input(tmp_path: Path) -> None:
    cfg = config("fusion")
    data = crops(48, 2)
    rng = np.random.default_rng(3)
    audio = rng.integers(0, 256, (48, 128, 64), dtype=np.uint8)
    present = {"audio": np.arange(48) % 5 != 0, "video": np.arange(48) % 7 != 0}
    train = SplitArrays(inputs={"audio": audio, "video": data.inputs["video"]}, labels=data.labels, names=data.names,
                        present=present)
    model = build_model(cfg)
    short = TrainConfig(**{**TINY.__dict__, "epochs": 1})
    result = fit(short, model, train=train, val=train, stats=input_stats(cfg, model), out_dir=tmp_path)
    assert np.isfinite(result.history[0].metrics["train_loss"]) and result.checkpoint is not None


def test_submission_scores_each_test_clip_from_what_it_has(fusion_weights: Path, tmp_path: Path) -> None:
    from harness.data.labels import load_dataset
    from harness.submit import score_test_split
    from tests.conftest import write_labels

    root = tmp_path / "ds"
    write_clip(root / "trainset" / "t.mp4", seconds=1.0)
    write_labels(root / "train_label.txt", [("t.mp4", 0)])
    write_clip(root / "testset" / "both.mp4", seconds=1.5)
    write_clip(root / "testset" / "audio_only.mp4", seconds=1.5, video=False)
    write_clip(root / "testset" / "video_only.mp4", seconds=1.5, audio=False)
    (root / "testset" / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    names = ["video_only.mp4", "broken.mp4", "both.mp4", "audio_only.mp4"]
    (root / "test_template.csv").write_text("video_name,score\n" + "".join(f"{n},0\n" for n in names))
    predictor = Predictor(config("fusion"), fusion_weights)
    scores, fallbacks = score_test_split(load_dataset(root), predictor, names, cache_root=tmp_path / "cache",
                                          workers=1, on_progress=None)
    direct = {r.path.rsplit("/", 1)[-1]: r.score for r in predictor.score_many([root / "testset" / n for n in names])}
    assert scores == pytest.approx([direct[n] for n in names], abs=1e-6)  # the cache path scores as the API does
    assert scores[1] == FALLBACK_SCORE and [f.name for f in fallbacks] == ["broken.mp4"]
    assert fallbacks[0].reason == "audio: undecodable; video: undecodable"


@pytest.mark.slow
def test_jpeg_augmentation_re_encodes_training_crops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.engine as engine
    from harness.config import Augment

    seen = []
    real = engine.jpeg_uint8

    def spy(images, probability, rng, lowest=30):  # noqa: ANN001
        before = images.copy()
        real(images, probability, rng, lowest)
        seen.append(float(np.abs(images.astype(int) - before).mean()))

    monkeypatch.setattr(engine, "jpeg_uint8", spy)
    cfg = config("video")
    train = TrainConfig(**{**TINY.__dict__, "epochs": 1, "augment": Augment(jpeg=1.0)})
    model = build_model(cfg)
    fit(train, model, train=crops(32, 4), val=crops(16, 5), stats=input_stats(cfg, model), out_dir=tmp_path)
    assert len(seen) == 2 and min(seen) > 0.5  # every training batch, visibly changed


@pytest.mark.parametrize("outputs", [1, 2])
def test_frame_aggregates(outputs: int) -> None:
    """Per-frame logits -> clip logits: the clip's fake probability is the frames' mean, max or
    mean-logit one, for a one-logit and a two-logit head."""
    import torch

    from harness.engine import fake_probability
    from harness.modalities import aggregate_logits

    torch.manual_seed(0)
    logits = torch.randn(4, 6, outputs)
    frames = fake_probability(logits.flatten(0, 1)).view(4, 6)
    got = {how: fake_probability(aggregate_logits(logits, how)) for how in ("mean", "max", "logit_mean")}
    torch.testing.assert_close(got["mean"], frames.mean(dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["max"], frames.amax(dim=1))
    assert ((got["logit_mean"] - frames.mean(dim=1)).abs() > 1e-4).any()  # not the same rule as the mean
    if outputs == 1:
        torch.testing.assert_close(got["logit_mean"], torch.sigmoid(torch.logit(frames).mean(dim=1)), atol=1e-5, rtol=1e-5)


def test_video_model_scores_frames_when_asked() -> None:
    cfg = RunConfig(modality="video", video=VideoFeatures(frames=3, size=32),
                    train=TrainConfig(backbone="test_byobnet.r160_in1k", pretrained=False, frame_aggregate="max"))
    model = build_model(cfg).eval()
    assert model.aggregate == "max"
    video = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        out = model(video)
        per_frame = model.head(model.frame_features(video))
    assert out.shape == (2, 1)
    torch.testing.assert_close(out, per_frame.amax(dim=1))
