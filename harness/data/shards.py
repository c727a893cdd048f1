"""The worker side of the feature cache, and the shard files it writes.

A worker computes the features of a chunk of up to 8 clips of one split and writes them as one shard,
`shards/<split>/<first id>.npz`: `data`, the uint8 arrays of the clips that worked, and `meta`, a JSON
list with each clip's id, its row in `data` or its failure (reason, detail), and for face crops the
frames that fell back to the centre square. Arrays of their own length (windowed log-mels, JPEG-stored
crops: `span_row`) lie end to end in `data`, each entry with its `start` and length (`frames`, in rows). The shard is written with `integrity.write_file`
(temporary, fsync, rename) and its size and CRC-32 go back to the parent for the manifest.

`read_shards` is the parent's inventory of a split's shards: each is checked against the manifest
(or, when it has no record yet, parsed in full) and a shard that fails is deleted and reported, so its
clips are computed again.The pool that runs them is `harness.data.workers`' (its workers stop with the parent).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from harness.config import AudioFeatures, VideoFeatures
from harness.data.integrity import Manifest, Record, check_file, write_file

Features = AudioFeatures | VideoFeatures


def init_worker() -> None:
    """Set up a feature worker: one BLAS and OpenCV thread, and glibc keeping freed memory."""
    # BLAS threads spin-wait and starve the decoder on small machines: one thread per process.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    import cv2

    cv2.setNumThreads(0)  # OpenCV's own thread pool (resize, DFT) would fight the other worker too
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    """Ask glibc to reuse freed memory instead of returning it to the kernel.

    Each clip allocates a dozen buffers of 0.5-3 MB (samples, frames, spectrum); by default glibc
    maps and unmaps them, and first-touch page faults (about 350 a clip) cost 0.5 ms of the
    10 ms a clip takes. Keeping up to 256 MB mapped per worker removes them. No-op off glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    mallopt(m_mmap_threshold, 64 << 20)
    mallopt(m_trim_threshold, 256 << 20)
    mallopt(m_top_pad, 64 << 20)


def extract(path: Path | str, cfg: Features) -> tuple[np.ndarray, int | None]:
    """One clip's array as a model reads it, made by the settings' kind: a log-mel image, or face
    crops with the number of frames that fell back to the centre square (None for audio). Crops
    stored as JPEG are sent through the JPEG round trip, as training decodes them. Raises a MediaError."""
    array, fallback = stored(path, cfg)
    if isinstance(cfg, VideoFeatures) and cfg.jpeg:
        from harness.data.jpeg_crops import JpegCrops

        array = JpegCrops(array, np.array([[0, len(array)]]), cfg.shape)[0]
    return array, fallback


def stored(path: Path | str, cfg: Features) -> tuple[np.ndarray, int | None]:
    """What the cache stores of one clip: `extract`'s array, but JPEG-stored crops as their encoded
    blob (`harness.data.jpeg_crops.encode_clip`). Raises a MediaError."""
    if isinstance(cfg, VideoFeatures):
        from harness.data.faces import video_features

        faces = video_features(path, cfg)
        if cfg.jpeg:
            from harness.data.jpeg_crops import encode_clip

            return encode_clip(faces.crops, cfg.crop_quality), faces.fallback
        return faces.crops, faces.fallback
    from harness.data.features import audio_features

    return audio_features(path, cfg), None


@dataclass(frozen=True)
class ShardResult:
    """What a worker sends back: the shard, its record, its meta, and its data when that is log-mels
    the parent still keeps (face crops, 300 KB a clip, and log-mels past the parent's budget are read
    back from the shard instead), so that the parent packs without reading the shard again."""

    path: str
    record: Record
    meta: list[dict]
    data: np.ndarray | None


def extract_chunk(cfg: Features, folder: str, jobs: list[tuple[str, str]], *, send_data: bool = True) -> ShardResult:
    """Compute each (clip, id) of one split and write them as one shard; the log-mels go back too
    unless `send_data` is false (the parent keeps a bounded number for packing)."""
    from harness.data.media import MediaError

    arrays: list[np.ndarray] = []
    meta: list[dict[str, object]] = []
    for clip, stem in jobs:
        try:
            if isinstance(cfg, AudioFeatures) and cfg.codec_variants:
                from harness.data.features import audio_features_with_variants

                array, variants = audio_features_with_variants(clip, cfg, seed=int(stem[:8], 16))
                fallback = None
            else:
                (array, fallback), variants = stored(clip, cfg), []
        except MediaError as e:
            meta.append({"id": stem, "reason": e.reason, "detail": e.detail})
            continue
        for k, item in enumerate([array, *variants]):
            # A codec variant is an entry of its own, `<id>.v<k>`, tied to its source's id.
            entry = {"id": stem, "row": len(arrays), "fallback": fallback} if k == 0 else \
                {"id": variant_id(stem, k), "row": len(arrays), "source": stem}
            if span_row(cfg) is not None:  # whole log-mels or JPEG blobs of different lengths, end to end
                entry.update(start=sum(len(a) for a in arrays), frames=len(item))
            meta.append(entry)
            arrays.append(item)
    data = _stacked(cfg, arrays)
    shard = Path(folder) / f"{jobs[0][1]}.npz"
    record = write_shard(shard, data, meta)
    return ShardResult(str(shard), record, meta, data if send_data and isinstance(cfg, AudioFeatures) else None)


