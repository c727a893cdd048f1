"""The feature cache: parallel build, failures reported not raised, resumable, keyed by settings."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from harness.config import AudioFeatures, replace
from harness.data.cache import CHUNK, load_split, plan_tasks, prepare_features
from harness.data.labels import load_dataset
from tests.conftest import write_clip, write_labels, write_truncated_clip


def _with_bad_clips(root: Path) -> Path:
    """Add one clip of each bad kind to the train split, and make a test clip unreadable."""
    train = root / "trainset"
    write_clip(train / "noaudio.mp4", audio=False)
    write_clip(train / "silent.mp4", amplitude=0.0)
    write_clip(train / "short.mp4", seconds=0.2)
    write_truncated_clip(train / "cut.mp4")
    (train / "junk.mp4").write_bytes(os.urandom(5000))
    (train / "empty.mp4").write_bytes(b"")
    rows = [(f"train{i}.mp4", i % 2) for i in range(4)]
    rows += [(n, 1) for n in ("noaudio.mp4", "silent.mp4", "short.mp4", "cut.mp4", "junk.mp4", "empty.mp4")]
    write_labels(root / "train_label.txt", rows)
    (root / "testset" / "test1.mp4").write_bytes(b"not a video")
    return root


@pytest.mark.slow  # spawns a worker pool
def test_build_report_and_pack(small_dataset: Path, tmp_path: Path) -> None:
    ds = load_dataset(_with_bad_clips(small_dataset))
    cfg = AudioFeatures(width=64)
    progress: list[tuple[int, int]] = []
    report = prepare_features(ds, cfg, cache_root=tmp_path / "cache", workers=2, on_progress=lambda *p: progress.append(p))
    # The progress bar's feed: from 0 to every clip, never backwards, against one total.
    assert progress[0] == (0, 14) and progress[-1] == (14, 14) and {t for _, t in progress} == {14}
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)

    reasons = {f.name: f.reason for f in report.failures}
    assert reasons == {
        "noaudio.mp4": "no audio stream",
        "silent.mp4": "silent",
        "short.mp4": "too short",
        "cut.mp4": "truncated",
        "junk.mp4": "undecodable",
        "empty.mp4": "empty file",
        "test1.mp4": "undecodable",
    }
    assert report.total == 14 and report.done == 7 and report.reused == 0  # done + reused + failed = total

    images, index = load_split(report.cache, "train")
    assert images.shape == (10, 128, 64) and images.dtype == np.uint8
    assert [r["name"] for r in index] == [s.name for s in ds.split("train")]  # label-file order
    ok = np.array([r["ok"] == "1" for r in index])
    assert ok.sum() == 4 and images[ok].max() > 0 and images[~ok].max() == 0
    # A test clip without features keeps its row, so that submission can still score it.
    _, test_index = load_split(report.cache, "test")
    assert [(r["name"], r["ok"], r["reason"]) for r in test_index] == [("test1.mp4", "0", "undecodable"), ("test0.mp4", "1", "")]
    failures = (report.cache / "failures.csv").read_text()
    assert "train,cut.mp4,truncated,decoded" in failures


@pytest.mark.slow  # spawns a worker pool
def test_second_run_reuses_and_edited_clip_is_recomputed(small_dataset: Path, tmp_path: Path) -> None:
    cfg = AudioFeatures(width=64)
    first = prepare_features(load_dataset(small_dataset), cfg, cache_root=tmp_path / "c", workers=1)
    packed = (first.cache / "train.npy").stat().st_mtime_ns
    second = prepare_features(load_dataset(small_dataset), cfg, cache_root=tmp_path / "c", workers=1)
    assert (second.done, second.reused) == (0, 8)
    assert (second.cache / "train.npy").stat().st_mtime_ns == packed  # nothing changed: pack kept

    old = np.load(first.cache / "train.npy")[0]
    write_clip(small_dataset / "trainset" / "train0.mp4", seconds=1.5, freq=2000)
    third = prepare_features(load_dataset(small_dataset), cfg, cache_root=tmp_path / "c", workers=1)
    assert (third.done, third.reused) == (1, 7)
    images, _ = load_split(third.cache, "train")
    assert not np.array_equal(images[0], old)

    # The pack made from the arrays the workers sent back equals one rebuilt from the shards alone.
    made_in_run = np.load(third.cache / "train.npy")
    (third.cache / "train.npy").unlink()
    rebuilt = prepare_features(load_dataset(small_dataset), cfg, cache_root=tmp_path / "c", workers=1)
    assert rebuilt.done == 0 and np.array_equal(np.load(rebuilt.cache / "train.npy"), made_in_run)


@pytest.mark.slow  # spawns a worker pool
def test_interrupted_run_leaves_no_entry(small_dataset: Path, tmp_path: Path) -> None:
    """A run killed mid-write leaves only a temporary file; the next run removes it and finishes."""
    cfg = AudioFeatures(width=64)
    first = prepare_features(load_dataset(small_dataset), cfg, cache_root=tmp_path / "c", workers=1)
    shards = sorted((first.cache / "shards" / "val").glob("*.npz"))
    assert len(shards) == 1  # the two val clips: one chunk, one file
    partial = shards[0].with_name(shards[0].name + ".tmp-999999999")  # a pid no process has
    partial.write_bytes(shards[0].read_bytes()[:100])  # what a killed writer leaves behind
    shards[0].unlink()  # ... and the shard it never renamed into place
    (first.cache / "val.npy").unlink()
    again = prepare_features(load_dataset(small_dataset), cfg, cache_root=tmp_path / "c", workers=1)
    assert again.done == 2 and again.reused == 6 and not partial.exists()
    images, index = load_split(again.cache, "val")
    assert images.shape == (2, 128, 64) and [r["ok"] for r in index] == ["1", "1"]


@pytest.mark.slow  # spawns a worker pool
def test_settings_key_the_cache(small_dataset: Path, tmp_path: Path) -> None:
    ds = load_dataset(small_dataset)
    a = prepare_features(ds, AudioFeatures(width=64), cache_root=tmp_path / "c", workers=1)
    b = prepare_features(ds, replace(AudioFeatures(width=64), n_mels=64), cache_root=tmp_path / "c", workers=1)
    c = prepare_features(ds, AudioFeatures(width=64), cache_root=tmp_path / "c", workers=1)
    assert a.cache != b.cache and a.cache == c.cache
    assert b.done == 8 and c.reused == 8
    assert load_split(b.cache, "val")[0].shape == (2, 64, 64)


def test_tasks_hold_one_split_each_and_shrink_at_the_end() -> None:
    todo = [("train", (f"t{i}.mp4", f"t{i}")) for i in range(45)] + [("val", (f"v{i}.mp4", f"v{i}")) for i in range(5)]
    jobs = plan_tasks(todo, workers=2)
    assert [job for _, chunk in jobs for job in chunk] == [job for _, job in todo]  # every clip once, in order
    split_of = {job: folder for folder, job in todo}
    assert all(split_of[job] == folder for folder, chunk in jobs for job in chunk)  # each task: one split's folder
    sizes = [len(chunk) for _, chunk in jobs]
    assert max(sizes) == CHUNK and sizes[-1] == 1  # whole chunks first, single clips last
