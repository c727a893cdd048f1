"""The parts of `harness submit` that need no trained model: the CSV writer and validator, the refusal
policy, the run-reference check, and the submission folder (staged together, committed as one,
rolled forward after a `kill -9`, stale staging removed, a full disk leaving nothing behind).
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.submit import output
from harness.submit.checks import SubmitError, check_promotable
from harness.submit.prediction_csv import ValidationError, validate_prediction, write_fallbacks, write_prediction

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------ the CSV

def test_validation_rules(tmp_path: Path) -> None:
    names = ["a.mp4", "b.mp4"]
    path = write_prediction(tmp_path / "p.csv", names, [0.1, 0.9])
    assert path.read_text() == "video_name,score\na.mp4,0.10000000\nb.mp4,0.90000000\n"
    bad = {
        "video_name,score\nb.mp4,0.100000\na.mp4,0.200000\n": "found 'b.mp4', the template has 'a.mp4'",
        "video_name,score\na.mp4,0.100000\na.mp4,0.200000\n": "duplicate name 'a.mp4'",
        "video_name,score\na.mp4,0.100000\n": "1 rows, the template has 2",
        "video_name,score\na.mp4,0.1\nb.mp4,0.2\n": "at least 6 decimals",
        "video_name,score\na.mp4,1.500000\nb.mp4,0.200000\n": "not a probability",
        "name,score\na.mp4,0.100000\nb.mp4,0.200000\n": "header",
    }
    for text, message in bad.items():
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(ValidationError, match=message):
            validate_prediction(tmp_path / "bad.csv", names)


def test_a_prediction_failing_validation_leaves_the_old_file(tmp_path: Path) -> None:
    path = write_prediction(tmp_path / "p.csv", ["a.mp4"], [0.25])
    before = path.read_text()
    with pytest.raises(ValidationError, match=r"shown.csv:2: score nan for 'a.mp4' is not a probability") as caught:
        write_prediction(path, ["a.mp4"], [float("nan")], shown_as=tmp_path / "shown.csv")
    assert caught.value.exit_code == 1  # our own output failed: the job failed
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]
    with pytest.raises(ValidationError, match="2 names but 1 scores"):
        write_prediction(path, ["a.mp4", "b.mp4"], [0.5])


def test_fallbacks_csv_lists_name_reason_detail_score(tmp_path: Path) -> None:
    path = write_fallbacks(tmp_path / "f.csv", [("a.mp4", "undecodable", "moov atom, not found")], 0.5)
    assert path.read_text() == 'video_name,reason,detail,score\na.mp4,undecodable,"moov atom, not found",0.50000000\n'


# ---------------------------------------------------------------------------- the refusal policy

def fake_run(status: str, **tags: str) -> SimpleNamespace:
    return SimpleNamespace(info=SimpleNamespace(status=status, run_id="r1"), data=SimpleNamespace(tags=tags))


@pytest.mark.parametrize(
    ("status", "tags", "message"),
    [
        ("FAILED", {"error": "ValueError: boom"}, "failed: ValueError: boom"),
        ("FAILED", {}, "failed: no error recorded"),
        ("KILLED", {"pruned_at_epoch": "2"}, "was pruned at epoch 2"),
        ("KILLED", {"orphaned": "true"}, "was orphaned by a crashed process"),
        ("KILLED", {}, "was interrupted"),
        ("RUNNING", {}, r"has not finished \(status RUNNING\)"),
    ],
)
def test_only_a_finished_run_is_promoted(status: str, tags: dict[str, str], message: str) -> None:
    with pytest.raises(SubmitError, match=f"^run r1 {message}; only a FINISHED run can be promoted$") as caught:
        check_promotable(fake_run(status, **tags))
    assert caught.value.exit_code == 2
    check_promotable(fake_run("FINISHED"))  # no error


def test_run_references_that_cannot_be_ids_are_refused() -> None:
    from harness.errors import BadInput
    from harness.tracking.registry import check_run_ref, default_model_name

    for ok in ("best", "last", "0" * 32, "abc_d-1"):
        assert check_run_ref(ok) == ok
    for bad in ("../../x", "/etc/passwd", "a b", "", "-rf", "x" * 300):
        with pytest.raises(BadInput, match="is not a run id"):
            check_run_ref(bad)
    assert default_model_name(Path("/data/multi FFDV!")) == "harness-multi-FFDV"
    assert default_model_name(Path("/data/...")) == "harness-data"


# ------------------------------------------------------------------------- the submission folder

def stage_outputs(stage: Path, run: str, *, bundle: bool = True) -> None:
    """What a submit of `run` stages: every output holds the run's name."""
    (stage / output.PREDICTION).write_text(f"prediction of {run}\n")
    (stage / output.FALLBACKS).write_text(f"fallbacks of {run}\n")
    if bundle:
        (stage / "bundle" / "weights").mkdir(parents=True)
        (stage / "bundle" / "weights" / "model.safetensors").write_text(f"weights of {run}\n")
        (stage / "bundle" / "manifest.json").write_text(json.dumps({"run_id": run}))
        (stage / "bundle.tar.gz").write_text(f"archive of {run}\n")
    output.write_marker(stage, run)


