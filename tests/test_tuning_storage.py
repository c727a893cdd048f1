"""Study storage: URLs checked before anything is made, PostgreSQL's driver picked and its
connection bounded in time with a one-line error, the study-wide file lock, and the trial gate.

No PostgreSQL server is needed: a refused port and a TCP server that accepts and never answers
stand in for a server that is down and one that hangs.
"""
from __future__ import annotations

import importlib.util
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from harness import tuning
from harness.tuning.storage import FileLock, locked, open_storage, study_lock
from harness.tuning.strategies import Heartbeat
from harness.tuning.worker import TrialSlots

from .conftest import free_port
from .run_main import run_main
from .tuning_helpers import write_spec

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")

PASSWORD = "s3cret-pw"


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    server.close()


# ------------------------------------------------------------------------------------ URLs

def test_sqlite_urls_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert tuning.normalise_storage("sqlite:///x.db") == f"sqlite:///{tmp_path / 'x.db'}"
    assert tuning.normalise_storage(f"sqlite:///{tmp_path}/y.db") == f"sqlite:///{tmp_path / 'y.db'}"


@pytest.mark.parametrize(("url", "message"), [
    ("sqlite:/x.db", "'sqlite:/x.db' is not a database URL; use sqlite:///FILE (three slashes"),
    ("sqlite://", "SQLite needs a file"),
    ("sqlite:///:memory:", "SQLite needs a file"),
    (f"postgresql://me:{PASSWORD}@db.example:abc/studies", "port 'abc' is not a number"),
    ("mysql://me@db/studies", "mysql is not supported"),
    ("studies.db", "is not a database URL"),
])
def test_bad_storage_urls_are_one_line_and_make_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, message: str):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(tuning.StorageError) as caught:
        tuning.normalise_storage(url)
    text = str(caught.value)
    assert message in text and "\n" not in text and PASSWORD not in text
    assert caught.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []  # no stray `sqlite:` folder


def test_plain_postgresql_url_gets_the_installed_driver():
    """The README's form: SQLAlchemy would pick psycopg 3 for it, the `postgres` extra installs psycopg2."""
    if not any(importlib.util.find_spec(m) for m in ("psycopg2", "psycopg")):
        pytest.skip("no PostgreSQL driver installed")
    url = tuning.normalise_storage(f"postgresql://me:{PASSWORD}@db.example:5433/studies")
    driver = url.split("://")[0].split("+")[1]
    assert importlib.util.find_spec(driver) is not None
    assert url == f"postgresql+{driver}://me:{PASSWORD}@db.example:5433/studies"
    assert tuning.redact(url) == f"postgresql+{driver}://me:***@db.example:5433/studies"
    with pytest.raises(tuning.StorageError, match="driver nosuchdriver is not installed"):
        tuning.normalise_storage("postgresql+nosuchdriver://me@db/studies")


def _pg_url(port: int, query: str = "") -> str:
    if not any(importlib.util.find_spec(m) for m in ("psycopg2", "psycopg")):
        pytest.skip("no PostgreSQL driver installed")
    return tuning.normalise_storage(f"postgresql://me:{PASSWORD}@127.0.0.1:{port}/studies{query}")


def test_refused_postgresql_port_is_one_line_naming_the_host():
    port = free_port()
    start = time.monotonic()
    with pytest.raises(tuning.StorageUnavailable) as caught:
        open_storage(_pg_url(port))
    text = str(caught.value)
    assert time.monotonic() - start < 5
    assert f"cannot connect to PostgreSQL at 127.0.0.1:{port}" in text and "refused" in text.lower()
    assert PASSWORD not in text and "\n" not in text and caught.value.exit_code == 1


