"""The worker side of the feature cache, and the shard files it writes.

A worker computes up to 8 clips of one split into one shard, `shards/<split>/<first id>.npz`: `data`, the
uint8 arrays of the clips that worked; `meta`, JSON: each clip's id, its row in `data` or its failure
(reason, detail), for log-mels the decoded length in `seconds` (`harness.slices`' duration slices), for face
crops the frames that fell back to the centre square; face crops add `landmarks` and `confidence` rows in
`data`'s order. Arrays of their own length (`span_row`) lie end to end, each entry with `start` and `frames`.
`read_shards` deletes and reports a shard unlike its manifest record, so its clips are computed again.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from harness.config import AudioFeatures, VideoFeatures
from harness.data.integrity import Manifest, Record, check_file, write_file

if TYPE_CHECKING:
    from harness.data.faces import FaceCrops

Features = AudioFeatures | VideoFeatures


def init_worker() -> None:
    """Set up a feature worker: one BLAS and OpenCV thread, and glibc keeping freed memory."""
    import ctypes
    import ctypes.util

    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # BLAS threads spin-wait and starve the decoder on small machines
    import cv2

    cv2.setNumThreads(0)  # OpenCV's own pool (resize, DFT) would fight the other workers too
    # glibc keeps up to 256 MB freed: a clip's 0.5-3 MB buffers otherwise cost 350 page faults, 0.5 of its 10 ms.
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    for option, value in ((-3, 64 << 20), (-1, 256 << 20), (-2, 64 << 20)):  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD
        mallopt(option, value)


def extract(path: Path | str, cfg: Features) -> tuple[np.ndarray, int | None]:
    """One clip's array as a model reads it, and its centre-square fallback frames (None for audio); MediaError."""
    array, fallback, _, _ = stored(path, cfg)
    if isinstance(cfg, VideoFeatures) and cfg.jpeg:
        from harness.data.jpeg_crops import JpegCrops

        array = JpegCrops(array, np.array([[0, len(array)]]), cfg.shape)[0]
    return array, fallback


def stored(path: Path | str, cfg: Features, *, variants_seed: int | None = None
           ) -> tuple[np.ndarray, int | None, FaceCrops | None, Stored]:
    """One decode's array as the cache stores it (JPEG crops as a blob), fallback count, face crops and `Stored`."""
    if isinstance(cfg, VideoFeatures):
        from harness.data.faces import video_features
        from harness.data.jpeg_crops import encode_clip

        faces = video_features(path, cfg)
        return encode_clip(faces.crops, cfg.crop_quality) if cfg.jpeg else faces.crops, faces.fallback, faces, Stored()
    from harness.data.features import audio_array, variant_arrays
    from harness.data.media import decode_audio

    audio, declared = decode_audio(path, cfg.sample_rate)
    array = audio_array(path, audio, declared, cfg)
    variants = variant_arrays(path, audio, cfg, variants_seed) if variants_seed is not None and cfg.codec_variants else []
    return array, None, None, Stored(round(len(audio) / cfg.sample_rate, 3), tuple(variants))


class Stored(NamedTuple):
    """A log-mel's by-products of its decode (empty for face crops)."""

    seconds: float | None = None  # the decoded audio's length, before any silence trim
    variants: tuple[np.ndarray, ...] = ()  # codec variants' arrays (`AudioFeatures.codec_variants`)


@dataclass(frozen=True)
class ShardResult:
    """A worker's shard, record, meta, and data when the parent keeps it for packing (log-mels within budget)."""

    path: str
    record: Record
    meta: list[dict]
    data: np.ndarray | None


def extract_chunk(cfg: Features, folder: str, jobs: list[tuple[str, str]], *, send_data: bool = True) -> ShardResult:
    """Compute each (clip, id) of one split into one shard; the log-mels go back too unless not `send_data`."""
    from harness.data.media import MediaError

    arrays: list[np.ndarray] = []
    meta: list[dict[str, object]] = []
    faces: list[FaceCrops] = []  # face crops: each usable clip's landmarks and confidence, in `arrays`' order
    for clip, stem in jobs:
        try:
            array, fallback, found, extra = stored(clip, cfg, variants_seed=int(stem[:8], 16))
        except MediaError as e:
            meta.append({"id": stem, "reason": e.reason, "detail": e.detail})
            continue
        for k, item in enumerate([array, *extra.variants]):
            # A codec variant is an entry of its own, `<id>.v<k>`, tied to its source's id.
            entry = {"id": stem, "row": len(arrays), "fallback": fallback} if k == 0 else \
                {"id": variant_id(stem, k), "row": len(arrays), "source": stem}
            if extra.seconds is not None:
                entry["seconds"] = extra.seconds
            if span_row(cfg) is not None:  # whole log-mels or JPEG blobs of different lengths, end to end
                entry.update(start=sum(len(a) for a in arrays), frames=len(item))
            meta.append(entry)
            arrays.append(item)
        if found is not None:
            faces.append(found)
    data = _stacked(cfg, arrays)
    shard, points = Path(folder) / f"{jobs[0][1]}.npz", {}
    if isinstance(cfg, VideoFeatures):  # landmarks (n, frames, 5, 2) and confidence (n, frames)
        points = {"landmarks": np.array([f.landmarks for f in faces], np.float32).reshape(-1, cfg.frames, 5, 2),
                  "confidence": np.array([f.confidence for f in faces], np.float32).reshape(-1, cfg.frames)}
    record = write_shard(shard, data, meta, **points)
    return ShardResult(str(shard), record, meta, data if send_data and isinstance(cfg, AudioFeatures) else None)


