"""A windowed run with EMA and silence trimming, end to end on the demo dataset: recorded, promoted,
and its bundle scoring exactly as `harness predict`; and what windows buy (a looped clip scores
about the same, where the whole-clip image, squeezed in time, does not). Slow: trains two models."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.config import AudioFeatures, RunConfig, TrainConfig
from harness.predict import Predictor, expand_paths
from tests.conftest import isolated_home
from tests.test_submit import harness_predict

pytestmark = pytest.mark.slow
TRAIN = TrainConfig(backbone="test_byobnet.r160_in1k", pretrained=False, epochs=2, batch_size=8, device="cpu", patience=0,
                    lr=3e-3)
WINDOWED = RunConfig(features=AudioFeatures(window_seconds=1.0, eval_windows=5, trim_silence=True),
                     train=TrainConfig(**{**TRAIN.__dict__, "ema_decay": 0.9, "aggregate": "logit_mean"}))
WHOLE = RunConfig(train=TRAIN)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    from harness.data.demo import make_demo_dataset

    home = tmp_path_factory.mktemp("home")
    with isolated_home(home):
        yield home, make_demo_dataset(home / "demo", clips=30, seconds=1.5)


@pytest.fixture(scope="module")
def runs(env) -> dict[str, str]:
    from harness.run import train_run

    home, data = env
    out = {}
    for name, cfg in (("windowed", WINDOWED), ("whole", WHOLE)):
        result = train_run(cfg, data_dir=data, experiment="windows", cache_root=home / "cache")
        assert result.status == "FINISHED"
        out[name] = result.run_id
    return out


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_f32le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    return path


def test_windowed_run_is_recorded_with_its_windows_and_ema(runs: dict[str, str]) -> None:
    from harness import tracking

    client = tracking.setup()
    run = client.get_run(runs["windowed"])
    assert run.data.params["features.window_seconds"] == "1.0"
    assert run.data.params["features.trim_silence"] == "True" and run.data.params["train.ema_decay"] == "0.9"
    ema = client.get_metric_history(run.info.run_id, "epoch/val_auc_ema")  # beside epoch/val_auc on the run page
    assert sorted(m.step for m in ema) == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "epoch/val_auc")) == 2
    assert run.data.tags[tracking.tags.BEST_WEIGHTS] in ("raw", "ema")
    assert "best.weights" not in client.get_run(runs["whole"]).data.tags  # no EMA, nothing to choose


def test_windowed_bundle_scores_as_predict(env, runs: dict[str, str], shared_sample: Path, tmp_path: Path) -> None:
    """The promoted bundle's api.predict, in a fresh interpreter, equals `harness predict` on the real
    clips and on a clip shorter than one window (tiled)."""
    from harness.data.media import decode_audio
    from harness.submit import submit

    home, data = env
    report = submit(runs["windowed"], data_dir=data, out_dir=home / "out", cache_root=home / "cache")
    config = json.loads((report.bundle / "config.json").read_text())
    assert config["model"]["inputs"]["audio"]["shape"] == [5, 128, 100]
    assert config["model"]["best_weights"] in ("raw", "ema")
    card = (report.bundle / "MODEL_CARD.md").read_text()
    assert "5 evenly spaced windows of 1.0 s" in card and "EMA decay 0.9" in card

    speech, _ = decode_audio(expand_paths([shared_sample])[0], 16000)
    short = write_wav(tmp_path / "short.wav", speech[16000:16000 + 11200])  # 0.7 s: under one window
    clips = [str(p) for p in expand_paths([shared_sample])] + [str(short)]
    script = ("import json, api\n"
              f"print(json.dumps([api.predict(c) for c in {clips!r}]))\n")
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    done = subprocess.run([sys.executable, "-c", script], cwd=report.bundle, env=clean, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    from_api = json.loads(done.stdout.strip().splitlines()[-1])
    reference = [score for _, score in harness_predict(clips, run_id=runs["windowed"])]
    assert from_api == pytest.approx(reference, abs=1e-6)
    assert len(set(np.round(from_api, 6))) > 1  # real scores, not one fallback


@pytest.mark.xfail(strict=False, reason=(
    "not robust yet: on these 2-epoch tiny models the margin moved from 0.09 vs 0.15 (windowed vs "
    "whole-clip) to 0.19 vs 0.16 when the training draws got their own generator; issue 13 stays open"))
def test_a_looped_clip_scores_about_the_same_with_windows(runs: dict[str, str], shared_sample: Path, tmp_path: Path) -> None:
    """Each real clip against itself played twice: windows see the same sound at the same time scale,
    the whole-clip image squeezes it to half its width."""
    from harness.data.media import decode_audio

    changes = {}
    pairs = []
    for i, clip in enumerate(expand_paths([shared_sample])):
        audio, _ = decode_audio(clip, 16000)
        once = write_wav(tmp_path / f"once{i}.wav", audio)
        pairs.append((once, write_wav(tmp_path / f"twice{i}.wav", np.concatenate([audio, audio]))))
    for name in ("windowed", "whole"):
        predictor = Predictor.from_run(runs[name])
        if name == "windowed":  # windows enough to cover the clip, so that both lengths are heard through
            cfg = dataclasses.replace(predictor.cfg, features=dataclasses.replace(predictor.cfg.features, eval_windows=16))
            predictor = Predictor(cfg, predictor.weights)
        once = logit(np.array([predictor.score(a) for a, _ in pairs]))
        twice = logit(np.array([predictor.score(b) for _, b in pairs]))
        # The change, in units of how far apart the model puts different clips: a tiny model barely
        # trained moves little either way, so raw changes say nothing.
        changes[name] = float(np.abs(once - twice).mean() / once.std())
    # Measured on this data: 0.09 against 0.15 (16 windows; 0.12 with 5, whose places move with the length).
    assert changes["windowed"] < 0.75 * changes["whole"], changes


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))
