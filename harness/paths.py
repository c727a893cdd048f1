"""Project-anchored locations: the root is `HARNESS_HOME`, else the checkout holding this package, else
the current folder; the rest hangs off it unless `HARNESS_CACHE` or `MLFLOW_TRACKING_URI` says otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    if env := os.environ.get("HARNESS_HOME"):
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parent.parent
    return checkout if (checkout / "pyproject.toml").is_file() else Path.cwd().resolve()


def demo_data_dir() -> Path:
    return project_root() / "data" / "demo"


def cache_dir() -> Path:
    env = os.environ.get("HARNESS_CACHE")
    return Path(env).expanduser().resolve() if env else project_root() / ".cache" / "features"


def mlruns_dir() -> Path:
    return project_root() / "mlruns"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else SQLite at an absolute path under mlruns/."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlruns_dir() / 'mlflow.db'}"


def artifact_root() -> str:
    return (mlruns_dir() / "artifacts").as_uri()


def studies_dir() -> Path:
    return project_root() / "studies"
