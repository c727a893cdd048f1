"""The synthetic demo data set: layout, decodability, determinism, and the atomic, idempotent build.

One 20-clip set of 1.5 s clips is built for the module; tests that need another build use 10 clips.
Every build spawns worker processes: those tests are marked slow.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from harness.data import demo as demo_module
from harness.data.demo import dataset as demo_dataset
from harness.data.demo import make_demo_dataset
from harness.errors import BadInput

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
    assert make_demo_dataset(demo, clips=CLIPS, seconds=SECONDS) == demo
    assert {p: p.stat().st_mtime_ns for p in demo.rglob("*")} == before


@pytest.mark.slow
@pytest.mark.parametrize("changed", [{"clips": CLIPS + 2}, {"seed": 3}, {"seconds": 2.0}])
def test_other_parameters_on_an_existing_set_are_refused(demo: Path, changed: dict) -> None:
    params = {"clips": CLIPS, "seconds": SECONDS} | changed
    with pytest.raises(BadInput, match="pick another folder or delete it"):
        make_demo_dataset(demo, **params, replace_older=True)  # another demo of this version: never replaced


@pytest.mark.parametrize("marker", [None, "not json", '["a list"]'])
def test_a_foreign_folder_is_refused_and_kept(tmp_path: Path, marker: str | None) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a data set")
    if marker is not None:
        (tmp_path / "mine" / demo_module.MARKER).write_text(marker)
    with pytest.raises(BadInput, match="is not a demo data set"):
        make_demo_dataset(tmp_path / "mine", clips=10, replace_older=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "not a data set"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


@pytest.mark.slow
def test_a_demo_of_an_older_generator_is_built_again_when_asked(tmp_path: Path) -> None:
    """Its own marker says it is a demo set made by another version: replaced (only) with replace_older."""
    out = tmp_path / "demo"
    (out / "trainset").mkdir(parents=True)
    (out / "trainset" / "old.mp4").write_bytes(b"an old clip")
    old = {"format": demo_module.FORMAT - 1, "clips": 10, "seed": 0, "seconds": 1.0}
    (out / demo_module.MARKER).write_text(json.dumps(old))
    with pytest.raises(BadInput, match="holds a demo data set made with"):
        make_demo_dataset(out, clips=10, seconds=1.0)
    assert (out / "trainset" / "old.mp4").exists()
    heard: list[str] = []
    assert make_demo_dataset(out, clips=10, seconds=1.0, replace_older=True, on_build=heard.append) == out
    assert heard == ["made by another version of the generator"]
    assert not (out / "trainset" / "old.mp4").exists() and len(list(out.glob("*set/*.mp4"))) == 10
    assert json.loads((out / demo_module.MARKER).read_text())["format"] == demo_module.FORMAT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no staging or old folder left


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
    with pytest.raises(BadInput):
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

    from tests.conftest import wait_until
    from tests.test_cache_processes import ENV, HARNESS, children, running

    out = tmp_path / "demo"
    proc = subprocess.Popen([*HARNESS, "demo-data", "--out", str(out), "--clips", "400"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_until(lambda: any(tmp_path.glob(".demo.tmp-*/trainset/*.mp4")), 60, what="the first clip")
        started = children(proc.pid)
        assert len(started) >= 2, started
        os.kill(proc.pid, getattr(signal, sig))
        code = proc.wait(timeout=60)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_until(lambda: not any(running(pid) for pid in started), 5, what=f"demo workers {started} to end")
    if sig == "SIGTERM":
        assert code == 130 and "Traceback" not in stderr
        assert list(tmp_path.iterdir()) == []  # neither the set nor its staging folder
    else:
        assert code == -signal.SIGKILL and not out.exists()


@pytest.mark.slow
def test_methods_are_named_and_one_is_in_test_only(demo: Path) -> None:
    from harness.data.labels import load_dataset

    ds = load_dataset(demo)  # reads methods.csv: train and val only, the test's stay in .answers/
    train_val = {s.name for split in ("train", "val") for s in ds.split(split)}
    assert set(ds.methods) == train_val and not ds.warnings
    test = {row[0]: row[1:] for row in read_csv(demo / ".answers/methods.csv", ["video_name", "method", "modality"])}
    assert set(test) == set(labels(demo, ".answers/test_label.txt"))
    seen = {m.name for m in ds.methods.values()}
    assert demo_dataset.UNSEEN in {m for m, _ in test.values()} - seen  # a small set may miss a seen method too
    plan = demo_dataset._plan(240, 0, 3.0)  # the default set: every other method in train and val
    assert {c.method for c in plan if c.split == "test"} - {c.method for c in plan if c.split != "test"} == {demo_dataset.UNSEEN}
    artefacts = {r[0]: (float(r[3]), float(r[4]), r[5]) for r in read_csv(
        demo / ".answers/clips.csv", ["video_name", "split", "target", "audio_artefact", "video_artefact", "method"])}
    modality = {n: m.modality for n, m in ds.methods.items()} | {n: mod for n, (_, mod) in test.items()}
    for name, (audio, video, method) in artefacts.items():  # each fake's method fakes what its artefacts say
        assert modality[name] == {(True, False): "audio", (False, True): "video", (True, True): "both",
                                  (False, False): ""}[(audio > 0, video > 0)], name
        assert (method == "real") == (audio == video == 0)
