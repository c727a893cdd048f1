"""One MLflow run's life, for every kind of run, and the clean-up of runs whose process died.

`open_run` creates a run RUNNING with `provenance_tags` and params; `reopen_run` makes a study's parent RUNNING
again and this process's, from now on (`harness.pid_since`). A `TrackedRun` ends as the status contract (`tags`)
says: FINISHED on a normal exit, KILLED on KeyboardInterrupt (SIGTERM becomes one), FAILED with the one-line
`error` otherwise; an explicit `end` stands. A run left RUNNING whose host is this machine and whose pid is gone
or reused (started after it took the run), or a trial whose Optuna trial no longer runs, is closed KILLED,
`orphaned=true`: by `heal_once` (once per store and process) and `harness tune`.
"""
from __future__ import annotations

import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

from harness.fileio import pid_alive
from harness.provenance import git_state, package_versions
from harness.tracking import tags as T
from harness.tracking.store import get_run, search_all, setup

if TYPE_CHECKING:
    from harness.distributed import LaunchOutcome
    from harness.tracking.system_metrics import SystemMetrics

_R = TypeVar("_R")
ERROR_CHARS = 500  # an `error` tag's length: one line for the runs table
_HEALED_STORES: set[str] = set()  # stores this process has closed dead runs in
_ENDED = "**Ended "  # how the line that says why a run did not finish begins
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # what `uninterrupted` holds back


def provenance_tags(kind: str) -> dict[str, str]:
    """`harness.kind`, git commit (also `mlflow.source.git.commit`) and dirtiness, package versions, host and pid."""
    if kind not in T.KINDS:
        raise ValueError(f"kind must be one of {', '.join(T.KINDS)}, got {kind!r}")
    tags = {T.KIND: kind, **git_state(), **package_versions(), T.HOST: socket.gethostname(), T.PID: str(os.getpid())}
    if tags[T.GIT_COMMIT] != "unknown":
        tags[T.MLFLOW_GIT_COMMIT] = tags[T.GIT_COMMIT]
    return tags


def error_line(error: BaseException | str) -> str:
    """An error as a run records it: `Type: message` on one line (whitespace folded), at most 500 characters."""
    if isinstance(error, BaseException):
        error = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return " ".join(error.split())[:ERROR_CHARS]


def readable(value: Any) -> str:
    """A tag value as people read it: floats to 4 significant digits (0.8108), cut to MLflow's length limit."""
    return (f"{value:.4g}" if isinstance(value, float) else str(value))[:MAX_TAG_VAL_LENGTH]


class TrackedRun:
    """One open run: log to it, then leave the block (or `end` it) to end it; see the module docstring."""

    def __init__(self, client: MlflowClient, run_id: str, *, run_name: str, experiment_id: str) -> None:
        self.client, self.run_id, self.run_name, self.experiment_id = client, run_id, run_name, experiment_id
        self.ended = False
        self.seconds = 0.0  # wall time spent in MLflow calls, to check logging stays a small cost
        self.monitor: SystemMetrics | None = None

    def call(self, fn: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
        """Every MLflow call on the run: whole (`uninterrupted`), timed into `seconds`."""
        start = time.perf_counter()
        try:
            with uninterrupted():
                return fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def log_metrics(self, values: Mapping[str, float], *, step: int = 0, tags: Mapping[str, Any] | None = None) -> None:
        """The finite `values` at `step`, with one timestamp, and `tags` (`readable` values), in one call."""
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if math.isfinite(v)]
        entries = [RunTag(k, readable(v)) for k, v in (tags or {}).items()]
        if metrics or entries:
            self.call(self.client.log_batch, self.run_id, metrics=metrics, tags=entries)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.log_metrics({}, tags=tags)

    def describe(self, note: str) -> None:
        """The run's description (markdown, `mlflow.note.content`): its result, in a line or two."""
        self.set_tags({T.MLFLOW_NOTE: note})

    def end(self, status: str = T.FINISHED, *, error: BaseException | str | None = None,
            tags: Mapping[str, Any] | None = None) -> None:
        """End the run as `status` (with `error`'s line and `tags`) once: an explicit end stands on exit."""
        if self.ended:
            return
        self.ended = True
        if self.monitor is not None:
            self.call(self.monitor.stop)  # before the run ends: its last sample lands in the run
        self.call(end_run, self.client, self.run_id, status, error=error, tags=tags)

    def release(self) -> None:
        """Leave the run RUNNING for another process to end (a study on several machines), unclaimed by this one."""
        self.ended = True
        for key in (T.HOST, T.PID):
            self.call(self.client.delete_tag, self.run_id, key)

    @contextmanager
    def ended_on_error(self) -> Iterator[None]:
        """Set-up after opening: the run ends only if the block raises, so none is left RUNNING half set up."""
        try:
            yield
        except BaseException as e:
            self.__exit__(type(e), e, e.__traceback__)
            raise

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None:
            self.end(T.FINISHED)
        elif isinstance(exc, KeyboardInterrupt):
            self.end(T.KILLED)
        else:
            self.end(T.FAILED, error=exc)


