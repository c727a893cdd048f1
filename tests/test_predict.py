"""The scoring path shared by `harness predict`, `harness submit` and a bundle's api.py.

A random-initialised tiny model stands in for a trained one (scores depend on the weights, the code
path does not), so nothing here trains; one recorded run (artifacts only) covers `from_run`.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.config import Augment, RunConfig, TrainConfig
from harness.data.media import MediaError
from harness.predict import (
    FALLBACK_SCORE,
    Predictor,
    Scored,
    WeightsMismatch,
    check_paths,
    expand_paths,
    tta_shifts,
    write_scores,
)
from tests.conftest import write_clip
from tests.run_main import run_main

CFG = RunConfig(train=TrainConfig(backbone="test_byobnet.r160_in1k", pretrained=False))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_byobnet.r160_in1k", pretrained=False, in_chans=1, num_classes=1)
    path = tmp_path_factory.mktemp("weights") / "best.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def predictor(weights: Path) -> Predictor:
    return Predictor(CFG, weights)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("clips")
    return [write_clip(folder / f"c{i}.mp4", seconds=1.5, freq=300 + 150 * i) for i in range(3)]


def test_importing_predict_loads_no_mlflow() -> None:
    code = "import sys, harness.predict; print(sorted(m for m in ('mlflow', 'harness.tracking') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_score_many_keeps_order_and_agrees_with_score(predictor: Predictor, clips: list[Path]) -> None:
    rows = predictor.score_many(list(reversed(clips)))
    assert [r.path for r in rows] == [str(c) for c in reversed(clips)]
    assert all(r.ok and r.reason == "" and 0.0 <= r.score <= 1.0 for r in rows)
    singles = [predictor.score(c) for c in reversed(clips)]
    assert [r.score for r in rows] == pytest.approx(singles, abs=1e-6)
    assert len({round(s, 9) for s in singles}) == 3  # different clips, different scores


def test_real_clips_score(predictor: Predictor, shared_sample: Path) -> None:
    paths = expand_paths([shared_sample])  # the folder: its 10 mp4 clips, in name order
    assert len(paths) == 10 and paths == sorted(paths)
    rows = predictor.score_many(paths)
    assert all(r.ok for r in rows), [r for r in rows if not r.ok]


def test_unusable_clips_fall_back_with_their_reason(predictor: Predictor, tmp_path: Path, clips: list[Path]) -> None:
    (tmp_path / "garbage.mp4").write_bytes(b"not a video at all" * 50)
    (tmp_path / "empty.mp4").write_bytes(b"")
    bad = {
        "garbage.mp4": "undecodable",
        "empty.mp4": "empty file",
        "nowhere.mp4": "missing",
        "silent.mp4": "silent",
        "mute.mp4": "no audio stream",
        "short.mp4": "too short",
    }
    write_clip(tmp_path / "silent.mp4", amplitude=0.0)
    write_clip(tmp_path / "mute.mp4", audio=False)
    write_clip(tmp_path / "short.mp4", seconds=0.2)
    paths = [clips[0], *(tmp_path / name for name in bad)]
    rows = predictor.score_many(paths)
    assert rows[0].ok
    assert {Path(r.path).name: r.reason for r in rows[1:]} == bad
    assert all(r.score == FALLBACK_SCORE and not r.ok and r.detail for r in rows[1:])
    with pytest.raises(MediaError, match="undecodable"):
        predictor.score(tmp_path / "garbage.mp4")


def test_tta_shifts_cover_what_training_saw() -> None:
    assert tta_shifts(CFG, 1) == [0]
    assert tta_shifts(CFG, 3) == [-51, 0, 51]  # augment.time_shift 0.2 of 256 columns
    still = RunConfig(train=TrainConfig(augment=Augment(time_shift=0.0)))
    assert tta_shifts(still, 4) == [0, 64, 128, 192]  # no shifts in training: spread over the width
    with pytest.raises(ValueError, match="at least 1"):
        tta_shifts(CFG, 0)


def test_tta_is_the_mean_over_shifted_images(predictor: Predictor, weights: Path, clips: list[Path]) -> None:
    images = np.stack([predictor.features(c)["audio"] for c in clips])
    tta = Predictor(CFG, weights, tta=3)
    expected = np.mean([predictor.score_images(np.roll(images, s, axis=-1)) for s in tta.shifts], axis=0)
    assert tta.score_images(images) == pytest.approx(expected, abs=1e-6)
    assert tta.score_many(clips)[0].score == pytest.approx(expected[0], abs=1e-6)


def test_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"w": np.ones((2, 2), np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(RuntimeError, match="state_dict") as caught:
        Predictor(CFG, tmp_path / "other.safetensors")
    assert isinstance(caught.value, WeightsMismatch) and caught.value.exit_code == 2
    assert str(caught.value).startswith(f"{tmp_path / 'other.safetensors'}: the weights do not fit a test_byobnet")
    assert "\n" not in str(caught.value)


def test_input_paths_are_checked_before_scoring(tmp_path: Path, clips: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.errors import BadInput, NotFound

    check_paths([clips[0], clips[0].parent])  # files and folders that are there: no error
    with pytest.raises(NotFound, match=f"^{tmp_path / 'typo.mp4'}: no such file or folder$"):
        check_paths([clips[0], tmp_path / "typo.mp4"])
    monkeypatch.setattr("harness.predict.os.access", lambda path, mode: Path(path) != clips[1])
    with pytest.raises(BadInput, match="permission denied"):
        check_paths([clips[0], clips[1]])


def test_rows_print_as_csv() -> None:
    buf = io.StringIO()
    write_scores([Scored("a.mp4", 0.25, True), Scored("b,c.mp4", 1 / 3, False, "silent")], buf)
    assert buf.getvalue() == 'a.mp4,0.25000000\n"b,c.mp4",0.33333333\n'


# ----------------------------------------------------------------------------- a recorded run

def recorded_run(store, files: dict[str, Path]) -> str:
    """A FINISHED run whose checkpoint/ holds `files` (no training: artifacts are all from_run reads)."""
    from harness import tracking

    client, experiment_id, _ = store
    with tracking.RunRecorder(client, experiment_id=experiment_id, run_name="recorded", config=CFG) as rec:
        for name, path in files.items():
            assert path.name == name
            client.log_artifact(rec.run_id, str(path), "checkpoint")
    return rec.run_id


def test_from_run_scores_like_the_checkpoint(
    store, weights: Path, predictor: Predictor, clips: list[Path], tmp_path: Path
) -> None:
    from harness.config import to_dict

    config = tmp_path / "config.json"
    config.write_text(json.dumps(to_dict(CFG)))
    run_id = recorded_run(store, {"config.json": config, "best.safetensors": weights})
    loaded = Predictor.from_run(run_id)
    assert loaded.source == f"run {run_id}" and loaded.cfg == CFG
    assert [r.score for r in loaded.score_many(clips)] == pytest.approx([r.score for r in predictor.score_many(clips)], abs=1e-7)


def test_from_run_unknown_or_without_checkpoint(store) -> None:
    with pytest.raises(LookupError, match="no run"):
        Predictor.from_run("0" * 32)
    with pytest.raises(LookupError, match="no checkpoint"):
        Predictor.from_run(recorded_run(store, {}))


def test_from_run_refuses_text_that_is_no_run_id(store) -> None:
    from harness.errors import BadInput

    with pytest.raises(BadInput, match="'../../x' is not a run id"):
        Predictor.from_run("../../x")


def test_from_bundle_needs_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a bundle"):
        Predictor.from_bundle(tmp_path)


# ------------------------------------------------------------------------------ the command

@pytest.fixture(scope="module")
def run_id(store, weights: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    from harness.config import to_dict

    config = tmp_path_factory.mktemp("config") / "config.json"
    config.write_text(json.dumps(to_dict(CFG)))
    return recorded_run(store, {"config.json": config, "best.safetensors": weights})


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_cli_predict_needs_one_source(run_id: str, shared_sample: Path) -> None:
    both = run_main("predict", str(shared_sample), "--run-id", run_id, "--bundle", "x")
    neither = run_main("predict", str(shared_sample))
    assert both.exit_code == neither.exit_code == 2 and "exactly one of --run-id and --bundle" in both.stderr
    # A path that does not exist is a usage error (exit 2, one line, no row), not a fallback row.
    missing = run_main("predict", "/nowhere/clip.mp4", "--run-id", run_id)
    assert missing.exit_code == 2 and missing.stdout == ""
    assert one_line(missing.stderr) == "error: /nowhere/clip.mp4: no such file or folder"


def test_cli_predict_checks_every_path_before_scoring(run_id: str, clips: list[Path], predictor: Predictor) -> None:
    # The unknown run is never looked up: the typo among good paths stops the command first.
    typo = run_main("predict", str(clips[0]), f"{clips[1]}x", str(clips[2]), "--run-id", "0" * 32)
    assert typo.exit_code == 2 and typo.stdout == "" and one_line(typo.stderr) == f"error: {clips[1]}x: no such file or folder"
    unknown = run_main("predict", str(clips[0]), "--run-id", "0" * 32)
    assert unknown.exit_code == 2 and one_line(unknown.stderr).startswith(f"error: no run '{'0' * 32}'")
    scored = run_main("predict", *map(str, clips), "--run-id", run_id)
    assert scored.exit_code == 0, scored.stderr
    expected = [r.score for r in predictor.score_many(clips)]
    assert [float(line.rsplit(",", 1)[1]) for line in scored.stdout.splitlines()] == pytest.approx(expected, abs=1e-7)


def test_cli_predict_scores_an_undecodable_clip_at_the_fallback(run_id: str, clips: list[Path], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 50)
    result = run_main("predict", str(clips[0]), str(garbage), "--run-id", run_id)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[1] == f"{garbage},0.50000000"
    assert "undecodable" in result.stderr and "(fallback)" in result.stderr
    alone = run_main("predict", str(garbage), "--run-id", run_id)
    assert alone.exit_code == 1 and alone.stdout == f"{garbage},0.50000000\n"
    assert alone.stderr.strip().splitlines()[-1] == "error: none of the 1 clips could be scored (see the warnings)"


@pytest.mark.parametrize("ref", ["../../x", "/etc/passwd", "a b"])
def test_cli_predict_refuses_a_run_id_that_is_no_id(store, ref: str, clips: list[Path]) -> None:
    result = run_main("predict", str(clips[0]), "--run-id", ref)
    assert result.exit_code == 2 and result.stdout == ""
    assert one_line(result.stderr) == f"error: --run-id {ref!r} is not a run id (letters, digits, '-' and '_'), best or last"


def test_a_model_trained_on_the_demo_says_so_once(store, run_id: str, clips: list[Path], tmp_path: Path) -> None:
    """Scores of a model that learnt the synthetic demo mean nothing on real clips: `predict` says so, once."""
    from harness.data.demo.dataset import MARKER

    client = store.client
    demo, real = tmp_path / "demo", tmp_path / "real"
    for folder in (demo, real):
        folder.mkdir()
    (demo / MARKER).write_text("{}")  # what `harness demo-data` leaves in the folder it writes
    client.set_tag(run_id, "data.path", str(demo))
    warned = run_main("predict", *map(str, clips), "--run-id", run_id)
    assert warned.exit_code == 0 and len(warned.stdout.splitlines()) == len(clips)
    assert warned.stderr.strip().splitlines() == [f"warning: run {run_id} was trained on the synthetic demo dataset: "
                                                  "its scores on real clips mean nothing"]
    client.set_tag(run_id, "data.path", str(real))
    assert run_main("predict", str(clips[0]), "--run-id", run_id).stderr == ""
