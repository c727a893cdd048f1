"""Where a study lives: the Optuna storage URL, opening it, and the study-wide locks.

SQLite by default (`studies/<name>.db`), PostgreSQL across machines. A URL is checked and normalised (SQLite
made absolute, PostgreSQL given the installed driver) before anything connects: a malformed one is a
`StorageError` before any folder is made, a server that does not answer within `CONNECT_TIMEOUT_S` a
`StorageUnavailable` naming the host, never the password. The study lock is an flock (SQLite) or a session
advisory lock (PostgreSQL): either drops when its holder dies.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from harness.dburl import PG_DRIVERS, installed_pg_driver
from harness.fileio import FileLock
from harness import paths
from harness.tuning.errors import SpecError, StorageError, StorageUnavailable
from harness.tuning.strategies import Heartbeat

if TYPE_CHECKING:
    from harness.tuning.spec import StudySpec

CONNECT_TIMEOUT_S = 5  # PostgreSQL connect timeout unless the URL sets ?connect_timeout=
PARENT_ATTR = "mlflow.parent_run_id"  # study user attribute: the MLflow parent run
SPACE_ATTR = "harness.space_hash"  # study user attribute: what the study was created from
_USAGE = "use sqlite:///FILE (three slashes; four before an absolute path) or postgresql://USER:PASSWORD@HOST[:PORT]/DB"


def resolve_storage(url: str | None, spec: StudySpec) -> str:
    """The normalised storage URL of a study: `url` checked, or the default `studies/<name>.db` (git-ignored)."""
    return normalise_storage(url if url is not None else f"sqlite:///{paths.studies_dir() / f'{spec.name}.db'}")


def normalise_storage(url: str) -> str:
    """A storage URL checked, in the form every process of a study uses (StorageError otherwise)."""
    shown = _redact_text(url)
    try:
        parsed = make_url(url.strip())
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(f"storage {shown!r} is not a database URL; {_USAGE}") from None
    except ValueError:
        port = re.search(r"//(?:[^@/]*@)?[^:/?#]*:([^/?#]*)", url)
        raise StorageError(f"storage {shown!r}: port {port[1] if port else '?'!r} is not a number; {_USAGE}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.host or not parsed.database or parsed.database == ":memory:":
            raise StorageError(f"storage {shown!r}: SQLite needs a file that every worker process can open; {_USAGE}")
        return parsed.set(database=str(Path(parsed.database).expanduser().absolute())).render_as_string(hide_password=False)
    if backend != "postgresql":
        raise StorageError(f"storage {shown!r}: {backend} is not supported; {_USAGE}")
    driver = parsed.get_driver_name() if "+" in parsed.drivername else installed_pg_driver()
    if driver is None:
        raise StorageError(f"storage {shown!r}: no PostgreSQL driver is installed: pip install 'harness[postgres]'")
    if importlib.util.find_spec(PG_DRIVERS.get(driver, driver)) is None:
        raise StorageError(f"storage {shown!r}: the PostgreSQL driver {driver} is not installed "
                           f"(pip install 'harness[postgres]' installs psycopg2; or write postgresql://...)")
    return parsed.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)


def redact(url: str) -> str:
    """The storage URL with any password hidden, for tags and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is reported by normalise_storage
        return _redact_text(url)


def _redact_text(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def identity(url: str) -> str:
    """The database whatever the driver or options (`postgresql://USER@HOST:PORT/DB`): keys the study lock."""
    parsed = make_url(url)
    return parsed.set(drivername=parsed.get_backend_name(), password=None, query={}).render_as_string()


def scheme(url: str) -> str:
    """"sqlite" or "postgresql" (the URL's database, driver left out)."""
    return url.split(":", 1)[0].split("+", 1)[0].lower()


def _engine_kwargs(url: str) -> dict[str, Any]:
    if scheme(url) == "sqlite":  # workers and heartbeat threads share the file: wait for a lock, not fail
        return {"connect_args": {"timeout": 60}}
    given = "connect_timeout=" in url.partition("?")[2]
    return {"pool_pre_ping": True, **({} if given else {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}})}


@contextlib.contextmanager
def reaching(url: str) -> Iterator[None]:
    """A failure to reach the database as one line: StorageUnavailable (refused, unreachable, silent) or
    StorageError (wrong database or credentials)."""
    try:
        yield
    except (sqlalchemy.exc.DBAPIError, optuna.exceptions.StorageInternalError) as e:
        cause = e if isinstance(e, sqlalchemy.exc.DBAPIError) else e.__cause__
        if not isinstance(cause, sqlalchemy.exc.DBAPIError):
            raise
        parsed = make_url(url)
        reason = (str(cause.orig).strip().splitlines() or ["no answer"])[0].split(" failed: ", 1)[-1].strip()
        if parsed.password:
            reason = reason.replace(parsed.password, "***")
        if scheme(url) == "sqlite":
            raise StorageError(f"storage {parsed.database}: {reason}") from None
        if "authentication failed" in reason or "does not exist" in reason:
            raise StorageError(f"storage {redact(url)}: {reason}") from None
        if "timeout" in reason:
            timeout = parsed.query.get("connect_timeout", CONNECT_TIMEOUT_S)
            reason = f"no answer within {timeout} s (set ?connect_timeout=SECONDS in the URL to wait longer)"
        where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
        raise StorageUnavailable(f"storage {redact(url)}: cannot connect to PostgreSQL at {where}: {reason}") from None


