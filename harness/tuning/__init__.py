"""Hyperparameter search with Optuna: study specs, parallel resumable workers, one MLflow run tree.

The only package that imports optuna. A study is a TOML spec (`studies/<name>.toml`, `load_spec`, checked
whole at load time); `run_study` runs K worker processes on one Optuna study in an RDB storage (SQLite by
default, PostgreSQL across machines), and running it again resumes it. Its MLflow side is
`harness.tracking.study_runs`, fed plain values. The face is eager: every caller wants optuna anyway.
"""
from __future__ import annotations

from harness.tuning.coordinator import run_study, study_rows
from harness.tuning.errors import SpecError, StorageError, StorageUnavailable, StudyError
from harness.tuning.results import Progress, StudyResult, TrialRow
from harness.tuning.space import Fixed
from harness.tuning.spec import StudySpec, check_dataset, load_spec, replay_pruning
from harness.tuning.storage import (PARENT_ATTR, check_storage, normalise_storage, open_storage, redact, resolve_storage,
                                    serve_dashboard)
from harness.tuning.strategies import PRUNERS, TPE, NoPruning, PruningCallback
from harness.tuning.tables import TrialLines, leaderboard_table, trials_table

__all__ = [
    "PARENT_ATTR", "PRUNERS", "TPE", "Fixed", "NoPruning", "Progress", "PruningCallback", "SpecError", "StorageError",
    "StorageUnavailable", "StudyError", "StudyResult", "StudySpec", "TrialLines", "TrialRow", "check_dataset", "check_storage",
    "leaderboard_table", "load_spec", "normalise_storage", "open_storage", "redact", "replay_pruning", "resolve_storage",
    "run_study", "serve_dashboard", "study_rows", "trials_table"]
