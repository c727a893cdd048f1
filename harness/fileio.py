"""Writes that a crash cannot leave half-done, one file lock, CSV text, and content digests.

Every file or folder the harness writes goes through `atomic_write` or `atomic_dir`: staged beside it,
made durable, put in place in one step. A crash leaves at most `.<name>.tmp-<pid>` (or `.<name>.old-<pid>`),
which `remove_stale_temporaries` and the next `atomic_dir` delete once that process is gone.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import functools
import glob
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
    with contextlib.suppress(OSError):
        fsync_file(folder)


def fsync_file(path: Path) -> None:
    """fsync a file or folder (OSError when it cannot)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: Path | str, mode: str = "wb", *, encoding: str | None = None, sync: bool = True) -> Iterator[IO]:
    """A temporary beside `path` to write; on success fsynced and renamed onto `path`, on any error removed
    (an OSError naming no file is raised again naming `path`). `sync=False`: inside an `atomic_dir`."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, mode, encoding=encoding or (None if "b" in mode else "utf-8")) as f:
            yield f
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None:  # the kernel's ENOSPC from write() names no file: name the destination
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    if sync:
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
    """Yield a staging folder to fill; swap it in for `dest` on success (`swap_in`), else remove it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(dest.parent):  # not while another writer's rename pair has `dest` aside
        recover_dir(dest)
    stage = temp_name(dest)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
        sync_tree(stage)
        with FileLock(dest.parent):
            swap_in(stage, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # after the swap: the folder `dest` held


def swap_in(stage: Path, dest: Path) -> None:
    """Put folder `stage` at `dest` in one step (renameat2 RENAME_EXCHANGE, else renames via `.dest.old-PID`)."""
    if not (dest.exists() or dest.is_symlink()):
        os.rename(stage, dest)
    else:
        try:
            _exchange(stage, dest)
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EPERM):
                raise
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.rename(dest, old)
            os.rename(stage, dest)
            os.rename(old, stage)
    fsync_dir(dest.parent)


@functools.cache
def _renameat2():  # noqa: ANN202 - a ctypes function, or None
    import ctypes  # here, not at the top: `harness --help` imports this module

    with contextlib.suppress(AttributeError, OSError):
        return ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+; absent on macOS and musl
    return None


def _exchange(a: Path, b: Path) -> None:
    """Swap the names `a` and `b` atomically; OSError (ENOSYS where there is no renameat2)."""
    import ctypes

    renameat2, at_fdcwd, rename_exchange = _renameat2(), -100, 2
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", str(b))
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(b))


def recover_dir(dest: Path) -> list[Path]:
    """Remove what dead writers of `dest` left beside it (a lone `.dest.old-PID` is renamed back); the removed."""
    removed = []
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.(tmp|old)-(\d+)")
    for path in sorted(dest.parent.glob(f".{glob.escape(dest.name)}.*")) if dest.parent.is_dir() else []:
        match = pattern.fullmatch(path.name)
        if match is None or (int(match[2]) != os.getpid() and pid_alive(int(match[2]))):
            continue
        if match[1] == "old" and not (dest.exists() or dest.is_symlink()):
            os.rename(path, dest)
            continue
        _remove(path)
        removed.append(path)
    return removed


def sync_tree(folder: Path) -> None:
    """fsync every file under `folder` and the folder itself: once, before it is swapped in."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            fsync_file(path)
    fsync_dir(folder)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class FileLock:
    """An exclusive flock on a file (created when missing) or a folder, dropped when the process dies."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDONLY if self.path.is_dir() else os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (someone else's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_temporaries(folder: Path, *, recursive: bool = True) -> list[Path]:
    """Delete what dead writers left in `folder` (`*.tmp-PID*`, `.*.old-PID`); what was removed."""
    removed = []
    for path in list(folder.rglob("*") if recursive else folder.iterdir()) if folder.is_dir() else []:
        match = TEMP_PATTERN.search(path.name) or re.search(r"\.old-(\d+)$", path.name)
        if match is not None and not pid_alive(int(match.group(1))):
            _remove(path)
            removed.append(path)
    return removed


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """CSV text with `header` then `rows`, '\\n' line ends (the challenge's files use them)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    return buf.getvalue()


def dict_csv_text(rows: Iterable[dict[str, object]], fields: Sequence[str]) -> str:
    """CSV text of dict rows in `fields` order; missing keys are empty."""
    return csv_text(fields, ([row.get(f, "") for f in fields] for row in rows))


def sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