def open_storage(url: str, heartbeat: Heartbeat = Heartbeat()) -> optuna.storages.RDBStorage:
    """An RDBStorage with heartbeats and a retry of stale trials (StorageError, StorageUnavailable)."""
    if scheme(url) == "sqlite":
        Path(make_url(url).database or "").parent.mkdir(parents=True, exist_ok=True)
    storages = optuna.storages  # newer Optuna renamed the stale-trial retry callback and its keyword
    retry_cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    parameters = inspect.signature(storages.RDBStorage.__init__).parameters
    keyword = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in parameters else "failed_trial_callback"
    with warnings.catch_warnings(), reaching(url):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # Two machines starting on a fresh PostgreSQL database would both create Optuna's tables and
        # types, and one fails ("duplicate key ... pg_type_typname_nsp_index"): one at a time.
        with locked(study_lock(url, "\0schema")) if scheme(url) == "postgresql" else contextlib.nullcontext():
            retry = {keyword: retry_cls(max_retry=heartbeat.max_retry)}
            return storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=heartbeat.interval,
                                       grace_period=heartbeat.grace_period, **retry)


def check_storage(url: str | None) -> str | None:
    """A `--storage` URL normalised and connected to once, so a bad URL or an unreachable server fails in
    seconds, before any spec check or feature work; None stays None (SQLite, made on first use).

    A SQLite file that does not exist yet is not made here (nor its folder): a command refused later, for its
    data say, must leave nothing behind. Its place is checked instead (StorageError when it cannot be made)."""
    if url is None:
        return None
    url = normalise_storage(url)
    if scheme(url) == "sqlite" and not (database := Path(make_url(url).database or "")).exists():
        _check_creatable(database)
        return url
    store = open_storage(url)
    store.remove_session()
    store.engine.dispose()
    return url


def _check_creatable(database: Path) -> None:
    """StorageError unless `database` (and any folder above it that is missing) can be made by this process."""
    folder = database.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise StorageError(f"storage {database}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(f"storage {database}: cannot create it, {folder} is not writable")


def fail_stale(study: optuna.Study) -> None:
    """Mark FAIL the trials whose heartbeat went silent; the retry callback re-queues each."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def load_or_create_study(spec: StudySpec, storage: optuna.storages.BaseStorage, *, sampler_offset: int = 0) -> optuna.Study:
    """The spec's study in `storage`, created on first use. SpecError: it was created from another spec."""
    study = optuna.create_study(storage=storage, study_name=spec.name, directions=spec.directions, load_if_exists=True,
                                sampler=spec.sampler.build(seed_offset=sampler_offset),
                                pruner=spec.pruner.build(max_epochs=spec.max_epochs()))
    if [d.name.lower() for d in study.directions] != spec.directions:
        raise SpecError(f"study {spec.name!r} in the storage optimises {len(study.directions)} objective(s) "
                        f"in other directions; give this spec another name or use another --storage")
    if (stored := study.user_attrs.get(SPACE_ATTR)) is None:
        study.set_user_attr(SPACE_ATTR, spec.space_hash())
    elif stored != spec.space_hash():
        raise SpecError(f"study {spec.name!r} in the storage was created from another search space, objectives "
                        f"or base settings; give this spec another name or use another --storage")
    return study


class AdvisoryLock:
    """A PostgreSQL session advisory lock on its own connection: the server drops it with the connection,
    so a machine that dies never leaves the study locked."""

    def __init__(self, url: str, key: int) -> None:
        self._url, self._key = url, key
        self._conn: Any = None
        self._engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, **{
            k: v for k, v in _engine_kwargs(url).items() if k != "pool_pre_ping"})

    def acquire(self) -> None:
        with reaching(self._url):
            conn = self._engine.connect()
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def release(self) -> None:
        if (conn := self._conn) is not None:
            self._conn = None
            try:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            finally:
                conn.close()


Lock = FileLock | AdvisoryLock


def study_lock(url: str, study: str) -> Lock:
    """The lock that serialises trial starts and parent-run updates of one study in one storage."""
    digest = hashlib.sha1(f"harness.tuning:{identity(url)}:{study}".encode()).digest()
    if scheme(url) == "postgresql":
        return AdvisoryLock(url, int.from_bytes(digest[:8], "big", signed=True))
    return FileLock(Path(tempfile.gettempdir()) / f"harness-study-{digest.hex()[:16]}.lock")


@contextlib.contextmanager
def locked(lock: Lock) -> Iterator[None]:
    """Hold `lock` for the body of a `with`."""
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def serve_dashboard(*, storage: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """optuna-dashboard on the study storage (blocks until Ctrl-C). Raises SpecError without it."""
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise SpecError("optuna-dashboard is not installed: pip install 'harness[dashboard]'") from None
    run_server(open_storage(storage), host=host, port=port)
