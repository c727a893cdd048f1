"""Commands over an Optuna study: `tune` and `dashboard`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.cli import CacheOption, DataOption, app, resolve_data


StudyOption = Annotated[str, typer.Option(
    "--study", help="Study spec: a name in studies/ (demo, demo-fusion, ffdv-audio) or a TOML file.")]


@app.command()
def tune(
    study: StudyOption = "demo",
    data: DataOption = None,
    trials: Annotated[Optional[int], typer.Option(min=1, help="Finished (complete + pruned) trials wanted in the study in total; failed ones do not count. Default: the spec's.")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Local worker processes, one GPU each when GPUs exist (gpus_per_trial GPUs each when the spec asks for more). Default: the spec's.")] = None,
    gpus_per_trial: Annotated[Optional[int], typer.Option(min=1, help="Devices each trial trains on with DDP. Default: the spec's.")] = None,
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage: sqlite:///FILE or postgresql://USER:PASSWORD@HOST/DB. Default: studies/NAME.db.")] = None,
    timeout: Annotated[Optional[float], typer.Option(min=1, help="Start no new trial after this many seconds (running ones finish).")] = None,
    cache: CacheOption = None,
) -> None:
    """Search backbone, learning rate, loss and more with Optuna: pruned, resumable, parallel, one MLflow run tree.

    The same command again resumes the study and its parent run. A live table in a terminal, else a line per trial."""
    from harness import tuning
    from harness.console import make_console
    from harness.errors import JobFailed

    # A malformed URL fails first; the spec before anything connects (a refused one leaves no SQLite file);
    # an unreachable server before any feature work.
    url = tuning.normalise_storage(storage) if storage is not None else None
    spec = tuning.load_spec(study)
    url = tuning.check_storage(url)
    data_dir = resolve_data(data)  # run_study checks it against the spec and prepares every input, once
    console = make_console()  # in a log or a pipe: whole lines, tables as wide as their content
    per_trial = gpus_per_trial or spec.gpus_per_trial
    console.print(f"study {spec.name}: storage {tuning.redact(tuning.resolve_storage(url, spec))}, target "
                  f"{trials or spec.trials} finished trials by {spec.objectives[0]}, {workers or spec.workers} worker(s)"
                  + (f", {per_trial} devices a trial" if per_trial > 1 else ""), highlight=False)
    options = dict(data_dir=data_dir, storage=url, trials=trials, workers=workers, timeout=timeout, cache_root=cache,
                   gpus_per_trial=gpus_per_trial)
    if console.is_terminal:
        from rich.live import Live

        with Live(console=console, refresh_per_second=2) as live:
            result = tuning.run_study(spec, **options, on_progress=lambda progress: live.update(
                tuning.trials_table(progress, width=console.width)))
        console.print()
    else:  # nohup, a batch job, a pipe: a line per trial as it ends, each on one line
        result = tuning.run_study(spec, **options, on_progress=tuning.TrialLines(lambda line: typer.echo(line, err=True)))
    console.print(tuning.leaderboard_table(result, width=console.width if console.is_terminal else None))
    best = result.best
    if best is None or not best.run_id:
        raise JobFailed(f"study {result.study}: no trial completed ({result.stopped})")
    typer.echo(f"best: trial {best.number}, {result.objectives[0]} {best.value:.4f}, run {best.run_id}")
    on = f" --data {data}" if data else ""
    picked = f"  (trial {best.number} of {sum(bool(r.run_id) for r in result.rows)}: {_auc(best.run_id, bool(spec.folds))})"
    if spec.folds:  # a cross-validated trial's folds each saw part of the data: train its settings once more
        typer.echo(f"next: harness train --like {best.run_id}{on} --experiment {spec.experiment}, then harness submit "
                   f"--run-id RUN{picked}")
    else:
        typer.echo(f"next: harness submit --run-id {best.run_id}{on}{picked}")


def _auc(run_id: str, folds: bool) -> str:
    """The best trial's recorded AUC and 95% interval (out of fold for CV); "of N" counts trials with a run, as the gate."""
    from harness.tracking import get_run, setup
    from harness.tracking import metric_names as M

    keys = ("oof_auc", "oof_auc_ci_low", "oof_auc_ci_high") if folds else ("best_val_auc", "val_auc_ci_low", "val_auc_ci_high")
    metrics = get_run(setup(), run_id).data.metrics
    auc, low, high = (metrics.get(M.cv_metric(k) if folds else M.summary_metric(k), float("nan")) for k in keys)
    return f"{'out-of-fold' if folds else 'val'} AUC {auc:.3f} [{low:.3f}, {high:.3f}]"


@app.command()
def dashboard(
    study: StudyOption = "demo",
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL. Default: the study's studies/NAME.db.")] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8080,
) -> None:
    """Start optuna-dashboard on a study's storage (127.0.0.1; Ctrl-C stops it)."""
    from harness import tuning
    from harness.errors import NotFound

    spec = tuning.load_spec(study, check_models=False)
    url = tuning.resolve_storage(storage, spec)
    if storage is None and not Path(url.removeprefix("sqlite:///")).is_file():
        raise NotFound(f"no study storage at {url.removeprefix('sqlite:///')}; run `harness tune --study {study}` first")
    typer.echo(f"optuna-dashboard: http://127.0.0.1:{port}/dashboard  (storage {tuning.redact(url)}; Ctrl-C to stop)")
    tuning.serve_dashboard(storage=url, host="127.0.0.1", port=port)