def variant_id(stem: str, k: int) -> str:
    """The cache id of codec variant `k` (1-based) of the clip whose id is `stem`."""
    return f"{stem}.v{k}"


def span_row(cfg: Features) -> tuple[int, ...] | None:
    """The shape of one row when each clip's array has its own length and clips are stored end to end
    (`start,frames` in rows): a log-mel frame (H,) for windowed log-mels (time-major), a byte () for
    JPEG-stored crops. None: one array of `cfg.shape` per clip."""
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
    """A cache item as the parent keeps it: its shard and the fields of its meta entry.

    One small tuple an item: the meta dict and a tuple around it were 240 bytes of the parent's
    memory a clip (24 MB at 100k clips), this is 96."""

    shard: Path | None  # None: no entry at all (see `reason`)
    row: int | None  # its row in the shard's `data`; None: no features (`reason`, `detail` say why)
    start: int | None = None  # arrays of their own length (`span_row`): where it starts in `data` ...
    frames: int | None = None  # ... and its length in rows
    fallback: int | None = None  # face crops: frames that fell back to the centre square
    reason: str = ""
    detail: str = ""

    @classmethod
    def of(cls, shard: Path, meta: dict) -> Entry:
        """The entry of one item of a shard's meta list."""
        return cls(shard, meta.get("row"), meta.get("start"), meta.get("frames"), meta.get("fallback"),
                   meta.get("reason", ""), meta.get("detail", ""))

    @property
    def ok(self) -> bool:
        return self.row is not None


def item_array(data: np.ndarray, entry: Entry) -> np.ndarray:
    """One item's array from its shard's `data`, by its entry (a row, or a run of frames)."""
    if entry.frames is not None:
        return data[entry.start : entry.start + entry.frames]
    return data[entry.row]


def write_shard(path: Path, data: np.ndarray, meta: list[dict[str, object]]) -> Record:
    """Write a shard atomically (fsynced); its record. Raises OSError naming `path`."""
    buf = io.BytesIO()
    np.savez(buf, data=data, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
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
    """id -> entry for every item in a split's sound shards, and the damaged ones.

    A shard with a record must match it (`integrity.check_file`: quick, or every CRC-32 when `full`);
    a shard without one (written by a run interrupted before it saved the manifest, or before
    manifests existed) must parse in full, which checks its zip members' own CRC-32s, and is then
    recorded. A damaged shard is deleted; the manifest forgets shards that are gone."""
    entries: dict[str, Entry] = {}
    damaged: list[DamagedShard] = []
    present = set()
    for shard in sorted(folder.glob("*.npz")):
        key = shard_key(split, shard)
        present.add(key)
        recorded = manifest.shard(key)
        try:
            if recorded is not None:
                problem, current = check_file(shard, recorded, full=full)
                if problem is not None:
                    raise _Mismatch(problem)
                with np.load(shard) as z:  # reads the zip's directory and `meta`, not `data`
                    meta = json.loads(z["meta"].tobytes())
            else:
                raw = shard.read_bytes()
                with np.load(io.BytesIO(raw)) as z:
                    meta = json.loads(z["meta"].tobytes())
                    z["data"]  # read in full: the zip checks its CRC-32
                current = Record.of(raw).stamped(shard)
        # Anything that stops a shard from being read (a zip cut short, an empty file, bad JSON)
        # means the same: a derived file to compute again.
        except Exception as e:  # noqa: BLE001
            problem = str(e) if isinstance(e, _Mismatch) else f"unreadable ({type(e).__name__}: {str(e)[:120] or 'no detail'})"
            ids = manifest.shards.get(key, {}).get("ids")
            damaged.append(DamagedShard(key, problem, ids))
            shard.unlink(missing_ok=True)
            manifest.drop_shard(key)
            continue
        manifest.add_shard(key, current, [m["id"] for m in meta])  # a no-op when nothing changed
        entries.update((m["id"], Entry.of(shard, m)) for m in meta)
    for key in [k for k in manifest.shards if k.startswith(f"{split}/") and k not in present]:
        manifest.drop_shard(key)
    return entries, damaged


class _Mismatch(Exception):
    """A shard that reads but is not what was written."""
