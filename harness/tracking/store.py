"""The MLflow store: where runs live, experiments, run lookup, checkpoint download, orphan closing.

Two closers of runs left RUNNING: `close_orphans` closes every RUNNING run under a study parent (or
in an experiment) when its caller knows no process of its own still works on them; `close_dead_runs`
closes top-level runs whose recorded process (tags `harness.host`, `harness.pid`) is gone from this
machine, and runs whenever a run is created, so a `kill -9` is healed by the next command that writes.

Runs live in a SQLite store (`mlruns/mlflow.db`) with artifacts under `mlruns/artifacts`, both at
absolute paths from `harness.paths`, so every command finds them whatever the working folder
(`MLFLOW_TRACKING_URI` overrides the store). MLflow 3.17 refuses the old file store by default.

Every call goes through an `MlflowClient` with explicit run ids, never mlflow's global active-run
stack: tuning trials may run in threads, and the stack is per thread and easy to leave dangling.
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness import paths
from harness.config import RunConfig, from_dict
from harness.errors import NotFound
from harness.fileio import pid_alive, remove_stale_temporaries, temp_name
from harness.tracking import metric_names as M
from harness.tracking import tags as T

# Schemes of SQLAlchemy stores. For these mlflow would put artifacts under ./mlruns relative to
# the working folder at the time, so experiments get an absolute artifact location instead.
_DATABASE_SCHEMES = {"sqlite", "postgresql", "mysql", "mssql"}
# Tells the MLflow 3 UI this is a model-training experiment, so it opens the runs table and does
# not ask the user to pick an experiment type.
_EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
_VERSIONED_PACKAGES = ("torch", "timm", "mlflow", "optuna", "numpy", "av", "librosa", "harness")
_NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}


def setup(*, tracking_uri: str | None = None) -> MlflowClient:
    """Point mlflow at the project's store (or `tracking_uri`), quiet its logs, return a client."""
    uri = tracking_uri or paths.tracking_uri()
    _ensure_sqlite_folder(uri)
    # Creating or migrating the SQLite schema logs a dozen alembic INFO lines per process.
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def _ensure_sqlite_folder(uri: str) -> None:
    """SQLite creates the database file but not a missing folder above it (a fresh checkout)."""
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def _is_database_store(uri: str) -> bool:
    return urlparse(uri).scheme.split("+")[0] in _DATABASE_SCHEMES


