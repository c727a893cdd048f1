"""`RunRecorder`: one training run in MLflow, fed by the engine's callbacks.

Statuses follow the contract in `harness.tracking.tags`: FINISHED; KILLED on Ctrl-C (or pruned,
with `pruned_at_epoch`); FAILED with an `error` tag. Each run records the machine and process that
own it (`harness.host`, `harness.pid`); creating a recorder first closes this machine's top-level
runs whose process is gone (`store.close_dead_runs`, once per process and store), so a run left
RUNNING by a `kill -9` ends KILLED with `orphaned=true` as soon as any later command records a run.
From creation to `finish`, MLflow's system-metrics monitor samples CPU, memory and GPU
(`harness.tracking.system_metrics`).
"""
from __future__ import annotations

import csv
import json
import math
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

from harness import paths
from harness.callbacks import EpochReport, FitResult
from harness.config import RunConfig, flat, to_dict
from harness.data.labels import Dataset, find_label_file
from harness.metrics import bootstrap_auc_interval, has_both_classes, validate
from harness.plots import save_evaluation_plots
from harness.tracking import metric_names as M
from harness.tracking import tags as T
from harness.tracking.store import close_dead_runs, git_state, package_versions, process_tags
from harness.tracking.system_metrics import SystemMetrics

_T = TypeVar("_T")
_ERROR_CHARS = 500
_HEALED_STORES: set[str] = set()  # stores this process has already closed dead runs in


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
        analyse: Callable[[FitResult, Path], dict[str, float]] | None = None,
    ) -> None:
        """`analyse(result, folder)`: run by `on_end`, writes more artifacts into `folder` (logged
        under `analysis/`) and returns more final metrics (the low-FPR analysis, `harness.analysis`)."""
        self.client = client
        self.config = config
        self.analyse = analyse
        self._log_seconds = 0.0
        self._finished = False
        if client.tracking_uri not in _HEALED_STORES:
            self._timed(close_dead_runs, client)
            _HEALED_STORES.add(client.tracking_uri)
        run_tags = {**git_state(paths.project_root()), **package_versions(), **process_tags(), **(tags or {})}
        if run_tags[T.GIT_COMMIT] != "unknown":
            run_tags[T.MLFLOW_GIT_COMMIT] = run_tags[T.GIT_COMMIT]  # shown on the run page
        if parent_run_id is not None:
            run_tags[T.MLFLOW_PARENT] = parent_run_id  # nests the run under its study
        run = self._timed(client.create_run, experiment_id, tags=run_tags, run_name=run_name)
        self.run_id: str = run.info.run_id
        self.run_name: str = run.info.run_name  # mlflow makes one up when run_name is None
        # CPU, memory (and GPU) from now until the run ends: the "System metrics" tab.
        self.system_metrics = SystemMetrics(self.run_id, client.tracking_uri).start()

    def _timed(self, call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self._log_seconds += time.perf_counter() - start

    def log_seconds(self) -> float:
        """Wall time spent inside mlflow calls so far, to check logging stays a small cost."""
        return self._log_seconds

    def log_dataset(self, ds: Dataset, splits: tuple[str, ...] = ("train", "val")) -> dict[str, str]:
        """The splits this run reads as MLflow dataset inputs (`tracking.datasets`); split -> digest."""
        from harness.tracking.datasets import log_datasets

        present = [s for s in splits if ds.split(s)]
        return self._timed(
            log_datasets, self.client, self.run_id, name=ds.root.name, source=ds.root,
            splits={s: [(c.name, c.label) for c in ds.split(s)] for s in present},
            label_files={s: f for s in present if (f := find_label_file(ds.root, s)) is not None},
        )

    def on_start(self, info: dict[str, Any]) -> None:
        """Settings as params; `info` numbers (parameter counts, MACs, sizes) as `model/<k>` metrics
        so the runs table sorts and filters them numerically; other `info` values as tags."""
        params = [Param(k, _param_value(v)) for k, v in flat(self.config).items()]
        numbers = {k: v for k, v in info.items() if _is_number(v)}
        now = _now_ms()
        metrics = [Metric(M.model_metric(k), float(v), now, 0) for k, v in numbers.items()]
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
        """All of an epoch's metrics in one call, at step = epoch, with one timestamp, named by
        `metric_names.epoch_metric` (`epoch/val_auc`, `train/lr`)."""
        now = _now_ms()
        metrics = [Metric(M.epoch_metric(k), float(v), now, report.epoch) for k, v in report.metrics.items()]
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
            if self.analyse is not None:
                extra = self.analyse(result, out / "analysis")
                now = _now_ms()
                metrics = [Metric(M.summary_metric(k), float(v), now, 0) for k, v in extra.items() if math.isfinite(v)]
                self._timed(self.client.log_batch, self.run_id, metrics=metrics)
            self._timed(self.client.log_artifacts, self.run_id, str(out))
        if result.checkpoint is not None:
            # Logged from where it lies: a copy in the temporary folder would double its disk use.
            self._timed(self.client.log_artifact, self.run_id, str(result.checkpoint), "checkpoint")

    def _log_final_metrics(self, result: FitResult, labels: Any, scores: Any) -> None:
        now = _now_ms()
        values = {M.BEST_EPOCH: float(result.best_epoch)}
        values.update({M.summary_metric(f"best_{k}"): float(v) for k, v in result.best_metrics.items()})
        if has_both_classes(labels):
            values[M.VAL_AUC_CI_LOW], values[M.VAL_AUC_CI_HIGH] = bootstrap_auc_interval(labels, scores)
        tags = [RunTag(T.STOPPED_BY, result.stopped_by)] if result.stopped_by else []
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
        self.system_metrics.stop()  # before the run ends: its last sample lands in the run
        tags = dict(extra_tags or {})
        if error is not None:
            tags[T.ERROR] = " ".join(error.split())[:_ERROR_CHARS]  # one line for the runs table
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

