"""Everything that talks to MLflow lives in this package; nothing outside it imports mlflow.

- `store`: the store (SQLite under mlruns/ or `MLFLOW_TRACKING_URI`), experiments, run lookup
  (`best`, `last`), checkpoint download, closing orphaned runs (`close_orphans` under a study,
  `close_dead_runs` for runs whose recorded process is gone).
- `recorder`: `RunRecorder`, one training run fed by the engine's callbacks.
- `tags`: every tag key and the status contract.
- `ui`: the MLflow UI server (`UiServer`), its URL and the port check.
- `study_runs`: a study's run tree (parent, best so far, trial states, orphans), fed plain values.
- `registry`: registered model versions, the `champion` alias and the `promoted.*` tags.
- `audit_run`: the MLflow run of `harness audit` (`harness.kind=audit`).
- `cv_runs`: the parent run of a grouped cross-validation (`harness.kind=cv`), one child per fold.
- `promotion_facts`: what `submit`'s promotion gate reads (selection count, val predictions, champion).

Importing the package itself is cheap: each name below is imported from its module on first use
(PEP 562), so `harness audit` recording its run does not pay for the recorder's plotting and
sklearn imports. Importing any module here imports mlflow (about a second): commands import them
inside their bodies.
"""
from __future__ import annotations

import os

# Read by mlflow when it loads or first uses them, so they are set before the import. setdefault
# leaves a user's own choice alone. Telemetry is off because the machines here are often offline
# and a failed upload should never slow or clutter a run.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from harness.tracking import tags  # plain constants, no mlflow: `tracking.tags.X` works without an import

# Where each public name lives; `from harness.tracking import X` imports that module on first use.
_EXPORTS = {
    "RunRecorder": "recorder",
    **dict.fromkeys((
        "RUN_ALIASES", "close_dead_runs", "close_orphans", "get_or_create_experiment", "get_run", "git_state",
        "load_run_config", "package_versions", "process_tags", "resolve_run_id", "run_git", "run_settings", "setup",
    ), "store"),
    **dict.fromkeys(("UiServer", "check_port_free", "latest_experiment", "ui_url"), "ui"),
}

__all__ = [
    "RUN_ALIASES", "RunRecorder", "UiServer", "check_port_free", "close_dead_runs", "close_orphans",
    "get_or_create_experiment", "get_run", "git_state", "latest_experiment", "load_run_config",
    "package_versions", "process_tags", "resolve_run_id", "run_git", "run_settings", "setup", "tags", "ui_url",
]


def __getattr__(name: str) -> object:
    """Import a public name's module when the name is first asked for (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
