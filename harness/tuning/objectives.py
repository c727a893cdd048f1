"""What a study can optimise: the val metrics of a trial's best epoch, each with its direction.

The first objective of a study is the one pruned on and ranked by; `sign` turns "better" into
"larger" so that one comparison serves both directions.
"""
from __future__ import annotations

# Objective name -> direction. They are val metrics of the best epoch (`FitResult.best_metrics`).
OBJECTIVES = {"val_auc": "maximize", "val_tpr_fpr1e-3": "maximize", "val_eer": "minimize", "val_logloss": "minimize"}


def sign(objective: str) -> float:
    """+1.0 for an objective that is maximised, -1.0 for one that is minimised (unknown: maximised).

    Example:
        >>> sign("val_auc"), sign("val_eer")
        (1.0, -1.0)
    """
    return 1.0 if OBJECTIVES.get(objective, "maximize") == "maximize" else -1.0
