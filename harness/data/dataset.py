"""Cached features -> shuffled batches of tensors, nanoGPT-style: no DataLoader, no per-sample Python. Memmaps are
read per batch by fancy indexing; batches stay uint8 until the device. Windowed audio: one random window a clip in
training, (B, H, window), `eval_windows` in evaluation, (B, K, H, window). JPEG crops come out raw, as decoded.
"""
from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from harness.config import AudioFeatures
from harness.data.cache import load_split
from harness.data.features import window_rows, window_starts
from harness.data.jpeg_crops import JpegCrops
from harness.data.packs import load_faces

_Item = TypeVar("_Item")
Batch = tuple[dict[str, torch.Tensor], torch.Tensor]  # uint8 inputs by name, float labels
# What training may do to a batch before the model (harness.pseudo): (indices, inputs, labels, generator) -> batch.
BatchHook = Callable[[np.ndarray, dict[str, torch.Tensor], torch.Tensor, np.random.Generator], Batch]


@dataclass
class SplitArrays:
    """A split's cached inputs; `rows`: each sample's row in them (None: row i); `present`: samples with features."""

    inputs: dict[str, np.ndarray]  # "audio" (N, H, W), "video" (N, frames, size, size, 3); usually read-only memmaps
    labels: np.ndarray  # (N,) int64; -1 where unlabelled (test)
    names: list[str]
    present: dict[str, np.ndarray] = field(default_factory=dict)
    rows: np.ndarray | None = None
    spans: np.ndarray | None = None  # windowed audio: (start, frames) per index row of the audio array
    window: int = 0  # frames per audio window; 0 = whole-clip images
    variants: np.ndarray | None = None  # codec variants: (index rows, K) audio rows of each clip's copies, -1 = none
    eval_windows: int = 1
    decode_device: torch.device | None = None  # where `take` decodes JPEG-stored crops; None: the CPU
    # Per index row: (frames, 5, 2) landmarks in crop pixels, (frames,) confidence; NaN where none.
    landmarks: np.ndarray | None = None
    confidence: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        """Bytes of the samples' inputs (not of whole memmaps)."""
        return len(self) * sum(a[0:1].nbytes * (self.window if name == "audio" and self.window else 1)
                               for name, a in self.inputs.items())

    def arrays(self, idx: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Samples `idx` of each input (and `<input>_present` masks); windowed audio: random windows with `rng`."""
        rows = idx if self.rows is None else self.rows[idx]
        out = {name: self._read(name, array, rows, rng) for name, array in self.inputs.items()}
        out.update({f"{name}_present": mask[idx] for name, mask in self.present.items()})
        return out

    def face_points(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Samples `idx`' landmarks (B, frames, 5, 2) and confidence (B, frames); ValueError without face crops."""
        if self.landmarks is None or self.confidence is None:
            raise ValueError("this split has no face crops, hence no landmarks")
        rows = idx if self.rows is None else self.rows[idx]
        return self.landmarks[rows], self.confidence[rows]

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
        """Audio rows (n, window) of a random window a clip with `rng`, else `eval_windows` each; which are empty."""
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
        """`arrays` as tensors, drawing from `rng` alike; JPEG crops decoded on `decode_on` (else `decode_device`, CPU)."""
        rows = idx if self.rows is None else self.rows[idx]
        out = {name: array.decode(rows, decode_on or self.decode_device) if isinstance(array, JpegCrops)
               else torch.from_numpy(self._read(name, array, rows, rng)) for name, array in self.inputs.items()}
        out.update({f"{name}_present": torch.from_numpy(mask[idx]) for name, mask in self.present.items()})
        return out

    def will_need(self, idx: np.ndarray) -> None:
        """Ask the kernel to read samples `idx` ahead: cold rows read one by one wait 6 ms each, asked together not."""
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
    try:
        return (isinstance(array, np.memmap) and bool(array.filename) and array.flags.c_contiguous
                and array.offset + array.nbytes == os.path.getsize(array.filename))
    except OSError:
        return False


def load_arrays(feature_dirs: dict[str, Path] | Path, split: str, *, usable_only: bool = True,
                audio: AudioFeatures | None = None) -> SplitArrays:
    """A split from one feature folder per input (a Path: audio), without clips lacking all features if `usable_only`."""
    if isinstance(feature_dirs, Path):
        feature_dirs = {"audio": feature_dirs}
    arrays, oks, index, spans, variants, faces = {}, {}, None, None, None, None
    for name, folder in feature_dirs.items():
        images, rows = load_split(folder, split)
        if name != "audio":
            faces = load_faces(folder, split) or faces
        if name == "audio" and rows and "frames" in rows[0]:
            spans = np.array([(int(r["start"]), int(r["frames"])) for r in rows], dtype=np.int64).reshape(-1, 2)
        if name == "audio" and rows and "source" in rows[0]:
            rows, variants = _split_variants(rows)
        if index is not None and [r["name"] for r in rows] != [r["name"] for r in index]:
            raise ValueError(f"{folder}: the {split} index lists other clips than {next(iter(feature_dirs.values()))}")
        index = index or rows
        arrays[name], oks[name] = images, np.array([r["ok"] == "1" for r in rows], dtype=bool)
    windowed = audio is not None and audio.windowed
    if windowed != (spans is not None):
        raise ValueError(f"{feature_dirs.get('audio')}: the cache holds {'whole log-mels' if spans is not None else 'images'}, "
                         f"the settings ask for {'windows' if windowed else 'images'}")
    assert index is not None, "no feature folder given"
    keep = np.flatnonzero(np.logical_or.reduce(list(oks.values()))) if usable_only else np.arange(len(index))
    labels = np.array([int(index[i]["label"]) if index[i]["label"] != "" else -1 for i in keep], dtype=np.int64)
    present = {name: ok[keep] for name, ok in oks.items() if len(feature_dirs) > 1 and not ok[keep].all()}
    return SplitArrays(inputs=arrays, labels=labels, names=[index[i]["name"] for i in keep], present=present,
                       rows=None if len(keep) == len(index) else keep, spans=spans, variants=variants,
                       window=audio.window_frames if windowed else 0,
                       eval_windows=audio.eval_windows if windowed else 1,
                       landmarks=faces[0] if faces else None, confidence=faces[1] if faces else None)


def _split_variants(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], np.ndarray]:
    """The label-file rows of an index with codec variants, and each one's copies' rows (-1 = none)."""
    sources = [r for r in rows if r["source"] == ""]
    copies: dict[int, list[int]] = {}
    for r in rows[len(sources):]:
        copies.setdefault(int(r["source"]), []).append(int(r["row"]))
    table = np.full((len(sources), max(map(len, copies.values()), default=1)), -1, dtype=np.int64)
    for source, found in copies.items():
        table[source, : len(found)] = found
    return sources, table


