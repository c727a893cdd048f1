"""The reader for splits streamed from disk: read-ahead of a memmap's rows, and the prefetching thread."""
from __future__ import annotations

import ctypes
import mmap
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from harness.data.dataset import SplitArrays, batches, prefetched
from tests.conftest import wait_until


def _split(tmp_path: Path, n: int = 64, shape: tuple[int, int] = (64, 128)) -> tuple[SplitArrays, Path]:
    path = tmp_path / "train.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8))
    return SplitArrays(inputs={"audio": np.load(path, mmap_mode="r")}, labels=np.arange(n) % 2,
                       names=[f"c{i}" for i in range(n)]), path


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _resident_rows(array: np.memmap, rows: list[int]) -> list[bool]:
    """Whether every page of each row is in the page cache (mincore on the array's own mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    out = []
    for row in rows:
        start = array.ctypes.data + row * array.strides[0]
        first = start - start % page
        pages = -(-(start + array.strides[0] - first) // page)
        vec = (ctypes.c_ubyte * pages)()
        if libc.mincore(ctypes.c_void_p(first), ctypes.c_size_t(pages * page), vec) != 0:
            pytest.skip(f"mincore failed: errno {ctypes.get_errno()}")
        out.append(all(v & 1 for v in vec))
    return out


def test_rows_asked_for_are_read_ahead(tmp_path: Path) -> None:
    split, path = _split(tmp_path)
    array = split.inputs["audio"]
    wanted, others = [3, 17, 40], [5, 30, 50]
    _evict(path)
    if any(_resident_rows(array, wanted + others)):
        pytest.skip("this file system keeps pages cached despite DONTNEED")
    split.will_need(np.array(wanted))
    wait_until(lambda: all(_resident_rows(array, wanted)), 5, interval=0.05, what=f"rows {wanted} to be in the page cache")
    assert not any(_resident_rows(array, others))  # only what was asked for


def test_read_ahead_skips_what_is_not_a_whole_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split, _ = _split(tmp_path)
    view = SplitArrays(inputs={"audio": split.inputs["audio"][8:]}, labels=split.labels[8:], names=split.names[8:])
    in_memory = SplitArrays(inputs={"audio": np.array(split.inputs["audio"])}, labels=split.labels, names=split.names)
    asked: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice: asked.append((offset, length)))
    for data in (view, in_memory):
        data.will_need(np.arange(10))  # nothing to ask of the kernel, and no error
    assert asked == []
    split.will_need(np.array([2, 1]))  # the whole file's memmap: one request a row, in file order
    row = split.inputs["audio"].strides[0]
    assert asked == [(split.inputs["audio"].offset + i * row, row) for i in (1, 2)]


def test_read_ahead_and_prefetching_change_no_batch(tmp_path: Path) -> None:
    split, _ = _split(tmp_path, n=50)
    plain = list(batches(split, 8, shuffle=True, generator=np.random.default_rng(4)))
    streamed = list(prefetched(batches(split, 8, shuffle=True, generator=np.random.default_rng(4), readahead=3)))
    assert len(plain) == len(streamed) == 7
    for (a, ya), (b, yb) in zip(plain, streamed):
        assert np.array_equal(a["audio"].numpy(), b["audio"].numpy()) and np.array_equal(ya.numpy(), yb.numpy())


def test_prefetching_raises_the_readers_error_and_stops_when_left() -> None:
    def failing():
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetched(failing()):
            got.append(item)
    assert got == [1]

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    stream = prefetched(endless(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # the consumer stops early (early stopping, Ctrl-C)
    assert not any(t.name == "harness-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 3 + 2 + 1  # read ahead by the queue's depth, not on and on
