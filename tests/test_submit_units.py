"""The parts of `harness submit` that need no trained model: the CSV writer and validator, the refusal
policy, the run-reference check, and the submission folder (built beside OUT and swapped in whole,
one run after a `kill -9` at any point, what a killed submit left removed by the next, a full disk
leaving nothing behind).
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
    from harness.tracking.registry import default_model_name
    from harness.tracking.resolve import check_run_ref

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


def leftovers(out: Path) -> list[str]:
    """Temporaries beside OUT (`.OUT.tmp-PID`, `.OUT.old-PID`) and hidden entries inside it."""
    beside = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    inside = [f"{out.name}/{p.name}" for p in out.iterdir() if p.name.startswith(".")] if out.is_dir() else []
    return sorted(beside + inside)


def dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_a_submission_replaces_the_folder_whole_with_its_marker(tmp_path: Path) -> None:
    out = tmp_path / "out"
    publish(out, "old")
    assert output.submitted_run(out) == "old" and runs_in(out) == {"old"} and leftovers(out) == []
    publish(out, "new")
    assert output.submitted_run(out) == "new" and runs_in(out) == {"new"} and leftovers(out) == []
    marker = json.loads((out / output.MARKER).read_text())
    assert set(marker["files"]) == {"prediction.csv", "fallbacks.csv", "bundle.tar.gz", "bundle/manifest.json"}
    (out / output.PREDICTION).write_text("edited by hand\n")
    assert output.submitted_run(out) is None  # the marker's digest no longer matches


def test_a_submission_without_a_bundle_removes_the_old_one(tmp_path: Path) -> None:
    out = tmp_path / "out"
    publish(out, "old")
    publish(out, "new", bundle=False)
    assert not (out / "bundle").exists() and not (out / "bundle.tar.gz").exists()
    assert output.submitted_run(out) == "new" and runs_in(out) == {"new"} and leftovers(out) == []


def test_an_error_while_staging_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    publish(out, "old")
    with pytest.raises(RuntimeError, match="boom"), output.staged(out) as stage:
        (stage / output.PREDICTION).write_text("prediction of new\n")
        raise RuntimeError("boom")
    assert output.submitted_run(out) == "old" and runs_in(out) == {"old"} and leftovers(out) == []


def test_a_folder_holding_other_files_is_refused_untouched(tmp_path: Path) -> None:
    from harness.errors import BadInput

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / output.PREDICTION).write_text("an older prediction\n")
    with pytest.raises(BadInput, match=r"mine holds files that are not a submission's \(notes.txt\)"):
        publish(out, "new")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "prediction.csv"] and leftovers(out) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInput, match="not a folder"):
        publish(tmp_path / "file", "new")


@pytest.mark.parametrize("when", ["before", "after"])
def test_ctrl_c_around_the_swap_leaves_one_run_and_nothing_behind(when: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.fileio

    out = tmp_path / "out"
    publish(out, "old")
    real = harness.fileio._exchange

    def interrupted(a: Path, b: Path) -> None:
        if when == "after":
            real(a, b)
        raise KeyboardInterrupt  # Ctrl-C, or SIGTERM turned into one by cli.main

    monkeypatch.setattr(harness.fileio, "_exchange", interrupted)
    with pytest.raises(KeyboardInterrupt):
        publish(out, "new")
    held = "new" if when == "after" else "old"
    assert output.submitted_run(out) == held and runs_in(out) == {held} and leftovers(out) == []


def test_without_renameat2_a_rename_pair_swaps_and_a_cut_short_one_is_undone(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.fileio

    def unsupported(a: Path, b: Path) -> None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")  # macOS, musl, an old kernel

    monkeypatch.setattr(harness.fileio, "_exchange", unsupported)
    out = tmp_path / "out"
    publish(out, "old")
    publish(out, "new")
    assert output.submitted_run(out) == "new" and runs_in(out) == {"new"} and leftovers(out) == []
    # What a kill between the pair's two renames leaves: no OUT, the old folder set aside, the new one staged.
    pid = dead_pid()
    out.rename(tmp_path / f".out.old-{pid}")
    (tmp_path / f".out.tmp-{pid}").mkdir()
    assert harness.fileio.recover_dir(out) == [tmp_path / f".out.tmp-{pid}"]
    assert output.submitted_run(out) == "new" and leftovers(out) == []  # put back as it was before the swap


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
    assert output.submitted_run(out) == "old" and runs_in(out) == {"old"} and leftovers(out) == []


def test_a_read_only_folder_names_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    real_mkdir = Path.mkdir

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        if self.parent == tmp_path:  # as a read-only folder answers (root ignores chmod, so it is simulated)
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(PermissionError) as caught:
        publish(out, "new")
    assert caught.value.filename == str(out)  # not the hidden staging folder's name
    assert list(out.iterdir()) == [] and leftovers(out) == []


def test_what_killed_submits_left_is_removed_by_the_next(tmp_path: Path) -> None:
    out = tmp_path / "out"
    publish(out, "old")
    pid = dead_pid()
    for folder in (tmp_path / f".out.tmp-{pid}", tmp_path / f".out.old-{pid}", out / f".submission.tmp-{pid}",
                   out / f".bundle.tmp-{pid}"):  # the last two: inside OUT, as the previous layout left them
        (folder / "weights").mkdir(parents=True)
        (folder / "weights" / "model.safetensors").write_bytes(b"\x00" * 1000)
    (out / f".bundle.tar.gz.tmp-{pid}").write_bytes(b"half an archive")
    alive = tmp_path / f".out.tmp-{os.getppid()}"  # a writer still at work is left alone
    alive.mkdir()
    publish(out, "new")
    assert leftovers(out) == [alive.name]
    assert output.submitted_run(out) == "new" and runs_in(out) == {"new"}


KILLER = """
import errno, json, os, signal, sys
from pathlib import Path
import harness.fileio as fileio
from harness.submit import output  # light: no torch, no mlflow

