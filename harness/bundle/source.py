"""The harness source a bundle carries: `git archive` of the run's commit (harness/**.py, .toml, .md and
pyproject.toml only), so `pip install .` in the image installs the code the run trained with.

Never today's code instead: a run whose commit is unknown or not in this repository is refused before
anything is scored (`check_commit`, BundleError, exit 2), saying what to do.
"""
from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import harness
from harness.bundle_format import SOURCE_PACKAGE, BundleError
from harness.provenance import run_git
from harness.tracking import tags as T

SOURCE_SUFFIXES = frozenset({".py", ".toml", ".md"})
PYPROJECT = "pyproject.toml"


def repository() -> Path:
    """The checkout holding the running harness package."""
    return Path(harness.__file__).resolve().parent.parent


def check_commit(run: Any) -> str:
    """The run's git commit; BundleError when it recorded none or this repository does not hold it."""
    run_id, commit = run.info.run_id, run.data.tags.get(T.GIT_COMMIT, "unknown")
    again = f"train it again from this checkout (`harness train --like {run_id}`) and submit that run"
    if commit in ("", "unknown"):
        raise BundleError(f"run {run_id} records no git commit (it was not trained from a git checkout), so the "
                          f"code it trained with cannot be bundled: {again}")
    if run_git(repository(), "cat-file", "-e", f"{commit}^{{commit}}") is None:
        raise BundleError(f"run {run_id} trained at commit {commit}, which {repository()} does not hold: "
                          f"fetch it (`git fetch`), or {again}")
    return commit


def copy_source(dest: Path, run: Any) -> str:
    """The source at the run's commit into `dest` (BundleError: see `check_commit`); returns the model card's note."""
    commit, dirty = check_commit(run), run.data.tags.get(T.GIT_DIRTY, "unknown")
    archive = subprocess.run(["git", "-C", str(repository()), "archive", "--format=tar", commit],
                             capture_output=True, check=True, timeout=60).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and is_source(m.name)]
        tar.extractall(dest, members=members, filter="data")
    note = f"git archive of commit {commit}"
    if dirty == "true":
        note += " (the run started from a tree with uncommitted changes, which this copy does not hold)"
    elif dirty != "false":
        note += " (whether the run's tree had uncommitted changes is unknown)"
    return note


def is_source(relative: str) -> bool:
    """Whether a path (relative to the checkout, '/'-separated) belongs in a bundle's source copy."""
    if relative == PYPROJECT:
        return True
    parts = relative.split("/")
    return (parts[0] == SOURCE_PACKAGE and Path(relative).suffix in SOURCE_SUFFIXES
            and not any(p == "__pycache__" or p.endswith(".egg-info") for p in parts))
