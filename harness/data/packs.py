"""Packed splits: a split's shards gathered into one array that training reads as a memmap.

`<split>.npy` is uint8: (N, H, W) log-mels or (N, frames, size, size, 3) RGB crops, row i for sample i of
the label file (zeros where a clip has no features); `<split>.csv` is `INDEX_FIELDS`, a line a sample.
Windowed log-mels are (total frames, H), clips end to end along time, the index adding `start,frames`;
JPEG-stored crops likewise as bytes, read back as a `JpegCrops`. Codec variants add train rows after the
label-file rows, `source` naming the row each came from. Face crops also pack `<split>.faces.npz`:
`landmarks` (N, frames, 5, 2), `confidence` (N, frames), float32 crop pixels, NaN where none, and the
`index_crc32` of the index they were packed with. Files are rewritten only when they would change, sizes and
CRC-32s in the manifest; `load_split` checks sizes only (a stat) and raises `CacheDamaged` naming the file.
"""
from __future__ import annotations

import csv
import io
import json
import math
import zlib
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
# item: the entry's id, so a changed clip repacks; fallback: face frames centre-cropped ("" for audio);
# seconds: a log-mel's decoded clip length ("" for crops), what `harness.slices` buckets by duration
INDEX_FIELDS = ("name", "label", "row", "ok", "reason", "item", "fallback", "seconds")
SPAN_FIELDS = ("start", "frames")  # windowed log-mels: where each clip's frames lie in the array
VARIANT_FIELDS = ("source",)  # a training split with codec variants: the source row of a variant row
FACES = "{split}.faces.npz"  # face crops' landmarks and confidence, beside the pack
# Shards' data kept at once while packing, in bytes (64 shards of raw face crops were 150 MB of peak memory).
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
# A pack row: its sample's index, item id, entry; index lines are generated from it (held as dicts: 50 MB at 100k clips).
PlanRow = tuple[int, str, Entry]


def pack_split(ds: Dataset, cfg: Features, out: Path, split: str, *, entries: dict[str, Entry],
               stems: list[str], manifest: Manifest, fresh: dict[str, np.ndarray] | None = None,
               full: bool = False) -> Packed:
    """Pack a split's entries (by each sample's id in `stems`; `fresh`: arrays just computed) unless the pack on
    disk is current (`full`: every CRC-32 checked); recorded in `manifest`, which the caller saves."""
    result = Packed()
    if not (samples := ds.split(split)):
        return result
    row_shape = span_row(cfg)  # None: one array of cfg.shape per clip
    variable = row_shape is not None
    plan: list[PlanRow] = [(i, stem, entries.get(stem, NOT_PREPARED)) for i, stem in enumerate(stems[: len(samples)])]
    result.failures += [Failure(split, samples[i].name, e.reason, e.detail) for i, _, e in plan if not e.ok]
    variants = isinstance(cfg, AudioFeatures) and cfg.codec_variants > 0 and split == "train"
    if variants:  # after every source row: the codec variants of the usable ones, each naming its source
        plan += [(i, item, found) for i, stem in enumerate(stems[: len(samples)]) if plan[i][2].ok
                 for k in range(1, cfg.codec_variants + 1)
                 if (found := entries.get(item := variant_id(stem, k))) is not None and found.ok]
    fields = INDEX_FIELDS + (SPAN_FIELDS if variable else ()) + (VARIANT_FIELDS if variants else ())
    index_bytes = csv_text(fields, _index_rows(samples, plan, variable, variants)).encode()
    total = sum(e.frames or 0 for _, _, e in plan if e.ok) if variable else len(plan)
    shape = (total, *(row_shape if variable else cfg.shape))
    index_path, array_path, faces = out / f"{split}.csv", out / f"{split}.npy", out / FACES.format(split=split)
    # Same samples and items (the size first: an index of another size is not read): current if the array is intact.
    if index_path.exists() and index_path.stat().st_size == len(index_bytes) and index_path.read_bytes() == index_bytes:
        problem = _check_pack(array_path, shape, index_bytes, split, manifest, full) if array_path.exists() else "missing"
        if problem is None:
            if isinstance(cfg, VideoFeatures) and not _faces_current(out, split):
                _write_faces(faces, plan, cfg, index_bytes)
            return result
        result.repaired = f"repacked {split}: {array_path.name} {problem}"
    elif index_path.exists() and (recorded := manifest.pack(split)) is not None:
        # An index unlike the one written (rather than one that the dataset changed) is damage too.
        if (problem := check_file(index_path, recorded[1])[0]) is not None:
            result.repaired = f"repacked {split}: {index_path.name} {problem}"
    with atomic_write(array_path, "wb") as f:
        writer = ChecksummedWriter(f)
        writer.write(_header(shape))
        for row in _packed_rows(plan, (0, *row_shape) if variable else cfg.shape, fresh or {}):
            writer.write(np.ascontiguousarray(row, dtype=np.uint8).data)
    manifest.add_pack(split, writer.record.stamped(array_path), write_file(index_path, index_bytes))
    if isinstance(cfg, VideoFeatures):
        _write_faces(faces, plan, cfg, index_bytes)
    return result


