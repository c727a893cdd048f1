"""Packed splits: a split's shards gathered into one array that training reads as a memmap.

    <split>.npy   uint8: (N, H, W) log-mels for audio features, (N, frames, size, size, 3) RGB crops
                  for faces; row i is sample i of the label file (zeros where a clip has no features)
    <split>.csv   name,label,row,ok,reason,item,fallback: a line per sample, label-file order

Windowed log-mels (`AudioFeatures.window_seconds` set) have a length per clip: the array is then
(total frames, H), the clips' whole log-mels end to end along time (time-major, so that a window is
a run of contiguous rows), and the index adds `start,frames` (a clip without features: 0 frames).
Face crops stored as JPEG (`VideoFeatures.crop_storage = "jpeg"`) are packed the same way: a 1-D
uint8 array of the clips' blobs end to end (`harness.data.jpeg_crops`), `start,frames` in bytes, and
`load_split` returns it as a `JpegCrops`, which reads like the raw (N, frames, size, size, 3) array.

A training split prepared with codec variants (`AudioFeatures.codec_variants`) has extra rows after
its label-file rows, one per re-encoded copy of a usable clip, and the index adds `source`: the row
of the clip each copy was made from (empty on the label-file rows).

Both are derived from the shards and rewritten only when they would change; their sizes and CRC-32s
are in the manifest. `pack_split` (inside `prepare`, under the folder's lock) repacks a split whose
files do not match (say, an array cut short by a crash) and says so; `load_split` checks the sizes
(a stat: a reader must not pay for a full read) and raises `CacheDamaged` naming the file.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.config import AudioFeatures, VideoFeatures
from harness.data.integrity import CacheDamaged, ChecksummedWriter, Manifest, Record, check_file, write_file
from harness.data.jpeg_crops import JpegCrops
from harness.data.labels import Dataset, Sample
from harness.data.shards import Entry, item_array, span_row, variant_id
from harness.fileio import atomic_write, csv_text

Features = AudioFeatures | VideoFeatures
# item: the entry's id, so a changed clip repacks; fallback: face frames centre-cropped ("" for audio)
INDEX_FIELDS = ("name", "label", "row", "ok", "reason", "item", "fallback")
SPAN_FIELDS = ("start", "frames")  # windowed log-mels: where each clip's frames lie in the array
VARIANT_FIELDS = ("source",)  # a training split with codec variants: the source row of a variant row
# Shards' data kept at once while packing, in bytes: 64 shards were 16 MB of log-mels but 150 MB of
# raw face crops (8 clips of 301 KB a shard), a fixed part of the command's peak memory.
LOADED_BYTES = 16 << 20


@dataclass(frozen=True)
class Failure:
    split: str
    name: str
    reason: str
    detail: str


@dataclass
class Packed:
    """What packing a split found: the clips without features, and a note when a damaged pack was remade."""

    failures: list[Failure] = field(default_factory=list)
    repaired: str | None = None


NOT_PREPARED = Entry(None, None, reason="not prepared", detail="no cache entry")  # a sample without an entry
# A row of the pack: its sample's index, its item id, its entry. One small tuple a row, and the index
# lines generated from it, rather than each line held as a dict: those were about 0.5 KB a clip of
# the command's peak memory (50 MB at 100k clips).
PlanRow = tuple[int, str, Entry]


def pack_split(ds: Dataset, cfg: Features, out: Path, split: str, *, entries: dict[str, Entry],
               stems: list[str], manifest: Manifest, fresh: dict[str, np.ndarray] | None = None,
               full: bool = False) -> Packed:
    """Gather a split's shards into `<split>.npy` + `<split>.csv`, unless the pack on disk is current
    and matches its record.

    `stems` are each sample's id, `entries` id -> entry from verified shards, `fresh` arrays
    just computed (id -> array); `full` checks every CRC-32 of a current pack (`integrity.check_file`).
    Records the new pack in `manifest` (the caller saves it)."""
    samples = ds.split(split)
    result = Packed()
    if not samples:
        return result
    row_shape = span_row(cfg)  # None: one array of cfg.shape per clip
    variable = row_shape is not None
    plan: list[PlanRow] = []
    for i, (s, stem) in enumerate(zip(samples, stems)):
        entry = entries.get(stem, NOT_PREPARED)
        if not entry.ok:
            result.failures.append(Failure(split, s.name, entry.reason, entry.detail))
        plan.append((i, stem, entry))
    variants = isinstance(cfg, AudioFeatures) and cfg.codec_variants > 0 and split == "train"
    if variants:  # after every source row: the codec variants of the usable ones, each naming its source
        for i, stem in enumerate(stems[: len(samples)]):
            if not plan[i][2].ok:
                continue
            for k in range(1, cfg.codec_variants + 1):
                found = entries.get(item := variant_id(stem, k))
                if found is not None and found.ok:
                    plan.append((i, item, found))
    fields = INDEX_FIELDS + (SPAN_FIELDS if variable else ()) + (VARIANT_FIELDS if variants else ())
    index_bytes = csv_text(fields, _index_rows(samples, plan, variable, variants)).encode()
    total = sum(e.frames or 0 for _, _, e in plan if e.ok) if variable else len(plan)
    shape = (total, *row_shape) if variable else (total, *cfg.shape)
    index_path, array_path = out / f"{split}.csv", out / f"{split}.npy"
    written = _same_size_bytes(index_path, len(index_bytes))
    if written == index_bytes:  # same samples, same items: current, if the array is intact
        problem = _check_pack(array_path, shape, index_bytes, split, manifest, full) if array_path.exists() else "missing"
        if problem is None:
            return result
        result.repaired = f"repacked {split}: {array_path.name} {problem}"
    elif index_path.exists() and (recorded := manifest.pack(split)) is not None:
        # An index unlike the one written (rather than one that the dataset changed) is damage too.
        if (problem := check_file(index_path, recorded[1])[0]) is not None:
            result.repaired = f"repacked {split}: {index_path.name} {problem}"
    del written
    with atomic_write(array_path, "wb") as f:
        writer = ChecksummedWriter(f)
        writer.write(_header(shape))
        for row in _packed_rows(plan, (0, *row_shape) if variable else cfg.shape, fresh or {}):
            writer.write(np.ascontiguousarray(row, dtype=np.uint8).data)
    index = write_file(index_path, index_bytes)
    manifest.add_pack(split, writer.record.stamped(array_path), index)
    return result


def _index_rows(samples: list[Sample], plan: list[PlanRow], variable: bool, variants: bool) -> Iterator[list[object]]:
    """The index line of each pack row, in the columns `pack_split` names (generated, never held)."""
    start = 0
    for row, (i, item, entry) in enumerate(plan):
        s = samples[i]
        line: list[object] = [s.name, "" if s.label is None else s.label, row]
        if not entry.ok:
            line += [0, entry.reason, item, ""]
            frames: object = 0
        else:
            line += [1, "", item, "" if entry.fallback is None else entry.fallback]
            frames = "" if entry.frames is None else entry.frames
        if variable:
            line += [start, frames]
            start += frames or 0
        if variants:
            line.append(i if row >= len(samples) else "")
        yield line


def _same_size_bytes(path: Path, size: int) -> bytes | None:
    """The file's bytes when it has exactly `size` of them (else it cannot be equal: not read)."""
    try:
        if path.stat().st_size != size:
            return None
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _header(shape: tuple[int, ...]) -> bytes:
    """The .npy header of a uint8 array of `shape` (format 1.0, padded to 64 bytes)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _check_pack(array_path: Path, shape: tuple[int, ...], index_bytes: bytes, split: str, manifest: Manifest,
                full: bool) -> str | None:
    """What is wrong with a split's array whose index is current, or None. A pack made before
    manifests existed is checked by its size and header alone, then recorded."""
    expected = len(_header(shape)) + math.prod(shape)
    size = array_path.stat().st_size
    if size != expected:
        return f"{size} bytes, {expected} expected for {shape[0]} samples"
    recorded = manifest.pack(split)
    if recorded is None:
        try:
            found = np.load(array_path, mmap_mode="r")
        except ValueError as e:
            return f"unreadable ({e})"
        if found.shape != shape or found.dtype != np.uint8:
            return f"holds {found.dtype} {found.shape}, {shape} expected"
        manifest.add_pack(split, Record.of_file(array_path), Record.of(index_bytes).stamped(array_path.with_suffix(".csv")))
        return None
    array, index = recorded
    problem, current = check_file(array_path, array, full=full)
    if problem is None:
        manifest.add_pack(split, current, index.stamped(array_path.with_suffix(".csv")))  # a no-op unless copied
    return problem


def _packed_rows(plan: list[PlanRow], shape: tuple[int, ...], fresh: dict[str, np.ndarray]) -> Iterator[np.ndarray]:
    """Each pack row's array in order: just computed, read from its shard, or zeros (no features).

    Plain sequential writes rather than a memmap: a memmap's flush is an msync that waits for the
    disk (7 ms of the 20 ms that packing 200 log-mels took), and a fresh mapping adds page faults."""
    zeros = np.zeros(shape, np.uint8)
    loaded: dict[Path, np.ndarray] = {}
    held = 0
    for _, item, entry in plan:
        if not entry.ok:
            yield zeros
            continue
        if item in fresh:
            yield fresh[item]
            continue
        shard = entry.shard
        if shard not in loaded:
            if held > LOADED_BYTES:  # shards come in label-file order, mostly one after another
                loaded.clear()
                held = 0
            with np.load(shard) as z:
                loaded[shard] = z["data"]
            held += loaded[shard].nbytes
        yield item_array(loaded[shard], entry)


def load_split(out: Path, split: str) -> tuple[np.ndarray | JpegCrops, list[dict[str, str]]]:
    """The packed images of a split (read-only memmap; for JPEG-stored crops a `JpegCrops` over it)
    and its index rows.

    Raises CacheDamaged (one line, naming the file) when the array or index is not the size that was
    recorded, or the array does not hold a row per index line."""
    index_path, array_path = out / f"{split}.csv", out / f"{split}.npy"
    recorded = Manifest.load(out).pack(split)
    if recorded is not None:
        array, index = recorded
        for path, record in ((array_path, array), (index_path, index)):
            size = path.stat().st_size
            if size != record.size:
                raise CacheDamaged(path, f"{size} bytes, {record.size} written")
    with open(index_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    try:
        images = np.load(array_path, mmap_mode="r")
    except ValueError as e:  # "mmap length is greater than file size", a header cut short
        raise CacheDamaged(array_path, f"unreadable ({e})") from None
    expected = sum(int(r["frames"] or 0) for r in rows) if rows and "frames" in rows[0] else len(rows)
    if len(images) != expected:
        raise CacheDamaged(array_path, f"{len(images)} rows for the {len(rows)} lines of {index_path.name}")
    if images.ndim == 1:  # bytes: JPEG blobs, decoded to the crop shape the folder's settings name
        return JpegCrops(images, [(int(r["start"]), int(r["frames"])) for r in rows], _crop_shape(out)), rows
    return images, rows


def _crop_shape(out: Path) -> tuple[int, int, int, int]:
    """(frames, size, size, 3) from a face-crop folder's settings.json. Raises CacheDamaged."""
    path = out / "settings.json"
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
        return (int(settings["frames"]), int(settings["size"]), int(settings["size"]), 3)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheDamaged(path, f"no crop shape for the JPEG crops beside it ({type(e).__name__}: {e})") from None
