"""How the feature cache writes its files and knows them again: atomic writes that name their path
when they fail, and a manifest of each file's size, modification time and CRC-32.

`manifest.json` in a feature folder records, for every shard (`train/<id>.npz`) and every packed split
(`train.npy` with its index `train.csv`), the size in bytes, the mtime and the CRC-32 the writer
computed from the bytes it wrote (and for a shard the ids of the clips it holds). `prepare` checks
every shard and pack against it before using them; whatever does not match is recomputed (shards)
or repacked (packs) and named in the report.

The check is quick by default, as `make` and `rsync` judge files: one stat. A size that differs (a
file cut short, a zero-byte file: what a crash after an un-synced rename or a full disk leaves) is
damage; a file whose mtime moved (copied, touched, rewritten) has its CRC-32 computed, and is damage
if that differs. A full check (`prepare_features(verify=True)`) computes every CRC-32: it also finds
bytes changed in place under an unchanged mtime (failing media), at the cost of reading the whole
cache, which a quick check spares every `train` (it prepares first): 3 GB of log-mels, 30 GB of face
crops for 100k clips. Readers outside `prepare` (`load_split`) check sizes and raise `CacheDamaged`.

CRC-32 rather than a cryptographic digest: it guards against damage, not against an adversary, and
zlib computes it at about 3.9 GB/s here (sha256: 1.7 GB/s). A file written before the manifest
existed is verified by parsing it fully (a shard's zip members carry their own CRC-32), then recorded.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from harness.errors import JobFailed
from harness.fileio import atomic_write

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


class CacheDamaged(JobFailed):
    """A cache file does not match what was recorded when it was written (exit 1, one line)."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}: the feature cache is damaged; run `harness prepare` again "
                         "(it recomputes what is damaged)")
        self.path = Path(path)


@dataclass(frozen=True)
class Record:
    """A file as its writer left it: size in bytes, CRC-32 of the content, and mtime once on disk."""

    size: int
    crc32: int
    mtime_ns: int | None = None

    @classmethod
    def of(cls, data: bytes | memoryview) -> Record:
        return cls(len(data), zlib.crc32(data))

    @classmethod
    def of_file(cls, path: Path) -> Record:
        crc, size = 0, 0
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                crc = zlib.crc32(block, crc)
                size += len(block)
        return cls(size, crc, path.stat().st_mtime_ns)

    def stamped(self, path: Path) -> Record:
        """This record with the mtime of `path`, just written with this content."""
        return Record(self.size, self.crc32, path.stat().st_mtime_ns)


def check_file(path: Path, recorded: Record, *, full: bool = False) -> tuple[str | None, Record]:
    """Whether `path` is still the file `recorded` describes: (None, the record to keep) or
    (what differs, `recorded`). Quick unless `full`: the CRC-32 is read only when the mtime moved."""
    st = path.stat()
    if st.st_size != recorded.size:
        return f"{st.st_size} bytes, {recorded.size} written", recorded
    if not full and st.st_mtime_ns == recorded.mtime_ns:
        return None, recorded
    found = Record.of_file(path)
    if found.crc32 != recorded.crc32:
        return "content differs from what was written (CRC-32)", recorded
    return None, found  # the same bytes under a new mtime (a copy): known by it from now on


def write_file(path: Path, data: bytes | memoryview) -> Record:
    """`path` holds exactly `data` (temporary, fsync, rename), or what it held before; returns its record.

    Raises OSError naming `path` (no space, read-only, permission); no temporary is left behind."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Record.of(data).stamped(path)


class ChecksummedWriter:
    """A file object's write() that keeps the size and CRC-32 of what went through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.size, self.crc = f, 0, 0

    def write(self, data: bytes | memoryview) -> None:
        self.f.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data) if isinstance(data, bytes) else data.nbytes

    @property
    def record(self) -> Record:
        return Record(self.size, self.crc)


@dataclass
class Manifest:
    """The records of one feature folder. `shards`: "split/name.npz" -> record and clip ids;
    `packs`: split -> records of its array and index."""

    shards: dict[str, dict] = field(default_factory=dict)
    packs: dict[str, dict] = field(default_factory=dict)
    changed: bool = False  # since loaded or saved

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        """The folder's manifest; empty when there is none or it cannot be read (then every file is
        verified by parsing it, and recorded again)."""
        try:
            data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            if data.get("format") != MANIFEST_FORMAT:
                return cls()
            return cls(shards=dict(data["shards"]), packs=dict(data["packs"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return cls()

    def save(self, folder: Path) -> None:
        """Write the manifest (atomically) when it changed."""
        if self.changed:
            text = json.dumps({"format": MANIFEST_FORMAT, "shards": self.shards, "packs": self.packs}, sort_keys=True)
            write_file(folder / MANIFEST, text.encode())
            self.changed = False

    def shard(self, key: str) -> Record | None:
        entry = self.shards.get(key)
        return Record(entry["size"], entry["crc32"], entry.get("mtime_ns")) if entry else None

    def add_shard(self, key: str, record: Record, ids: list[str]) -> None:
        entry = {"size": record.size, "crc32": record.crc32, "mtime_ns": record.mtime_ns, "ids": ids}
        if self.shards.get(key) != entry:
            self.shards[key] = entry
            self.changed = True

    def drop_shard(self, key: str) -> None:
        if self.shards.pop(key, None) is not None:
            self.changed = True

    def pack(self, split: str) -> tuple[Record, Record] | None:
        """The (array, index) records of a split's pack."""
        entry = self.packs.get(split)
        if not entry:
            return None
        return Record(**entry["array"]), Record(**entry["index"])

    def add_pack(self, split: str, array: Record, index: Record) -> None:
        entry = {"array": asdict(array), "index": asdict(index)}
        if self.packs.get(split) != entry:
            self.packs[split] = entry
            self.changed = True
