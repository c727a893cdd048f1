"""The harness source a bundle carries: the package at the run's commit, with pyproject.toml, so that
`pip install .` in the bundle's image installs the code the run trained with.

`git archive <commit>` when the commit is in the repository holding the running package; else the
running package's own files as they are now, with a note in the model card saying so. Only .py,
.toml and .md files travel (no caches, no eggs, no data).
"""
from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import harness
from harness.bundle.format import SOURCE_PACKAGE
from harness.fileio import write_text

SOURCE_SUFFIXES = frozenset({".py", ".toml", ".md"})
# Files beside the package that travel with it (pyproject.toml names README.md as its readme).
PROJECT_FILES = ("pyproject.toml", "README.md")


def package_dir() -> Path:
    """The folder of the running harness package."""
    return Path(harness.__file__).resolve().parent


def copy_source(dest: Path, commit: str, dirty: str) -> str:
    """The harness package (.py/.toml/.md only) with pyproject.toml into `dest`.

    Args:
        dest: the bundle (or any) folder; `harness/` and pyproject.toml are written into it.
        commit: the run's git commit, or "unknown".
        dirty: "true", "false" or "unknown": whether the run's tree had uncommitted changes.

    Returns:
        A note on where the copy came from, for the model card.
    """
    from harness import tracking

    package = package_dir()
    repo = package.parent
    known = commit not in ("", "unknown") and tracking.run_git(repo, "cat-file", "-e", f"{commit}^{{commit}}") is not None
    if known:
        note = _from_git(dest, repo, commit, dirty)
        if not (dest / SOURCE_PACKAGE / "predict.py").is_file():
            shutil.copyfile(package / "predict.py", dest / SOURCE_PACKAGE / "predict.py")
            note += "; harness/predict.py, which the commit predates, added from the current tree for api.py"
    else:
        _from_tree(dest, package)
        why = "the run's commit is unknown" if commit in ("", "unknown") else f"commit {commit} is not in {repo}"
        note = f"{why}: the harness as it is now in {package}, which may differ from the code the run trained with"
    if not (dest / "pyproject.toml").is_file():
        write_text(dest / "pyproject.toml", _minimal_pyproject())
        note += "; pyproject.toml written by harness submit (none beside the package)"
    if not (dest / "README.md").is_file():  # pyproject.toml names it as the package's readme
        from harness.bundle.templates import README

        write_text(dest / "README.md", README)
    return note


def _from_git(dest: Path, repo: Path, commit: str, dirty: str) -> str:
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit],
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


def _from_tree(dest: Path, package: Path) -> None:
    repo = package.parent
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(repo).as_posix()
        if path.is_file() and is_source(relative):
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    for name in PROJECT_FILES:
        if (repo / name).is_file():
            shutil.copyfile(repo / name, dest / name)


def is_source(relative: str) -> bool:
    """Whether a path (relative to the checkout, '/'-separated) belongs in a bundle's source copy."""
    if relative in PROJECT_FILES:
        return True
    parts = relative.split("/")
    return (parts[0] == SOURCE_PACKAGE and Path(relative).suffix in SOURCE_SUFFIXES
            and not any(p == "__pycache__" or p.endswith(".egg-info") for p in parts))


def _minimal_pyproject() -> str:
    return ('[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
            f'[project]\nname = "harness"\nversion = "{harness.__version__}"\nrequires-python = ">=3.10"\n\n'
            '[tool.setuptools.packages.find]\ninclude = ["harness*"]\n')
