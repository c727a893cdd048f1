"""Cached features -> shuffled batches of tensors, nanoGPT-style: no DataLoader, no per-sample Python.

A split's packed uint8 arrays are memmaps of the cache; each batch reads its rows with numpy fancy
indexing (from the page cache after the first epoch). Batches stay uint8 until they reach the
device: a quarter of the bytes to copy, and normalisation runs where the model runs.

Windowed audio (`SplitArrays.window` > 0): the audio array holds whole log-mels end to end, time-major,
and `spans` where each clip lies. A training batch (`arrays(idx, rng)`) reads one random window per
clip, (B, H, window); an evaluation batch (no rng) reads `eval_windows` evenly spaced windows per clip,
(B, K, H, window), as `harness.data.features.eval_windows` cuts them for `predict`.

Face crops stored as JPEG (`VideoFeatures.crop_storage = "jpeg"`): the video input is a `JpegCrops`
over the split's packed JPEG bytes, which reads like the raw array; `take` decodes a batch with
`torchvision.io.decode_jpeg` in this process (on the prefetching thread, in training), on the CPU or,
with `SplitArrays.decode_device` set to a CUDA device, with nvjpeg on the GPU. Batches come out in the
raw layout, (B, frames, size, size, 3) uint8, so what follows does not know how crops were stored.
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

from harness.config import AudioFeatures
from harness.data.cache import load_split
from harness.data.features import window_rows, window_starts
from harness.data.jpeg_crops import JpegCrops

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
    spans: np.ndarray | None = None  # windowed audio: (start, frames) per index row of the audio array
    window: int = 0  # frames per audio window; 0 = whole-clip images
    variants: np.ndarray | None = None  # codec variants: (index rows, K) audio rows of each clip's copies, -1 = none
    eval_windows: int = 1
    decode_device: torch.device | None = None  # where `take` decodes JPEG-stored crops; None: the CPU

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        """Bytes of the samples' inputs (not of whole memmaps)."""
        per_clip = {name: a[0:1].nbytes * (self.window if name == "audio" and self.window else 1)
                    for name, a in self.inputs.items()}
        return len(self) * sum(per_clip.values())

    def arrays(self, idx: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Samples `idx` of each input (and `<input>_present` masks), read into memory. Windowed audio:
        one random window per clip drawn from `rng`, or without one the evaluation windows."""
        rows = idx if self.rows is None else self.rows[idx]
        out = {name: self._read(name, array, rows, rng) for name, array in self.inputs.items()}
        out.update({f"{name}_present": mask[idx] for name, mask in self.present.items()})
        return out

    def _read(self, name: str, array: np.ndarray, rows: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        if name != "audio":
            return np.ascontiguousarray(array[rows])
        picked = self._variant_rows(rows, rng)
        return self._windows(array, picked, rng) if self.window else np.ascontiguousarray(array[picked])

    def _variant_rows(self, rows: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Training with codec variants: each clip read as itself or one of its copies, evenly."""
        if self.variants is None or rng is None:
            return rows
        choice = rng.integers(0, self.variants.shape[1] + 1, len(rows))
        copies = self.variants[rows, np.maximum(choice - 1, 0)]
        return np.where((choice > 0) & (copies >= 0), copies, rows)

    def _windows(self, frames: np.ndarray, rows: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        index, empty = self.window_index(rows, rng)
        picked = frames[index]
        picked[empty] = 0  # a clip without features (kept for submission): zeros, as in image mode
        out = picked.transpose(0, 2, 1)  # (n, H, window)
        if rng is None:
            out = out.reshape(len(rows), self.eval_windows, *out.shape[1:])
        return np.ascontiguousarray(out)

    def window_index(self, rows: np.ndarray, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the packed audio array for the windows of audio rows `rows`: (n, window), one
        random window each with `rng`, else `eval_windows` each (clip-major); and which are empty."""
        assert self.spans is not None, "windowed audio needs spans"
        offsets, lengths = self.spans[rows, 0], self.spans[rows, 1]
        if rng is not None:  # training: one window per clip, anywhere in it (a short clip: any phase of its loop)
            reach = np.where(lengths >= self.window, lengths - self.window + 1, lengths)
            starts = (rng.random(len(rows)) * np.maximum(reach, 1)).astype(np.int64)
        else:
            starts = np.concatenate([window_starts(int(n), self.window, self.eval_windows) for n in lengths])
            offsets, lengths = np.repeat(offsets, self.eval_windows), np.repeat(lengths, self.eval_windows)
        empty = lengths == 0
        return np.where(empty[:, None], 0, window_rows(offsets, lengths, starts, self.window)), empty

    def take(self, idx: np.ndarray, rng: np.random.Generator | None = None, *,
             decode_on: torch.device | None = None) -> dict[str, torch.Tensor]:
        """Batch `idx` as uint8 tensors, plus `<input>_present` bool masks where some are missing.
        JPEG-stored crops are decoded on `decode_on` (default: `decode_device`, else the CPU) and
        returned there; everything else stays on the host."""
        rows = idx if self.rows is None else self.rows[idx]
        out = {}
        for name, array in self.inputs.items():  # in order: windows and variants draw from `rng` as in `arrays`
            if isinstance(array, JpegCrops):
                out[name] = array.decode(rows, decode_on or self.decode_device)
            else:
                out[name] = torch.from_numpy(self._read(name, array, rows, rng))
        out.update({f"{name}_present": torch.from_numpy(mask[idx]) for name, mask in self.present.items()})
        return out

    def will_need(self, idx: np.ndarray) -> None:
        """Ask the kernel to start reading samples `idx` from disk now (posix_fadvise WILLNEED, one
        call per row; it returns before the reads finish). A batch read row by row waits for each
        row in turn (about 6 ms a cold 32 KB row on this machine's disk); rows asked for a few
        batches ahead arrive together, in parallel. Arrays in memory are skipped."""
        rows = np.sort(idx if self.rows is None else self.rows[idx])
        for name, array in self.inputs.items():
            if isinstance(array, JpegCrops):
                array.will_need(rows)
                continue
            if not _whole_file(array) or (name == "audio" and self.window):
                continue  # windowed audio: rows are frames of whole clips, read where the window falls
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


def load_arrays(feature_dirs: dict[str, Path] | Path, split: str, *, usable_only: bool = True,
                features: AudioFeatures | None = None) -> SplitArrays:
    """A split from the cache, from one feature folder per input (a bare Path: audio alone).

    `usable_only` drops clips without features (training needs real inputs); with several inputs a
    clip is kept when any of them is usable, and `present` says which. Submission keeps every clip
    and scores those without features by the documented fallback instead. `features`: the audio
    settings, which say how windows are cut when the audio cache holds whole log-mels."""
    if isinstance(feature_dirs, Path):
        feature_dirs = {"audio": feature_dirs}
    arrays, oks, index, spans, variants = {}, {}, None, None, None
    for name, folder in feature_dirs.items():
        images, rows = load_split(folder, split)
        if name == "audio" and rows and "frames" in rows[0]:
            spans = np.array([(int(r["start"]), int(r["frames"])) for r in rows], dtype=np.int64).reshape(-1, 2)
        if name == "audio" and rows and "source" in rows[0]:
            rows, variants = _split_variants(rows)
        if index is not None and [r["name"] for r in rows] != [r["name"] for r in index]:
            raise ValueError(f"{folder}: the {split} index lists other clips than {next(iter(feature_dirs.values()))}")
        index = index or rows
        arrays[name], oks[name] = images, np.array([r["ok"] == "1" for r in rows], dtype=bool)
    windowed = features is not None and features.windowed
    if windowed != (spans is not None):
        raise ValueError(f"{feature_dirs.get('audio')}: the cache holds {'whole log-mels' if spans is not None else 'images'}, "
                         f"the settings ask for {'windows' if windowed else 'images'}")
    assert index is not None, "no feature folder given"
    usable = np.logical_or.reduce(list(oks.values()))
    keep = np.flatnonzero(usable) if usable_only else np.arange(len(index))
    labels = np.array([int(index[i]["label"]) if index[i]["label"] != "" else -1 for i in keep], dtype=np.int64)
    present = {name: ok[keep] for name, ok in oks.items() if len(feature_dirs) > 1 and not ok[keep].all()}
    return SplitArrays(inputs=arrays, labels=labels, names=[index[i]["name"] for i in keep], present=present,
                       rows=None if len(keep) == len(index) else keep, spans=spans, variants=variants,
                       window=features.window_frames if windowed else 0,
                       eval_windows=features.eval_windows if windowed else 1)


def _split_variants(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], np.ndarray]:
    """The label-file rows of an index with codec variants, and each one's copies' rows (-1 = none)."""
    sources = [r for r in rows if r["source"] == ""]
    copies: dict[int, list[int]] = {}
    for r in rows[len(sources):]:
        copies.setdefault(int(r["source"]), []).append(int(r["row"]))
    width = max((len(c) for c in copies.values()), default=0)
    table = np.full((len(sources), max(width, 1)), -1, dtype=np.int64)
    for source, found in copies.items():
        table[source, : len(found)] = found
    return sources, table


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
        # Training (shuffled) draws random windows from the same generator; evaluation reads fixed ones.
        yield data.take(idx, generator if shuffle else None), torch.from_numpy(data.labels[idx]).float()


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
    Audio with windows or codec variants: the whole packed array goes up, and each step sends only
    the row numbers of its windows (or copies), drawn on the host as `SplitArrays.arrays` draws them.
    JPEG-stored crops are decoded once, on the device (nvjpeg), and kept decoded: by the same rule as
    raw crops (`fits` counts decoded bytes), since decoding them again every epoch would cost what
    keeping them resident saves. A split whose decoded crops do not fit is batched from the host: its
    JPEG bytes are read from the memmap and each batch is decoded in `SplitArrays.take`.
    """

    def __init__(self, data: SplitArrays, device: torch.device) -> None:
        self.data, self.device = data, device
        self.picked = bool(data.window) or data.variants is not None  # rows drawn per step
        if self.picked:
            self.inputs = {"audio": torch.from_numpy(np.array(data.inputs["audio"])).to(device)}  # a writable copy
        else:
            everything = data.take(np.arange(len(data)), decode_on=device)  # JPEG crops: decoded there
            self.inputs = {name: t.to(device) for name, t in everything.items()}
        self.labels = torch.from_numpy(data.labels).float().to(device)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, *, generator: np.random.Generator,
                shard: Shard = Shard()) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        for idx in batch_indices(len(self), batch_size, shuffle=True, generator=generator, shard=shard):
            i = torch.from_numpy(idx).to(self.device, non_blocking=True)
            if not self.picked:
                yield {name: t[i] for name, t in self.inputs.items()}, self.labels[i]
                continue
            data = self.data
            rows = data._variant_rows(idx if data.rows is None else data.rows[idx], generator)
            if data.window:  # training clips all have frames: no empty windows to blank
                index = torch.from_numpy(data.window_index(rows, generator)[0]).to(self.device, non_blocking=True)
                audio = self.inputs["audio"][index].transpose(1, 2).contiguous()  # (B, H, window)
            else:
                audio = self.inputs["audio"][torch.from_numpy(rows).to(self.device, non_blocking=True)]
            yield {"audio": audio}, self.labels[i]

    @staticmethod
    def fits(data: SplitArrays, device: torch.device, share: float = 0.25) -> bool:
        picked = bool(data.window) or data.variants is not None
        if device.type != "cuda" or (picked and set(data.inputs) != {"audio"}):  # fusion with windows: host batches
            return False
        free, _ = torch.cuda.mem_get_info(device)
        return (data.inputs["audio"].nbytes if picked else data.nbytes) < share * free
