"""What the promotion gate of `harness submit` reads from MLflow, as plain values: how many runs the
candidate was picked from, a run's val predictions, the version and run a model's `champion` names.
"""
from __future__ import annotations

import csv
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness.tracking import tags as T
from harness.tracking.store import search_all

PREDICTIONS = "val_predictions.csv"


@dataclass(frozen=True)
class Selection:
    """The candidate was the pick of `runs` runs; `among` says which ones, in words."""

    runs: int
    among: str


def selection(client: MlflowClient, run: Any) -> Selection:
    """How many runs `run` was picked from (optimism grows with it): its study's trials, else its experiment's on its data."""
    tags = run.data.tags
    experiment_id = run.info.experiment_id
    parent_id = tags.get(T.MLFLOW_PARENT)
    if parent_id:
        parent = client.get_run(parent_id)
        kind = parent.data.tags.get(T.KIND)
        if kind == T.STUDY_KIND:
            n = len(search_all(client, [experiment_id], f"tags.`{T.MLFLOW_PARENT}` = '{parent_id}'", max_results=1000))
            return Selection(n, f"trials of study {parent.data.tags.get(T.STUDY, parent.info.run_name)}")
        if kind == T.CV_KIND:
            return Selection(1, f"fold {tags.get(T.CV_FOLD, '?')} of cross-validation {parent.info.run_name}")
    fingerprint = tags.get(T.DATA_FINGERPRINT)
    if not fingerprint:
        return Selection(1, "runs (the run records no data fingerprint)")
    query = f"attributes.status = '{T.FINISHED}' and tags.`{T.DATA_FINGERPRINT}` = '{fingerprint}'"
    n = max(1, len(search_all(client, [experiment_id], query, max_results=1000)))
    return Selection(n, "finished runs on the same data in its experiment")


def val_predictions(client: MlflowClient, run_id: str) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """(names, labels, scores) of a run's best epoch on its val clips; None when the run has none."""
    with tempfile.TemporaryDirectory(prefix="harness-gate-") as tmp:
        try:
            path = Path(client.download_artifacts(run_id, PREDICTIONS, tmp))
        except (MlflowException, OSError):
            return None
        rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))
    names = [r["name"] for r in rows]
    return names, np.array([int(r["label"]) for r in rows]), np.array([float(r["score"]) for r in rows])


def champion(client: MlflowClient, model_name: str) -> tuple[str, str] | None:
    """(version, run id) behind `model_name`'s `champion` alias; None when there is none yet."""
    try:
        version = client.get_model_version_by_alias(model_name, T.CHAMPION)
    except MlflowException:
        return None
    return str(version.version), version.run_id
