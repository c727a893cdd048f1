"""One cross-validated trial: the trial's settings trained on K grouped folds, the objective read
from the folds together (`folds = K` in a study spec).

Why: a study that keeps the best of 50 trials by one val split picks, a little more with every
trial, the settings that suit those particular val clips. Measured on K folds of the pooled clips,
each trial's value comes from K times more clips, and its spread is on record.

The run tree stays study -> trial -> fold: the trial's run is the cross-validation's parent
(`harness.kind=cv`, named `trial-007`, nested under the study's parent run) and each fold is its
child. Pruning happens between folds: after each fold the mean of the finished folds' best values
is reported at step fold + 1, and a pruned trial's run ends KILLED with `pruned_at_fold`.

Objectives (`harness.tuning.objectives.CV_OBJECTIVES`): `cv_val_auc_mean`, its pessimistic
`cv_val_auc_low` (mean - std over folds), `oof_auc` and `oof_auc_ci_low` (the lower end of the
out-of-fold AUC's bootstrap interval), and `cv_val_tpr_fpr1e-3_mean`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from harness.config import RunConfig
from harness.tuning.objectives import fold_metric
from harness.tuning.rank import TrialOutcome
from harness.tuning.strategies import NoPruning

if TYPE_CHECKING:
    from harness.tuning.spec import StudySpec


def cv_objective_values(metrics: dict[str, float], objectives: tuple[str, ...]) -> list[float]:
    """The study's objective values from a finished cross-validation's parent metrics.

    Example:
        >>> cv_objective_values({"cv_val_auc_mean": 0.8, "cv_val_auc_std": 0.05}, ("cv_val_auc_low",))
        [0.75]
    """
    values = dict(metrics)
    values["cv_val_auc_low"] = metrics.get("cv_val_auc_mean", math.nan) - metrics.get("cv_val_auc_std", math.nan)
    return [float(values.get(o, math.nan)) for o in objectives]


def run_cv_trial(trial: optuna.Trial, cfg: RunConfig, *, spec: StudySpec, data_dir: Path, cache_root: Path,
                 parent_run_id: str, tags: dict[str, str]) -> TrialOutcome:
    """Cross-validate one trial's settings under the study's parent run.

    Args:
        trial: the Optuna trial (reported to between folds when the study prunes).
        cfg: the trial's resolved settings.
        spec: the study spec (`folds`, `group_by`, `objectives`, `pruner`).
        data_dir, cache_root: the dataset and the feature cache.
        parent_run_id: the study's parent run.
        tags: the trial's run tags (`harness.tracking.study_runs.trial_tags`).

    Returns:
        The trial's outcome: FINISHED with the CV metrics (and `cv_val_auc_low`) as its best
        metrics, KILLED when pruned between folds, or the status a fold ended with; `epochs`
        counts the folds trained.
    """
    from harness.crossval import cross_validate

    after_fold = None
    if len(spec.objectives) == 1 and not isinstance(spec.pruner, NoPruning):
        metric = fold_metric(spec.objectives[0])

        def after_fold(fold: int, finished: list[dict[str, Any]]) -> bool:
            trial.report(float(np.mean([m.get(metric, math.nan) for m in finished])), step=fold + 1)
            trial.set_user_attr("epoch", fold + 1)  # the live table's progress column: folds done
            return trial.should_prune()

    result = cross_validate(cfg, data_dir=data_dir, experiment=spec.experiment, cache_root=cache_root,
                            folds=spec.folds, group_by=spec.group_by, run_name=f"trial-{trial.number:03d}",
                            parent_run_id=parent_run_id, tags=tags, after_fold=after_fold)
    stopped = None if result.pruned_after_fold is None else f"pruned after fold {result.pruned_after_fold}"
    metrics = dict(zip(spec.objectives, cv_objective_values(result.metrics, spec.objectives)))
    return TrialOutcome(run_id=result.run_id, status=result.status, epochs=len(result.folds), stopped_by=stopped,
                        best_metrics={**result.metrics, **metrics})
