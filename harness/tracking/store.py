"""The MLflow store: SQLite (`mlruns/mlflow.db`) and `mlruns/artifacts` at absolute paths whatever the working
folder (`MLFLOW_TRACKING_URI` overrides); experiments and run lookup (`best`, `last`). Every call goes through an
`MlflowClient` with explicit run ids, never mlflow's per-thread active-run stack (trials may run in threads).
"""
from __future__ import annotations

import logging
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness import paths
from harness.errors import NotFound
from harness.fileio import FileLock
from harness.tracking import metric_names as M
from harness.tracking import tags as T

# SQLAlchemy stores: mlflow would put artifacts under the working folder's ./mlruns, so experiments get an absolute one.
_DATABASE_SCHEMES = {"sqlite", "postgresql", "mysql", "mssql"}
_EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens its runs table, asks nothing


def setup(*, tracking_uri: str | None = None) -> MlflowClient:
    """Point mlflow at the project's store (or `tracking_uri`), quiet its logs, return a client."""
    uri = tracking_uri or paths.tracking_uri()
    _ensure_sqlite_folder(uri)
    for name in ("alembic", "mlflow"):  # a schema migration logs a dozen alembic INFO lines
        logging.getLogger(name).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    # Two processes creating or migrating the schema of one new SQLite file fail ("table ... already exists").
    with FileLock(f"{database}.lock") if (database := _sqlite_file(uri)) else nullcontext():
        return MlflowClient(tracking_uri=uri)


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _ensure_sqlite_folder(uri: str) -> None:
    """SQLite creates the database file but not a missing folder above it (a fresh checkout)."""
    if database := _sqlite_file(uri):
        database.parent.mkdir(parents=True, exist_ok=True)


def get_or_create_experiment(client: MlflowClient, name: str, *, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created or restored when needed (on a database store, artifacts under `artifact_root`)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":  # it still holds its name: creating it again would fail
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    if artifact_location is None and urlparse(client.tracking_uri).scheme.split("+")[0] in _DATABASE_SCHEMES:
        folder = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"
        artifact_location = f"{paths.artifact_root()}/{folder}"
    try:
        return client.create_experiment(name, artifact_location=artifact_location, tags=_EXPERIMENT_KIND)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # else another process or thread created it meanwhile
            raise
        return client.get_experiment_by_name(name).experiment_id


RUN_ALIASES = ("best", "last")


def resolve_run_id(client: MlflowClient, ref: str, *, experiment: str | None = None) -> str:
    """A run id, or `best` (highest best val AUC; ties: a study's best trial, then the newest) / `last` (newest)
    among the FINISHED runs that trained a model on the official split, in `experiment` or the whole store."""
    if ref not in RUN_ALIASES:
        return ref
    if experiment is None:
        ids = [e.experiment_id for e in client.search_experiments()]
    else:
        found = client.get_experiment_by_name(experiment)
        ids = [found.experiment_id] if found is not None else []
    order = ([f"metrics.`{M.BEST_VAL_AUC}` DESC"] if ref == "best" else []) + ["attributes.start_time DESC"]
    # Not a fold's run: it validated on a fold of train + val, not on the official val split the others share.
    finished = (f"attributes.status = '{T.FINISHED}' and metrics.`{M.BEST_VAL_AUC}` >= 0 "
                f"and tags.`{T.KIND}` != '{T.FOLD_KIND}'")
    # A few, not one: among runs tied on the metric a study's best trial is preferred.
    candidates = client.search_runs(ids, filter_string=finished, order_by=order, max_results=20) if ids else []
    if not candidates:
        where = f"experiment {experiment!r}" if experiment else "this store"
        raise NotFound(f"--run-id {ref}: no finished training run in {where} yet")
    if ref != "best":
        return candidates[0].info.run_id
    best = candidates[0].data.metrics[M.BEST_VAL_AUC]
    tied = [r for r in candidates if r.data.metrics[M.BEST_VAL_AUC] == best]
    return next((r for r in tied if r.data.tags.get(T.BEST_CHILD) == "true"), tied[0]).info.run_id


def get_run(client: MlflowClient, run_id: str) -> Any:
    """The run `run_id`; NotFound (one line naming the store) when there is none."""
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            raise
        raise NotFound(f"no run {run_id!r} in {client.tracking_uri}") from None


def search_all(client: MlflowClient, experiment_ids: list[str], query: str, **kwargs: Any) -> list[Any]:
    """Every run of `experiment_ids` that `query` matches, page after page."""
    found, token = [], None
    while experiment_ids:
        page = client.search_runs(experiment_ids, filter_string=query, page_token=token, **kwargs)
        found += page
        if not (token := page.token):
            break
    return found