def test_silent_postgresql_server_times_out(silent_server: int):
    """A server that accepts TCP and never answers: the connect timeout ends the wait."""
    start = time.monotonic()
    with pytest.raises(tuning.StorageUnavailable) as caught:
        open_storage(_pg_url(silent_server, "?connect_timeout=1"))
    assert time.monotonic() - start < 4
    text = str(caught.value)
    assert f"127.0.0.1:{silent_server}: no answer within 1 s" in text and PASSWORD not in text


def test_tune_with_a_bad_storage_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, silent_server: int):
    """Through the CLI: a malformed URL exits 2, an unreachable or silent server exits 1, each with
    one line naming the host and never the password, before any spec check or feature work."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path))
    spec = str(write_spec(tmp_path, "cli"))
    code, out, err = run_main("tune", "--study", spec, "--storage", "sqlite:/x.db")
    assert code == 2 and err.strip().splitlines() == [
        "error: storage 'sqlite:/x.db' is not a database URL; use sqlite:///FILE (three slashes; four before an "
        "absolute path) or postgresql://USER:PASSWORD@HOST[:PORT]/DB"]
    assert not (tmp_path / "sqlite:").exists()
    code, _, err = run_main("tune", "--study", spec, "--storage", f"postgresql://me:{PASSWORD}@127.0.0.1:x/db")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "port 'x' is not a number" in err
    if importlib.util.find_spec("psycopg2") or importlib.util.find_spec("psycopg"):
        port = free_port()
        code, _, err = run_main("tune", "--study", spec, "--storage", f"postgresql://me:{PASSWORD}@127.0.0.1:{port}/db")
        assert code == 1 and len(err.strip().splitlines()) == 1, err
        assert f"127.0.0.1:{port}" in err and PASSWORD not in err and "Traceback" not in err
        start = time.monotonic()
        code, _, err = run_main("tune", "--study", spec, "--storage",
                               f"postgresql://me:{PASSWORD}@127.0.0.1:{silent_server}/db?connect_timeout=1")
        assert code == 1 and "no answer within 1 s" in err and len(err.strip().splitlines()) == 1
        assert time.monotonic() - start < 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.toml"]  # nothing made


def test_a_tune_refused_for_its_data_leaves_no_sqlite_file_or_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An explicit SQLite --storage is checked without being made: a tune then refused for bad input (exit 2)
    leaves neither the database file nor its folder; the place of one that cannot be made is refused at once."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path))
    spec = str(write_spec(tmp_path, "cli"))
    database = tmp_path / "x" / "study.db"
    code, _, err = run_main("tune", "--study", spec, "--storage", f"sqlite:///{database}", "--data", str(tmp_path / "none"))
    assert code == 2 and err.strip().splitlines()[-1] == f"error: {tmp_path / 'none'}: dataset folder not found", err
    assert not database.parent.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.toml"]  # no database, no MLflow store either

    (tmp_path / "afile").write_text("x")
    code, _, err = run_main("tune", "--study", spec, "--storage", f"sqlite:///{tmp_path / 'afile' / 'sub' / 's.db'}")
    assert code == 2 and err.strip().splitlines() == [f"error: storage {tmp_path / 'afile' / 'sub' / 's.db'}: "
                                                      f"{tmp_path / 'afile'} is not a folder"]
    (tmp_path / "garbage.db").write_text("not a database " * 100)  # an existing file is still opened once
    with pytest.raises(tuning.StorageError, match="garbage.db: file is not a database"):
        tuning.check_storage(f"sqlite:///{tmp_path / 'garbage.db'}")
    assert tuning.check_storage(f"sqlite:///{database}") == f"sqlite:///{database}" and not database.parent.exists()


def test_unknown_study_exits_2_with_one_line():
    for command in ("tune", "dashboard"):
        code, _, err = run_main(command, "--study", "no-such-study")
        assert code == 2 and len(err.strip().splitlines()) == 1 and "no study named 'no-such-study'" in err


# ------------------------------------------------------------------------------------ locks

def test_file_lock_excludes_until_released(tmp_path: Path):
    """One holder at a time, across threads and open files (flock is per open file)."""
    first, second = FileLock(tmp_path / "x.lock"), FileLock(tmp_path / "x.lock")
    got = threading.Event()

    def take() -> None:
        with locked(second):
            got.set()

    first.acquire()
    thread = threading.Thread(target=take)
    thread.start()
    assert not got.wait(0.3)  # blocked while `first` holds it
    first.release()
    assert got.wait(5)
    thread.join(5)
    first.acquire()  # free again once `second` let go
    first.release()


def test_study_lock_is_one_per_study_and_database(tmp_path: Path):
    url = tuning.normalise_storage(f"sqlite:///{tmp_path / 'a.db'}")
    assert study_lock(url, "s").path == study_lock(url, "s").path
    assert study_lock(url, "s").path != study_lock(url, "t").path
    assert study_lock(url, "s").path != study_lock(tuning.normalise_storage(f"sqlite:///{tmp_path / 'b.db'}"), "s").path


# ------------------------------------------------------------------------------------ the gate

@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(tuning.normalise_storage(f"sqlite:///{tmp_path / 'gate.db'}"), Heartbeat(1, 60, 0))
    return optuna.create_study(storage=storage, study_name="gate")


def _gate(study: optuna.Study, tmp_path: Path, **kw: object) -> TrialSlots:
    return TrialSlots(study, FileLock(tmp_path / "gate.lock"), **{"target": 2, "max_failures": 3, "poll_s": 0.05, **kw})


def _held(tmp_path: Path) -> bool:
    import fcntl
    import os

    fd = os.open(tmp_path / "gate.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_gate_hands_out_a_slot_holding_the_lock(study: optuna.Study, tmp_path: Path):
    gate = _gate(study, tmp_path)
    assert gate.acquire() and gate.held and _held(tmp_path)
    gate.release()
    assert not gate.held and not _held(tmp_path)
    gate.release()  # releasing twice is harmless


def test_gate_stops_at_the_target_and_at_max_failures(study: optuna.Study, tmp_path: Path):
    for value in (0.5, 0.6):
        study.tell(study.ask(), value)
    assert not _gate(study, tmp_path).acquire() and not _held(tmp_path)  # 2 finished of 2
    gate = _gate(study, tmp_path, target=3)
    assert gate.acquire()
    gate.release()
    for _ in range(2):
        study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    assert not _gate(study, tmp_path, target=3, max_failures=2).acquire()  # failing: stop


def test_gate_waits_while_running_trials_fill_the_target(study: optuna.Study, tmp_path: Path):
    study.tell(study.ask(), 0.5)
    running = study.ask()  # 1 finished + 1 running = target 2: no slot, but the running one may fail
    start = time.monotonic()
    assert not _gate(study, tmp_path, deadline=time.time() + 0.4).acquire()  # waited until the deadline
    assert 0.3 < time.monotonic() - start < 5 and not _held(tmp_path)
    threading.Timer(0.3, lambda: study.tell(running, state=optuna.trial.TrialState.FAIL)).start()
    gate = _gate(study, tmp_path, deadline=time.time() + 10)
    assert gate.acquire()  # the running trial failed: its replacement may start
    gate.release()


def test_gate_ends_optimize_at_the_target(study: optuna.Study, tmp_path: Path):
    """As a worker runs it: the objective frees the slot once its trial exists; after each trial
    the gate updates the parent (`on_trial_end`) and stops the study when the target is reached."""
    calls = []
    gate = _gate(study, tmp_path, target=2, on_trial_end=lambda: calls.append(len(study.trials)))

    def objective(trial: optuna.Trial) -> float:
        gate.release()
        assert not _held(tmp_path)
        return trial.suggest_float("x", 0, 1)

    assert gate.acquire()
    study.optimize(objective, n_trials=10, callbacks=[gate])
    gate.release()
    assert len(study.trials) == 2 and calls == [1, 2] and not _held(tmp_path)
