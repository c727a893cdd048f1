"""The command line: light start-up, exit codes, one-line errors, refusals before any work.

Tests that run `prepare` (a pool of decoder processes) are marked slow.
"""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from harness import __version__
from harness.cli import app
from tests.conftest import isolated_home, write_labels

runner = CliRunner()
HEAVY = ("torch", "timm", "mlflow", "optuna", "librosa", "av", "sklearn")


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['harness', '--help']\n"
        "from harness import cli\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "prepare" in out and "train" in out
    assert out.strip().endswith("HEAVY="), out[-300:]


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"harness {__version__}"


@pytest.mark.parametrize("command", [[], ["audit"], ["train"]])
def test_help_shows_flags_as_flags(command: list[str]) -> None:
    # typer's help wrote `--version <bool>`, as if the flag took a value
    result = runner.invoke(app, [*command, "--help"], terminal_width=100)
    assert result.exit_code == 0 and "--help" in result.output and "<bool>" not in result.output
    if command == ["train"]:  # brackets are text, not rich markup; defaults from the fields
        assert "[audio], [video]" in result.output and "[default: 0.001]" in result.output


def test_prepare_bad_dataset_is_one_line_exit_2(small_dataset: Path, tmp_path: Path) -> None:
    (small_dataset / "train_label.txt").write_text("video_name,target\ntrain0.mp4,yes\n")
    result = runner.invoke(app, ["prepare", "--data", str(small_dataset), "--cache", str(tmp_path / "c")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: {small_dataset / 'train_label.txt'}:2: target must be 0 or 1, found 'yes'"]


@pytest.mark.slow
def test_prepare_with_failed_clips_exits_0_and_lists_them(small_dataset: Path, tmp_path: Path) -> None:
    (small_dataset / "valset" / "val1.mp4").write_bytes(b"garbage")
    result = runner.invoke(app, ["prepare", "--data", str(small_dataset), "--cache", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert "failed: val/val1.mp4: undecodable" in result.output
    assert "8 clips: 7 done, 0 reused, 1 failed" in result.output  # a failed clip is not done
    # Outside a terminal each line is whole, however long (rich wrapped them at 80 columns, mid-sentence).
    lines = result.output.splitlines()
    summary = [line for line in lines if line.startswith("prepared audio of 8 clips: 7 done")]
    assert len(summary) == 1 and f"; cache {tmp_path / 'c'}/" in summary[0] and len(summary[0]) > 80, result.output
    failed = [line for line in lines if line.startswith("failed: val/val1.mp4: undecodable (")]
    assert len(failed) == 1 and failed[0].endswith(")"), result.output
    again = runner.invoke(app, ["prepare", "--data", str(small_dataset), "--cache", str(tmp_path / "c")])
    assert "0 done, 7 reused, 1 failed" in again.output


@pytest.mark.slow
def test_prepare_imports_no_model_library(small_dataset: Path, tmp_path: Path) -> None:
    """prepare trains nothing: checking backbones (the timm import, 4 s of a 10-clip prepare's 5) is the
    training commands' pre-flight, not prepare's."""
    code = (
        "import sys\n"
        f"sys.argv = ['harness', 'prepare', '--data', {str(small_dataset)!r}, '--cache', {str(tmp_path / 'c')!r}]\n"
        "from harness import cli\n"
        "try:\n    cli.main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('MODELS=' + ','.join(m for m in ('timm', 'torchvision', 'mlflow', 'optuna') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "prepared audio of" in done.stderr and done.stdout.strip().endswith("MODELS="), done.stdout[-300:]


def test_check_refuses_in22k_and_accepts_in1k() -> None:
    refused = runner.invoke(app, ["check", "--backbone", "convnext_base"])
    assert refused.exit_code == 2 and "REFUSED" in refused.output and "in22k" in refused.output
    ok = runner.invoke(app, ["check", "--backbone", "convnext_base.fb_in1k"])
    assert ok.exit_code == 0 and "OK" in ok.output and "GMACs" in ok.output


def test_train_missing_data_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "none")])
    assert result.exit_code == 2 and "dataset folder not found" in result.output


@pytest.mark.slow
def test_prepare_faces_reports_fallback_frames(small_dataset: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", "--data", str(small_dataset), "--cache", str(tmp_path / "c"),
                                 "--modality", "video", "--frames", "2", "--face-size", "32"])
    assert result.exit_code == 0, result.output
    assert "prepared faces of 8 clips: 8 done" in result.output
    assert "frames without a face (centre crop used): 16 of 16" in result.output  # flat test frames: no face


def test_prepare_modality_must_fit_the_track(small_dataset: Path, tmp_path: Path) -> None:
    unknown = runner.invoke(app, ["prepare", "--data", str(small_dataset), "--modality", "smell"])
    assert unknown.exit_code == 2 and "unknown modality 'smell'" in unknown.output
    image = runner.invoke(app, ["prepare", "--data", str(small_dataset), "--cache", str(tmp_path / "c"), "--modality", "image"])
    assert image.exit_code == 2 and "use --modality video" in image.output


def test_check_counts_a_fusion_model_as_one() -> None:
    args = ["check", "--backbone", "test_efficientnet.r160_in1k", "--no-pretrained", "--max-params", "150000"]
    assert runner.invoke(app, [*args, "--modality", "audio"]).exit_code == 0
    fusion = runner.invoke(app, [*args, "--modality", "fusion"])
    assert fusion.exit_code == 2 and "REFUSED" in fusion.output and "exceed" in fusion.output


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--loss", "foo"], "error: train.loss: unknown loss 'foo'; choose from bce, ce, focal"),
        (["--optimizer", "bar"], "error: train.optimizer: unknown optimizer 'bar'; choose from adamw, sgd, radam"),
        (["--modality", "smell"], "error: modality: unknown modality 'smell'; choose from audio, video, fusion, image"),
        (["--lr", "-1"], "error: train.lr: must be > 0, got -1.0"),
        (["--device", "tpu"], "error: train.device: unknown device 'tpu'; choose from auto, cpu, cuda or cuda:N"),
        (["--backbone", "resnet81"], "error: resnet81: unknown timm model; did you mean resnet18, resnet61q, resnet51q?"),
    ],
    ids=["loss", "optimizer", "modality", "lr", "device", "backbone"],
)
def test_train_refuses_bad_settings_before_any_work(args: list[str], message: str, small_dataset: Path,
                                                     tmp_path: Path) -> None:
    with isolated_home(tmp_path / "home"):
        result = runner.invoke(app, ["train", "--data", str(small_dataset), *args])
    assert result.exit_code == 2 and _lines(result.output) == [message]
    # no MLflow store opened (so no run), no features computed
    assert not (tmp_path / "home").exists()


