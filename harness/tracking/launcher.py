"""One launcher for `mlflow server` (`harness ui`, `harness server`): a busy port is refused at once (exit 2);
the server runs in its own session, so one signal reaches its group, and on Linux it is SIGTERMed when the
harness dies, even by `kill -9`; it is ready once `/health` answers, else the error quotes its last logged
line. MLflow's background job workers (8 more processes, about 2 GB) are off.
"""
from __future__ import annotations

import errno
import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from harness.errors import BadInput, JobFailed
from harness.fileio import pid_alive

READY_TIMEOUT_S = 120.0  # a first start migrates the SQLite schema: 10-30 s on a slow disk
STOP_TIMEOUT_S = 10.0
WILDCARDS = ("0.0.0.0", "::", "")


def check_port_free(host: str, port: int) -> None:
    """BadInput (exit 2) when something listens on host:port: a bind probe with SO_REUSEADDR, as uvicorn binds."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise BadInput(f"port {port} on {host} is in use (another `harness ui` or server?); "
                               "stop it or pass --port") from None
            raise BadInput(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def local_host(host: str) -> str:
    """The address this machine reaches a server bound to `host` at (a wildcard is not one)."""
    return "::1" if host == "::" else "127.0.0.1" if host in WILDCARDS else host


def http_url(host: str, port: int) -> str:
    """`http://host:port`, an IPv6 address in brackets."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class ServerProcess:
    """`mlflow server OPTIONS --host HOST --port PORT`, output appended to `log`; as a context manager, started
    and its process group stopped on any exit. `env`: changes (None removes); `prepare`: run once the port is free."""

    def __init__(self, options: Sequence[str], *, host: str, port: int, log: Path,
                 env: Mapping[str, str | None] | None = None, prepare: Callable[[], None] | None = None) -> None:
        self.host, self.port, self.log, self.prepare = host, port, Path(log), prepare
        self.command = [sys.executable, "-m", "mlflow", "server", *options, "--host", host, "--port", str(port),
                        "--uvicorn-opts", "--no-access-log"]  # a line per request would only fill the log
        self.env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
        self.process: subprocess.Popen | None = None
        self._log_start = 0  # where this start's output begins in the (appended) log

    def start(self) -> subprocess.Popen:
        check_port_free(self.host, self.port)
        if self.prepare is not None:
            self.prepare()
        env = {k: v for k, v in {**os.environ, **self.env}.items() if v is not None}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:  # the child keeps its own copy of the descriptor
            self._log_start = log.tell()
            self.process = subprocess.Popen(
                self.command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=functools.partial(_stop_with_parent, os.getpid()) if sys.platform == "linux" else None)
        return self.process

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Block until `/health` answers; JobFailed if the server exits first or stays silent."""
        assert self.process is not None, "start() first"
        url = f"{http_url(local_host(self.host), self.port)}/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (code := self.process.poll()) is not None:
                raise JobFailed(f"mlflow server exited with status {code} before answering on port {self.port}: "
                                f"{self._last_words()}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # any HTTP answer means it is serving
            except OSError:
                time.sleep(0.25)
        raise JobFailed(f"mlflow server did not answer on port {self.port} within {timeout:g} s (its log: {self.log})")

    def serve(self, on_ready: Callable[[], None]) -> None:
        """Start, call `on_ready` once it answers, block until it exits (JobFailed: with an error); then stop the group."""
        with self:
            self.wait_ready()
            on_ready()
            code = self.process.wait()
        if code != 0:
            raise JobFailed(f"mlflow server exited with status {code}: {self._last_words()}")

    def stop(self) -> None:
        """SIGTERM the server's process group, then SIGKILL whatever is left after STOP_TIMEOUT_S."""
        if self.process is None:
            return
        group = -self.process.pid  # the session leader's pid is the group id; negative: the whole group
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
            try:
                os.kill(group, sig)
            except ProcessLookupError:
                break  # the whole group is gone
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and pid_alive(group):
                time.sleep(0.1)
                self.process.poll()  # reap the leader so it does not linger as a zombie
        self.process.poll()

    def _last_words(self) -> str:
        """The last line the server wrote since this start (a traceback's exception), and where the rest is."""
        lines = self.log.read_bytes()[self._log_start:].decode(errors="replace").strip().splitlines()
        return f"{lines[-1].strip() if lines else 'no output'} (its log: {self.log})"

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_with_parent(parent: int) -> None:
    """In the child before exec: SIGTERM it when `parent` dies, even by kill -9 (PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above: no signal will come
        os._exit(1)
