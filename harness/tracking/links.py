"""Every link to an MLflow UI page that the harness prints or writes, as plain strings (no mlflow import).

Each carries `workflowType=machine_learning` (else a fresh browser opens the GenAI view); the empty `base`
gives a relative link. The runs page opens on the saved view `BEST_FIRST` (MLflow 3.17 reads a table's
columns only from a saved view or the browser), which also sorts (`orderByKey` in the link would undo it).
"""
from __future__ import annotations

import json
from urllib.parse import quote

from harness.tracking import metric_names as M

WORKFLOW = "workflowType=machine_learning"
UI_BASE = "http://127.0.0.1:5000/"  # where `harness ui` serves the store by default: for links printed on a terminal
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow's key for a saved view of an experiment's runs
BEST_FIRST = "harness-best-first"  # the saved view's id: its tag is VIEW_TAG_PREFIX + BEST_FIRST
BEST_FIRST_NAME = "harness: best val AUC first"
BEST_FIRST_COLUMNS = (M.BEST_VAL_AUC, M.VAL_AUC_CI_LOW, M.VAL_AUC_CI_HIGH)  # the first orders the rows


def _page(path: str, base: str = "", query: str = "") -> str:
    return f"{base}#/{path}?{WORKFLOW}" + (f"&{query}" if query else "")


def experiments_page(*, base: str = "") -> str:
    """The list of experiments."""
    return _page("experiments", base)


def experiment_page(experiment_id: str, *, base: str = "", best_first: bool = False) -> str:
    """One experiment's runs table; `best_first`: in the saved view `BEST_FIRST` (`best_first_view`)."""
    return _page(f"experiments/{experiment_id}/runs", base, f"viewStateShareKey={BEST_FIRST}" if best_first else "")


def run_page(experiment_id: str, run_id: str, *, base: str = "") -> str:
    """One run's page."""
    return _page(f"experiments/{experiment_id}/runs/{run_id}", base)


def model_version_page(name: str, version: str | int, *, base: str = "") -> str:
    """One registered model version's page."""
    return _page(f"models/{quote(name, safe='')}/versions/{version}", base)


def markdown_link(label: str, url: str) -> str:
    """`[label](url)` for a run's description (markdown), with `|` kept out of tables."""
    return f"[{label.replace('|', '/')}]({url})"


def best_first_view() -> tuple[str, str]:
    """The experiment tag (key, value) saving the view `BEST_FIRST`, created "at" 0 so a user's own views list first."""
    columns = [f"metrics.`{name}`" for name in BEST_FIRST_COLUMNS]  # as the runs table names them
    # No `columnOrder` or `columnWidths`: MLflow applies them only when they arrive before the grid is drawn.
    state = {"orderByKey": columns[0], "orderByAsc": False, "selectedColumns": columns}
    envelope = {"name": BEST_FIRST_NAME, "createdAt": 0, "state": json.dumps(state)}
    return VIEW_TAG_PREFIX + BEST_FIRST, json.dumps(envelope)
