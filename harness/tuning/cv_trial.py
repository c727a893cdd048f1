"""One cross-validated trial (`folds = K`): the trial's settings trained on K grouped folds, the objective
read from the folds together, since the best of 50 trials by one val split overfits those val clips.

The run tree is study -> trial (the CV parent, `trial-007`) -> fold. After fold I the mean of the finished
folds' best values is reported at step I; a pruned trial's run ends KILLED with `pruned_at_fold` = I.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from harness.tuning.objectives import fold_metric
from harness.tuning.rank import TrialOutcome
from harness.tuning.strategies import NoPruning

if TYPE_CHECKING:
    from harness.preflight import Ready
    from harness.tuning.spec import StudySpec


def cv_objective_values(metrics: dict[str, float], objectives: tuple[str, ...]) -> list[float]:
    """The study's objective values from a finished cross-validation's parent metrics.

    >>> cv_objective_values({"cv_val_auc_mean": 0.8, "cv_val_auc_std": 0.05}, ("cv_val_auc_low",))
    [0.75]
    """
    values = {**metrics, "cv_val_auc_low": metrics.get("cv_val_auc_mean", math.nan) - metrics.get("cv_val_auc_std", math.nan)}
    return [float(values.get(o, math.nan)) for o in objectives]


def run_cv_trial(trial: optuna.Trial, ready: Ready, *, spec: StudySpec, parent_run_id: str, tags: dict[str, str]) -> TrialOutcome:
    """Cross-validate one trial's settings under the study's parent run (`epochs` counts the folds trained)."""
    from harness.crossval import cross_validate

    after_fold = None
    if len(spec.objectives) == 1 and not isinstance(spec.pruner, NoPruning):
        metric = fold_metric(spec.objectives[0])

        def after_fold(fold: int, finished: list[dict[str, Any]]) -> bool:
            trial.report(float(np.mean([m.get(metric, math.nan) for m in finished])), step=fold)
            trial.set_user_attr("epoch", fold)  # the live table's progress column: folds done
            return trial.should_prune()

    result = cross_validate(ready, experiment=spec.experiment, folds=spec.folds, group_by=spec.group_by, tags=tags,
                            run_name=f"trial-{trial.number:03d}", parent_run_id=parent_run_id, after_fold=after_fold)
    stopped = None if result.pruned_after_fold is None else f"pruned after fold {result.pruned_after_fold}"
    metrics = dict(zip(spec.objectives, cv_objective_values(result.metrics, spec.objectives)))
    return TrialOutcome(run_id=result.run_id, status=result.status, epochs=len(result.folds), stopped_by=stopped,
                        best_metrics={**result.metrics, **metrics}, worst_slice=result.worst_slice)
