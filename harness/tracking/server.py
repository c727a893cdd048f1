"""`harness server`: an MLflow tracking server that a team's machines share, on `launcher` (mlruns/server.log).

A database backend (PostgreSQL for a team; SQLite with one worker: several writers fail "database is
locked") and proxied artifacts, so no machine mounts the artifact folder. Its defaults live apart from the
local store (`mlruns/server/`): a local store's experiments keep a `file://` artifact location.
"""
from __future__ import annotations

import socket
from pathlib import Path

from harness import paths
from harness.dburl import with_installed_driver
from harness.errors import ConfigError
from harness.tracking.launcher import WILDCARDS, ServerProcess, http_url
from harness.tracking.store import _DATABASE_SCHEMES, _ensure_sqlite_folder

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def public_url(host: str, port: int) -> str:
    """What every machine exports as MLFLOW_TRACKING_URI: a wildcard bind address becomes this host's name."""
    return http_url(socket.getfqdn() if host in WILDCARDS else host, port)


def tracking_server(*, backend_store: str | None = None, artifacts: str | Path | None = None,
                    host: str = "127.0.0.1", port: int = 5000) -> ServerProcess:
    """The shared tracking server, not started (ConfigError at once for a store that is not a database)."""
    store = backend_store or f"sqlite:///{paths.mlruns_dir() / 'server' / 'mlflow.db'}"
    scheme = store.split(":", 1)[0].split("+")[0]
    if scheme not in _DATABASE_SCHEMES:
        raise ConfigError(f"--backend-store {store}: give a database URL "
                          "(postgresql://USER:PASSWORD@HOST/DB or sqlite:///FILE)")
    folder = None
    if isinstance(artifacts, Path) or artifacts is None or "://" not in str(artifacts):
        folder = Path(artifacts or paths.mlruns_dir() / "server" / "artifacts").expanduser().resolve()
        artifacts = str(folder)

    def prepare() -> None:  # once the port is known to be free
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        _ensure_sqlite_folder(store)

    options = ["--backend-store-uri", with_installed_driver(store),  # postgresql:// with the driver we have
               "--serve-artifacts", "--artifacts-destination", str(artifacts), "--workers", "1" if scheme == "sqlite" else "4"]
    if host not in _LOOPBACK:
        options += ["--allowed-hosts", ",".join(_allowed_hosts(host))]
    return ServerProcess(options, host=host, port=port, log=paths.mlruns_dir() / "server.log",
                         env={"MLFLOW_TRACKING_URI": None}, prepare=prepare)  # the server is the store


def _allowed_hosts(host: str) -> list[str]:
    """MLflow's defaults plus this machine's names, which clients on other machines send as the Host header."""
    from mlflow.server.security_utils import get_default_allowed_hosts

    names = {socket.gethostname(), socket.getfqdn()} | ({host} if host not in WILDCARDS else set())
    return [*get_default_allowed_hosts(), *sorted(names), *sorted(f"{n}:*" for n in names)]