def test_train_config_file_type_errors_name_the_file_and_key(small_dataset: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    for line, message in [
        ('[train]\nepochs = "1"', 'train.epochs: expected an integer, got "1"'),
        ('[train]\npretrained = "false"', 'train.pretrained: expected true or false, got "false"'),
        ('[audio]\nn_mels = "64"', 'audio.n_mels: expected an integer, got "64"'),
        ('[train]\nepoch = 1', "train.epoch: unknown setting; known: backbone,"),
    ]:
        config.write_text(line + "\n")
        with isolated_home(tmp_path / "home"):
            result = runner.invoke(app, ["train", "--data", str(small_dataset), "--config", str(config)])
        assert result.exit_code == 2, result.output
        assert len(_lines(result.output)) == 1 and result.output.startswith(f"error: {config}: {message}")
    assert not (tmp_path / "home").exists()


def test_check_unknown_backbone_exit_2() -> None:
    for extra in ([], ["--modality", "video"]):
        result = runner.invoke(app, ["check", "--backbone", "resnet81", *extra])
        assert result.exit_code == 2
        assert _lines(result.output) == ["error: resnet81: unknown timm model; did you mean resnet18, resnet61q, resnet51q?"]


def test_ui_refuses_a_port_in_use_at_once(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with isolated_home(tmp_path / "home"):
            result = runner.invoke(app, ["ui", "--port", str(port)])
    assert result.exit_code == 2
    assert _lines(result.output) == [f"error: port {port} on 127.0.0.1 is in use (another `harness ui` or server?); "
                                     "stop it or pass --port"]
    assert not (tmp_path / "home").exists()  # refused before the store was opened


def test_a_user_folder_at_data_demo_is_refused_and_kept(tmp_path: Path) -> None:
    """Without --data the demo set is used; a data/demo that is not one is refused, never deleted."""
    mine = tmp_path / "data" / "demo" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("my own files")
    for command in (["prepare"], ["train", "--epochs", "1"], ["audit", "--no-track"]):
        with isolated_home(tmp_path):
            result = runner.invoke(app, command)
        assert result.exit_code == 2, (command, result.output)
        assert _lines(result.output) == [f"error: {mine.parent} exists and is not a demo data set; pick another folder "
                                         "or delete it"]
        assert sorted(p.name for p in mine.parent.iterdir()) == ["notes.txt"] and mine.read_text() == "my own files"


def test_audit_of_a_file_says_it_is_a_file(tmp_path: Path) -> None:
    labels = write_labels(tmp_path / "train_label.txt", [("a.mp4", 0)])
    result = runner.invoke(app, ["audit", "--data", str(labels), "--no-track"])
    assert result.exit_code == 2
    assert _lines(result.output) == [f"error: {labels}: a file, not a dataset folder "
                                     "(trainset/, valset/, testset/ and label files)"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.epoch=3"], "error: train.epoch: unknown setting; known: backbone, pretrained,"),
        (["--set", "trian.lr=0.1"], "error: trian: unknown group of settings; known: audio, video, train"),
        (["--set", "train.epochs=abc"], 'error: train.epochs: expected an integer, got "abc"'),
        (["--set", "train.augment.mixup=-1"], "error: train.augment.mixup: must be >= 0, got -1"),
        (["--set", "lr"], "error: --set 'lr': expected section.key=value, e.g. train.lr=0.001"),
        (["--face-size", "0"], "error: video.size: must be >= 1, got 0"),
    ],
    ids=["unknown-key", "unknown-section", "type", "rule", "no-value", "option-rule"],
)
def test_set_reaches_every_setting_and_names_the_key(args: list[str], message: str, small_dataset: Path,
                                                     tmp_path: Path) -> None:
    with isolated_home(tmp_path / "home"):
        result = runner.invoke(app, ["train", "--data", str(small_dataset), *args])
    assert result.exit_code == 2 and len(_lines(result.output)) == 1 and result.output.startswith(message), result.output
    assert not (tmp_path / "home").exists()


def test_options_are_made_from_the_fields() -> None:
    import dataclasses

    from harness.cli.settings import settings_options
    from harness.config import RunConfig, with_changes
    from harness.validation import cli_face

    given: dict = {}
    probe = typer.Typer()

    @probe.command()
    @settings_options("audio", "video", "train")
    def show(changes: dict) -> None:
        given.update(changes)

    result = runner.invoke(probe, ["--lr", "0.01", "--face-size", "64", "--no-pretrained", "--modality", "fusion",
                                   "--set", "train.augment.mixup=0.2", "--set", "train.loss=focal"])
    assert result.exit_code == 0, result.output
    assert given == {"train.lr": 0.01, "video.size": 64, "train.pretrained": False, "modality": "fusion",
                     "train.augment.mixup": 0.2, "train.loss": "focal"}
    cfg = with_changes(RunConfig(), given)
    assert (cfg.train.lr, cfg.video.size, cfg.train.augment.mixup, cfg.train.loss) == (0.01, 64, 0.2, "focal")
    # every field with a face is an option of `train`, under the name its field gives
    options = {o for p in typer.main.get_command(app).commands["train"].params for o in p.opts}
    faces = {cli_face(f) for cls in (RunConfig, *(type(v) for v in vars(RunConfig()).values() if dataclasses.is_dataclass(v)))
             for f in dataclasses.fields(cls) if cli_face(f)}
    assert faces and faces <= options and {"--ema", "--face-size", "--set"} <= options
    # prepare takes only what decides the cache
    prepare = {o for p in typer.main.get_command(app).commands["prepare"].params for o in p.opts}
    assert "--n-mels" in prepare and "--eval-windows" not in prepare and "--lr" not in prepare


def test_a_group_file_that_names_no_clip_is_refused_before_any_work(small_dataset: Path, tmp_path: Path) -> None:
    groups = write_labels(tmp_path / "speakers.csv", [("speaker_a.wav", 1)], header="video_name,group")
    with isolated_home(tmp_path / "home"):
        result = runner.invoke(app, ["train", "--data", str(small_dataset), "--folds", "3", "--group-by", str(groups)])
    assert result.exit_code == 2
    assert _lines(result.output) == [f"error: --group-by {groups}: none of its 1 names is a clip of the dataset (the "
                                     "file has 'speaker_a.wav', the dataset 'train/train0.mp4' or 'train0.mp4')"]
    assert not (tmp_path / "home").exists()  # no features, no run


def test_a_refused_study_spec_leaves_no_storage_behind(tmp_path: Path) -> None:
    from tests.tuning_helpers import write_spec

    spec = write_spec(tmp_path, "refused", trials=0)
    storage = tmp_path / "studies" / "refused.db"
    with isolated_home(tmp_path / "home"):
        result = runner.invoke(app, ["tune", "--study", str(spec), "--storage", f"sqlite:///{storage}"])
    assert result.exit_code == 2 and "trials, workers and max_failures must be at least 1" in result.output
    assert not storage.exists() and not storage.parent.exists()


def test_tune_opens_with_the_study_storage_target_and_workers(small_dataset: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import tuning
    from harness.errors import JobFailed
    from tests.tuning_helpers import write_spec

    def stop(*args: object, **kwargs: object) -> None:
        raise JobFailed("stopped by the test")

    monkeypatch.setattr(tuning, "run_study", stop)
    spec = write_spec(tmp_path, "opening", workers=2)
    storage = tmp_path / "opening.db"
    with isolated_home(tmp_path / "home"):
        result = runner.invoke(app, ["tune", "--study", str(spec), "--data", str(small_dataset), "--trials", "7",
                                     "--storage", f"sqlite:///{storage}"])
    assert result.exit_code == 1
    assert _lines(result.output) == [f"study opening: storage sqlite:///{storage}, target 7 finished trials by val_auc, "
                                     "2 worker(s)", "error: stopped by the test"]


@pytest.mark.parametrize("command", [["predict", "clip.mp4", "--run-id", "best"], ["submit", "--run-id", "best"]])
def test_device_comes_from_the_setting_and_is_refused_before_anything_loads(command: list[str], tmp_path: Path) -> None:
    with isolated_home(tmp_path / "home"):
        result = runner.invoke(app, [*command, "--device", "tpu"])
    assert result.exit_code == 2
    assert _lines(result.output) == ["error: --device: unknown device 'tpu'; choose from auto, cpu, cuda or cuda:N"]
    assert not (tmp_path / "home").exists()


def test_ranks_are_started_with_the_generated_options_as_given() -> None:
    """`train --nproc N` starts each rank with the options it was given (`given_options`): the same settings."""
    from harness.cli.settings import settings_options
    from harness.distributed.launch import given_options

    seen: list[tuple[dict, list[str]]] = []
    probe = typer.Typer()

    @probe.command()
    @settings_options("audio", "video", "train")
    def show(ctx: typer.Context, changes: dict, nproc: int = 1) -> None:
        seen.append((changes, given_options(ctx, drop=("nproc",))))

    args = ["--lr", "0.01", "--no-pretrained", "--face-size", "64", "--set", "train.loss=focal", "--set", "train.seed=3"]
    assert runner.invoke(probe, [*args, "--nproc", "2"]).exit_code == 0
    assert runner.invoke(probe, seen[0][1]).exit_code == 0
    assert seen[1][0] == seen[0][0] == {"train.lr": 0.01, "train.pretrained": False, "video.size": 64,
                                        "train.loss": "focal", "train.seed": 3}
    assert "--nproc" not in seen[0][1]
