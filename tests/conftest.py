"""Shared test material: the real shared clips and small clips generated with PyAV."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_SAMPLE = ROOT.parent / "shared" / "data" / "ffdv-phase1-sample"


@pytest.fixture(scope="session")
def shared_sample() -> Path:
    """The 10 real phase-1 clips, read in place (never copied into the repo)."""
    if not (SHARED_SAMPLE / "trainset_label.txt").exists():
        pytest.skip(f"shared real clips not found at {SHARED_SAMPLE}")
    return SHARED_SAMPLE


def write_clip(
    path: Path,
    *,
    seconds: float = 2.0,
    audio: bool = True,
    video: bool = True,
    amplitude: float = 0.3,
    freq: float = 440.0,
    sample_rate: int = 16000,
    faststart: bool = False,
) -> Path:
    """A small .mp4 (32x32 H.264 at 10 fps and/or AAC mono): enough to exercise the decoders."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        if video:
            v = out.add_stream("libx264", rate=10, options={"preset": "ultrafast"})
            v.width = v.height = 32
            v.pix_fmt = "yuv420p"
        if audio:
            a = out.add_stream("aac", rate=sample_rate, layout="mono")
        if video:
            for i in range(max(1, int(seconds * 10))):
                img = np.full((32, 32, 3), (i * 7) % 255, np.uint8)
                for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(p)
            for p in v.encode():
                out.mux(p)
        if audio:
            n = int(seconds * sample_rate)
            t = np.arange(n) / sample_rate
            wave = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
            step = 1024
            for i in range(0, n, step):
                frame = av.AudioFrame.from_ndarray(wave[None, i : i + step], format="flt", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = i
                frame.time_base = Fraction(1, sample_rate)
                for p in a.encode(frame):
                    out.mux(p)
            for p in a.encode():
                out.mux(p)
    return path


def write_truncated_clip(path: Path, seconds: float = 6.0, keep: float = 0.3) -> Path:
    """A clip cut short on disk with its index (moov) at the front, as a broken download leaves it:
    the container still declares the full length while only the first part decodes."""
    write_clip(path, seconds=seconds, faststart=True)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.fixture
def clip_factory(tmp_path: Path):
    def make(name: str, **kw) -> Path:
        return write_clip(tmp_path / name, **kw)

    return make


@contextmanager
def isolated_home(root: Path, *, cache: bool = True) -> Iterator[pytest.MonkeyPatch]:
    """HARNESS_HOME, the feature cache and the MLflow store under `root`, for a module's fixtures."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_HOME", str(root))
        if cache:
            mp.setenv("HARNESS_CACHE", str(root / "cache"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        yield mp


def write_labels(path: Path, rows: list[tuple[str, int]], header: str = "video_name,target") -> Path:
    path.write_text(header + "\n" + "".join(f"{n},{t}\n" for n, t in rows))
    return path


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    """A valid dataset: 4 train, 2 val, 2 test clips with a template, in the challenge layout."""
    root = tmp_path / "ds"
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for i in range(n):
            write_clip(root / f"{split}set" / f"{split}{i}.mp4", seconds=1.0, freq=300 + 100 * i)
    write_labels(root / "train_label.txt", [(f"train{i}.mp4", i % 2) for i in range(4)])
    write_labels(root / "val_label.txt", [(f"val{i}.mp4", i % 2) for i in range(2)])
    (root / "test_template.csv").write_text("video_name,score\ntest1.mp4,0\ntest0.mp4,0\n")
    return root


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)  # shared/ is read-only; copies in tmp must be editable
    return dst
