"""MLflow tracking: the only module that imports mlflow.

Runs live in a SQLite store (`mlruns/mlflow.db`) with artifacts under `mlruns/artifacts`, both at
absolute paths from `harness.paths`, so every command finds them whatever the working folder
(`MLFLOW_TRACKING_URI` overrides the store). MLflow 3.17 refuses the old file store by default.

Every call goes through an `MlflowClient` with explicit run ids, never mlflow's global active-run
stack: tuning trials may run in threads, and the stack is per thread and easy to leave dangling.
"""
from __future__ import annotations

import csv
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

# Read by mlflow when it loads or first uses them, so they are set before the import. setdefault
# leaves a user's own choice alone. Telemetry is off because the machines here are often offline
# and a failed upload should never slow or clutter a run.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.utils.validation import (  # noqa: E402
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from harness import paths  # noqa: E402
from harness.callbacks import EpochReport, FitResult  # noqa: E402
from harness.config import RunConfig, flat, from_dict, to_dict  # noqa: E402
from harness.metrics import bootstrap_auc_interval, has_both_classes, validate  # noqa: E402
from harness.plots import save_evaluation_plots  # noqa: E402

_T = TypeVar("_T")

# Schemes of SQLAlchemy stores. For these mlflow would put artifacts under ./mlruns relative to
# the working folder at the time, so experiments get an absolute artifact location instead.
_DATABASE_SCHEMES = {"sqlite", "postgresql", "mysql", "mssql"}
# Tells the MLflow 3 UI this is a model-training experiment, so it opens the runs table and does
# not ask the user to pick an experiment type.
_EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
_VERSIONED_PACKAGES = ("torch", "timm", "mlflow", "optuna", "numpy", "av", "librosa", "harness")
_ERROR_CHARS = 500
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


