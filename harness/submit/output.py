"""The submission folder: its files are staged together and replaced as one, and it says which run it holds.

A submission folder OUT holds prediction.csv, fallbacks.csv, bundle/ and bundle.tar.gz, plus
submission.json, the completion marker: the run id and the sha256 of each of those files. The four
outputs must never mix two runs, yet a folder cannot be renamed over four entries at once, so:

1. everything is written into one hidden staging folder `OUT/.submission.tmp-PID/`; the marker is
   written into it last, so a staging folder holding a marker is complete;
2. the commit removes OUT's marker first, renames each output from the staging folder into OUT
   (an output this submission does not make, such as the bundle of `submit(bundle=False)`, is removed),
   and renames the marker in last. The files are fsynced before the first rename.

So a folder with a marker whose digests match holds one run's outputs (`submitted_run`), and a
commit cut short (`kill -9`, power loss, or Ctrl-C / SIGTERM in the middle of the renames) leaves a
folder without a marker plus a staging folder that still holds the marker. The next submit into OUT first finishes such a commit (it replays the
renames that had not happened: roll forward) and removes what killed writers left behind (a
staging folder without a marker, `.bundle.tmp-PID/`, `.bundle.tar.gz.tmp-PID`, `.bundle.old-PID/`),
only for writers whose process is gone. Commits into one folder are serialised with a lock on it.

I/O errors (no space, read-only folder) propagate as OSError naming the path (OUT when the OS did
not name one), after the staging folder is removed: the folder is left as it was.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.bundle.format import ARCHIVE, FOLDER, MANIFEST
from harness.fileio import fsync_dir
from harness.fileio import pid_alive, remove_stale_temporaries, replace_dir, sha256, temp_name, write_text

PREDICTION = "prediction.csv"
FALLBACKS = "fallbacks.csv"
MARKER = "submission.json"
# The outputs in the order a commit moves them; the marker goes last.
OUTPUTS = (PREDICTION, FALLBACKS, ARCHIVE, FOLDER)
STAGE = "submission"  # staging folders are `fileio.temp_name(OUT / STAGE)`: `.submission.tmp-PID`
_STAGE_NAME = re.compile(rf"^\.{re.escape(STAGE)}\.tmp-(\d+)$")


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh staging folder in `out` to write the outputs into; committed on success, removed on error.

    The caller writes any of `OUTPUTS` into the yielded folder and then `write_marker`; leaving without
    a marker commits nothing. Killed writers' leftovers in `out` are dealt with first (see the module).

    Raises:
        OSError: an I/O error, naming a path.
    """
    out = Path(out)
    with _naming(out):
        out.mkdir(parents=True, exist_ok=True)
        with _locked(out):
            recover(out)
        stage = temp_name(out / STAGE)
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        committing = False
        try:
            yield stage
            if (stage / MARKER).is_file():
                _sync_tree(stage)
                with _locked(out):
                    committing = True
                    _commit(stage, out)
                    committing = False
        finally:
            # A commit cut short (Ctrl-C, SIGTERM) keeps its staging folder, marker and all, for the
            # next submit to roll forward; anything else staged is thrown away.
            if not committing:
                shutil.rmtree(stage, ignore_errors=True)


def write_marker(stage: Path, run_id: str, **extra: Any) -> dict[str, Any]:
    """Write the completion marker into `stage`: the run id and the sha256 of each staged output
    (the bundle by its manifest, which lists every file's sha256). Call it last."""
    files = {name: sha256(stage / name) for name in (PREDICTION, FALLBACKS, ARCHIVE) if (stage / name).is_file()}
    if (stage / FOLDER / MANIFEST).is_file():
        files[f"{FOLDER}/{MANIFEST}"] = sha256(stage / FOLDER / MANIFEST)
    marker = {"run_id": run_id, **extra, "files": files}
    write_text(stage / MARKER, json.dumps(marker, indent=2) + "\n")
    return marker


def submitted_run(out: Path) -> str | None:
    """The run whose outputs `out` holds, or None when the folder holds no complete submission (no
    marker, an output missing, or one whose sha256 is not the marker's)."""
    try:
        marker = json.loads((Path(out) / MARKER).read_text(encoding="utf-8"))
        files = marker["files"]
        if all((Path(out) / name).is_file() and sha256(Path(out) / name) == digest for name, digest in files.items()):
            return str(marker["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def recover(out: Path) -> list[Path]:
    """Finish the commits that killed submits left half-done in `out`, then remove their leftovers.

    Only writers whose process is gone are touched, and this process's own interrupted commit (it is
    not committing now: commits hold the folder's lock, as the caller does). Returns the staging
    folders rolled forward.
    """
    rolled = []
    for stage in sorted(out.iterdir()) if out.is_dir() else []:
        match = _STAGE_NAME.match(stage.name)
        if match is None or not stage.is_dir():
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and pid_alive(pid):
            continue
        if (stage / MARKER).is_file():
            _commit(stage, out)
            rolled.append(stage)
        shutil.rmtree(stage, ignore_errors=True)
    remove_stale_temporaries(out, recursive=False)
    return rolled


def _commit(stage: Path, out: Path) -> None:
    """Move the staged outputs into `out` under the marker protocol (see the module docstring).

    Replayable: an output already moved by an earlier, interrupted call is no longer in `stage` but
    is listed in the staged marker, and is left alone."""
    marker = json.loads((stage / MARKER).read_text(encoding="utf-8"))
    made = {name.split("/")[0] for name in marker["files"]}
    (out / MARKER).unlink(missing_ok=True)
    fsync_dir(out)  # the folder stops claiming a run before its outputs change
    for name in OUTPUTS:
        src, dest = stage / name, out / name
        if src.is_dir():
            replace_dir(src, dest)
        elif src.exists():
            os.replace(src, dest)
        elif name not in made and (dest.exists() or dest.is_symlink()):
            _remove(dest)  # an output of an earlier submission that this one does not make
    fsync_dir(out)
    os.replace(stage / MARKER, out / MARKER)
    fsync_dir(out)


def _remove(path: Path) -> None:
    """Remove a file or folder with a rename first, so that a kill leaves a stale `.old-PID` name."""
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    os.replace(path, old)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def _sync_tree(folder: Path) -> None:
    """fsync every file under `folder`, so that the renames of the commit never publish files whose
    bytes are not yet on disk (the bundle's files are written plainly into the staging folder)."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(folder)


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """An exclusive lock on the folder itself (no lock file left behind): two submits into one folder
    commit one after the other."""
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def _naming(out: Path) -> Iterator[None]:
    """An OSError about the output folder names a path the user knows: a write that hit a full disk
    names no path at all, and one in the staging folder a hidden temporary; both name `out` instead."""
    try:
        yield
    except OSError as e:
        if e.errno is not None and (e.filename is None or _hidden_inside(e.filename, out)):
            raise OSError(e.errno, os.strerror(e.errno), str(out)) from None
        raise


def _hidden_inside(name: object, folder: Path) -> bool:
    """Whether path `name` lies under `folder` below a hidden (staging or temporary) entry."""
    try:
        relative = Path(os.fsdecode(name)).absolute().relative_to(folder.absolute())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return any(part.startswith(".") for part in relative.parts)
