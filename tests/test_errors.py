"""One error policy: typed errors carry their exit code, `harness.cli` maps them to one line once."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.config import ConfigError
from harness.data.labels import DatasetError
from harness.engine import TrainingDiverged
from harness.errors import BadInput, HarnessError, JobFailed, NotFound, io_message
from harness.metrics import MetricsError
from harness.models import ModelRuleError, WeightsUnavailableError
from tests.conftest import isolated_home, write_labels

runner = CliRunner()


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (BadInput, 2), (ConfigError, 2), (NotFound, 2), (DatasetError, 2), (ModelRuleError, 2),
        (WeightsUnavailableError, 2), (JobFailed, 1), (TrainingDiverged, 1), (MetricsError, 1),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else str(v),
)
def test_exit_code_table(error: type[HarnessError], code: int) -> None:
    assert error.exit_code == code
    # A handler for a library's ValueError never swallows a refusal (resolve_data once deleted a
    # user's data/demo on one): bad input is not a ValueError.
    assert code != 2 or not issubclass(error, ValueError)


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize("command", [
    ["prepare", "--data", "{data}"],
    ["train", "--data", "{data}"],
    ["check", "--backbone", "resnet18.a1_in1k"],
])
def test_the_same_mistake_gives_the_same_exit_code_everywhere(command: list[str], small_dataset: Path,
                                                               tmp_path: Path) -> None:
    # An unknown modality was exit 2 in prepare and check but 1 in train; now one rule.
    args = [a.format(data=small_dataset) for a in command] + ["--modality", "smell"]
    with isolated_home(tmp_path):
        result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert _lines(result.output) == ["error: modality: unknown modality 'smell'; choose from audio, video, fusion, image"]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "cache").exists()


def test_a_job_failure_is_one_line_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.data.demo as demo

    def diverge(*args: object, **kwargs: object) -> Path:
        raise TrainingDiverged("train loss became nan\nin epoch 3")

    monkeypatch.setattr(demo, "make_demo_dataset", diverge)
    result = runner.invoke(app, ["demo-data", "--out", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert _lines(result.output) == ["error: train loss became nan in epoch 3"]


def test_no_space_left_is_one_line_naming_the_path_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.data.demo as demo

    target = tmp_path / "d" / "trainset" / "clip_0001.mp4"

    def full_disk(*args: object, **kwargs: object) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(demo, "make_demo_dataset", full_disk)
    result = runner.invoke(app, ["demo-data", "--out", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert _lines(result.output) == [f"error: no space left on device: {target}"]
    assert "Traceback" not in result.output


def test_io_message_names_both_paths_of_a_rename() -> None:
    error = OSError(errno.EROFS, "Read-only file system", "/a/.x.tmp-1", None, "/a/x")
    assert io_message(error) == "read-only file system: /a/.x.tmp-1 -> /a/x"


def test_the_console_script_reports_one_line_without_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "HARNESS_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    done = subprocess.run([sys.executable, "-c", "from harness.cli import main; main()", "train", "--loss", "foo"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert _lines(done.stderr) == ["error: train.loss: unknown loss 'foo'; choose from bce, ce, focal"]
    assert not (tmp_path / "mlflow.db").exists()


NAP = """
import sys, time
from harness import cli

@cli.app.command("nap")
def nap() -> None:
    print("ready", flush=True)
    time.sleep(60)

cli.main(["nap"])
"""


def test_sigterm_exits_130_like_ctrl_c() -> None:
    process = subprocess.Popen([sys.executable, "-c", NAP], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130
    assert _lines(err) == ["interrupted"]


def _scores(folder: Path) -> list[str]:
    """`harness score` arguments: four clips scored against their labels, no methods file."""
    labels = write_labels(folder / "labels.txt", [(f"c{i}.mp4", i % 2) for i in range(4)])
    (prediction := folder / "prediction.csv").write_text("video_name,score\n" + "".join(f"c{i}.mp4,0.{i}\n" for i in range(4)))
    return ["score", str(prediction), "--labels", str(labels)]


def test_a_closed_stdout_pipe_ends_a_command_quietly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    # `harness score ... | head -0`: stdout a pipe whose reader has gone; it said "error: broken pipe", exit 1.
    read, write = os.pipe()
    os.close(read)
    with open(write, "w") as closed:
        monkeypatch.setattr(sys, "stdout", closed)
        assert app(args=_scores(tmp_path), standalone_mode=False) == 141
        closed.write("x" * 100_000)  # stdout now goes nowhere: the interpreter's last flush cannot fail
    assert capsys.readouterr().err == ""


@pytest.mark.slow  # spawns the CLI
@pytest.mark.parametrize("script", ["cli.main(sys.argv[1:])",
                                    # a last line still in the buffer when the command returns: written at exit
                                    "cli.app.command('late')(lambda: print('buffered'))\ncli.main(['late'])"],
                         ids=["echo", "buffered"])
def test_a_process_whose_reader_closed_exits_141_and_says_nothing(script: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered, as usual in a pipe
    process = subprocess.Popen([sys.executable, "-c", f"import sys\nfrom harness import cli\n{script}", *_scores(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    process.stdout.close()  # the reader is gone long before the first line (importing harness takes a second)
    try:
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert (process.returncode, err) == (141, "")  # not "error: broken pipe", nor "Exception ignored ..."
