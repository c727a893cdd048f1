"""The MLflow UI: `harness ui` serves the project's store on 127.0.0.1.

The server is `mlflow server` with one uvicorn worker and without MLflow's background job workers
(`MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`: they run GenAI jobs this harness never submits, and
cost 8 more Python processes and about 2 GB), in a session of its own so that stopping it stops
every process it started. `UiServer` refuses a port that is taken before starting anything, waits
until the server answers `/health`, and stops the whole process group on exit.
"""
from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from types import TracebackType

from mlflow.tracking import MlflowClient

from harness import paths
from harness.errors import BadInput, JobFailed
from harness.tracking.store import _ensure_sqlite_folder

READY_TIMEOUT_S = 120.0  # a first start migrates the SQLite schema: 10-30 s on a slow disk
STOP_TIMEOUT_S = 10.0


def ui_url(host: str, port: int, experiment_id: str | None = None) -> str:
    """The experiments page, or one experiment's runs page, in "Model training" mode.

    The UI routes inside the URL fragment (a hash router) and reads `workflowType` from the
    fragment's query string; without it MLflow 3 opens in GenAI mode.
    """
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # a wildcard bind address is not something a browser can open
    if ":" in host:
        host = f"[{host}]"
    page = f"experiments/{experiment_id}/runs" if experiment_id is not None else "experiments"
    return f"http://{host}:{port}/#/{page}?workflowType=machine_learning"


def latest_experiment(client: MlflowClient) -> str | None:
    """The experiment holding the most recently started run (None for an empty store): the page a
    user most likely wants to see."""
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return None
    runs = client.search_runs(experiment_ids, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.experiment_id if runs else None


def check_port_free(host: str, port: int) -> None:
    """Raise BadInput (exit 2) when something already listens on host:port.

    A bind probe with SO_REUSEADDR, as uvicorn binds: a port held only by connections closing
    (TIME_WAIT) is free, one with a listener is not.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise BadInput(f"port {port} on {host} is in use (another `harness ui` or server?); "
                               f"stop it or pass --port") from None
            raise BadInput(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


class UiServer:
    """`mlflow server` on the project's store, started in its own session; a context manager that
    stops the whole process group on exit (normal, error, Ctrl-C or SIGTERM via KeyboardInterrupt).

    Example:
        >>> with UiServer(port=5000) as server:   # doctest: +SKIP
        ...     server.wait_ready()
        ...     server.process.wait()
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 5000) -> None:
        self.host, self.port = host, port
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", paths.tracking_uri(),
            "--registry-store-uri", paths.tracking_uri(),  # the same store; said, so mlflow does not say it
            "--default-artifact-root", paths.artifact_root(),
            "--host", self.host,
            "--port", str(self.port),
            # One local user: one worker instead of four saves memory, and per-request access lines
            # would bury the URL the command prints.
            "--workers", "1",
            "--uvicorn-opts", "--no-access-log",
        ]

    def start(self) -> subprocess.Popen:
        check_port_free(self.host, self.port)
        _ensure_sqlite_folder(paths.tracking_uri())
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        # start_new_session: the server, uvicorn and anything they spawn share one process group
        # that we can signal as a whole; a Ctrl-C in the terminal reaches only this process.
        # Its output goes to stderr (file descriptor 2): stdout carries only what the command prints.
        self.process = subprocess.Popen(self.command(), env=env, start_new_session=True, stdout=2,
                                        preexec_fn=_stop_with_parent if sys.platform == "linux" else None)
        return self.process

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Block until the server answers HTTP; raise JobFailed if it exits or stays silent."""
        assert self.process is not None, "start() first"
        url = f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '') else self.host}:{self.port}/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (code := self.process.poll()) is not None:
                raise JobFailed(f"mlflow server exited with status {code} before answering on port {self.port}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # any HTTP answer means it is serving
            except OSError:
                time.sleep(0.25)
        raise JobFailed(f"mlflow server did not answer on port {self.port} within {timeout:g} s")

    def stop(self) -> None:
        """SIGTERM the server's process group, then SIGKILL whatever is left after STOP_TIMEOUT_S."""
        if self.process is None:
            return
        group = self.process.pid  # the session leader's pid is the group id (start_new_session)
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break  # the whole group is gone
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(group):
                time.sleep(0.1)
                self.process.poll()  # reap the leader so it does not linger as a zombie
            if not _group_alive(group):
                break
        self.process.poll()

    def __enter__(self) -> UiServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _stop_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies, even by kill -9
    (Linux prctl PR_SET_PDEATHSIG); mlflow's server forwards SIGTERM to its uvicorn."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
