"""The submission folder OUT: prediction.csv, fallbacks.csv, bundle/, bundle.tar.gz and submission.json (the run
id, each file's sha256), built whole beside OUT and swapped in (`fileio.atomic_dir`): never two runs mixed, a
killed submit leaves the old or the new whole. OUT must be new, empty or a submission folder; an I/O error is
an OSError naming OUT, left as it was.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.bundle_format import ARCHIVE, FOLDER, MANIFEST
from harness.errors import BadInput
from harness.fileio import TEMP_PATTERN, atomic_dir, sha256

PREDICTION = "prediction.csv"
FALLBACKS = "fallbacks.csv"
MARKER = "submission.json"
OUTPUTS = (PREDICTION, FALLBACKS, ARCHIVE, FOLDER, MARKER)  # what a submission folder may hold


def check_folder(out: Path) -> None:
    """BadInput for an OUT holding anything but a submission's files (up to three named): the swap would delete them."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out}: not a folder; give --out a new, empty or submission folder")
    # Hidden temporaries an older writer left inside OUT go with the old folder.
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS and not (
        p.name.startswith(".") and (TEMP_PATTERN.search(p.name) or ".old-" in p.name))) if out.is_dir() else []
    if foreign:
        named = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise BadInput(f"{out} holds files that are not a submission's ({named}); the submission replaces the whole "
                       "folder: give --out a new, empty or submission folder")


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh staging folder for the outputs and `write_marker`, swapped in for `out` on success."""
    out = Path(out).resolve() if Path(out).is_symlink() else Path(out)  # swap the folder a link points to, not the link
    with _naming(out):
        check_folder(out)
        with atomic_dir(out) as stage:
            yield stage


def write_marker(stage: Path, run_id: str, **extra: Any) -> dict[str, Any]:
    """Write submission.json into `stage`, last: the run id and each staged output's sha256 (the bundle's manifest's)."""
    names = (PREDICTION, FALLBACKS, ARCHIVE, f"{FOLDER}/{MANIFEST}")
    files = {name: sha256(stage / name) for name in names if (stage / name).is_file()}
    marker = {"run_id": run_id, **extra, "files": files}
    (stage / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return marker


def submitted_run(out: Path) -> str | None:
    """The run whose outputs `out` holds; None: no marker, an output missing, or one edited (sha256 differs)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        marker = json.loads((Path(out) / MARKER).read_text(encoding="utf-8"))
        if all((Path(out) / name).is_file() and sha256(Path(out) / name) == digest for name, digest in marker["files"].items()):
            return str(marker["run_id"])
    return None


@contextlib.contextmanager
def _naming(out: Path) -> Iterator[None]:
    """An OSError naming no path (a full disk) or the hidden staging or set-aside folder (`.OUT.tmp-PID`,
    `.OUT.old-PID`) or below it names `out` instead."""
    try:
        yield
    except OSError as e:
        try:
            parts = Path(os.fsdecode(e.filename)).absolute().relative_to(out.absolute().parent).parts
        except (TypeError, ValueError):
            parts = ()
        if e.errno is not None and (e.filename is None or (parts and parts[0].startswith(f".{out.name}."))):
            raise OSError(e.errno, os.strerror(e.errno), str(out)) from None
        raise
