"""Cached features -> shuffled batches of tensors, nanoGPT-style: no DataLoader, no per-sample Python.

A split's packed uint8 arrays are memmaps of the cache; each batch reads its rows with numpy fancy
indexing (from the page cache after the first epoch). Batches stay uint8 until they reach the
device: a quarter of the bytes to copy, and normalisation runs where the model runs.
"""
from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from harness.data.cache import load_split

_Item = TypeVar("_Item")


@dataclass
class SplitArrays:
    """A split's cached inputs. `inputs` maps an input name to its uint8 array: "audio" (N, H, W)
    log-mels, "video" (N, frames, size, size, 3) face crops; usually the cache's read-only memmaps,
    so a split of face crops (300 KB a clip) is never copied whole into memory. `rows` gives each
    sample's row in those arrays when the split uses only some (None: sample i is row i). `present`
    marks, per input, the samples whose features exist (fusion keeps a clip when either input does);
    an input absent from `present` is present for every sample."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray  # (N,) int64; -1 where unlabelled (test)
    names: list[str]
    present: dict[str, np.ndarray] = field(default_factory=dict)
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        """Bytes of the samples' inputs (not of whole memmaps)."""
        return sum(len(self) * a[0:1].nbytes for a in self.inputs.values())

    def arrays(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Samples `idx` of each input (and `<input>_present` masks), read into memory."""
        rows = idx if self.rows is None else self.rows[idx]
        out = {name: np.ascontiguousarray(array[rows]) for name, array in self.inputs.items()}
        out.update({f"{name}_present": mask[idx] for name, mask in self.present.items()})
        return out

    def take(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Batch `idx` as uint8 tensors, plus `<input>_present` bool masks where some are missing."""
        return {name: torch.from_numpy(array) for name, array in self.arrays(idx).items()}

    def will_need(self, idx: np.ndarray) -> None:
        """Ask the kernel to start reading samples `idx` from disk now (posix_fadvise WILLNEED, one
        call per row; it returns before the reads finish). A batch read row by row waits for each
        row in turn (about 6 ms a cold 32 KB row on this machine's disk); rows asked for a few
        batches ahead arrive together, in parallel. Arrays in memory are skipped."""
        rows = np.sort(idx if self.rows is None else self.rows[idx])
        for array in self.inputs.values():
            if not _whole_file(array):
                continue
            step = array.strides[0]
            fd = os.open(array.filename, os.O_RDONLY)
            try:
                for row in rows.tolist():
                    os.posix_fadvise(fd, array.offset + row * step, step, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)


def _whole_file(array: np.ndarray) -> bool:
    """A memmap of a whole .npy file (not a view into one), whose rows lie at offset + i * stride."""
    if not isinstance(array, np.memmap) or not array.filename or not array.flags.c_contiguous:
        return False
    try:
        return array.offset + array.nbytes == os.path.getsize(array.filename)
    except OSError:
        return False


def load_arrays(feature_dirs: dict[str, Path] | Path, split: str, *, usable_only: bool = True) -> SplitArrays:
    """A split from the cache, from one feature folder per input (a bare Path: audio alone).

    `usable_only` drops clips without features (training needs real inputs); with several inputs a
    clip is kept when any of them is usable, and `present` says which. Submission keeps every clip
    and scores those without features by the documented fallback instead."""
    if isinstance(feature_dirs, Path):
        feature_dirs = {"audio": feature_dirs}
    arrays, oks, index = {}, {}, None
    for name, folder in feature_dirs.items():
        images, rows = load_split(folder, split)
        if index is not None and [r["name"] for r in rows] != [r["name"] for r in index]:
            raise ValueError(f"{folder}: the {split} index lists other clips than {next(iter(feature_dirs.values()))}")
        index = index or rows
        arrays[name], oks[name] = images, np.array([r["ok"] == "1" for r in rows], dtype=bool)
    assert index is not None, "no feature folder given"
    usable = np.logical_or.reduce(list(oks.values()))
    keep = np.flatnonzero(usable) if usable_only else np.arange(len(index))
    labels = np.array([int(index[i]["label"]) if index[i]["label"] != "" else -1 for i in keep], dtype=np.int64)
    present = {name: ok[keep] for name, ok in oks.items() if len(feature_dirs) > 1 and not ok[keep].all()}
    return SplitArrays(inputs=arrays, labels=labels, names=[index[i]["name"] for i in keep], present=present,
                       rows=None if len(keep) == len(index) else keep)


@dataclass(frozen=True)
class Shard:
    """One process's share of a split under DDP: every `count`-th sample from `index`, as torch's
    DistributedSampler deals them. The default is the whole split (one process)."""

    index: int = 0
    count: int = 1

    def take(self, order: np.ndarray, *, pad: bool) -> np.ndarray:
        """This share of `order`. `pad` (training) repeats the first samples so that every share has
        the same length, hence every rank the same number of steps: DDP's collectives need that.
        Without it (validation) the shares differ by at most one and cover each sample once."""
        if self.count == 1:
            return order
        if pad and len(order) % self.count:
            extra = self.count - len(order) % self.count
            order = np.concatenate([order, np.resize(order, extra)])
        return order[self.index :: self.count]


def batch_indices(n: int, batch_size: int, *, shuffle: bool, generator: np.random.Generator | None = None,
                  shard: Shard = Shard()) -> list[np.ndarray]:
    """Sample indices per batch, of `shard`'s share of the split (shuffled first: a new deal each
    epoch). The last batch may be short, except when shuffling for training, where a batch of one
    would upset batch norm and is dropped."""
    order = generator.permutation(n) if shuffle and generator is not None else np.arange(n)
    order = shard.take(order, pad=shuffle)
    if shuffle and len(order) % batch_size == 1 and len(order) > 1:
        order = order[:-1]
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def batches(
    data: SplitArrays, batch_size: int, *, shuffle: bool, generator: np.random.Generator | None = None,
    shard: Shard = Shard(), readahead: int = 0,
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """(uint8 inputs by name, float labels) per batch of `shard`'s share, from host memory.
    `readahead`: batches whose rows the kernel is asked to read ahead of time (memmaps on disk)."""
    plan = batch_indices(len(data), batch_size, shuffle=shuffle, generator=generator, shard=shard)
    for idx in plan[:readahead]:
        data.will_need(idx)
    for i, idx in enumerate(plan):
        if readahead and i + readahead < len(plan):
            data.will_need(plan[i + readahead])
        yield data.take(idx), torch.from_numpy(data.labels[idx]).float()


def prefetched(source: Iterator[_Item], depth: int = 2) -> Iterator[_Item]:
    """`source`'s items, produced `depth` ahead by a background thread: reading the next batch's rows
    from the memmap (page faults, a copy; numpy releases the GIL) overlaps the model's step, so a
    split streamed from disk keeps up with the model. An exception in `source` is raised here; when
    the consumer stops early (early stopping, Ctrl-C) the thread stops at its next item."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            items.put(_Raised(e))

    thread = threading.Thread(target=produce, name="harness-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                items.get(timeout=0.1)
            except queue.Empty:
                pass


@dataclass
class _Raised:
    error: BaseException


class DeviceResident:
    """A split uploaded to the accelerator once, batched there: no host work or copy per step.

    Used when the uint8 split is small next to the device's free memory (it usually is: 32 KiB a clip).
    """

    def __init__(self, data: SplitArrays, device: torch.device) -> None:
        everything = data.arrays(np.arange(len(data)))
        self.inputs = {name: torch.from_numpy(a).to(device) for name, a in everything.items()}
        self.labels = torch.from_numpy(data.labels).float().to(device)
        self.device = device

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, *, generator: np.random.Generator,
                shard: Shard = Shard()) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        for idx in batch_indices(len(self), batch_size, shuffle=True, generator=generator, shard=shard):
            i = torch.from_numpy(idx).to(self.device, non_blocking=True)
            yield {name: t[i] for name, t in self.inputs.items()}, self.labels[i]

    @staticmethod
    def fits(data: SplitArrays, device: torch.device, share: float = 0.25) -> bool:
        if device.type != "cuda":
            return False
        free, _ = torch.cuda.mem_get_info(device)
        return data.nbytes < share * free
