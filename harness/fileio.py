"""Writes that a crash cannot leave half-done, CSV text, and content digests.

Every file or folder the harness produces goes through `atomic_write` or `atomic_dir`: the content
is written under a hidden temporary name in the destination's folder (same filesystem, so the final
rename is atomic), flushed and fsynced, then renamed over the destination, and the folder entry is
fsynced too. A reader sees the old content or the new, never a mix; a crash leaves at most a
temporary whose name carries the writer's pid, which `remove_stale_temporaries` deletes once that
process is gone.

Temporary names: `.<name>.tmp-<pid>` (file or folder). The pattern is shared with the cache's
cleanup, so one rule finds every leftover.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

TEMP_PATTERN = re.compile(r"\.tmp-(\d+)")


def temp_name(path: Path) -> Path:
    """The hidden sibling a writer stages `path` under: `.name.tmp-PID`."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    """fsync a folder so a rename inside it is durable (best effort: some filesystems refuse)."""
    # The rename is durable only once the folder entry is on disk. Some filesystems refuse: best effort.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: Path | str, mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary beside `path` for writing; on success fsync it and rename it onto `path`.

    On any error (or Ctrl-C) the temporary is removed and `path` is untouched; an OSError that names
    no file (a full disk during write) is raised again naming `path`.

    Example:
        >>> with atomic_write(Path("/tmp/x.txt"), "w", encoding="utf-8") as f:
        ...     _ = f.write("hello")
    """
    path = Path(path)
    tmp = temp_name(path)
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None:  # the kernel's ENOSPC from write() names no file: name the destination
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_bytes(path: Path | str, data: bytes) -> Path:
    """`path` holds exactly `data`, or (after a crash) what it held before."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: Path | str, text: str) -> Path:
    """`path` holds exactly `text` (UTF-8), or (after a crash) what it held before."""
    return write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(dest: Path | str) -> Iterator[Path]:
    """Build a folder under a temporary name, then swap it in for `dest` with renames only.

    Yields the staging folder to fill. A reader sees the old folder or the new one; on error the
    staging folder is removed and `dest` is untouched.
    """
    dest = Path(dest)
    stage = temp_name(dest)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        yield stage
        replace_dir(stage, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def replace_dir(stage: Path, dest: Path) -> None:
    """Put folder `stage` at `dest`, replacing what is there, with renames only."""
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(stage, dest)
    fsync_dir(dest.parent)
    shutil.rmtree(old, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (someone else's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path, *, recursive: bool = True) -> list[Path]:
    """Delete what interrupted writers left in `folder` (`*.tmp-PID*`, `.*.old-PID`) whose writer is gone.

    The files of a writer still at work (another process on the same folder) are left alone.
    Returns what was removed.
    """
    removed = []
    if not folder.is_dir():
        return removed
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    for path in list(candidates):
        match = TEMP_PATTERN.search(path.name) or re.search(r"\.old-(\d+)$", path.name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """CSV text with `header` then `rows`, '\\n' line ends (the challenge's files use them)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def dict_csv_text(rows: Iterable[dict[str, object]], fields: Sequence[str]) -> str:
    """CSV text of dict rows in `fields` order; missing keys are empty."""
    return csv_text(fields, ([row.get(f, "") for f in fields] for row in rows))


def sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
