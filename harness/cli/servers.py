"""Commands that serve the MLflow store: `ui` (one user, this machine) and `server` (a team)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from harness.cli import app
from harness.errors import JobFailed


@app.command()
def ui(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 5000,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the page in a web browser once it answers.")] = False,
) -> None:
    """Start the MLflow UI on the project's store (127.0.0.1); print the newest experiment's runs page once
    the server answers (Ctrl-C or SIGTERM stops the server and everything it started)."""
    from harness import tracking

    tracking.check_port_free("127.0.0.1", port)  # before opening the store: a taken port answers at once
    client = tracking.setup()
    tracking.close_dead_runs(client)  # runs whose process was killed show as KILLED, not RUNNING
    url = tracking.ui_url("127.0.0.1", port, tracking.latest_experiment(client))
    with tracking.UiServer(host="127.0.0.1", port=port) as server:
        server.wait_ready()
        typer.echo(f"MLflow UI: {url}  (Ctrl-C to stop)")
        # MLflow 3 keeps the view in the browser, defaulting to GenAI: links inside the UI drop the
        # URL's choice until the user picks one with the switch (nothing server-side can set it).
        typer.echo("tip: if a run page opens in the GenAI view, pick 'Model training' in the switch at the "
                   "top left once; the browser remembers it", err=True)
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        code = server.process.wait()
    if code != 0:
        raise JobFailed(f"mlflow server exited with status {code}")


@app.command()
def server(
    backend_store: Annotated[Optional[str], typer.Option("--backend-store", help="Database URL: postgresql://USER:PASSWORD@HOST/DB "
                                                         "(a team) or sqlite:///FILE. Default: SQLite at mlruns/server/mlflow.db.")] = None,
    artifacts: Annotated[Optional[str], typer.Option(help="Where checkpoints and plots land, uploaded through the server: a "
                                                     "folder or s3://... Default: mlruns/server/artifacts.")] = None,
    host: Annotated[str, typer.Option(help="Address to bind: 0.0.0.0 lets other machines in.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
) -> None:
    """Start a shared MLflow tracking server (database backend, proxied artifacts) and print the
    MLFLOW_TRACKING_URI to export on every machine (Ctrl-C stops it)."""
    from harness.errors import JobFailed
    from harness.tracking.server import run_server

    def ready(url: str) -> None:
        typer.echo(f"MLflow tracking server: {url}  (Ctrl-C to stop). On every machine, run:")
        typer.echo(f"export MLFLOW_TRACKING_URI={url}")

    code = run_server(backend_store=backend_store, artifacts=artifacts, host=host, port=port, on_ready=ready)
    if code != 0:
        raise JobFailed(f"mlflow server exited with status {code}")