class RunRecorder:
    """Records one training run in MLflow; implements `harness.callbacks.Callback`.

    The run is created (RUNNING) on construction. As a context manager it ends FINISHED on a
    normal exit, KILLED on Ctrl-C and FAILED (with an "error" tag) on any other exception.
    """

    def __init__(
        self,
        client: MlflowClient,
        *,
        experiment_id: str,
        run_name: str | None,
        config: RunConfig,
        tags: dict[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self._log_seconds = 0.0
        self._finished = False
        run_tags = {**git_state(paths.project_root()), **package_versions(), **(tags or {})}
        if run_tags["git.commit"] != "unknown":
            run_tags["mlflow.source.git.commit"] = run_tags["git.commit"]  # shown on the run page
        if parent_run_id is not None:
            run_tags["mlflow.parentRunId"] = parent_run_id  # nests the run under its study
        run = self._timed(client.create_run, experiment_id, tags=run_tags, run_name=run_name)
        self.run_id: str = run.info.run_id
        self.run_name: str = run.info.run_name  # mlflow makes one up when run_name is None

    def _timed(self, call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self._log_seconds += time.perf_counter() - start

    def log_seconds(self) -> float:
        """Wall time spent inside mlflow calls so far, to check logging stays a small cost."""
        return self._log_seconds

    def on_start(self, info: dict[str, Any]) -> None:
        """Settings as params; `info` numbers (parameter counts, MACs, sizes) as `info.<k>` metrics
        so the runs table sorts and filters them numerically; other `info` values as tags."""
        params = [Param(k, _param_value(v)) for k, v in flat(self.config).items()]
        numbers = {k: v for k, v in info.items() if _is_number(v)}
        now = _now_ms()
        metrics = [Metric(f"info.{k}", float(v), now, 0) for k, v in numbers.items()]
        tags = [RunTag(_info_tag(k), _tag_value(v)) for k, v in info.items() if k not in numbers]
        # One call unless the settings outgrow mlflow's per-batch limit on params.
        self._timed(
            self.client.log_batch, self.run_id,
            metrics=metrics, params=params[:MAX_PARAMS_TAGS_PER_BATCH], tags=tags,
        )
        for start in range(MAX_PARAMS_TAGS_PER_BATCH, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = params[start : start + MAX_PARAMS_TAGS_PER_BATCH]
            self._timed(self.client.log_batch, self.run_id, params=chunk)

    def on_epoch(self, report: EpochReport) -> None:
        """All of an epoch's metrics in one call, at step = epoch, with one timestamp."""
        now = _now_ms()
        metrics = [Metric(k, float(v), now, report.epoch) for k, v in report.metrics.items()]
        self._timed(self.client.log_batch, self.run_id, metrics=metrics)

    def on_end(self, result: FitResult) -> None:
        """Best-epoch metrics with a bootstrap AUC interval, plots, predictions and checkpoint."""
        labels, scores = validate(result.val_labels, result.val_scores)
        self._log_final_metrics(result, labels, scores)
        with tempfile.TemporaryDirectory(prefix="harness-run-") as tmp:
            out = Path(tmp)
            save_evaluation_plots(labels, scores, out / "plots", title=self.run_name)
            _write_predictions(out / "val_predictions.csv", result.val_names, labels, scores)
            checkpoint = out / "checkpoint"
            checkpoint.mkdir()
            (checkpoint / "config.json").write_text(json.dumps(to_dict(self.config), indent=2))
            (checkpoint / "params.json").write_text(json.dumps(result.info, indent=2, default=str))
            self._timed(self.client.log_artifacts, self.run_id, str(out))
        if result.checkpoint is not None:
            # Logged from where it lies: a copy in the temporary folder would double its disk use.
            self._timed(self.client.log_artifact, self.run_id, str(result.checkpoint), "checkpoint")

    def _log_final_metrics(self, result: FitResult, labels: Any, scores: Any) -> None:
        now = _now_ms()
        values = {"best_epoch": float(result.best_epoch)}
        values.update({f"best_{k}": float(v) for k, v in result.best_metrics.items()})
        if has_both_classes(labels):
            values["val_auc_ci_low"], values["val_auc_ci_high"] = bootstrap_auc_interval(labels, scores)
        tags = [RunTag("stopped_by", result.stopped_by)] if result.stopped_by else []
        metrics = [Metric(k, v, now, 0) for k, v in values.items()]
        self._timed(self.client.log_batch, self.run_id, metrics=metrics, tags=tags)

    def finish(
        self, status: str = "FINISHED", *, error: str | None = None, extra_tags: dict[str, str] | None = None
    ) -> None:
        """End the run as FINISHED, FAILED or KILLED; later calls do nothing (so an explicit
        finish inside a `with` block is not overwritten on exit)."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
        if self._finished:
            return
        tags = dict(extra_tags or {})
        if error is not None:
            tags["error"] = " ".join(error.split())[:_ERROR_CHARS]  # one line for the runs table
        if tags:
            run_tags = [RunTag(k, _tag_value(v)) for k, v in tags.items()]
            self._timed(self.client.log_batch, self.run_id, tags=run_tags)
        self._timed(self.client.set_terminated, self.run_id, status=status)
        self._finished = True

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.finish("FINISHED")
        elif isinstance(exc, KeyboardInterrupt):
            self.finish("KILLED")
        else:
            self.finish("FAILED", error=f"{type(exc).__name__}: {exc}")
        # Returning None lets any exception propagate.


def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _info_tag(key: str) -> str:
    return "device" if key == "device" else f"info.{key}"


def _param_value(value: Any) -> str:
    return str(value)[:MAX_PARAM_VAL_LENGTH]


def _tag_value(value: Any) -> str:
    return str(value)[:MAX_TAG_VAL_LENGTH]


def _write_predictions(path: Path, names: list[str], labels: Any, scores: Any) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "label", "score"])
        writer.writerows(zip(names, labels.tolist(), scores.tolist()))


def load_run_config(client: MlflowClient, run_id: str) -> tuple[RunConfig, Path]:
    """The settings and best checkpoint of a recorded run, downloaded once into
    `.cache/runs/<run_id>` (a run's artifacts never change after it ends)."""
    get_run(client, run_id)
    names = {Path(a.path).name for a in client.list_artifacts(run_id, "checkpoint")}
    weights = sorted(n for n in names if n.endswith(".safetensors"))
    if "config.json" not in names or not weights:
        raise LookupError(f"run {run_id} has no checkpoint (it ended before its first validated epoch)")
    folder = _download_checkpoint(client, run_id)
    config = from_dict(RunConfig, json.loads((folder / "config.json").read_text()))
    return config, folder / weights[0]


RUN_ALIASES = ("best", "last")


def resolve_run_id(client: MlflowClient, ref: str, *, experiment: str | None = None) -> str:
    """A run id, or `best` (highest best_val_auc; ties to the newest) / `last` (newest) among the
    FINISHED runs that trained a model, in `experiment` or in every experiment of the store, so
    scripts can say `harness submit --run-id best`."""
    if ref not in RUN_ALIASES:
        return ref
    if experiment is None:
        ids = [e.experiment_id for e in client.search_experiments()]
    else:
        found = client.get_experiment_by_name(experiment)
        ids = [found.experiment_id] if found is not None else []
    order = (["metrics.best_val_auc DESC"] if ref == "best" else []) + ["attributes.start_time DESC"]
    finished = "attributes.status = 'FINISHED' and metrics.best_val_auc >= 0"
    runs = client.search_runs(ids, filter_string=finished, order_by=order, max_results=1) if ids else []
    if not runs:
        where = f"experiment {experiment!r}" if experiment else "this store"
        raise LookupError(f"--run-id {ref}: no finished training run in {where} yet")
    return runs[0].info.run_id


def get_run(client: MlflowClient, run_id: str) -> Any:
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code not in _NOT_FOUND_CODES:
            raise
        raise LookupError(f"no run {run_id!r} in {client.tracking_uri}") from None


def _download_checkpoint(client: MlflowClient, run_id: str) -> Path:
    """Download into a fresh folder and rename it into place, so an interrupted download or a
    concurrent one never leaves a half-filled cache entry behind."""
    final = paths.project_root() / ".cache" / "runs" / run_id
    if not final.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{run_id}.tmp-", dir=final.parent))
        try:
            client.download_artifacts(run_id, "checkpoint", str(staging))
            staging.rename(final)
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
            client.set_tag(run.info.run_id, "orphaned", "true")
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
        token = page.token
        if not token:
            return closed


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
