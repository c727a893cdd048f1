"""The image track end to end through the CLI: face images -> prepare -> train -> submit -> api.py."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from harness.cli import app
from tests.conftest import write_labels

pytestmark = pytest.mark.slow  # trains a model and submits it
runner = CliRunner()


def write_faces(root: Path, split: str, n: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """Face-sized pictures where fakes carry a brighter blended patch: learnable, not trivial."""
    import cv2

    rows = []
    (root / f"{split}set").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = i % 2
        img = rng.integers(40, 160, (64, 64, 3), dtype=np.uint8)
        if label:
            img[20:44, 20:44] = np.clip(img[20:44, 20:44].astype(int) + 60, 0, 255)
        name = f"{split}{i:02d}.{'png' if i % 3 == 0 else 'jpg'}"
        cv2.imwrite(str(root / f"{split}set" / name), img)
        rows.append((name, label))
    return rows


@pytest.fixture
def image_dataset(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    train = write_faces(root, "train", 24, rng)
    val = write_faces(root, "val", 12, rng)
    test = write_faces(root, "test", 4, rng)
    write_labels(root / "train_label.txt", train)
    write_labels(root / "val_label.txt", val)
    (root / "test_template.csv").write_text("video_name,score\n" + "".join(f"{n},0\n" for n, _ in reversed(test)))
    return root


def test_image_track_trains_submits_and_the_bundle_scores_an_image(image_dataset: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    common = ["--data", str(image_dataset), "--cache", str(tmp_path / "cache")]
    audio = runner.invoke(app, ["train", *common, "--modality", "audio"])
    assert audio.exit_code == 2 and "has no audio" in audio.output
    trained = runner.invoke(app, ["train", *common, "--modality", "image", "--backbone", "test_efficientnet.r160_in1k",
                                  "--no-pretrained", "--epochs", "2", "--batch-size", "8", "--device", "cpu"])
    assert trained.exit_code == 0, trained.output
    assert "test_efficientnet.r160_in1k" in trained.output and "image 3x112x112, faces 1x112x112x3" in trained.output
    out = tmp_path / "sub"
    submitted = runner.invoke(app, ["submit", *common, "--run-id", "last", "--out", str(out)])
    assert submitted.exit_code == 0, submitted.output
    rows = (out / "prediction.csv").read_text().splitlines()
    from harness.submit import submitted_run

    assert submitted_run(out) is not None  # complete, and the marker names the run
    template = [line.split(",")[0] for line in (image_dataset / "test_template.csv").read_text().splitlines()[1:]]
    assert rows[0] == "video_name,score" and [r.split(",")[0] for r in rows[1:]] == template == \
        ["test03.png", "test02.jpg", "test01.jpg", "test00.png"]
    image = image_dataset / "testset" / "test01.jpg"
    api = subprocess.run([sys.executable, "api.py", str(image)], cwd=out / "bundle", capture_output=True, text=True,
                         timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert api.returncode == 0, api.stderr
    score = float(api.stdout.strip().rsplit(",", 1)[1])
    assert f"test01.jpg,{score:.8f}" in rows