out, point = Path(sys.argv[1]), sys.argv[2]

def die():
    os.kill(os.getpid(), signal.SIGKILL)  # no finally, no cleanup: what kill -9 does

real_exchange, real_rename, real_sync = fileio._exchange, os.rename, fileio.sync_tree

def sync_tree(folder):
    real_sync(folder)
    if point == "staged":
        die()

def exchange(a, b):
    if point.startswith("pair-"):
        raise OSError(errno.ENOSYS, "no renameat2 here")
    real_exchange(a, b)
    die()

def rename(src, dst):
    real_rename(src, dst)
    if (point == "pair-aside" and Path(dst).name.startswith(f".{out.name}.old-")) or (point == "pair-in" and Path(dst) == out):
        die()

fileio.sync_tree, fileio._exchange, os.rename = sync_tree, exchange, rename
with output.staged(out) as stage:
    stage_outputs(stage, "new")
"""


def killer_script() -> str:
    import inspect

    return KILLER.replace("with output.staged", inspect.getsource(stage_outputs) + "\nwith output.staged")


# where the kill lands -> the run OUT holds right after it (None: no OUT, until the next submit puts the old back)
KILL_POINTS = {"staged": "old", "exchanged": "new", "pair-aside": None, "pair-in": "new"}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_never_leaves_a_mix_and_the_next_submit_cleans_up(point: str, tmp_path: Path) -> None:
    from harness.fileio import recover_dir

    out = tmp_path / "out"
    publish(out, "old")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", killer_script(), str(out), point],
                            capture_output=True, text=True, timeout=60, env=env)
    assert killed.returncode == -9, killed.stderr
    held = KILL_POINTS[point]
    assert output.submitted_run(out) == held and runs_in(out) == ({held} if held else set())  # whole, or absent
    assert leftovers(out)  # what the killed writer left beside OUT
    recover_dir(out)  # what the next submit (whichever run it is for) does first: no OUT gets the old one back
    assert output.submitted_run(out) == (held or "old") and leftovers(out) == []
    publish(out, "third")
    assert output.submitted_run(out) == "third" and runs_in(out) == {"third"} and leftovers(out) == []


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
