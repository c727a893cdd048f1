"""`harness submit`: promote a finished run to a validated prediction.csv, a bundle and a registry alias.

- `promote`: `submit`, the sequence refuse -> score -> CSV -> bundle -> register.
- `checks`: the refusal policy (status, compliance, dataset).
- `scoring`: the test split scored from the feature cache, with fallbacks.
- `prediction_csv`: prediction.csv written only once valid; fallbacks.csv.
- `output`: the submission folder staged and committed as one, with its completion marker.

The bundle itself is built by `harness.bundle`, the registry calls made by `harness.tracking.registry`.

The names below load their module on first use, so that `harness.submit.output` (what a reader of
a submission folder needs) imports without torch or mlflow.
"""
from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "submit": "promote", "SubmitReport": "promote",
    "SubmitError": "checks", "check_promotable": "checks", "check_compliance": "checks", "check_dataset": "checks",
    "ValidationError": "prediction_csv", "validate_prediction": "prediction_csv", "write_prediction": "prediction_csv",
    "Fallback": "scoring", "score_test_split": "scoring",
    "submitted_run": "output",
    # the name tests/test_modalities.py imports (until that import reads `score_test_split`)
    "_score_test_split": "scoring",
}
__all__ = sorted(name for name in _PUBLIC if not name.startswith("_"))


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'harness.submit' has no attribute {name!r}")
    attribute = "score_test_split" if name == "_score_test_split" else name
    return getattr(importlib.import_module(f"harness.submit.{module}"), attribute)
