"""`harness submit`: promote a finished run to a validated prediction.csv, a bundle and a registry alias.

- `promote`: `submit`, the sequence refuse -> score -> CSV -> bundle -> register.
- `checks`: the refusal policy (status, compliance, dataset).
- `scoring`: the test split scored from the feature cache, with fallbacks.
- `prediction_csv`: prediction.csv written only once valid; fallbacks.csv.
- `output`: the submission folder staged and committed as one, with its completion marker.

The bundle itself is built by `harness.bundle`, the registry calls made by `harness.tracking.registry`.
"""
from __future__ import annotations

from harness.submit.checks import SubmitError, check_compliance, check_dataset, check_promotable
from harness.submit.output import submitted_run
from harness.submit.prediction_csv import ValidationError, validate_prediction, write_prediction
from harness.submit.promote import SubmitReport, submit
from harness.submit.scoring import Fallback, score_test_split

# The name tests/test_modalities.py imports (kept until that import reads `score_test_split`).
_score_test_split = score_test_split

__all__ = [
    "Fallback", "SubmitError", "SubmitReport", "ValidationError", "check_compliance", "check_dataset",
    "check_promotable", "score_test_split", "submit", "submitted_run", "validate_prediction", "write_prediction",
]
