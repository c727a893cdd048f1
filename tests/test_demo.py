"""The synthetic demo data set: layout, decodability, determinism, and the atomic, idempotent build.

One 20-clip set of 1.5 s clips is built for the module; tests that need another build use 10 clips.
Every build spawns worker processes: those tests are marked slow.
"""
from __future__ import annotations

import csv
import re
import time
from pathlib import Path

import numpy as np
import pytest

from harness.data import demo as demo_module
from harness.data.demo import dataset as demo_dataset
from harness.data.demo import make_demo_dataset

CLIPS, SECONDS = 20, 1.5


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", clips=CLIPS, seconds=SECONDS)


def read_csv(path: Path, header: list[str]) -> list[list[str]]:
    rows = list(csv.reader(path.read_text().splitlines()))
    assert rows[0] == header, path
    return rows[1:]


def labels(root: Path, name: str) -> dict[str, int]:
    rows = read_csv(root / name, ["video_name", "target"])
    assert all(target in ("0", "1") for _, target in rows)
    return {video: int(target) for video, target in rows}


def clip_files(root: Path, split: str) -> set[str]:
    return {p.name for p in (root / f"{split}set").iterdir()}


def decoded_audio(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])


@pytest.mark.slow
def test_layout_and_label_files(demo: Path) -> None:
    train, val = labels(demo, "train_label.txt"), labels(demo, "val_label.txt")
    test = labels(demo, ".answers/test_label.txt")
    assert (len(train), len(val), len(test)) == (12, 4, 4)  # 60/20/20
    for split, table in (("train", train), ("val", val), ("test", test)):
        assert clip_files(demo, split) == set(table), f"{split}set/ and its labels disagree"
        assert sum(table.values()) == len(table) // 2  # half fakes: both classes in every split
    names = [*train, *val, *test]
    assert len(set(names)) == CLIPS
    assert all(re.fullmatch(r"[0-9a-f]{32}\.mp4", n) for n in names)  # like the challenge's names
    template = read_csv(demo / "test_template.csv", ["video_name", "score"])
    assert {n for n, _ in template} == set(test) and len(template) == len(test)
    assert {score for _, score in template} == {"0.5"}


@pytest.mark.slow
def test_label_order_is_shuffled(demo: Path) -> None:
    """Neither sorted by name nor grouped by label, so nothing can lean on the order."""
    names = list(labels(demo, "train_label.txt"))
    targets = list(labels(demo, "train_label.txt").values())
    assert names != sorted(names)
    assert targets != sorted(targets) and targets != sorted(targets, reverse=True)


@pytest.mark.slow
def test_the_harness_reads_it_without_complaint(demo: Path) -> None:
    from harness.data.labels import load_dataset

    ds = load_dataset(demo)
    assert ds.track == "video" and not ds.warnings
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [12, 4, 4]
    assert ds.template == [n for n, _ in read_csv(demo / "test_template.csv", ["video_name", "score"])]


@pytest.mark.slow
def test_every_clip_decodes_with_audio_and_video(demo: Path) -> None:
    import av

    clips = sorted(demo.glob("*set/*.mp4"))
    assert len(clips) == CLIPS
    for path in clips:
        with av.open(str(path)) as container:
            assert len(container.streams.audio) == 1 and len(container.streams.video) == 1, path
            audio = container.streams.audio[0]
            assert (audio.codec_context.sample_rate, audio.codec_context.channels) == (demo_module.SAMPLE_RATE, 1)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == round(SECONDS * demo_module.FPS) and frames[0].shape == (96, 96, 3), path
        samples = decoded_audio(path)
        assert abs(len(samples) / demo_module.SAMPLE_RATE - SECONDS) <= 0.2, path
        assert np.abs(samples).max() > 0.01, f"{path} is silent"
        assert path.stat().st_size < 40_000, f"{path} is larger than a demo clip needs"


