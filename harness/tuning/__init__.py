"""Hyperparameter search with Optuna: study specs, parallel resumable workers, one MLflow run tree.

The only package that imports optuna. A study is described by a TOML spec (`studies/<name>.toml`,
loaded by `load_spec`): its search space, sampler, pruner, objectives and fixed settings. Every
backbone the space can pick is checked against the competition rules when the spec loads, not in
the middle of the study. `run_study` runs K worker processes on one Optuna study in an RDB storage
(SQLite by default, PostgreSQL across machines); running it again resumes it.

Where things live:

- `space`: dimensions, parsing `[space]`, value types, trial values -> run settings, suggest
- `strategies`: samplers, pruners, heartbeat, the pruning callback, pruning replay
- `spec`: `StudySpec` and `load_spec` (every check at load time), `check_dataset`
- `storage`: storage URLs (checked, normalised, connect timeout), opening the storage, the
  study-wide file and advisory locks
- `results`: `TrialRow`, `Progress`, `StudyResult`
- `figures`: the study's Optuna figures as PNG bytes and its trials as CSV text
- `worker`: a worker process: the trial gate, the objective
- `rank`: a trial over several devices (`gpus_per_trial`): its DDP ranks, rank 0 acting for the trial
- `coordinator`: `run_study` as a few named steps
- `tables`: the live table, the plain per-trial line, the leaderboard
- `errors`: `SpecError`, `StorageError` (exit 2), `StorageUnavailable`, `StudyError` (exit 1)

The MLflow side of a study (parent run, best-so-far, trial run states, orphans, artifacts) is
`harness.tracking.study_runs`, fed plain values.
"""
from __future__ import annotations

from harness.tuning.coordinator import run_study, study_rows
from harness.tuning.errors import SpecError, StorageError, StorageUnavailable, StudyError
from harness.tuning.objectives import OBJECTIVES
from harness.tuning.results import Progress, StudyResult, TrialRow
from harness.tuning.space import ALIASES, INPUT_SIZE, Categorical, Dimension, Fixed, FloatRange, IntRange
from harness.tuning.spec import StudySpec, check_backbones, check_dataset, load_spec
from harness.tuning.storage import (
    CONNECT_TIMEOUT_S,
    PARENT_ATTR,
    check_storage,
    default_storage,
    normalise_storage,
    open_storage,
    redact,
    resolve_storage,
    serve_dashboard,
)
from harness.tuning.strategies import (
    PRUNERS,
    SAMPLERS,
    TPE,
    Heartbeat,
    Hyperband,
    MedianPruning,
    NoPruning,
    PruningCallback,
    RandomSearch,
    SuccessiveHalving,
    replay_pruning,
)
from harness.tuning.tables import TrialLines, leaderboard_table, trial_line, trials_table

__all__ = [
    "ALIASES", "CONNECT_TIMEOUT_S", "INPUT_SIZE", "OBJECTIVES", "PARENT_ATTR", "PRUNERS", "SAMPLERS", "TPE",
    "Categorical", "Dimension", "Fixed", "FloatRange", "Heartbeat", "Hyperband", "IntRange", "MedianPruning",
    "NoPruning", "Progress", "PruningCallback", "RandomSearch", "SpecError", "StorageError", "StorageUnavailable",
    "StudyError", "StudyResult", "StudySpec", "SuccessiveHalving", "TrialLines", "TrialRow", "check_backbones",
    "check_dataset", "check_storage", "default_storage", "leaderboard_table", "load_spec", "normalise_storage",
    "open_storage", "redact", "replay_pruning", "resolve_storage", "run_study", "serve_dashboard", "study_rows",
    "trial_line", "trials_table",
]
