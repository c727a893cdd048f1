"""`RunRecorder`: one training run in MLflow (`harness.kind` train, fold or trial), fed by the engine's callbacks.

`harness.tracking.lifecycle` opens and ends the run. The recorder logs the model's facts, each epoch's
metrics, and at the end the best epoch's metrics with a bootstrap AUC interval, the per-slice AUCs
(`harness.slices`; the worst left in `FitResult.info["worst_slice"]` for later callbacks), plots, val
predictions, the checkpoint (`harness.checkpoint`) and a one-line result as the run's description.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

from mlflow.tracking import MlflowClient

from harness import checkpoint as ckpt
from harness.callbacks import EpochReport, FitResult
from harness.config import RunConfig, flat
from harness.data.labels import Dataset, find_label_file
from harness.fileio import csv_text
from harness.metrics import bootstrap_auc_interval, has_both_classes, validate
from harness.plots import save_evaluation_plots
from harness.slices import run_slices, slice_metrics, slices_csv, worst
from harness.tracking import metric_names as M
from harness.tracking import tags as T
from harness.tracking.lifecycle import TrackedRun, open_run, readable


class RunRecorder:
    """Records one training run, created RUNNING; as a context manager it ends FINISHED, KILLED on Ctrl-C or
    FAILED (with an "error" tag) on any other exception, unless `finish` was called."""

    def __init__(self, client: MlflowClient, *, experiment_id: str, run_name: str | None, config: RunConfig,
                 kind: str = T.TRAIN_KIND, tags: dict[str, str] | None = None, params: dict[str, Any] | None = None,
                 parent_run_id: str | None = None, analyse: Callable[[FitResult, Path], dict[str, float]] | None = None
                 ) -> None:
        """`params`: more params beside the settings. `analyse(result, folder)`, run by `on_end`, writes more
        artifacts into `folder` (logged under `analysis/`) and returns more final metrics."""
        self.client, self.config, self.analyse = client, config, analyse
        self.run: TrackedRun = open_run(client, kind, experiment_id=experiment_id, run_name=run_name,
                                        parent_run_id=parent_run_id, tags=tags, params={**flat(config), **(params or {})},
                                        system_metrics=True)
        self.run_id: str = self.run.run_id
        self.run_name: str = self.run.run_name  # mlflow makes one up when run_name is None
        self.methods: dict = {}  # clip name -> (method, modality), from `log_dataset`
        self.durations: dict[str, float] = {}  # clip name -> seconds, from `log_dataset`: slices without methods

    def log_seconds(self) -> float:
        """Wall time spent inside mlflow calls so far."""
        return self.run.seconds

    def log_dataset(self, ds: Dataset, splits: tuple[str, ...] = ("train", "val"),
                    durations: dict[str, float] | None = None) -> dict[str, str]:
        """Log the splits as MLflow dataset inputs; split -> digest. The dataset's methods, else `durations`
        (clip name -> seconds), slice the val scores."""
        from harness.tracking.datasets import log_datasets

        present = [s for s in splits if ds.split(s)]
        self.methods, self.durations = ds.methods, durations or {}
        return self.run.call(log_datasets, self.client, self.run_id, name=ds.root.name, source=ds.root,
                             splits={s: [(c.name, c.label) for c in ds.split(s)] for s in present},
                             label_files={s: f for s in present if (f := find_label_file(ds.root, s)) is not None})

    def on_start(self, info: dict[str, Any]) -> None:
        """`info` numbers as `model/<k>` metrics (the runs table sorts them numerically), other values as tags."""
        number = {k: isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in info.items()}
        self.run.log_metrics({M.model_metric(k): v for k, v in info.items() if number[k]},
                             tags={k if k == "device" else f"info.{k}": v for k, v in info.items() if not number[k]})

    def on_epoch(self, report: EpochReport) -> None:
        """An epoch's metrics in one call at step = epoch (`epoch/val_auc`, `train/lr`)."""
        self.run.log_metrics({M.epoch_metric(k): v for k, v in report.metrics.items()}, step=report.epoch)

    def on_end(self, result: FitResult) -> None:
        """Best-epoch metrics with a bootstrap AUC interval, slices, plots, predictions, checkpoint, description."""
        labels, scores = validate(result.val_labels, result.val_scores)
        values = {M.BEST_EPOCH: float(result.best_epoch)}
        values.update({M.summary_metric(f"best_{k}"): float(v) for k, v in result.best_metrics.items()})
        if has_both_classes(labels):
            values[M.VAL_AUC_CI_LOW], values[M.VAL_AUC_CI_HIGH] = bootstrap_auc_interval(labels, scores)
        slices = run_slices(result.val_names, labels, scores, self.methods, seconds=self.durations)
        values.update(slice_metrics(slices))
        tags = {T.STOPPED_BY: result.stopped_by} if result.stopped_by else {}
        if "best_weights" in result.info:
            tags[T.BEST_WEIGHTS] = result.info["best_weights"]
        self.run.log_metrics(values, tags=tags)
        self.run.describe(result_line(values, epochs=len(result.history)))
        with tempfile.TemporaryDirectory(prefix="harness-run-") as tmp:
            out = Path(tmp)
            save_evaluation_plots(labels, scores, out / "plots", title=self.run_name)
            write_predictions(out / "val_predictions.csv", result.val_names, labels, scores)
            if slices:
                (out / "slices.csv").write_text(slices_csv(slices))
            ckpt.write_settings(out / ckpt.FOLDER, self.config, result.info)
            if self.analyse is not None:
                extra = self.analyse(result, out / "analysis")
                self.run.log_metrics({M.summary_metric(k): v for k, v in extra.items()})
            self.run.call(self.client.log_artifacts, self.run_id, str(out))
        if result.checkpoint is not None:
            # Logged from where it lies: a copy in the temporary folder would double its disk use.
            self.run.call(self.client.log_artifact, self.run_id, str(result.checkpoint), ckpt.FOLDER)
        if (low := worst(slices)) is not None:  # after the checkpoint's settings, which must not hold it
            result.info["worst_slice"] = low.line()

    def finish(self, status: str = T.FINISHED, *, error: str | None = None,
               extra_tags: dict[str, str] | None = None) -> None:
        """End the run as FINISHED, FAILED or KILLED; later calls (the `with` block's exit) do nothing."""
        self.run.end(status, error=error, tags=extra_tags)

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.run.__exit__(exc_type, exc, tb)


def result_line(summary: dict[str, float], *, epochs: int) -> str:
    """A training run's result in one line, its description: 'val AUC 0.7811 [0.63, 0.9031], best epoch 5 of 6'."""
    auc = summary.get(M.BEST_VAL_AUC, math.nan)
    low, high = summary.get(M.VAL_AUC_CI_LOW), summary.get(M.VAL_AUC_CI_HIGH)
    interval = f" [{readable(low)}, {readable(high)}]" if low is not None and high is not None else ""
    return f"val AUC {readable(auc)}{interval}, best epoch {int(summary.get(M.BEST_EPOCH, 0))} of {epochs}"


def write_predictions(path: Path, names: list[str], labels: Any, scores: Any) -> None:
    path.write_text(csv_text(("name", "label", "score"), zip(names, labels.tolist(), scores.tolist())))
