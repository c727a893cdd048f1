"""Where the running code came from (git checkout, versions of the packages that shape results), as plain
values: runs record them as tags, and the bundle reads the run's commit back (`harness.bundle.source`).
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import subprocess
from pathlib import Path

GIT_COMMIT = "git.commit"
GIT_DIRTY = "git.dirty"
VERSION_PREFIX = "version."  # version.<package>: the installed version of each package that shapes results
UNKNOWN = "unknown"
_VERSIONED_PACKAGES = ("torch", "timm", "mlflow", "optuna", "numpy", "av", "librosa", "harness")


def checkout() -> Path:
    """The folder holding the running harness package (a checkout, for an editable install)."""
    return Path(__file__).resolve().parents[1]


def git_state(root: Path | None = None) -> dict[str, str]:
    """Commit and dirtiness (untracked files count) of the checkout at `root`, default the package's; or unknown."""
    root = root or checkout()
    commit = run_git(root, "rev-parse", "HEAD")
    status = run_git(root, "status", "--porcelain")
    if commit is None or status is None:
        return {GIT_COMMIT: UNKNOWN, GIT_DIRTY: UNKNOWN}
    return {GIT_COMMIT: commit, GIT_DIRTY: "true" if status else "false"}


def run_git(root: Path, *args: str) -> str | None:
    """`git -C root ARGS`'s output, or None without git or outside a checkout."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def package_versions() -> dict[str, str]:
    """`version.<name>` of the installed packages that shape results, from metadata (nothing imported)."""
    versions = {}
    for name in _VERSIONED_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[f"{VERSION_PREFIX}{name}"] = importlib.metadata.version(name)
    return versions