def variant_id(stem: str, k: int) -> str:
    """The cache id of codec variant `k` (1-based) of the clip whose id is `stem`."""
    return f"{stem}.v{k}"


def span_row(cfg: Features) -> tuple[int, ...] | None:
    """One row's shape where clips of their own length lie end to end: (H,) windowed log-mels, () JPEG bytes;
    None: one array of `cfg.shape` per clip."""
    if isinstance(cfg, AudioFeatures) and cfg.windowed:
        return (cfg.shape[0],)
    if isinstance(cfg, VideoFeatures) and cfg.jpeg:
        return ()
    return None


def _stacked(cfg: Features, arrays: list[np.ndarray]) -> np.ndarray:
    row = span_row(cfg)
    if row is not None:
        return np.concatenate(arrays) if arrays else np.zeros((0, *row), np.uint8)
    return np.stack(arrays) if arrays else np.zeros((0, *cfg.shape), np.uint8)


class Entry(NamedTuple):
    """A cache item as the parent keeps it: its shard and its meta entry's fields (96 bytes a clip; the meta
    dict was 240: 24 MB at 100k clips)."""

    shard: Path | None  # None: no entry at all (see `reason`)
    row: int | None  # its row in the shard's `data`; None: no features (`reason`, `detail` say why)
    start: int | None = None  # arrays of their own length (`span_row`): where it starts in `data` ...
    frames: int | None = None  # ... and its length in rows
    fallback: int | None = None  # face crops: frames that fell back to the centre square
    seconds: float | None = None  # log-mels: the clip's decoded length (None in shards written before it)
    reason: str = ""
    detail: str = ""

    @classmethod
    def of(cls, shard: Path, meta: dict) -> Entry:
        """The entry of one item of a shard's meta list."""
        return cls(shard, meta.get("row"), meta.get("start"), meta.get("frames"), meta.get("fallback"),
                   meta.get("seconds"), meta.get("reason", ""), meta.get("detail", ""))

    @property
    def ok(self) -> bool:
        return self.row is not None


def item_array(data: np.ndarray, entry: Entry) -> np.ndarray:
    """One item's array from its shard's `data`, by its entry (a row, or a run of frames)."""
    return data[entry.row] if entry.frames is None else data[entry.start : entry.start + entry.frames]


def write_shard(path: Path, data: np.ndarray, meta: list[dict[str, object]], **extra: np.ndarray) -> Record:
    """Write a shard atomically with `extra` arrays beside `data`; its record. Raises OSError naming `path`."""
    buf = io.BytesIO()
    np.savez(buf, data=data, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **extra)
    return write_file(path, buf.getbuffer())


@dataclass(frozen=True)
class DamagedShard:
    """A shard that failed its check, deleted so that its clips are computed again."""

    key: str  # "split/name.npz", as the manifest names it
    problem: str
    ids: list[str] | None  # the clips it held, when the manifest knew them


def shard_key(split: str, shard: Path) -> str:
    return f"{split}/{shard.name}"


def read_shards(folder: Path, split: str, manifest: Manifest, *, full: bool = False
                ) -> tuple[dict[str, Entry], list[DamagedShard]]:
    """id -> entry of every item in a split's sound shards, and the damaged ones (deleted). A shard must match
    its record (`full`: every CRC-32), or without one parse in full and be recorded."""
    entries: dict[str, Entry] = {}
    damaged: list[DamagedShard] = []
    present = set()
    for shard in sorted(folder.glob("*.npz")):
        present.add(key := shard_key(split, shard))
        recorded = manifest.shard(key)
        problem = None
        try:
            if recorded is not None:
                problem, current = check_file(shard, recorded, full=full)
                if problem is None:
                    with np.load(shard) as z:  # reads the zip's directory and `meta`, not `data`
                        meta = json.loads(z["meta"].tobytes())
            else:
                raw = shard.read_bytes()
                with np.load(io.BytesIO(raw)) as z:
                    meta = json.loads(z["meta"].tobytes())
                    z["data"]  # read in full: the zip checks its CRC-32
                current = Record.of(raw).stamped(shard)
        # Anything that stops a shard from being read (a zip cut short, an empty file, bad JSON): recompute.
        except Exception as e:  # noqa: BLE001
            problem = f"unreadable ({type(e).__name__}: {str(e)[:120] or 'no detail'})"
        if problem is not None:
            damaged.append(DamagedShard(key, problem, manifest.shards.get(key, {}).get("ids")))
            shard.unlink(missing_ok=True)
            manifest.drop_shard(key)
            continue
        manifest.add_shard(key, current, [m["id"] for m in meta])  # a no-op when nothing changed
        entries.update((m["id"], Entry.of(shard, m)) for m in meta)
    for key in [k for k in manifest.shards if k.startswith(f"{split}/") and k not in present]:
        manifest.drop_shard(key)
    return entries, damaged