def _write_faces(path: Path, plan: list[PlanRow], cfg: VideoFeatures, index_bytes: bytes) -> None:
    """`<split>.faces.npz` from the shards' landmarks and confidence, one row per pack row."""
    landmarks = np.full((len(plan), cfg.frames, 5, 2), np.nan, np.float32)
    confidence = np.full((len(plan), cfg.frames), np.nan, np.float32)
    held: dict[Path, tuple[np.ndarray, np.ndarray] | None] = {}  # 352 bytes a clip: every shard's kept
    for row, (_, _, entry) in enumerate(plan):
        if not entry.ok or entry.shard is None:
            continue
        if entry.shard not in held:
            with np.load(entry.shard) as z:
                held[entry.shard] = (z["landmarks"], z["confidence"]) if "landmarks" in z.files else None
        if (found := held[entry.shard]) is not None:
            landmarks[row], confidence[row] = found[0][entry.row], found[1][entry.row]
    buf = io.BytesIO()
    np.savez(buf, landmarks=landmarks, confidence=confidence, index_crc32=np.int64(zlib.crc32(index_bytes)))
    write_file(path, buf.getbuffer())


def _faces_current(out: Path, split: str) -> bool:
    """Whether a split's faces file is there, intact and packed with the index beside it."""
    try:
        return load_faces(out, split) is not None
    except CacheDamaged:
        return False


def load_faces(out: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """A face-crop split's landmarks and confidence (None for log-mels); CacheDamaged naming a bad file."""
    path = out / FACES.format(split=split)
    if not path.exists():
        return None
    try:
        with np.load(path) as z:  # read whole: the zip checks its members' CRC-32s
            landmarks, confidence, crc = z["landmarks"], z["confidence"], int(z["index_crc32"])
    except Exception as e:  # noqa: BLE001 - a zip cut short or with a bad CRC-32, a member missing
        raise CacheDamaged(path, f"unreadable ({type(e).__name__}: {str(e)[:120] or 'no detail'})") from None
    if crc != zlib.crc32((out / f"{split}.csv").read_bytes()):
        raise CacheDamaged(path, f"packed with another {split}.csv than the one beside it")
    return landmarks, confidence


def _index_rows(samples: list[Sample], plan: list[PlanRow], variable: bool, variants: bool) -> Iterator[list[object]]:
    """The index line of each pack row, in the columns `pack_split` names (generated, never held)."""
    start = 0
    for row, (i, item, entry) in enumerate(plan):
        s = samples[i]
        line: list[object] = [s.name, "" if s.label is None else s.label, row]
        if not entry.ok:
            line += [0, entry.reason, item, "", ""]
            frames: object = 0
        else:
            line += [1, "", item, *("" if v is None else v for v in (entry.fallback, entry.seconds))]
            frames = "" if entry.frames is None else entry.frames
        if variable:
            line += [start, frames]
            start += frames or 0
        if variants:
            line.append(i if row >= len(samples) else "")
        yield line


def _header(shape: tuple[int, ...]) -> bytes:
    """The .npy header of a uint8 array of `shape` (format 1.0, padded to 64 bytes)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _check_pack(array_path: Path, shape: tuple[int, ...], index_bytes: bytes, split: str, manifest: Manifest,
                full: bool) -> str | None:
    """What is wrong with a split's array whose index is current, or None; one without a record is recorded."""
    expected = len(_header(shape)) + math.prod(shape)
    if (size := array_path.stat().st_size) != expected:
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
    """Each pack row's array in order: just computed, read from its shard, or zeros (no features). Written
    sequentially, not through a memmap, whose msync waited for the disk (7 of the 20 ms of 200 log-mels)."""
    zeros = np.zeros(shape, np.uint8)
    loaded: dict[Path, np.ndarray] = {}
    for _, item, entry in plan:
        if not entry.ok or item in fresh:
            yield fresh[item] if entry.ok else zeros
            continue
        if entry.shard not in loaded:
            if sum(a.nbytes for a in loaded.values()) > LOADED_BYTES:  # shards come mostly one after another
                loaded.clear()
            with np.load(entry.shard) as z:
                loaded[entry.shard] = z["data"]
        yield item_array(loaded[entry.shard], entry)


def load_split(out: Path, split: str) -> tuple[np.ndarray | JpegCrops, list[dict[str, str]]]:
    """A split's packed images (a read-only memmap, or `JpegCrops` over it) and index rows; CacheDamaged naming a
    file whose size differs from its record or whose rows differ from the index lines."""
    index_path, array_path = out / f"{split}.csv", out / f"{split}.npy"
    for path, record in zip((array_path, index_path), Manifest.load(out).pack(split) or ()):
        if (size := path.stat().st_size) != record.size:
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


def clip_seconds(out: Path, split: str) -> dict[str, float]:
    """Clip name -> its `seconds` in a split's pack index (only the rows that have one)."""
    path = out / f"{split}.csv"
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {r["name"]: float(r["seconds"]) for r in csv.DictReader(f) if r.get("seconds") and r.get("source", "") == ""}


def _crop_shape(out: Path) -> tuple[int, int, int, int]:
    """(frames, size, size, 3) from a face-crop folder's settings.json. Raises CacheDamaged."""
    path = out / "settings.json"
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
        return (int(settings["frames"]), int(settings["size"]), int(settings["size"]), 3)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheDamaged(path, f"no crop shape for the JPEG crops beside it ({type(e).__name__}: {e})") from None
