"""What the promotion gate of `harness submit` reads from MLflow, as plain values.

- `selection`: how many runs the candidate was picked from: the trials of its study (children of its
  parent run), else the finished runs of its experiment on the same data (`data.fingerprint`);
- `val_predictions`: a run's `val_predictions.csv` (name, label, score), None when it has none;
- `champion`: the version and run that a registered model's `champion` alias points at.
"""
from __future__ import annotations

import csv
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness.tracking import tags as T

PREDICTIONS = "val_predictions.csv"


@dataclass(frozen=True)
class Selection:
    """The candidate was the pick of `runs` runs; `among` says which ones, in words."""

    runs: int
    among: str


def _count(client: MlflowClient, experiment_id: str, query: str) -> int:
    total, token = 0, None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, page_token=token, max_results=1000)
        total += len(page)
        token = page.token
        if not token:
            return total


def selection(client: MlflowClient, run: Any) -> Selection:
    """How many runs `run` was selected from (selection optimism grows with it)."""
    tags = run.data.tags
    experiment_id = run.info.experiment_id
    parent_id = tags.get(T.MLFLOW_PARENT)
    if parent_id:
        parent = client.get_run(parent_id)
        kind = parent.data.tags.get(T.KIND)
        if kind == T.STUDY_KIND:
            n = _count(client, experiment_id, f"tags.`{T.MLFLOW_PARENT}` = '{parent_id}'")
            return Selection(n, f"trials of study {parent.data.tags.get(T.STUDY, parent.info.run_name)}")
        if kind == T.CV_KIND:
            return Selection(1, f"fold {tags.get(T.CV_FOLD, '?')} of cross-validation {parent.info.run_name}")
    fingerprint = tags.get(T.DATA_FINGERPRINT)
    if not fingerprint:
        return Selection(1, "runs (the run records no data fingerprint)")
    query = f"attributes.status = '{T.FINISHED}' and tags.`{T.DATA_FINGERPRINT}` = '{fingerprint}'"
    n = max(1, _count(client, experiment_id, query))
    return Selection(n, "finished runs on the same data in its experiment")


def val_predictions(client: MlflowClient, run_id: str) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """(names, labels, scores) of a run's best epoch on its val clips; None when the run has none."""
    with tempfile.TemporaryDirectory(prefix="harness-gate-") as tmp:
        try:
            path = Path(client.download_artifacts(run_id, PREDICTIONS, tmp))
        except (MlflowException, OSError):
            return None
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    names = [r["name"] for r in rows]
    return names, np.array([int(r["label"]) for r in rows]), np.array([float(r["score"]) for r in rows])


def champion(client: MlflowClient, model_name: str) -> tuple[str, str] | None:
    """(version, run id) behind `model_name`'s `champion` alias; None when there is none yet."""
    try:
        version = client.get_model_version_by_alias(model_name, T.CHAMPION)
    except MlflowException:
        return None
    return str(version.version), version.run_id
