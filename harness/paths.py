"""Project-anchored locations, so every command finds the same store whatever the working folder.

The project root is `HARNESS_HOME` when set, else the checkout holding this package (an editable
install), else the current folder. Everything else hangs off it unless an environment variable says
otherwise (`HARNESS_CACHE`, `MLFLOW_TRACKING_URI`).
"""
from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    env = os.environ.get("HARNESS_HOME")
    if env:
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout
    return Path.cwd().resolve()


def demo_data_dir() -> Path:
    return project_root() / "data" / "demo"


def cache_dir() -> Path:
    env = os.environ.get("HARNESS_CACHE")
    return Path(env).expanduser().resolve() if env else project_root() / ".cache" / "features"


def mlruns_dir() -> Path:
    return project_root() / "mlruns"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else SQLite at an absolute path under mlruns/."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{mlruns_dir() / 'mlflow.db'}"


def artifact_root() -> str:
    return (mlruns_dir() / "artifacts").as_uri()


def studies_dir() -> Path:
    return project_root() / "studies"
