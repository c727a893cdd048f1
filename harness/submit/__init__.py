"""`harness submit`: promote a finished run to a validated prediction.csv, a bundle and a registry alias:
`promote` runs `checks`, `gate`, `scoring`, `prediction_csv` and `output` (the folder, swapped in whole).
Lazy face (`harness.lazy_exports`): `output` imports without torch or mlflow.
"""
from __future__ import annotations

from harness import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "submit": "promote", "SubmitReport": "promote", "submitted_run": "output",
    **dict.fromkeys(("SubmitError", "check_promotable", "check_compliance", "check_dataset"), "checks"),
    **dict.fromkeys(("ValidationError", "validate_prediction", "write_prediction"), "prediction_csv"),
    "Fallback": "scoring", "score_test_split": "scoring",
})
__all__ = ["Fallback", "SubmitError", "SubmitReport", "ValidationError", "check_compliance", "check_dataset",
           "check_promotable", "score_test_split", "submit", "submitted_run", "validate_prediction", "write_prediction"]
