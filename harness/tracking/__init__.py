"""Everything that talks to MLflow lives in this package; nothing outside it imports mlflow.

Start at `lifecycle` (one run's life), `store`, `resolve` (a run reference to its run) and `tags`.

Lazy face (`harness.lazy_exports`): `tags`, `launcher` and `audit_run` import without mlflow (the port
check, `harness audit` queueing its run); every other module imports it (about a second).
"""
from __future__ import annotations

import os

# Read by mlflow on import; a user's choice stands. No telemetry: often offline, a failed upload must not slow a run.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from harness import lazy_exports
from harness.tracking import tags  # plain constants, no mlflow: `tracking.tags.X` works without an import

__getattr__ = lazy_exports(__name__, {
    "RunRecorder": "recorder", "record_pending": "audit_run",
    **dict.fromkeys(("RUN_ALIASES", "get_or_create_experiment", "get_run", "resolve_run_id", "setup"), "store"),
    **dict.fromkeys(("close_after_ranks", "close_dead_runs", "heal_once"), "lifecycle"),
    **dict.fromkeys(("RecordedRun", "resolve_run"), "resolve"),
    **dict.fromkeys(("UiServer", "check_port_free", "latest_experiment", "ui_url"), "ui"),
})
__all__ = ["RUN_ALIASES", "RecordedRun", "RunRecorder", "UiServer", "check_port_free", "close_after_ranks", "close_dead_runs",
           "get_or_create_experiment", "get_run", "heal_once", "latest_experiment", "record_pending", "resolve_run",
           "resolve_run_id", "setup", "tags", "ui_url"]
