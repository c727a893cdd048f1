"""How the feature cache writes its files and knows them again: atomic writes, and `manifest.json` holding each
shard's and pack's size, mtime and CRC-32 (3.9 GB/s; sha256 1.7) and a shard's clip ids. Checks are quick, as
`make`'s: a new size is damage, a moved mtime has its CRC-32 read; `verify=True` reads every byte.
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
    """A file as its writer left it: size, CRC-32 and, once on disk, mtime."""

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
    """(None, the record to keep) or (what differs, `recorded`); unless `full`, CRC-32 only when the mtime moved."""
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
    """Write `data` to `path` atomically and return its record; OSError naming `path`, no temporary left."""
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
    """A feature folder's records: "split/name.npz" -> record and clip ids; split -> its pack's array and index."""

    shards: dict[str, dict] = field(default_factory=dict)
    packs: dict[str, dict] = field(default_factory=dict)
    changed: bool = False  # since loaded or saved

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        """The folder's manifest; empty when there is none or it cannot be read."""
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

    def _set(self, table: dict[str, dict], key: str, entry: dict) -> None:
        if table.get(key) != entry:
            table[key] = entry
            self.changed = True

    def shard(self, key: str) -> Record | None:
        entry = self.shards.get(key)
        return Record(entry["size"], entry["crc32"], entry.get("mtime_ns")) if entry else None

    def add_shard(self, key: str, record: Record, ids: list[str]) -> None:
        self._set(self.shards, key, {**asdict(record), "ids": ids})

    def drop_shard(self, key: str) -> None:
        self.changed |= self.shards.pop(key, None) is not None

    def pack(self, split: str) -> tuple[Record, Record] | None:
        """The (array, index) records of a split's pack."""
        entry = self.packs.get(split)
        return (Record(**entry["array"]), Record(**entry["index"])) if entry else None

    def add_pack(self, split: str, array: Record, index: Record) -> None:
        self._set(self.packs, split, {"array": asdict(array), "index": asdict(index)})