def open_run(client: MlflowClient, kind: str, *, experiment_id: str, run_name: str | None = None,
             parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None,
             params: Mapping[str, Any] | None = None, system_metrics: bool = False) -> TrackedRun:
    """A new RUNNING run of `kind` with its provenance, `tags` and `params`; `system_metrics`: sampled until it ends."""
    heal_once(client)
    parent = {T.MLFLOW_PARENT: parent_run_id} if parent_run_id is not None else {}
    run = TrackedRun(client, "", run_name="", experiment_id=experiment_id)
    created = run.call(client.create_run, experiment_id, run_name=run_name,
                       tags={k: readable(v) for k, v in {**provenance_tags(kind), **(tags or {}), **parent}.items()})
    run.run_id, run.run_name = created.info.run_id, created.info.run_name  # MLflow makes a name up for None
    with run.ended_on_error():
        entries = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in (params or {}).items()]
        for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):  # MLflow takes 100 a call
            run.call(client.log_batch, run.run_id, params=entries[start:start + MAX_PARAMS_TAGS_PER_BATCH])
        if system_metrics:
            from harness.tracking.system_metrics import SystemMetrics

            run.monitor = SystemMetrics(run.run_id, client.tracking_uri).start()
    return run


def reopen_run(client: MlflowClient, run_id: str, kind: str) -> TrackedRun:
    """A study's parent RUNNING again and this process's: provenance refreshed, `error` and `orphaned` removed."""
    heal_once(client)  # first: it may close this very run, left RUNNING by a dead session
    found = client.get_run(run_id)
    run = TrackedRun(client, run_id, run_name=found.info.run_name, experiment_id=found.info.experiment_id)
    with run.ended_on_error():
        for key in {T.ERROR, T.ORPHANED} & found.data.tags.keys():
            run.call(client.delete_tag, run_id, key)
        # This process began after the run did: without the moment it took the run over, `close_dead_runs`
        # would read its pid as reused and close the run KILLED, `orphaned`, under the live session.
        run.set_tags({**provenance_tags(kind), T.PID_SINCE: int(time.time() * 1000)})
        run.call(client.update_run, run_id, status=T.RUNNING)  # last: never RUNNING under the dead session's pid
    return run


def end_run(client: MlflowClient, run_id: str, status: str, *, error: BaseException | str | None = None,
            tags: Mapping[str, Any] | None = None) -> None:
    """End `run_id` FINISHED, FAILED or KILLED with `error`'s line and `tags`; unless FINISHED, say why atop its description."""
    if status not in (T.FINISHED, T.FAILED, T.KILLED):
        raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
    final = {k: readable(v) for k, v in (tags or {}).items()}
    if error is not None:
        final[T.ERROR] = error_line(error)
    why = T.why_not_finished(status, final)
    with uninterrupted():
        if why is not None:
            before = result_note(client.get_run(run_id).data.tags.get(T.MLFLOW_NOTE, ""))
            final[T.MLFLOW_NOTE] = f"{_ENDED}{status}**: this run {why}." + (f"\n\n{before}" if before else "")
        if final:
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in final.items()])
        client.set_terminated(run_id, status=status)


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM (main thread only) until the block is done, then deliver them: interrupted inside
    an MLflow write, SQLite keeps the write lock until the connection is collected ("database is locked")."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    # A handler installed outside Python (getsignal: None) could not be put back: that signal is left alone.
    before = {n: h for n in _STOP_SIGNALS if (h := signal.getsignal(n)) is not None}
    try:
        for signum in before:  # signal.signal runs a handler already pending: a Ctrl-C here still restores all
            signal.signal(signum, lambda n, _frame: held.append(n))
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)  # now, to the handler it was meant for (KeyboardInterrupt)


