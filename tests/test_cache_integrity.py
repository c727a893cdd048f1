"""The cache verifies what it reads (issue 16, items 3 and 6): damaged shards and packs are recomputed
and named; a reader outside prepare gets one line naming the file; a full disk names the path and
leaves no temporary.

Fast: features are computed in this process (a thread pool lent to prepare_features), on the 8 small
generated clips of `small_dataset`, made and prepared once for the module and copied for each test.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from harness.config import AudioFeatures, VideoFeatures
from harness.data.cache import PrepareReport, feature_dir, load_split, prepare_features
from harness.data.dataset import load_arrays
from harness.data.integrity import MANIFEST, CacheDamaged, Manifest
from harness.data.labels import load_dataset
from harness.errors import io_message
from tests.conftest import write_clip, write_labels

CFG = AudioFeatures(width=64)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as threads:
        yield threads


def prepare(data: Path, cache: Path, pool: ThreadPoolExecutor, cfg=CFG) -> PrepareReport:  # noqa: ANN001
    return prepare_features(load_dataset(data), cfg, cache_root=cache, workers=2, pool=pool)


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """conftest's `small_dataset` (4 train, 2 val, 2 test clips) and its audio cache entry, made once."""
    root = tmp_path_factory.mktemp("pristine") / "ds"
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for i in range(n):
            write_clip(root / f"{split}set" / f"{split}{i}.mp4", seconds=1.0, freq=300 + 100 * i)
    write_labels(root / "train_label.txt", [(f"train{i}.mp4", i % 2) for i in range(4)])
    write_labels(root / "val_label.txt", [(f"val{i}.mp4", i % 2) for i in range(2)])
    (root / "test_template.csv").write_text("video_name,score\ntest1.mp4,0\ntest0.mp4,0\n")
    with ThreadPoolExecutor(2) as threads:
        report = prepare(root, root.parent / "c", threads)
    assert report.done == 8 and not report.repairs and (report.cache / MANIFEST).is_file()
    return root, report.cache


