"""A throwaway PostgreSQL server on 127.0.0.1 for tests: initdb + pg_ctl in a temporary folder.

Needs the server binaries (Debian: `apt-get install -y postgresql`, found under
/usr/lib/postgresql/*/bin). PostgreSQL refuses to run as root, so as root the server runs as the
`postgres` user the package creates (via runuser). `required_postgres` skips a test, saying why, where
none of this is possible, and fails it under CI (`CI=true`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import free_port, require


def server_bin() -> Path | None:
    """The folder holding initdb and pg_ctl (newest installed major version), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl and shutil.which("initdb") else None


def why_unavailable() -> str | None:
    """None when a server can be started here, else the reason (for the skip message)."""
    if server_bin() is None:
        return "PostgreSQL server binaries not found (apt-get install -y postgresql)"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary)"
    return None


@contextlib.contextmanager
def throwaway_postgres(database: str = "harness") -> Iterator[str]:
    """Start a server, create `database`, yield its URL as the README writes it
    (`postgresql://USER@HOST:PORT/DB`, for `harness tune --storage`; `harness.tuning.normalise_storage`
    adds the installed driver for other SQLAlchemy users); stop and delete it afterwards."""
    bindir = server_bin()
    assert bindir is not None
    as_root = os.geteuid() == 0
    # Not under pytest's tmp_path: that folder is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="harness-pg-"))
    data, sockets, log = root / "data", root / "sockets", root / "server.log"
    sockets.mkdir()
    if as_root:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    port = free_port()

    def run(*args: str) -> None:
        command = [str(bindir / args[0]), *args[1:]]
        if as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:1])} failed ({done.returncode}): {done.stderr.strip()} {tail}")

    started = False
    try:
        run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {port} -c listen_addresses=127.0.0.1 -k {sockets} -c fsync=off -c max_connections=100"
        run("pg_ctl", "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start")
        started = True
        run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database)
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"  # the README's form: no driver named
    finally:
        if started:
            with contextlib.suppress(Exception):
                run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop")
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def required_postgres(database: str = "harness") -> Iterator[str]:
    reason = why_unavailable()
    require("throwaway PostgreSQL", reason is None, reason or "")
    with throwaway_postgres(database) as url:
        yield url
