"""`harness server`: an MLflow tracking server that a team's machines share.

One `mlflow server` with a database backend (PostgreSQL for a team; SQLite for one machine) and
proxied artifacts (`--serve-artifacts --artifacts-destination DIR`): clients upload checkpoints
through the server, so no machine needs the artifact folder mounted, and every experiment created
through it stores its artifacts at `mlflow-artifacts:/...` under DIR. Background job workers (MLflow's
GenAI job runner) are off: `MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`.

The server runs in a session of its own, so `stop_server` ends the whole tree (the launcher and its
uvicorn workers) with one signal to the group. SQLite gets one worker: several processes writing one
SQLite file fail with "database is locked" under load.

Its defaults live apart from the project's local store (`mlruns/server/`): experiments that a local
store created keep a `file://` artifact location that only this machine could write to.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from harness.dburl import with_installed_driver
from harness import paths
from harness.errors import ConfigError, JobFailed
from harness.tracking.store import _ensure_sqlite_folder

_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def default_backend_store() -> str:
    return f"sqlite:///{paths.mlruns_dir() / 'server' / 'mlflow.db'}"


def default_artifacts() -> Path:
    return paths.mlruns_dir() / "server" / "artifacts"


def public_url(host: str, port: int) -> str:
    """What every machine exports as MLFLOW_TRACKING_URI: a wildcard bind address becomes this
    machine's host name (a browser or client cannot connect to 0.0.0.0)."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def server_command(*, backend_store: str, artifacts: str, host: str, port: int) -> list[str]:
    """The `mlflow server` command line (checked: ConfigError for a store that is not a database)."""
    scheme = backend_store.split(":", 1)[0].split("+")[0]
    if scheme not in _DATABASE_SCHEMES:
        raise ConfigError(f"--backend-store {backend_store}: give a database URL "
                          "(postgresql://USER:PASSWORD@HOST/DB or sqlite:///FILE)")
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", with_installed_driver(backend_store),  # postgresql:// with the driver we have
        "--serve-artifacts", "--artifacts-destination", artifacts,
        "--host", host, "--port", str(port),
        "--workers", "1" if scheme == "sqlite" else "4",
        "--uvicorn-opts", "--no-access-log",  # one line per request would bury the export line
    ]
    if host not in _LOOPBACK:
        command += ["--allowed-hosts", ",".join(_allowed_hosts(host))]
    return command


def _allowed_hosts(host: str) -> list[str]:
    """MLflow's defaults (loopback, private addresses) plus this machine's names, which clients
    on other machines send as the Host header."""
    from mlflow.server.security_utils import get_default_allowed_hosts

    names = {socket.gethostname(), socket.getfqdn()} | ({host} if host not in ("0.0.0.0", "::", "") else set())
    return [*get_default_allowed_hosts(), *sorted(names), *sorted(f"{n}:*" for n in names)]


def start_server(*, backend_store: str | None = None, artifacts: str | Path | None = None, host: str = "127.0.0.1",
                 port: int = 5000) -> subprocess.Popen:
    """Start the server in a session of its own; the caller waits on it and stops it (`stop_server`).

    Args:
        backend_store: a database URL; default SQLite at mlruns/server/mlflow.db.
        artifacts: where proxied artifacts land: a folder or an object-store URI (s3://...);
            default mlruns/server/artifacts.
        host: the address to bind (0.0.0.0: every interface, for other machines).
        port: the port.
    """
    store = backend_store or default_backend_store()
    if isinstance(artifacts, Path) or artifacts is None or "://" not in str(artifacts):
        folder = Path(artifacts or default_artifacts()).expanduser().resolve()
        folder.mkdir(parents=True, exist_ok=True)
        artifacts = str(folder)
    _ensure_sqlite_folder(store)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the server is the store; a client setting means nothing here
    command = server_command(backend_store=store, artifacts=str(artifacts), host=host, port=port)
    return subprocess.Popen(command, env=env, start_new_session=True)


def wait_until_up(process: subprocess.Popen, url: str, *, timeout: float = 120.0) -> None:
    """Return once `url`/health answers OK; JobFailed if the server exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise JobFailed(f"mlflow server exited with status {code} before answering (is the port in use? "
                            "is the backend store reachable?)")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise JobFailed(f"mlflow server did not answer at {url}/health within {timeout:.0f} s")


def stop_server(process: subprocess.Popen, *, grace: float = 15.0) -> None:
    """SIGTERM to the server's whole process group (launcher and workers), SIGKILL to whatever is
    left after `grace` seconds."""
    _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process.poll()  # reap the launcher, so that only live processes keep the group
        if not _signal_group(process.pid, 0):
            return
        time.sleep(0.2)
    _signal_group(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def run_server(*, backend_store: str | None, artifacts: str | Path | None, host: str, port: int,
               on_ready: Callable[[str], None]) -> int:
    """Start the server, call `on_ready(url)` once it answers, wait until it exits; return its
    status. Ctrl-C, SIGTERM (as KeyboardInterrupt) or any error stops the whole server tree."""
    process = start_server(backend_store=backend_store, artifacts=artifacts, host=host, port=port)
    try:
        probe = f"http://127.0.0.1:{port}" if host in ("0.0.0.0", "") else public_url(host, port)
        wait_until_up(process, probe)
        on_ready(public_url(host, port))
        return process.wait()
    finally:
        stop_server(process)
