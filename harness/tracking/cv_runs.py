"""The parent run of a grouped cross-validation: `harness.kind=cv`, one child run per fold.

Plain values in (no fold or dataset types). The parent is created RUNNING with the run's settings as
params and the CV plan as tags; `finish` logs the summary metrics and the out-of-fold files as
artifacts and ends it FINISHED, or FAILED / KILLED when a fold broke off (the children record their
own status). It carries the process tags, so a parent left RUNNING by `kill -9` is closed by the
next command like any top-level run (`store.close_dead_runs`).

Its summary metrics are named `cv_*` and `oof_*`, never `best_val_auc`: `--run-id best` keeps
choosing among trained models, and a parent has no checkpoint of its own.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

from harness import paths
from harness.tracking import tags as T
from harness.tracking.store import get_or_create_experiment, git_state, package_versions, process_tags, setup


class CvParent:
    """A cross-validation's parent run; create it, train the folds under `run_id`, then `finish`."""

    def __init__(self, *, experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str],
                 config: dict[str, Any] | None = None) -> None:
        """
        Args:
            experiment: MLflow experiment name (created when missing).
            run_name: the parent's name; fold runs are named after it.
            params: the run settings, flat (`harness.config.flat`), plus the CV's own.
            tags: the CV plan (cv.folds, cv.group_by, cv.groups) and the dataset tags.
            config: the settings every fold trains with (`harness.config.to_dict`), logged as
                `config.json`, from which `harness train --like RUN` trains them on the official split.
        """
        self.client = setup()
        run_tags = {**git_state(paths.project_root()), **package_versions(), **process_tags(), **tags, T.KIND: T.CV_KIND}
        if run_tags[T.GIT_COMMIT] != "unknown":
            run_tags[T.MLFLOW_GIT_COMMIT] = run_tags[T.GIT_COMMIT]
        run = self.client.create_run(get_or_create_experiment(self.client, experiment), run_name=run_name,
                                     tags={k: str(v)[:MAX_TAG_VAL_LENGTH] for k, v in run_tags.items()})
        self.run_id: str = run.info.run_id
        self.run_name: str = run.info.run_name
        if config is not None:
            self.client.log_dict(self.run_id, config, "config.json")
        entries = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()]
        for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=entries[start : start + MAX_PARAMS_TAGS_PER_BATCH])

    def log_fold(self, fold: int, metrics: dict[str, float]) -> None:
        """A finished fold's headline numbers at step = fold, so the parent charts them as they come."""
        now = int(time.time() * 1000)
        values = [Metric(f"fold_{k}", float(v), now, fold) for k, v in metrics.items() if math.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=values)

    def finish(self, status: str = T.FINISHED, *, metrics: dict[str, float] | None = None, artifacts: Path | None = None,
               error: str | None = None, tags: dict[str, str] | None = None) -> None:
        """Log the summary (finite metrics only), the folder `artifacts` and `tags`, then end the run as `status`."""
        now = int(time.time() * 1000)
        values = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if math.isfinite(v)]
        tags = [RunTag(k, v) for k, v in (tags or {}).items()]
        if error:
            tags.append(RunTag(T.ERROR, " ".join(error.split())[:500]))
        if values or tags:
            self.client.log_batch(self.run_id, metrics=values, tags=tags)
        if artifacts is not None:
            self.client.log_artifacts(self.run_id, str(artifacts))
        self.client.set_terminated(self.run_id, status=status)
