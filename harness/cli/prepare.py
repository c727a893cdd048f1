"""Commands that read a dataset before any model: `demo-data`, `prepare`, `audit`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.cli import CacheOption, DataOption, app, resolve_data
from harness.cli.settings import settings_options


@app.command("demo-data")
def demo_data(
    out: Annotated[Optional[Path], typer.Option(help="Where to write it. Default: data/demo in the project.")] = None,
    clips: Annotated[int, typer.Option(help="Number of clips over train/val/test (60/20/20), at least 10.")] = 240,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same dataset.")] = 0,
) -> None:
    """Write the synthetic demo dataset in the competition's layout."""
    from harness.data.demo import make_demo_dataset
    from harness.paths import demo_data_dir

    typer.echo(str(make_demo_dataset(out or demo_data_dir(), clips=clips, seed=seed)))


@app.command()
@settings_options("audio", "video", cached_only=True)
def prepare(changes: dict, data: DataOption = None, cache: CacheOption = None,
            workers: Annotated[int, typer.Option(min=1, help="Parallel decoder processes.")] = 2) -> None:
    """Validate a dataset and extract features once into the cache (resumable, parallel).

    `--modality`: log-mels (audio), face crops (video; one per image of a face-image dataset) or both (fusion)."""
    from harness.config import RunConfig, with_changes

    cfg = with_changes(RunConfig(), changes)  # a bad setting is refused before the demo is made or read
    run_prepare(resolve_data(data), cfg, cache=cache, workers=workers, check_models=False)


def run_prepare(data: Path, cfg, *, cache: Path | None, workers: int, quiet: bool = False,  # noqa: ANN001
                splits: tuple[str, ...] = ("train", "val", "test"), methods: Path | None = None,
                check_models: bool = True):  # noqa: ANN201
    """The pre-flight on the terminal for `prepare` and the commands that train; returns its `Ready`. Warnings,
    repairs and failures are always said, bars and summary unless `quiet`. `methods`: the --methods file;
    `check_models`: the backbones checked against timm (not by `prepare`, which trains nothing)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from harness.console import make_console
    from harness.data.labels import load_dataset
    from harness.paths import cache_dir
    from harness.preflight import preflight

    console = make_console()
    ds = load_dataset(data, methods)
    for w in ds.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    columns = (TextColumn("prepare {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=quiet) as progress:
        tasks: dict[str, object] = {}

        def show(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task("faces" if name == "video" else name, total=None)
            progress.update(tasks[name], completed=done, total=total)

        ready = preflight(ds, cfg, cache_root=cache or cache_dir(), workers=workers, splits=splits, on_progress=show,
                          check_models=check_models)
    for name, report in ready.reports.items():
        for line in report.repairs:  # a damaged cache healed: always said, even when quiet
            console.print(f"[yellow]repaired:[/] {line}")
        if quiet and not report.failures:
            continue
        for f in report.failures:
            console.print(f"[yellow]failed:[/] {f.split}/{f.name}: {f.reason} ({f.detail})")
        rate = f"{report.clips_per_s:.1f} clips/s" if report.done else "nothing to compute"
        what = "faces of" if name == "video" else "audio of"
        console.print(f"prepared {what} {report.total} {'images' if ds.track == 'image' else 'clips'}: {report.done} "
                      f"done, {report.reused} reused, {len(report.failures)} failed; {rate}; cache {report.cache}")
        if report.frames:
            share = report.fallback_frames / report.frames
            console.print(f"frames without a face (centre crop used): {report.fallback_frames} of {report.frames} "
                          f"({share:.1%}); per clip in the index's `fallback` column")
    return ready


@app.command()
def audit(
    data: DataOption = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder. Default: audits/<dataset id> in the project.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when there is any finding.")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Parallel decoder processes.")] = 2,
    threshold: Annotated[float, typer.Option(min=0.5, max=1.0, help="AUC at or above which a metadata feature is a "
                                             "shortcut, and the train/test shift a finding.")] = 0.75,
    cache: CacheOption = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = "harness",
    track: Annotated[bool, typer.Option("--track/--no-track", help="Record the audit as an MLflow run (harness.kind=audit).")] = True,
    wait: Annotated[bool, typer.Option("--wait", help="Record the MLflow run before exiting and print its id (by "
                                       "default a background process records it; run.json names it).")] = False,
) -> None:
    """Audit a dataset before trusting a score on it: metadata shortcuts, duplicates and leaks, train/test shift."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from harness.audit import AuditSettings, audit_dataset, headline_metrics, render, summary, write_outputs
    from harness.config import flat
    from harness.console import make_console
    from harness.data.labels import load_dataset
    from harness.errors import JobFailed
    from harness.paths import cache_dir, project_root

    console = make_console()
    ds = load_dataset(resolve_data(data))
    for w in ds.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    settings = AuditSettings(threshold=threshold)
    columns = (TextColumn("audit {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("clips", total=None)
        result = audit_dataset(ds, settings, cache_root=cache or cache_dir(), workers=workers,
                               on_progress=lambda done, total: progress.update(task, completed=done, total=total))
    out_dir = write_outputs(result, out or project_root() / "audits" / result.dataset_id)
    render(result, make_console(stderr=False))
    typer.echo(f"audit: {out_dir / 'audit.json'} (table.csv, duplicates.csv, plots/ beside it)")
    if track:  # MLflow costs seconds: a detached process records the run unless --wait
        from harness.tracking.audit_run import RECEIPT, queue_audit, record_queued, start_recorder

        record = queue_audit(out_dir, experiment=experiment, dataset_path=str(ds.root), dataset_fingerprint=ds.fingerprint(),
                             dataset_id=result.dataset_id, metrics=headline_metrics(result), params=flat(settings),
                             findings=result.findings, run_name=f"audit {ds.root.name}")
        if wait:
            typer.echo(f"run id: {record_queued(record)}")
        else:
            typer.echo(f"run: being recorded in the background (pid {start_recorder(record)}); its id will be in "
                       f"{out_dir / RECEIPT}")
    if strict and result.findings:
        raise JobFailed(f"--strict: {len(result.findings)} audit finding(s) ({summary(result)}); see {out_dir / 'audit.json'}")