@pytest.fixture
def small_dataset(pristine: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the pristine dataset (same mtimes, so the same clip ids): conftest's, without its cost."""
    return Path(shutil.copytree(pristine[0], tmp_path / "ds"))


@pytest.fixture
def prepared(pristine: tuple[Path, Path], small_dataset: Path, tmp_path: Path) -> PrepareReport:
    """The pristine cache entry, copied to where the copied dataset's entry belongs."""
    entry = feature_dir(load_dataset(small_dataset), CFG, tmp_path / "c")
    shutil.copytree(pristine[1], entry)
    return PrepareReport(cache=entry, total=8, done=8)


def train_shard(report: PrepareReport) -> tuple[Path, list[str]]:
    """The first train shard and the ids of the clips it holds (from the manifest)."""
    shard = sorted((report.cache / "shards" / "train").glob("*.npz"))[0]
    return shard, Manifest.load(report.cache).shards[f"train/{shard.name}"]["ids"]


@pytest.mark.parametrize("damage", ["truncated", "zero bytes", "flipped byte"])
def test_a_damaged_shard_is_recomputed_and_named(prepared: PrepareReport, small_dataset: Path, pool: ThreadPoolExecutor,
                                                 damage: str) -> None:
    cache = prepared.cache
    packed = np.load(cache / "train.npy")
    shard, ids = train_shard(prepared)
    data = shard.read_bytes()
    if damage == "truncated":  # what a crash after an un-synced rename leaves, or a full disk
        shard.write_bytes(data[: len(data) // 2])
        problem = f"{len(data) // 2} bytes, {len(data)} written"
    elif damage == "zero bytes":
        shard.write_bytes(b"")
        problem = f"0 bytes, {len(data)} written"
    else:
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(flipped))
        problem = "content differs from what was written (CRC-32)"
    (cache / "train.npy").unlink()  # the pack is remade from the shards: the recomputed ones must be right

    again = prepare(small_dataset, cache.parent.parent, pool)
    assert again.done == len(ids) and again.reused == 8 - len(ids) and not again.failures
    clips = f"{len(ids)} clip" + ("s" if len(ids) != 1 else "")
    assert again.repairs[0] == f"recomputed {clips}: shard shards/train/{shard.name} damaged ({problem})"
    assert again.repairs[1:] == ["repacked train: train.npy missing"]
    assert np.array_equal(np.load(cache / "train.npy"), packed)
    third = prepare(small_dataset, cache.parent.parent, pool)
    assert (third.done, third.reused, third.repairs) == (0, 8, [])


@pytest.mark.parametrize(("damage", "error"), [("truncated", "BadZipFile"), ("zero bytes", "EOFError")])
def test_a_damaged_shard_without_a_record_is_found_by_parsing_it(prepared: PrepareReport, small_dataset: Path,
                                                                 pool: ThreadPoolExecutor, damage: str, error: str) -> None:
    """A shard whose writer never saved the manifest (killed first) is checked by reading it in full."""
    cache = prepared.cache
    (cache / MANIFEST).unlink()
    shard = sorted((cache / "shards" / "train").glob("*.npz"))[0]
    with np.load(shard) as z:
        held = len(json.loads(z["meta"].tobytes()))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    again = prepare(small_dataset, cache.parent.parent, pool)
    assert again.done == held and again.reused == 8 - held
    [note] = again.repairs
    assert note.startswith(f"recomputed its clips: shard shards/train/{shard.name} damaged (unreadable ({error}")
    assert set(Manifest.load(cache).shards) == {f"{s}/{p.name}" for s in ("train", "val", "test")
                                                for p in (cache / "shards" / s).glob("*.npz")}  # all recorded again


def test_a_half_size_pack_is_an_error_for_readers_and_repacked_by_prepare(prepared: PrepareReport, small_dataset: Path,
                                                                          pool: ThreadPoolExecutor) -> None:
    cache = prepared.cache
    array = cache / "train.npy"
    intact = array.read_bytes()
    array.write_bytes(intact[: len(intact) // 2])

    for read in (lambda: load_split(cache, "train"), lambda: load_arrays(cache, "train")):  # train's path
        with pytest.raises(CacheDamaged) as info:
            read()
        message = str(info.value)
        assert message.startswith(f"{array}: {len(intact) // 2} bytes, {len(intact)} written")
        assert "run `harness prepare` again" in message and "\n" not in message
        assert info.value.exit_code == 1

    again = prepare(small_dataset, cache.parent.parent, pool)
    assert (again.done, again.reused) == (0, 8)  # nothing recomputed: the shards are intact
    assert again.repairs == [f"repacked train: train.npy {len(intact) // 2} bytes, {len(intact)} expected for 4 samples"]
    assert array.read_bytes() == intact
    images, index = load_split(cache, "train")
    assert images.shape == (4, 128, 64) and len(index) == 4


def test_a_pack_with_flipped_bytes_is_repacked(prepared: PrepareReport, small_dataset: Path, pool: ThreadPoolExecutor) -> None:
    array = prepared.cache / "val.npy"
    intact = array.read_bytes()
    flipped = bytearray(intact)
    flipped[-10] ^= 0x01
    array.write_bytes(bytes(flipped))
    again = prepare(small_dataset, prepared.cache.parent.parent, pool)
    assert again.repairs == ["repacked val: val.npy content differs from what was written (CRC-32)"]
    assert array.read_bytes() == intact


def test_a_damaged_index_is_repacked(prepared: PrepareReport, small_dataset: Path, pool: ThreadPoolExecutor) -> None:
    index = prepared.cache / "test.csv"
    intact = index.read_bytes()
    index.write_bytes(intact[:20])
    with pytest.raises(CacheDamaged, match=r"test\.csv: 20 bytes"):
        load_split(prepared.cache, "test")
    again = prepare(small_dataset, prepared.cache.parent.parent, pool)
    assert again.repairs == [f"repacked test: test.csv 20 bytes, {len(intact)} written"]
    assert index.read_bytes() == intact


def test_a_cache_made_before_manifests_is_adopted_without_work(prepared: PrepareReport, small_dataset: Path,
                                                               pool: ThreadPoolExecutor) -> None:
    cache = prepared.cache
    recorded = Manifest.load(cache)
    (cache / MANIFEST).unlink()
    packed = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
    again = prepare(small_dataset, cache.parent.parent, pool)
    assert (again.done, again.reused, again.repairs) == (0, 8, [])
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")} == packed  # not repacked
    assert Manifest.load(cache).shards == recorded.shards and Manifest.load(cache).packs == recorded.packs


def test_face_crops_are_verified_too(small_dataset: Path, tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    cfg = VideoFeatures(frames=2, size=32)
    first = prepare(small_dataset, tmp_path / "c", pool, cfg)
    shard = sorted((first.cache / "shards" / "val").glob("*.npz"))[0]
    shard.write_bytes(shard.read_bytes()[:1000])
    again = prepare(small_dataset, tmp_path / "c", pool, cfg)
    assert again.done >= 1 and again.done + again.reused == 8
    assert len(again.repairs) == 1 and f"shard shards/val/{shard.name} damaged (1000 bytes" in again.repairs[0]
    assert load_split(again.cache, "val")[0].shape == (2, 2, 32, 32, 3)


# ---- a full disk (issue 16, item 6, prepare) ----------------------------------------------------------

@pytest.mark.parametrize("victim", ["settings.json", ".npz", "train.npy", "train.csv", "manifest.json", "failures.csv"])
def test_a_full_disk_names_the_path_and_leaves_no_temporary(small_dataset: Path, tmp_path: Path, pool: ThreadPoolExecutor,
                                                            monkeypatch: pytest.MonkeyPatch, victim: str) -> None:
    """The kernel reports ENOSPC from write() or fsync() without a file name; the error must carry one."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if ".tmp-" in target and target.split(".tmp-")[0].endswith(victim):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as info:
        prepare(small_dataset, tmp_path / "c", pool)
    assert info.value.errno == errno.ENOSPC and info.value.filename.endswith(victim)
    assert io_message(info.value) == f"no space left on device: {info.value.filename}"
    assert temporaries(tmp_path / "c") == []

    monkeypatch.setattr(os, "fsync", real_fsync)  # space again: the next run completes
    again = prepare(small_dataset, tmp_path / "c", pool)
    assert again.done + again.reused == 8 and not again.repairs and temporaries(tmp_path / "c") == []


def test_a_full_disk_through_the_command_is_one_line_exit_1(small_dataset: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(f"settings.json.tmp-{os.getpid()}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--data", str(small_dataset), "--cache", str(tmp_path / "c")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith("error: no space left on device: ") and line.endswith("settings.json") and "Traceback" not in err
    assert temporaries(tmp_path / "c") == []


def test_the_quick_check_trusts_an_unmoved_mtime_and_verify_reads_everything(prepared: PrepareReport, small_dataset: Path,
                                                                            pool: ThreadPoolExecutor) -> None:
    """Bytes changed in place under the recorded mtime (failing media) pass the quick check (a stat a
    file); `verify=True` computes every CRC-32 and finds them."""
    array = prepared.cache / "val.npy"
    before = array.stat()
    intact = array.read_bytes()
    flipped = bytearray(intact)
    flipped[-10] ^= 0x01
    array.write_bytes(bytes(flipped))
    os.utime(array, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert prepare(small_dataset, prepared.cache.parent.parent, pool).repairs == []
    full = prepare_features(load_dataset(small_dataset), CFG, cache_root=prepared.cache.parent.parent, pool=pool, verify=True)
    assert full.repairs == ["repacked val: val.npy content differs from what was written (CRC-32)"]
    assert array.read_bytes() == intact


def test_a_copied_cache_is_checked_once_by_content_and_kept(prepared: PrepareReport, small_dataset: Path,
                                                            pool: ThreadPoolExecutor) -> None:
    """New mtimes (a copy without -p) send every file through its CRC-32; intact, they are kept and
    known by their new mtimes."""
    files = [p for p in prepared.cache.rglob("*") if p.suffix in (".npz", ".npy", ".csv")]
    for path in files:
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    moved = {p: p.stat().st_mtime_ns for p in files}
    again = prepare(small_dataset, prepared.cache.parent.parent, pool)
    assert (again.done, again.reused, again.repairs) == (0, 8, [])
    assert {p: p.stat().st_mtime_ns for p in files} == moved  # nothing rewritten
    manifest = Manifest.load(prepared.cache)
    assert {manifest.shards[f"{p.parent.name}/{p.name}"]["mtime_ns"] for p in files if p.suffix == ".npz"} == \
        {moved[p] for p in files if p.suffix == ".npz"}


def test_a_grown_split_is_repacked_and_read_back_in_the_same_run(small_dataset: Path, tmp_path: Path,
                                                                 pool: ThreadPoolExecutor) -> None:
    """Face features read their packs back for the frame counts: after the manifest describes them."""
    cfg = VideoFeatures(frames=2, size=32)
    first = prepare(small_dataset, tmp_path / "c", pool, cfg)
    (small_dataset / "valset" / "val2.mp4").write_bytes((small_dataset / "trainset" / "train0.mp4").read_bytes())
    write_labels(small_dataset / "val_label.txt", [("val0.mp4", 0), ("val1.mp4", 1), ("val2.mp4", 1)])
    again = prepare(small_dataset, tmp_path / "c", pool, cfg)
    assert (again.done, again.reused, again.repairs) == (1, 8, [])
    assert again.frames == first.frames + cfg.frames
    assert load_split(again.cache, "val")[0].shape == (3, 2, 32, 32, 3)
