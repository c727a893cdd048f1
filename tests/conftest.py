"""Shared test material: the real shared clips, small clips generated with PyAV, an MLflow store,
and the helpers several test files need."""
from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

# One torch/BLAS thread a process, for this process and every harness it starts: two pytest workers on two
# cores with a thread per core each oversubscribe the machine (the slow tests ran 15-20% longer that way).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402 - after the thread count, which BLAS reads at import
import pytest  # noqa: E402

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
SHARED_SAMPLE = ROOT.parent / "shared" / "data" / "ffdv-phase1-sample"
T = TypeVar("T")


# `pytest` alone runs the fast subset on two workers (addopts in pyproject.toml: -m "not slow" -n auto).
# Tests named by node id (tests/test_x.py::test_y) run as asked, slow or not, in this process.
def _names_tests(config: pytest.Config) -> bool:
    return any("::" in arg for arg in config.args)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    # Two workers whatever the machine: the DDP and tuning tests start two processes each and time their
    # deaths. None for named tests or one file: a file runs on one worker anyway (--dist loadfile), and
    # starting workers costs more than that saves.
    one_file = len(config.args) == 1 and config.args[0].endswith(".py")
    return 0 if _names_tests(config) or one_file else 2


# The files that take longest with their slow tests (`make test --durations=0`, 2026-12-07): run first, so that
# the two workers (`--dist loadfile` hands out whole files in collection order) end together instead of one
# running a long file alone at the end. The DDP file third: first, beside the tuning studies (both start several
# processes a test), one run took 542 s; this order took 487 s and 516 s (runs here differ by up to 10%).
LONGEST_FIRST = ("test_server.py", "test_tuning_studies.py", "test_ddp.py", "test_ui_browser.py", "test_run_lifecycle.py",
                 "test_tuning_ddp.py", "test_tuning_cv.py", "test_submit.py", "test_pack_cli.py", "test_tracking.py",
                 "test_cache_processes.py", "test_windowed_run.py", "test_crossval.py", "test_pyfunc.py",
                 "test_gate_submit.py", "test_audit_cli.py", "test_image_track.py", "test_train.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


def pytest_configure(config: pytest.Config) -> None:
    user_chose_marks = any(arg.startswith("-m") for arg in config.invocation_params.args)
    if _names_tests(config) and not user_chose_marks and config.option.markexpr == "not slow":
        config.option.markexpr = ""  # the default filter steps aside for tests named explicitly


def require(what: str, available: bool, why: str) -> None:
    """Go on when `available`; else skip the test, saying why, or under CI (`CI=true`) fail it:
    a green CI means that the tests needing PostgreSQL, Chromium or the shared clips ran."""
    if available:
        return
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{what} is required under CI=true: {why}", pytrace=False)
    pytest.skip(f"no {what}: {why}")


@pytest.fixture(scope="session")
def shared_sample() -> Path:
    """The 10 real phase-1 clips, read in place (never copied into the repo)."""
    require("shared real clips", (SHARED_SAMPLE / "trainset_label.txt").exists(), f"not found at {SHARED_SAMPLE}")
    return SHARED_SAMPLE


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port` now, by the check `harness ui` and `harness server` make."""
    from harness.errors import BadInput
    from harness.tracking.launcher import check_port_free

    try:
        check_port_free("127.0.0.1", port)
    except BadInput:
        return False
    return True


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.1, what: str = "the condition") -> T:
    """Call `predicate` every `interval` s until it returns something truthy, and return that;
    after `timeout` s fail, naming `what`. The predicate may assert, to end the wait early (a
    process that died while it was waited for)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return value


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


class Store(NamedTuple):
    client: MlflowClient
    experiment_id: str
    home: Path


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its schema made, once per test process: stores copy it
    (creating the schema runs MLflow's migrations, about a second of CPU per store)."""
    from harness import tracking

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    tracking.setup(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> Iterator[Store]:
    """A test module's own MLflow store (`isolated_home` in a temporary folder) and an experiment
    "tests" in it whose artifacts go to home/artifacts."""
    from harness import tracking

    home = tmp_path_factory.mktemp("store")
    shutil.copyfile(empty_store, home / "mlflow.db")
    with isolated_home(home):
        client = tracking.setup()
        experiment_id = tracking.get_or_create_experiment(client, "tests", artifact_location=(home / "artifacts").as_uri())
        yield Store(client, experiment_id, home)


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
