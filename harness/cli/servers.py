"""Commands that serve the MLflow store, both on one launcher: `ui` (one user, this machine) and `server` (a team)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from harness.cli import app


@app.command()
def ui(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 5000,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the page in a web browser once it answers.")] = False,
) -> None:
    """Start the MLflow UI on the project's store (127.0.0.1); print the newest experiment's runs page, best val
    AUC first, once it answers (Ctrl-C or SIGTERM stops it and everything it started)."""
    from harness.tracking.launcher import check_port_free

    check_port_free("127.0.0.1", port)  # before importing mlflow and opening the store: a refusal at once
    from harness import tracking
    from harness.tracking.ui import show_best_first

    client = tracking.setup()
    tracking.heal_once(client)  # the clean-up every command makes: dead runs KILLED, queued audit runs recorded
    show_best_first(client)
    url = tracking.ui_url("127.0.0.1", port, tracking.latest_experiment(client))
    server = tracking.UiServer(host="127.0.0.1", port=port)

    def ready() -> None:
        typer.echo(f"MLflow UI: {url}  (Ctrl-C to stop)")
        typer.echo(f"the server's own output: {server.log}", err=True)
        # MLflow 3 keeps the view in the browser (GenAI by default); nothing server-side can set it.
        typer.echo("tip: if a run page opens in the GenAI view, pick 'Model training' in the switch at the "
                   "top left once; the browser remembers it", err=True)
        if open_browser:
            import webbrowser

            webbrowser.open(url)

    server.serve(on_ready=ready)


@app.command()
def server(
    backend_store: Annotated[Optional[str], typer.Option("--backend-store", help="Database URL: postgresql://USER:PASSWORD@HOST/DB "
                                                         "(a team) or sqlite:///FILE. Default: SQLite at mlruns/server/mlflow.db.")] = None,
    artifacts: Annotated[Optional[str], typer.Option(help="Where checkpoints and plots land, uploaded through the server: a "
                                                     "folder or s3://... Default: mlruns/server/artifacts.")] = None,
    host: Annotated[str, typer.Option(help="Address to bind: 0.0.0.0 lets other machines in.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 5000,
) -> None:
    """Start a shared MLflow tracking server and print the MLFLOW_TRACKING_URI for every machine (Ctrl-C stops it)."""
    from harness.tracking.launcher import check_port_free

    check_port_free(host, port)  # before importing mlflow: a refusal at once
    from harness.tracking.server import public_url, tracking_server

    served = tracking_server(backend_store=backend_store, artifacts=artifacts, host=host, port=port)

    def ready() -> None:
        url = public_url(host, port)
        typer.echo(f"MLflow tracking server: {url}  (Ctrl-C to stop). On every machine, run:")
        typer.echo(f"export MLFLOW_TRACKING_URI={url}")
        typer.echo(f"the server's own output: {served.log}", err=True)

    served.serve(on_ready=ready)
