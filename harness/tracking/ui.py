"""The MLflow UI: `harness ui` serves the project's store on 127.0.0.1."""
from __future__ import annotations

import subprocess
import sys

from harness import paths
from harness.tracking.store import _ensure_sqlite_folder

def ui_url(host: str, port: int) -> str:
    """The experiments page in "Model training" mode.

    The UI routes inside the URL fragment (a hash router) and reads `workflowType` from the
    fragment's query string; without it MLflow 3 opens in GenAI mode.
    """
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # a wildcard bind address is not something a browser can open
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/#/experiments?workflowType=machine_learning"


def serve_ui(*, host: str = "127.0.0.1", port: int = 5000) -> subprocess.Popen:
    """Start `mlflow server` on the project's store; the caller waits on or stops the process."""
    uri = paths.tracking_uri()
    _ensure_sqlite_folder(uri)
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        "--default-artifact-root", paths.artifact_root(),
        "--host", host,
        "--port", str(port),
        # One local user: one worker instead of four saves memory, and per-request access lines
        # would bury the URL the command prints.
        "--workers", "1",
        "--uvicorn-opts", "--no-access-log",
    ]
    return subprocess.Popen(command)