@dataclass(frozen=True)
class Shard:
    """One DDP process's share of a split: every `count`-th sample from `index`, as DistributedSampler deals."""

    index: int = 0
    count: int = 1

    def take(self, order: np.ndarray, *, pad: bool) -> np.ndarray:
        """This share of `order`; `pad` repeats the first samples so every rank takes as many steps (DDP needs it)."""
        if pad:  # np.resize repeats `order` from its start
            order = np.resize(order, -(-len(order) // self.count) * self.count)
        return order[self.index :: self.count]


def batch_indices(n: int, batch_size: int, *, shuffle: bool, generator: np.random.Generator | None = None,
                  shard: Shard = Shard()) -> list[np.ndarray]:
    """Sample indices per batch of `shard`'s share; a last training batch of one (batch norm) is dropped."""
    order = generator.permutation(n) if shuffle and generator is not None else np.arange(n)
    order = shard.take(order, pad=shuffle)
    if shuffle and len(order) % batch_size == 1 and len(order) > 1:
        order = order[:-1]
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def batches(data: SplitArrays, batch_size: int, *, shuffle: bool, generator: np.random.Generator | None = None,
            shard: Shard = Shard(), readahead: int = 0, hook: BatchHook | None = None) -> Iterator[Batch]:
    """(uint8 inputs, float labels) per batch of `shard`'s share, `readahead` batches read ahead, shuffled ones hooked."""
    plan = batch_indices(len(data), batch_size, shuffle=shuffle, generator=generator, shard=shard)
    for idx in plan[:readahead]:
        data.will_need(idx)
    for i, idx in enumerate(plan):
        if readahead and i + readahead < len(plan):
            data.will_need(plan[i + readahead])
        batch, y = data.take(idx, generator if shuffle else None), torch.from_numpy(data.labels[idx]).float()
        yield hook(idx, batch, y, generator) if hook and shuffle and generator is not None else (batch, y)


def prefetched(source: Iterator[_Item], depth: int = 2) -> Iterator[_Item]:
    """`source`'s items made `depth` ahead by a thread, overlapping the model's step; its exception is raised here."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:  # puts (True, item) ..., then (False, None) or (False, the exception)
        try:
            for item in source:
                items.put((True, item))
                if stop.is_set():
                    return
            items.put((False, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            items.put((False, e))

    thread = threading.Thread(target=produce, name="harness-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = items.get()
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                items.get(timeout=0.1)


class DeviceResident:
    """A split uploaded to the accelerator once and batched there; windows and variants drawn on the host go up as rows."""

    def __init__(self, data: SplitArrays, device: torch.device) -> None:
        self.data, self.device = data, device
        self.picked = bool(data.window) or data.variants is not None  # rows drawn per step
        if self.picked:
            self.inputs = {"audio": torch.from_numpy(np.array(data.inputs["audio"])).to(device)}  # a writable copy
        else:  # JPEG crops decoded on the device
            self.inputs = {name: t.to(device) for name, t in data.take(np.arange(len(data)), decode_on=device).items()}
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
        return (data.inputs["audio"].nbytes if picked else data.nbytes) < share * torch.cuda.mem_get_info(device)[0]