@pytest.mark.slow
def test_same_seed_gives_the_same_data_set(demo: Path, tmp_path: Path) -> None:
    again = make_demo_dataset(tmp_path / "again", clips=CLIPS, seconds=SECONDS)
    for name in ("train_label.txt", "val_label.txt", "test_template.csv", ".answers/test_label.txt"):
        assert (again / name).read_bytes() == (demo / name).read_bytes(), name
    for path in sorted(demo.glob("*set/*.mp4")):
        twin = again / path.relative_to(demo)
        assert np.array_equal(decoded_audio(twin), decoded_audio(path)), path.name
        assert twin.read_bytes() == path.read_bytes(), f"{path.name} is not byte-identical"


@pytest.mark.slow
def test_another_seed_gives_other_names(demo: Path, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()  # an empty folder is fine to build into
    other = make_demo_dataset(tmp_path / "other", clips=10, seconds=1.0, seed=1)
    assert not {p.name for p in other.glob("*set/*.mp4")} & {p.name for p in demo.glob("*set/*.mp4")}


@pytest.mark.slow
def test_rerun_on_a_complete_set_returns_without_rewriting(demo: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in demo.rglob("*")}
    start = time.perf_counter()
    assert make_demo_dataset(demo, clips=CLIPS, seconds=SECONDS) == demo
    assert time.perf_counter() - start < 0.5
    assert {p: p.stat().st_mtime_ns for p in demo.rglob("*")} == before


@pytest.mark.slow
@pytest.mark.parametrize("changed", [{"clips": CLIPS + 2}, {"seed": 3}, {"seconds": 2.0}])
def test_other_parameters_on_an_existing_set_are_refused(demo: Path, changed: dict) -> None:
    params = {"clips": CLIPS, "seconds": SECONDS} | changed
    with pytest.raises(ValueError, match="pick another folder or delete it"):
        make_demo_dataset(demo, **params)


def test_a_foreign_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a data set")
    with pytest.raises(ValueError, match="is not a demo data set"):
        make_demo_dataset(tmp_path / "mine", clips=10)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "not a data set"


@pytest.mark.slow
def test_an_interrupted_build_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_dataset, "_write_labels", fail)  # after the clips, before the marker
    with pytest.raises(KeyboardInterrupt):
        make_demo_dataset(tmp_path / "demo", clips=10, seconds=1.0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [{"clips": 9}, {"seconds": 0.5}])
def test_too_small_a_request_is_refused(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path / "demo", **bad)
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_a_killed_builds_staging_folder_is_removed_by_the_next_build(tmp_path: Path) -> None:
    stale = tmp_path / ".demo.tmp-999999999"  # a pid no process has: its build was killed
    (stale / "trainset").mkdir(parents=True)
    (stale / "trainset" / "half.mp4").write_bytes(b"half a clip")
    mine = tmp_path / ".demo.tmp-1"  # pid 1 is alive: another build still at work, left alone
    mine.mkdir()
    make_demo_dataset(tmp_path / "demo", clips=10, seconds=1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".demo.tmp-1", "demo"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_stopped_build_leaves_no_process_running(tmp_path: Path, sig: str) -> None:
    """SIGTERM: exit 130, workers stopped, nothing on disk. SIGKILL: the workers end by themselves (the
    staging folder stays, for the next build to remove)."""
    import os
    import signal
    import subprocess

    from tests.test_cache_processes import ENV, HARNESS, children, running, wait_for

    out = tmp_path / "demo"
    proc = subprocess.Popen([*HARNESS, "demo-data", "--out", str(out), "--clips", "400"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: any(tmp_path.glob(".demo.tmp-*/trainset/*.mp4")), 60, "the first clip")
        started = children(proc.pid)
        assert len(started) >= 2, started
        os.kill(proc.pid, getattr(signal, sig))
        code = proc.wait(timeout=60)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: not any(running(pid) for pid in started), 5, f"demo workers {started} to end")
    if sig == "SIGTERM":
        assert code == 130 and "Traceback" not in stderr
        assert list(tmp_path.iterdir()) == []  # neither the set nor its staging folder
    else:
        assert code == -signal.SIGKILL and not out.exists()