def result_note(note: str) -> str:
    """A run's description without the "**Ended ...**" paragraph `end_run` puts above it."""
    return note.partition("\n\n")[2] if note.startswith(_ENDED) else note


def close_after_ranks(outcome: LaunchOutcome) -> str | None:
    """The launching side of a DDP run: rank 0's run made to say how the ranks ended (KILLED, or FAILED with the
    first failing rank and rank 0's error; FINISHED stays); that line, None when all went well."""
    if outcome.ok:
        return None
    reason = outcome.reason or "a rank failed"
    if outcome.run_id is None:
        return reason
    client = setup()
    run = get_run(client, outcome.run_id)
    own = run.data.tags.get(T.ERROR, "")
    if run.info.status == T.FINISHED:
        return reason
    if outcome.interrupted:
        if run.info.status == T.RUNNING:
            end_run(client, outcome.run_id, T.KILLED)
        return reason
    first = outcome.failures[0]
    if first.rank == 0 and 0 < first.exitcode != 130 and run.info.status == T.FAILED and own:
        return own
    error = error_line(reason + (f"; rank 0: {own}" if own else ""))
    end_run(client, outcome.run_id, T.FAILED, error=error)
    return error


def heal_once(client: MlflowClient) -> None:
    """`close_dead_runs`, then the queued audit runs whose recorder died, once per process and store."""
    if client.tracking_uri not in _HEALED_STORES:
        close_dead_runs(client)
        _HEALED_STORES.add(client.tracking_uri)  # before: recording a queued run opens a run here
        from harness.tracking import record_pending  # the package's face: audit_run imports this module

        record_pending(client)


def close_dead_runs(client: MlflowClient, *, study_parent: str | None = None,
                    trial_states: Mapping[int, str] | None = None) -> list[str]:
    """Close KILLED, `orphaned=true`, every RUNNING run the module docstring's rule finds dead; their ids.
    `study_parent`, `trial_states` (number -> Optuna state, read under the study lock): judge its trials too."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    host = socket.gethostname().replace("'", "")
    running = f"attributes.status = '{T.RUNNING}' and "
    dead = [r.info.run_id for r in search_all(client, experiments, f"{running}tags.`{T.HOST}` = '{host}'")
            if r.data.tags.get(T.PID, "").isdigit() and _process_gone(int(r.data.tags[T.PID]), _owned_since(r))]
    if study_parent is not None:
        for run in search_all(client, experiments, f"{running}tags.`{T.MLFLOW_PARENT}` = '{study_parent}'"):
            number = run.data.tags.get(T.OPTUNA_TRIAL_NUMBER, "")
            state = (trial_states or {}).get(int(number)) if number.isdigit() else None
            if state is not None and state != "RUNNING" and run.info.run_id not in dead:
                dead.append(run.info.run_id)
    for run_id in dead:
        end_run(client, run_id, T.KILLED, tags={T.ORPHANED: "true"})
    return dead


def _owned_since(run: Any) -> int | None:
    """When the run's pid took it: at its start, or when a later session reopened it (`reopen_run`)."""
    since = run.data.tags.get(T.PID_SINCE, "")
    return int(since) if since.isdigit() else run.info.start_time


def _process_gone(pid: int, run_start_ms: int | None) -> bool:
    """Whether `pid` is gone or reused: started (by /proc) after it took the run, with 2 s of slack (boot time is
    whole seconds)."""
    if not pid_alive(pid):
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, StopIteration):
        return False
    # Field 22 (starttime, in clock ticks since boot) counts after the ")" that ends the command name.
    started = int(boot.split()[1]) + int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    return run_start_ms is not None and started > run_start_ms / 1000 + 2
