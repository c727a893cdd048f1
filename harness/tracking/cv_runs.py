"""The parent run of a grouped cross-validation: `harness.kind=cv`, one child run per fold (`fold`), folds 1..K.

Opened with the settings as params, the CV plan as tags and `config.json` (what every fold trains with). It
ends as every run does, a FAILED error prefixed by its fold; `stop` ends it early (KILLED with `pruned_at_fold`
for a pruner). Metrics: `fold/auc` at step = fold, `cv/...`, `oof/...`, never `summary/best_val_auc`:
`--run-id best` chooses among trained models, and a parent has no checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from harness import checkpoint as ckpt
from harness.tracking import metric_names as M
from harness.tracking import tags as T
from harness.tracking.lifecycle import TrackedRun, error_line, open_run, readable
from harness.tracking.store import get_or_create_experiment, setup


class CvParent:
    """A cross-validation's parent run (under a study's, if any): open it, train the folds in its block, `finish`."""

    def __init__(self, *, experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str],
                 config: dict[str, Any], parent_run_id: str | None = None) -> None:
        client = setup()
        self.run: TrackedRun = open_run(client, T.CV_KIND, experiment_id=get_or_create_experiment(client, experiment),
                                        run_name=run_name, parent_run_id=parent_run_id, tags=tags, params=params)
        self.run_id, self.run_name = self.run.run_id, self.run.run_name
        self.fold_aucs: list[float] = []
        self.fold = 0  # the fold being trained (1-based), named in an error
        with self.run.ended_on_error():
            self.run.call(client.log_dict, self.run_id, config, ckpt.SETTINGS)

    def log_fold(self, fold: int, metrics: dict[str, float]) -> None:
        """A finished fold's headline numbers (`auc`, `tpr_fpr1e-3`) at step = fold (1..K)."""
        self.fold_aucs.append(metrics.get("auc", float("nan")))
        self.run.log_metrics({f"{M.FOLD}{k}": v for k, v in metrics.items()}, step=fold)

    def stop(self, status: str, *, pruned_after: int | None = None, error: str | None = None) -> None:
        """End early: KILLED with `pruned_at_fold` (a pruner), or `status` with `error` (a fold that did not finish)."""
        tags = {T.PRUNED_AT_FOLD: str(pruned_after)} if pruned_after is not None else None
        self.run.describe(self._folds_line())
        self.run.end(status, error=error, tags=tags)

    def finish(self, metrics: dict[str, float], artifacts: Path) -> None:
        """The summary (`cv_*`, `oof_*`), the folder `artifacts` and the result line; then FINISHED."""
        self.run.log_metrics({M.cv_metric(k): v for k, v in metrics.items()})
        self.run.call(self.run.client.log_artifacts, self.run_id, str(artifacts))
        low, high = metrics.get("oof_auc_ci_low"), metrics.get("oof_auc_ci_high")
        self.run.describe(f"out-of-fold AUC {readable(metrics.get('oof_auc', float('nan')))} "
                          f"[{readable(low)}, {readable(high)}]; {self._folds_line()}")
        self.run.end(T.FINISHED)

    def _folds_line(self) -> str:
        return "folds " + ("/".join(f"{a:.3g}" for a in self.fold_aucs) if self.fold_aucs else "none finished")

    def __enter__(self) -> CvParent:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None and not isinstance(exc, KeyboardInterrupt) and self.fold:
            self.run.end(T.FAILED, error=f"fold {self.fold}: {error_line(exc)}")
        self.run.__exit__(exc_type, exc, tb)
