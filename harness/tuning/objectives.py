"""What a study can optimise, each with its direction: the val metrics of a trial's best epoch on
the official split, or, in a cross-validated study (`folds = K`), the folds' summary (`harness.crossval`).

The first objective is the one pruned on and ranked by; `sign` turns "better" into "larger".
"""
from __future__ import annotations

SPLIT_OBJECTIVES = {"val_auc": "maximize", "val_tpr_fpr1e-3": "maximize", "val_eer": "minimize", "val_logloss": "minimize"}
# Leave-method-out studies (`group_by = "method"`): mean and minimum over the held-out methods of their AUC
# by the fold model that never saw them.
UNSEEN_OBJECTIVES = {"unseen_auc_mean": "maximize", "unseen_auc_min": "maximize"}
# The folds' mean val AUC, its pessimistic `mean - std`, the out-of-fold AUC and its bootstrap interval's low end.
CV_OBJECTIVES = {"cv_val_auc_mean": "maximize", "cv_val_auc_low": "maximize", "oof_auc": "maximize",
                 "oof_auc_ci_low": "maximize", "cv_val_tpr_fpr1e-3_mean": "maximize", **UNSEEN_OBJECTIVES}
OBJECTIVES = {**SPLIT_OBJECTIVES, **CV_OBJECTIVES}


def sign(objective: str) -> float:
    """+1.0 for an objective that is maximised, -1.0 for one that is minimised (unknown: maximised)."""
    return 1.0 if OBJECTIVES.get(objective, "maximize") == "maximize" else -1.0


def fold_metric(objective: str) -> str:
    """The per-fold metric a cross-validated objective is pruned on between folds: its TPR or AUC."""
    return "val_tpr_fpr1e-3" if "tpr" in objective else "val_auc"