def get_or_create_experiment(client: MlflowClient, name: str, *, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created (or restored from the UI's trash) when needed.

    On a database store a new experiment keeps its artifacts in `artifact_location`, by default
    a folder named after it under `paths.artifact_root()`; a tracking server picks its own.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        # A deleted experiment still holds its name, so creating it again would fail.
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    if artifact_location is None and _is_database_store(client.tracking_uri):
        artifact_location = f"{paths.artifact_root()}/{_folder_name(name)}"
    try:
        return client.create_experiment(name, artifact_location=artifact_location, tags=_EXPERIMENT_KIND)
    except MlflowException as exc:
        # Another process or trial thread created it between our lookup and our create.
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def _folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"


def git_state(root: Path) -> dict[str, str]:
    """Commit and dirtiness of the checkout at `root`; "unknown" outside one or without git.

    Untracked (not ignored) files count as dirty: a new module changes what a run executes.
    """
    commit = run_git(root, "rev-parse", "HEAD")
    status = run_git(root, "status", "--porcelain")
    if commit is None or status is None:
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    return {"git.commit": commit, "git.dirty": "true" if status else "false"}


def run_git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def package_versions() -> dict[str, str]:
    """`version.<name>` tags for the installed packages that shape results; missing ones skipped.

    Read from package metadata, so nothing heavy (torch, librosa) is imported to ask.
    """
    versions = {}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[f"version.{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions



def load_run_config(client: MlflowClient, run_id: str) -> tuple[RunConfig, Path]:
    """The settings and best checkpoint of a recorded run, downloaded once into
    `.cache/runs/<run_id>` (a run's artifacts never change after it ends)."""
    run = get_run(client, run_id)
    names = {Path(a.path).name for a in client.list_artifacts(run_id, "checkpoint")}
    weights = sorted(n for n in names if n.endswith(".safetensors"))
    if run.data.tags.get(T.KIND) == T.CV_KIND:  # its folds hold the models, each trained on part of the data
        raise NotFound(f"run {run_id} is a cross-validation (harness.kind=cv) with no model of its own: train its "
                       "settings on the official split (its params are the `harness train` options) and use that run")
    if "config.json" not in names or not weights:
        raise NotFound(f"run {run_id} has no checkpoint (it ended before its first validated epoch)")
    folder = _download_checkpoint(client, run_id)
    config = from_dict(RunConfig, json.loads((folder / "config.json").read_text()),
                       where=f"run {run_id} checkpoint/config.json")
    return config, folder / weights[0]


def run_settings(client: MlflowClient, run_id: str) -> RunConfig:
    """The settings a recorded run trained with: a training run's `checkpoint/config.json`, or a
    cross-validation's `config.json` (what each of its folds trained with). Only that file is read.

    Raises:
        NotFound: no such run, or a run that recorded no settings (it ended before its first epoch).
    """
    import tempfile

    get_run(client, run_id)
    for folder in ("checkpoint", None):
        if "config.json" not in {Path(a.path).name for a in client.list_artifacts(run_id, folder)}:
            continue
        path = f"{folder}/config.json" if folder else "config.json"
        with tempfile.TemporaryDirectory(prefix="harness-settings-") as tmp:
            local = client.download_artifacts(run_id, path, tmp)
            return from_dict(RunConfig, json.loads(Path(local).read_text()), where=f"run {run_id} {path}")
    raise NotFound(f"run {run_id} recorded no settings (no checkpoint/config.json or config.json)")


RUN_ALIASES = ("best", "last")


def resolve_run_id(client: MlflowClient, ref: str, *, experiment: str | None = None) -> str:
    """A run id, or `best` (highest best val AUC; among ties a study's own best trial, tagged
    `best=true`, then the newest) / `last` (newest) among the FINISHED runs that trained a model, in
    `experiment` or in every experiment of the store, so scripts can say `harness submit --run-id best`.

    Runs of either metric naming count (`summary/best_val_auc`, or `best_val_auc` on older runs):
    MLflow's filter has no OR, so one search per name, the winners compared here.
    """
    if ref not in RUN_ALIASES:
        return ref
    if experiment is None:
        ids = [e.experiment_id for e in client.search_experiments()]
    else:
        found = client.get_experiment_by_name(experiment)
        ids = [found.experiment_id] if found is not None else []
    candidates = []
    for name in M.BEST_VAL_AUC_NAMES if ids else ():
        order = ([f"metrics.`{name}` DESC"] if ref == "best" else []) + ["attributes.start_time DESC"]
        finished = f"attributes.status = 'FINISHED' and metrics.`{name}` >= 0"
        # A few, not one: among runs tied on the metric a study's best trial is preferred below.
        candidates += client.search_runs(ids, filter_string=finished, order_by=order, max_results=20)
    if not candidates:
        where = f"experiment {experiment!r}" if experiment else "this store"
        raise NotFound(f"--run-id {ref}: no finished training run in {where} yet")

    def rank(run: Any) -> tuple[float, bool, int]:
        if ref != "best":
            return (0.0, False, run.info.start_time or 0)
        auc = M.run_value(run.data.metrics, M.BEST_VAL_AUC) or 0.0
        return (auc, run.data.tags.get(T.BEST_CHILD) == "true", run.info.start_time or 0)

    return max(candidates, key=rank).info.run_id


def get_run(client: MlflowClient, run_id: str) -> Any:
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code not in _NOT_FOUND_CODES:
            raise
        raise NotFound(f"no run {run_id!r} in {client.tracking_uri}") from None


def _download_checkpoint(client: MlflowClient, run_id: str) -> Path:
    """Download into a staging folder and rename it into place, so an interrupted download or a
    concurrent one never leaves a half-filled cache entry behind. The staging folder carries this
    process's pid (`fileio.temp_name`), so one left by a killed download is removed by the next."""
    final = paths.project_root() / ".cache" / "runs" / run_id
    if not final.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final.parent, recursive=False)
        staging = temp_name(final)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            client.download_artifacts(run_id, "checkpoint", str(staging))
            # A plain rename, not a replace: a concurrent download that finished first keeps its
            # folder (a reader may hold its path), and this rename then fails harmlessly.
            os.rename(staging, final)
        except OSError:
            if not final.is_dir():  # anything but losing a race with another download
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final / "checkpoint"


def close_orphans(client: MlflowClient, experiment_id: str, *, parent_run_id: str | None = None) -> list[str]:
    """Mark runs left RUNNING by a crashed or killed process (children of `parent_run_id`, or all
    in the experiment) as KILLED with tag orphaned=true; return their ids."""
    query = "attributes.status = 'RUNNING'"
    if parent_run_id is not None:
        query += f" and tags.mlflow.parentRunId = '{parent_run_id}'"
    closed = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, page_token=token)
        for run in page:
            client.set_tag(run.info.run_id, T.ORPHANED, "true")
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
        token = page.token
        if not token:
            return closed


def process_tags() -> dict[str, str]:
    """The `harness.host` and `harness.pid` tags of a run this process creates."""
    return {T.HOST: socket.gethostname(), T.PID: str(os.getpid())}


def close_dead_runs(client: MlflowClient) -> list[str]:
    """Close, as KILLED with `orphaned=true`, every RUNNING run of this store whose recorded host is
    this machine and whose recorded process is gone (kill -9, a crash, a power cut); return their ids.

    Runs without the tags (older runs, study parents), runs of other machines and study trials (the
    study's own closer knows their trial's state and records it, see `close_orphans`) are left
    alone; other children (the folds of a cross-validation) are closed like any run. A pid that is alive again but belongs to a process started after
    the run counts as gone (the kernel reuses pids). One search per page of RUNNING runs of this
    host: milliseconds on SQLite.
    """
    host = socket.gethostname().replace("'", "")
    query = f"attributes.status = '{T.RUNNING}' and tags.`{T.HOST}` = '{host}'"
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    closed: list[str] = []
    token = None
    while experiment_ids:
        page = client.search_runs(experiment_ids, filter_string=query, page_token=token)
        for run in page:
            pid = run.data.tags.get(T.PID, "")
            if T.OPTUNA_TRIAL_NUMBER in run.data.tags:
                continue
            if pid.isdigit() and _process_gone(int(pid), run.info.start_time):
                client.set_tag(run.info.run_id, T.ORPHANED, "true")
                client.set_terminated(run.info.run_id, status=T.KILLED)
                closed.append(run.info.run_id)
        token = page.token
        if not token:
            break
    return closed


def _process_gone(pid: int, run_start_ms: int | None) -> bool:
    if not pid_alive(pid):
        return True
    started = _process_start_time(pid)
    # A process that started after the run did cannot have created it. Two seconds of slack: the
    # kernel's boot time is whole seconds and the run is created well after its process starts.
    return started is not None and run_start_ms is not None and started > run_start_ms / 1000 + 2


def _process_start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), from /proc; None where there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    # Field 22 (starttime, in clock ticks since boot) counts after the ")" that ends the command name.
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return int(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
