"""Commands that turn a run into scores: `predict` and `submit` (the promotion gate, the bundle)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.cli import CacheOption, DataOption, app, resolve_data
from harness.cli.settings import field_option
from harness.config import TrainConfig

DeviceOption = Annotated[str, field_option(TrainConfig, "device")]


@app.command()
def predict(
    paths: Annotated[list[Path], typer.Argument(help="Clips, audio files, face images, or folders of them (searched recursively).")],
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="Score with this MLflow run's best checkpoint (or best / last).")] = None,
    bundle: Annotated[Optional[Path], typer.Option("--bundle", help="Score with a promoted bundle folder.")] = None,
    tta: Annotated[Optional[int], typer.Option(min=1, help="Time shifts averaged per clip (default 1, or the bundle's).")] = None,
    device: DeviceOption = "cpu",
) -> None:
    """Print `path,score` (probability of fake) per clip, through the code a bundle's api.py runs."""
    from harness.errors import BadInput, JobFailed
    from harness.predict import Predictor, check_paths, expand_paths, write_scores

    if (run_id is None) == (bundle is None):
        raise BadInput("give exactly one of --run-id and --bundle")
    check_paths(paths)  # a typo is a usage error before anything loads, not a row at the fallback
    files = expand_paths(paths)
    if not files:
        raise BadInput("no clips in the given folders")
    if run_id is not None:
        predictor = Predictor.from_run(run_id, tta=tta or 1, device=device)
    else:
        predictor = Predictor.from_bundle(bundle, tta=tta, device=device)
    if predictor.demo:
        typer.echo(f"warning: {predictor.source} was trained on the synthetic demo dataset: its scores on real "
                   "clips mean nothing", err=True)
    rows = predictor.score_many(files)
    write_scores(rows, sys.stdout)
    for row in rows:
        if not row.ok:
            typer.echo(f"warning: {row.path}: {row.reason} ({row.detail}); scored {row.score} (fallback)", err=True)
    if not any(row.ok for row in rows):
        raise JobFailed(f"none of the {len(rows)} clips could be scored (see the warnings)")


@app.command()
def submit(
    run_id: Annotated[str, typer.Option("--run-id", help="Run to promote: an id, best (highest val AUC) or last.")],
    data: DataOption = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder. Default: submissions/<run id> in the project.")] = None,
    tta: Annotated[int, typer.Option(min=1, help="Circular time shifts averaged per clip (1 = none).")] = 1,
    model_name: Annotated[Optional[str], typer.Option(help="Registry name. Default: harness-<dataset folder>.")] = None,
    register: Annotated[bool, typer.Option("--register/--no-register", help="Register the model (alias 'champion' "
                                           "only when the gate says it beats the champion), tag the run.")] = True,
    workers: Annotated[int, typer.Option(min=1, help="Parallel decoder processes for the test clips.")] = 2,
    device: DeviceOption = "cpu",
    strict: Annotated[bool, typer.Option("--strict", help="Refuse (exit 1, nothing written) when the promotion gate "
                                         "warns: val AUC interval at 0.999, audit findings, not better than the champion.")] = False,
    cache: CacheOption = None,
) -> None:
    """Promote a run: a validated prediction.csv, a self-contained Docker bundle, a registered model version.

    First the promotion gate: val AUC and TPR@1e-3 with intervals, how many runs it was picked from, the
    audit's findings, a paired bootstrap against the champion. The 'champion' alias moves only when the run
    is distinguishably better (or there is none); `harness champion MODEL VERSION` moves it on purpose. A run
    submitted again is not registered again: its version is reused."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from harness.console import make_console
    from harness.paths import cache_dir
    from harness.submit import submit as promote

    console = make_console()
    data_dir = resolve_data(data)
    columns = (TextColumn("features {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("test", total=None)
        report = promote(run_id, data_dir=data_dir, out_dir=out, cache_root=cache or cache_dir(), tta=tta,
                         model_name=model_name, register=register, workers=workers, device=device, strict=strict,
                         on_progress=lambda done, total: progress.update(task, completed=done, total=total),
                         on_gate=_print_gate)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    for w in report.gate.warnings if report.gate is not None else []:
        console.print(f"[yellow]gate warning:[/] {w}", highlight=False)
    for f in report.fallbacks:
        console.print(f"[yellow]fallback:[/] {f.name}: {f.reason} ({f.detail}); scored {report.fallback_score}")
    typer.echo(f"prediction: {report.csv} ({report.rows} rows, {len(report.fallbacks)} at the fallback score "
               f"{report.fallback_score}, listed in fallbacks.csv; checked against the template)")
    if report.bundle is not None:
        typer.echo(f"bundle: {report.bundle} and {report.archive}")
    if report.model_version is not None:
        from harness.tracking.links import UI_BASE, model_version_page

        page = model_version_page(report.model_name, report.model_version, base=UI_BASE)
        what = (f"this run already is {report.model_name} version {report.model_version}, not registered again"
                if report.reused else f"{report.model_name} version {report.model_version}")
        if report.champion == report.model_version:
            alias = "alias champion" if not report.reused else (
                "alias champion moved to it" if report.champion_moved else "alias champion stays on it")
            typer.echo(f"registered: {what}, {alias} ({page})")
        else:
            held = f"stays on version {report.champion}" if report.champion else "not set"
            typer.echo(f"registered: {what} ({page}); alias champion {held}: the gate did not find it distinguishably better")
            typer.echo(f"to make it the champion anyway: harness champion {report.model_name} {report.model_version}")


@app.command()
def champion(model: Annotated[str, typer.Argument(help="Registered model name (harness-<dataset>).")],
             version: Annotated[str, typer.Argument(help="The version to make the champion.")]) -> None:
    """Move a registered model's 'champion' alias to VERSION on purpose (submit moves it only when earned); the
    version's description then says so, with date, above the gate's earlier verdict."""
    from harness import tracking
    from harness.tracking.links import UI_BASE, model_version_page
    from harness.tracking.registry import set_champion

    previous = set_champion(tracking.setup(), model, version)
    was = f" (was version {previous})" if previous and previous != version else ""
    typer.echo(f"champion: {model} version {version}{was} ({model_version_page(model, version, base=UI_BASE)})")


def _print_gate(gate) -> None:  # noqa: ANN001
    """The gate's facts on stdout before scoring; its warnings come later on stderr with the others (under
    --strict they are the error), so a failing submit still prints one error line."""
    typer.echo("\n  ".join(["promotion gate:", *gate.facts]))
