"""The command line: light start-up, exit codes, one-line errors, refusals before any work.

Tests that run `prepare` (a pool of decoder processes) are marked slow.
"""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness import __version__
from harness.cli import app
from tests.conftest import isolated_home

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
    assert "8 clips: 8 done, 0 reused, 1 failed" in result.output
    again = runner.invoke(app, ["prepare", "--data", str(small_dataset), "--cache", str(tmp_path / "c")])
    assert "0 done, 8 reused, 1 failed" in again.output


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
        ('[features]\nn_mels = "64"', 'features.n_mels: expected an integer, got "64"'),
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
