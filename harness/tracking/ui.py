"""The MLflow UI: `harness ui` serves the project's store on 127.0.0.1 through `harness.tracking.launcher`
(one uvicorn worker, output in mlruns/ui.log). The page printed is the newest experiment's runs in the
saved view `links.BEST_FIRST`, which `show_best_first` saves on every experiment.
"""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from harness import paths
from harness.tracking.launcher import ServerProcess, check_port_free, http_url, local_host
from harness.tracking.links import best_first_view, experiment_page, experiments_page
from harness.tracking.store import _ensure_sqlite_folder

__all__ = ["UiServer", "check_port_free", "latest_experiment", "show_best_first", "ui_url"]


def ui_url(host: str, port: int, experiment_id: str | None = None) -> str:
    """The experiments page, or one experiment's runs page in the view `links.BEST_FIRST`."""
    base = http_url(local_host(host), port) + "/"  # a wildcard bind address is not something a browser can open
    if experiment_id is None:
        return experiments_page(base=base)
    return experiment_page(experiment_id, base=base, best_first=True)


def latest_experiment(client: MlflowClient) -> str | None:
    """The experiment holding the most recently started run (None for an empty store)."""
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=1) if ids else []
    return runs[0].info.experiment_id if runs else None


def show_best_first(client: MlflowClient) -> None:
    """Save the view `links.BEST_FIRST` (an experiment tag) on every active experiment where it is missing or differs."""
    key, value = best_first_view()
    for experiment in client.search_experiments():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)


class UiServer(ServerProcess):
    """`mlflow server` on the project's store at host:port, one worker, its output in mlruns/ui.log."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 5000) -> None:
        store = paths.tracking_uri()
        # The registry store said, so mlflow does not warn; one local user: one worker instead of four saves memory.
        options = ["--backend-store-uri", store, "--registry-store-uri", store,
                   "--default-artifact-root", paths.artifact_root(), "--workers", "1"]
        super().__init__(options, host=host, port=port, log=paths.mlruns_dir() / "ui.log",
                         prepare=lambda: _ensure_sqlite_folder(store))
