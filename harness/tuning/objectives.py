"""What a study can optimise, each with its direction: the val metrics of a trial's best epoch on
the official split, or, in a cross-validated study (`folds = K`), the folds' summary.

The first objective of a study is the one pruned on and ranked by; `sign` turns "better" into
"larger" so that one comparison serves both directions.
"""
from __future__ import annotations

# Objective name -> direction. They are val metrics of the best epoch (`FitResult.best_metrics`).
SPLIT_OBJECTIVES = {"val_auc": "maximize", "val_tpr_fpr1e-3": "maximize", "val_eer": "minimize", "val_logloss": "minimize"}
# Cross-validated objectives (`harness.crossval` metrics of the trial's CV run): the folds' mean val
# AUC, its pessimistic `mean - std`, the out-of-fold AUC and the low end of its bootstrap interval.
CV_OBJECTIVES = {"cv_val_auc_mean": "maximize", "cv_val_auc_low": "maximize", "oof_auc": "maximize",
                 "oof_auc_ci_low": "maximize", "cv_val_tpr_fpr1e-3_mean": "maximize"}
OBJECTIVES = {**SPLIT_OBJECTIVES, **CV_OBJECTIVES}


def sign(objective: str) -> float:
    """+1.0 for an objective that is maximised, -1.0 for one that is minimised (unknown: maximised).

    Example:
        >>> sign("val_auc"), sign("val_eer")
        (1.0, -1.0)
    """
    return 1.0 if OBJECTIVES.get(objective, "maximize") == "maximize" else -1.0


def fold_metric(objective: str) -> str:
    """The per-fold metric a cross-validated objective is pruned on between folds (the running mean
    of the finished folds' best values).

    Example:
        >>> fold_metric("oof_auc_ci_low"), fold_metric("cv_val_tpr_fpr1e-3_mean")
        ('val_auc', 'val_tpr_fpr1e-3')
    """
    return "val_tpr_fpr1e-3" if "tpr" in objective else "val_auc"