def publish(out: Path, run: str, *, bundle: bool = True) -> None:
    with output.staged(out) as stage:
        stage_outputs(stage, run, bundle=bundle)


def runs_in(out: Path) -> set[str]:
    """The run named by every output file present (a mix has two)."""
    names = [output.PREDICTION, output.FALLBACKS, "bundle.tar.gz", "bundle/weights/model.safetensors"]
    runs = {(out / n).read_text().split()[-1] for n in names if (out / n).is_file()}
    manifest = out / "bundle" / "manifest.json"
    return runs | ({json.loads(manifest.read_text())["run_id"]} if manifest.is_file() else set())


def hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_a_submission_is_committed_whole_with_its_marker(tmp_path: Path) -> None:
    out = tmp_path / "out"
    publish(out, "old")
    assert output.submitted_run(out) == "old" and runs_in(out) == {"old"} and hidden(out) == []
    publish(out, "new")
    assert output.submitted_run(out) == "new" and runs_in(out) == {"new"} and hidden(out) == []
    marker = json.loads((out / output.MARKER).read_text())
    assert set(marker["files"]) == {"prediction.csv", "fallbacks.csv", "bundle.tar.gz", "bundle/manifest.json"}
    (out / output.PREDICTION).write_text("edited by hand\n")
    assert output.submitted_run(out) is None  # the marker's digest no longer matches


def test_a_submission_without_a_bundle_removes_the_old_one(tmp_path: Path) -> None:
    out = tmp_path / "out"
    publish(out, "old")
    publish(out, "new", bundle=False)
    assert not (out / "bundle").exists() and not (out / "bundle.tar.gz").exists()
    assert output.submitted_run(out) == "new" and runs_in(out) == {"new"} and hidden(out) == []


def test_an_error_while_staging_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    publish(out, "old")
    with pytest.raises(RuntimeError, match="boom"), output.staged(out) as stage:
        (stage / output.PREDICTION).write_text("prediction of new\n")
        raise RuntimeError("boom")
    assert output.submitted_run(out) == "old" and runs_in(out) == {"old"} and hidden(out) == []


def test_an_interrupt_during_the_commit_is_finished_by_the_next_submit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    publish(out, "old")
    real = os.replace

    def interrupted(src: object, dst: object) -> None:
        real(src, dst)
        if Path(dst) == out / output.PREDICTION:
            raise KeyboardInterrupt  # Ctrl-C, or SIGTERM turned into one by cli.main

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        publish(out, "new")
    monkeypatch.setattr(os, "replace", real)
    assert output.submitted_run(out) is None and runs_in(out) == {"old", "new"}
    kept = [out / n for n in hidden(out) if n.startswith(".submission.tmp-")]
    assert len(kept) == 1 and (kept[0] / output.MARKER).is_file()  # kept, marker and all
    assert output.recover(out) == kept  # what the next submit does first
    assert output.submitted_run(out) == "new" and runs_in(out) == {"new"} and hidden(out) == []


def test_a_full_disk_is_one_error_naming_the_folder_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.fileio

    out = tmp_path / "out"
    publish(out, "old")
    real = harness.fileio.os.fsync

    def full(fd: int) -> None:  # the write is accepted, the flush to disk is not: what ENOSPC looks like late
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(harness.fileio.os, "fsync", full)
    with pytest.raises(OSError) as caught:
        publish(out, "new")
    monkeypatch.setattr(harness.fileio.os, "fsync", real)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(out)
    from harness.errors import io_message

    assert io_message(caught.value) == f"no space left on device: {out}"
    assert output.submitted_run(out) == "old" and runs_in(out) == {"old"} and hidden(out) == []


def test_a_read_only_folder_names_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    real_mkdir = Path.mkdir

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        if self.parent == out:  # as a read-only folder answers (root ignores chmod, so it is simulated)
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(PermissionError) as caught:
        publish(out, "new")
    assert caught.value.filename == str(out)  # not the hidden staging folder's name
    assert list(out.iterdir()) == []


