"""The command line: light start-up, exit codes, one-line errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from harness import __version__
from harness.cli import app

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
