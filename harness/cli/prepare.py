"""Commands that read a dataset before any model: `demo-data`, `prepare`, `audit`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.cli import CacheOption, DataOption, app, resolve_data
from harness.errors import BadInput

# Shared with `harness train`, which prepares what is missing with the same settings.
CROP_STORAGE_HELP = "Face crops in the cache: raw (uint8) or jpeg (about 11x smaller; decoded in training and predict)."
CROP_QUALITY_HELP = "JPEG quality of stored face crops, 1-100 (default 90)."


@app.command("demo-data")
def demo_data(
    out: Annotated[Optional[Path], typer.Option(help="Where to write it. Default: data/demo in the project.")] = None,
    clips: Annotated[int, typer.Option(min=10, help="Number of clips over train/val/test (60/20/20).")] = 240,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same dataset.")] = 0,
) -> None:
    """Write the synthetic demo dataset in the competition's layout."""
    from harness.data.demo import make_demo_dataset
    from harness.paths import demo_data_dir

    try:
        path = make_demo_dataset(out or demo_data_dir(), clips=clips, seed=seed)
    except ValueError as e:
        # The demo generator refuses a folder that is not its own with a plain ValueError; until it
        # raises harness.errors.BadInput itself, this says what it means.
        raise BadInput(str(e)) from None
    typer.echo(str(path))


@app.command()
def prepare(
    data: DataOption = None,
    cache: CacheOption = None,
    workers: Annotated[int, typer.Option(min=1, help="Parallel decoder processes.")] = 2,
    modality: Annotated[str, typer.Option(help="Features to extract: audio (log-mels), video (face crops; for an "
                                          "image-track dataset, one crop per image), fusion (both).")] = "audio",
    sample_rate: Annotated[Optional[int], typer.Option(help="Resample audio to this rate (Hz).")] = None,
    n_mels: Annotated[Optional[int], typer.Option(help="Mel bands.")] = None,
    n_fft: Annotated[Optional[int], typer.Option(help="FFT window length (samples).")] = None,
    hop_length: Annotated[Optional[int], typer.Option(help="Hop between frames (samples).")] = None,
    fmax: Annotated[Optional[float], typer.Option(help="Highest mel frequency (Hz).")] = None,
    width: Annotated[Optional[int], typer.Option(help="Image width (time axis) after resizing.")] = None,
    height: Annotated[Optional[int], typer.Option(help="Image height; default: n_mels (no resize).")] = None,
    frames: Annotated[Optional[int], typer.Option(help="Face frames sampled per clip, evenly spread.")] = None,
    face_size: Annotated[Optional[int], typer.Option(min=16, help="Face crop side (pixels).")] = None,
    margin: Annotated[Optional[float], typer.Option(help="Margin around the face box, fraction of its side.")] = None,
    detector: Annotated[Optional[str], typer.Option(help="Face detector (see harness.data.faces.DETECTORS).")] = None,
    window_seconds: Annotated[Optional[float], typer.Option(help="Cache whole log-mels at the native hop for windows of this many seconds (default: one whole-clip image).")] = None,
    trim_silence: Annotated[Optional[bool], typer.Option("--trim-silence/--no-trim-silence", help="Cut leading and trailing silence first.")] = None,
    codec_variants: Annotated[Optional[int], typer.Option(min=0, help="Re-encoded copies (AAC/MP3/Opus) of each training clip's audio.")] = None,
    crop_storage: Annotated[Optional[str], typer.Option(help=CROP_STORAGE_HELP)] = None,
    crop_quality: Annotated[Optional[int], typer.Option(help=CROP_QUALITY_HELP)] = None,
) -> None:
    """Validate a dataset and extract features once into the cache (resumable, parallel)."""
    from harness.config import AudioFeatures, RunConfig, VideoFeatures, replace

    cfg = RunConfig(
        modality=modality,
        features=replace(AudioFeatures(), sample_rate=sample_rate, n_mels=n_mels, n_fft=n_fft,
                         hop_length=hop_length, fmax=fmax, width=width, height=height, window_seconds=window_seconds,
                         trim_silence=trim_silence, codec_variants=codec_variants),
        video=replace(VideoFeatures(), frames=frames, size=face_size, margin=margin, detector=detector,
                      crop_storage=crop_storage, crop_quality=crop_quality),
    )
    run_prepare(resolve_data(data), cfg, cache=cache, workers=workers)


def run_prepare(data: Path, cfg, *, cache: Path | None, workers: int, quiet: bool = False):  # noqa: ANN001, ANN201
    """Shared by `prepare` and by commands that prepare missing features first: every input that
    `cfg.modality` reads (audio, face crops or both). Returns the dataset, the RunConfig actually
    used (an image-track dataset turns a video modality into `image`) and one report per input."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from harness.config import check_track, replace
    from harness.data.cache import prepare_features
    from harness.data.labels import load_dataset
    from harness.paths import cache_dir

    console = Console(stderr=True)
    ds = load_dataset(data)
    if ds.track == "image" and cfg.modality == "video":
        cfg = replace(cfg, modality="image")  # face images: one crop per image, the same video model
    check_track(ds.track, cfg.modality, where=ds.root)
    for w in ds.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    reports = {}
    for name in cfg.inputs:
        columns = (TextColumn("prepare {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, disable=quiet) as progress:
            task = progress.add_task("faces" if name == "video" else name, total=None)
            report = prepare_features(
                ds, cfg.features_for(name), cache_root=cache or cache_dir(), workers=workers,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        reports[name] = report
        for line in report.repairs:  # a damaged cache healed: always said, even when quiet
            console.print(f"[yellow]repaired:[/] {line}")
        if not quiet or report.failures:
            for f in report.failures:
                console.print(f"[yellow]failed:[/] {f.split}/{f.name}: {f.reason} ({f.detail})")
            rate = f"{report.clips_per_s:.1f} clips/s" if report.done else "nothing to compute"
            what = "faces of" if name == "video" else "audio of"
            console.print(
                f"prepared {what} {report.total} {'images' if ds.track == 'image' else 'clips'}: {report.done} done, "
                f"{report.reused} reused, {len(report.failures)} failed; {rate}; cache {report.cache}"
            )
            if report.frames:
                share = report.fallback_frames / report.frames
                console.print(f"frames without a face (centre crop used): {report.fallback_frames} of {report.frames} "
                              f"({share:.1%}); per clip in the index's `fallback` column")
    return ds, cfg, reports


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
) -> None:
    """Audit a dataset before trusting a score on it: metadata shortcuts, duplicates and leaks, train/test shift."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from harness.audit import AuditSettings, audit_dataset, headline_metrics, render, summary, write_outputs
    from harness.config import flat
    from harness.data.labels import load_dataset
    from harness.errors import JobFailed
    from harness.paths import cache_dir, project_root

    console = Console(stderr=True)
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
    render(result, Console())
    typer.echo(f"audit: {out_dir / 'audit.json'} (table.csv, duplicates.csv, plots/ beside it)")
    if track:
        from harness.tracking.audit_run import record_audit

        run_id = record_audit(out_dir, experiment=experiment, dataset_path=str(ds.root), dataset_fingerprint=ds.fingerprint(),
                              dataset_id=result.dataset_id, metrics=headline_metrics(result), params=flat(settings),
                              findings=result.findings, run_name=f"audit {ds.root.name}")
        typer.echo(f"run id: {run_id}")
    if strict and result.findings:
        raise JobFailed(f"--strict: {len(result.findings)} audit finding(s) ({summary(result)}); see {out_dir / 'audit.json'}")