def test_stale_staging_of_killed_submits_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    publish(out, "old")
    pid = dead_pid()
    leftovers = [out / f".submission.tmp-{pid}", out / f".bundle.tmp-{pid}", out / f".bundle.old-{pid}"]
    for folder in leftovers:
        (folder / "weights").mkdir(parents=True)
        (folder / "weights" / "model.safetensors").write_bytes(b"\x00" * 1000)
    (out / f".bundle.tar.gz.tmp-{pid}").write_bytes(b"half an archive")
    (out / f".prediction.csv.tmp-{pid}").write_text("half a csv")
    alive = out / f".bundle.tmp-{os.getpid()}"  # a writer still at work is left alone
    alive.mkdir()
    publish(out, "new")
    assert hidden(out) == [alive.name]
    assert output.submitted_run(out) == "new" and runs_in(out) == {"new"}


KILLER_HEAD = """
import json, os, signal, sys
from pathlib import Path
from harness.submit import output  # light: no torch, no mlflow

"""
KILLER = """
out, kill_after = Path(sys.argv[1]), sys.argv[2]
real = os.replace

def replace(src, dst):
    real(src, dst)
    dst = Path(dst)
    if dst.parent == out and (dst.name == kill_after or dst.name.startswith(kill_after + "-")):
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no cleanup: what kill -9 does

os.replace = replace
with output.staged(out) as stage:
    stage_outputs(stage, "new")
"""


def killer_script() -> str:
    import inspect

    return KILLER_HEAD + inspect.getsource(stage_outputs) + KILLER


@pytest.mark.parametrize("kill_after", ["prediction.csv", "bundle.tar.gz", ".bundle.old", "bundle"])
def test_kill_9_during_the_commit_never_leaves_a_claimed_mix_and_the_next_submit_heals(kill_after: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    publish(out, "old")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", killer_script(), str(out), kill_after],
                            capture_output=True, text=True, timeout=60, env=env)
    assert killed.returncode == -9, killed.stderr
    # Cut short mid-commit: the outputs may mix the two runs, but the folder claims neither.
    assert output.submitted_run(out) is None and any(n.startswith(".submission.tmp-") for n in hidden(out))
    if kill_after == "prediction.csv":
        assert runs_in(out) == {"old", "new"}  # the state the marker exists for
    # The next submit (whichever run it is for) first finishes the killed commit, then makes its own.
    rolled = output.recover(out)
    assert len(rolled) == 1 and hidden(out) == []
    assert output.submitted_run(out) == "new" and runs_in(out) == {"new"}
    publish(out, "third")
    assert output.submitted_run(out) == "third" and runs_in(out) == {"third"} and hidden(out) == []


def test_best_with_no_runs_exits_2_in_submit_and_predict_alike(tmp_path: Path) -> None:
    from tests.conftest import isolated_home, write_clip
    from tests.run_main import run_main

    clip = write_clip(tmp_path / "c.mp4", seconds=1.0)
    with isolated_home(tmp_path / "home"):
        submitted = run_main("submit", "--run-id", "best", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"))
        predicted = run_main("predict", str(clip), "--run-id", "best")
    expected = ["error: --run-id best: no finished training run in this store yet"]
    assert (submitted.exit_code, submitted.stderr.strip().splitlines()) == (2, expected)
    assert (predicted.exit_code, predicted.stderr.strip().splitlines(), predicted.stdout) == (2, expected, "")
    assert not (tmp_path / "out").exists()


def test_the_dataset_must_fit_the_run(small_dataset: Path, tmp_path: Path) -> None:
    import cv2
    import numpy as np

    from harness.config import RunConfig
    from harness.submit.checks import check_dataset
    from tests.conftest import write_labels

    test = check_dataset(small_dataset, RunConfig(), fake_run("FINISHED", **{"data.fingerprint": "another"}))
    assert test.names == ["test1.mp4", "test0.mp4"]  # the template's order
    assert [w for w in test.warnings if "differs from the dataset run r1 was trained on" in w]

    images = tmp_path / "images"
    for split in ("train", "test"):
        (images / f"{split}set").mkdir(parents=True)
        cv2.imwrite(str(images / f"{split}set" / f"{split}0.png"), np.zeros((32, 32, 3), np.uint8))
    write_labels(images / "train_label.txt", [("train0.png", 0)])
    with pytest.raises(SubmitError, match=r"^run r1 \(audio model\): .*images: an image-track dataset"):
        check_dataset(images, RunConfig(), fake_run("FINISHED"))
