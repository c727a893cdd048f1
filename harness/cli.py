"""The command line: one small typed function per command.

Library code raises `harness.errors` types and commands let them through: `_Commands.invoke` turns
them into one line and an exit code once (2 bad input, 1 failed job or I/O error, 130 Ctrl-C or
SIGTERM). Heavy libraries are imported inside command bodies so that `harness --help` stays fast.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from typer.core import TyperGroup

from harness import __version__
from harness.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, BadInput, HarnessError, JobFailed, io_message


class _Commands(TyperGroup):
    """The one place errors become exit codes (see `harness.errors`): a HarnessError is one line
    and its code (BadInput 2, JobFailed 1); an OSError (no space, read-only) names the path, exit 1;
    Ctrl-C (and SIGTERM, which `main` turns into Ctrl-C) is "interrupted", 130. Here, not in `main`,
    so that `CliRunner(app)` in tests sees exactly what the console script does."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except HarnessError as e:
            raise typer.Exit(_report(" ".join(str(e).split()), e.exit_code)) from None
        except OSError as e:
            raise typer.Exit(_report(io_message(e), EXIT_FAILED)) from None
        except KeyboardInterrupt:
            # Cleanup already ran on the way out (runs closed KILLED, servers and workers stopped).
            typer.echo("interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None


app = typer.Typer(
    cls=_Commands,
    add_completion=False,
    no_args_is_help=True,
    help="Experiment-tracking harness for the multimedia deepfake detection challenge.",
    pretty_exceptions_enable=False,
)

DataOption = Annotated[
    Optional[Path],
    typer.Option("--data", help="Dataset folder (trainset/, valset/, testset/, label files). Default: the built-in demo dataset."),
]
CacheOption = Annotated[
    Optional[Path],
    typer.Option("--cache", help="Feature cache root. Default: $HARNESS_CACHE, else .cache/features in the project."),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"harness {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    """Prepare features, train, tune and submit, with every run recorded in MLflow."""


def resolve_data(data: Path | None) -> Path:
    """The dataset folder to use: the given one, or the demo dataset, generated on first use."""
    if data is not None:
        return data
    from harness.data.demo import make_demo_dataset
    from harness.paths import demo_data_dir

    out = demo_data_dir()
    if not (out / ".demo.json").exists():
        typer.echo(f"Generating the demo dataset in {out} (first use) ...", err=True)
    try:
        return make_demo_dataset(out)
    except ValueError:
        # Our own folder, made by an older version of the generator: make it again.
        import shutil

        typer.echo(f"Regenerating the demo dataset in {out} (made by another version) ...", err=True)
        shutil.rmtree(out)
        return make_demo_dataset(out)


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
) -> None:
    """Validate a dataset and extract features once into the cache (resumable, parallel)."""
    from harness.config import AudioFeatures, RunConfig, VideoFeatures, replace

    cfg = RunConfig(
        modality=modality,
        features=replace(AudioFeatures(), sample_rate=sample_rate, n_mels=n_mels, n_fft=n_fft,
                         hop_length=hop_length, fmax=fmax, width=width, height=height, window_seconds=window_seconds,
                         trim_silence=trim_silence, codec_variants=codec_variants),
        video=replace(VideoFeatures(), frames=frames, size=face_size, margin=margin, detector=detector),
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
def train(
    ctx: typer.Context,
    data: DataOption = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML file with [features], [video] and [train] tables.")] = None,
    modality: Annotated[Optional[str], typer.Option(help="audio | video | fusion | image (face-image datasets).")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="timm model name or name.tag.")] = None,
    video_backbone: Annotated[Optional[str], typer.Option(help="Fusion's video branch (default: --backbone).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    loss: Annotated[Optional[str], typer.Option(help="bce | ce | focal.")] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help="Label smoothing (0 = off).")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="adamw | sgd | radam.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (at least 1).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size (at least 2).")] = None,
    pretrained: Annotated[Optional[bool], typer.Option("--pretrained/--no-pretrained", help="ImageNet-1k weights.")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Local backbone weights (.safetensors, or .pth read weights-only).")] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N.")] = None,
    max_params: Annotated[Optional[float], typer.Option(help="Parameter cap (thop count).")] = None,
    window_seconds: Annotated[Optional[float], typer.Option(help="Train on random windows of this many seconds; score evenly spaced ones (default: whole-clip image).")] = None,
    eval_windows: Annotated[Optional[int], typer.Option(min=1, help="Windows scored per clip (default 5).")] = None,
    aggregate: Annotated[Optional[str], typer.Option(help="A clip's score from its windows': mean | max | logit_mean.")] = None,
    ema: Annotated[Optional[float], typer.Option(help="EMA decay of the weights, validated beside them (0 = off; e.g. 0.999).")] = None,
    trim_silence: Annotated[Optional[bool], typer.Option("--trim-silence/--no-trim-silence", help="Cut leading and trailing silence first.")] = None,
    codec_variants: Annotated[Optional[int], typer.Option(min=0, help="Re-encoded copies of each training clip drawn from in training.")] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = "harness",
    folds: Annotated[Optional[int], typer.Option(min=2, help="Grouped K-fold cross-validation on train+val pooled: one "
                                                 "run per fold under a parent run with the CV metrics and oof.csv.")] = None,
    group_by: Annotated[str, typer.Option(help="With --folds: auto (the audit's near-duplicate clusters), none, or a "
                                          "video_name,group CSV file. A group never straddles folds.")] = "auto",
    cache: CacheOption = None,
    nproc: Annotated[Optional[int], typer.Option(min=1, help="Train one model over N processes on this machine with "
                                                 "DDP (torchrun's launcher; gloo on CPU, one GPU each with NCCL). "
                                                 "--batch-size is per process. Collective timeout: "
                                                 "$HARNESS_COLLECTIVE_TIMEOUT seconds (300).")] = None,
) -> None:
    """Train one timm model on the feature cache and record the run in MLflow.

    Refused (exit 2) before any feature work or MLflow run: a bad setting, an unknown backbone name,
    a dataset that does not load or does not fit the modality.

    Several machines: start `torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d
    --rdzv-endpoint HOST:PORT -m harness train ...` on each; one run is recorded.
    """
    if folds is not None:
        from harness.crossval import check_group_by
        from harness.errors import ConfigError

        if nproc is not None:
            raise ConfigError("--folds and --nproc together are not supported yet: cross-validate in one process per fold")
        check_group_by(group_by)  # a typo in the file name fails before any feature work
    from harness.config import RunConfig, read_config_file, replace

    base = read_config_file(config) if config is not None else RunConfig()
    cfg = replace(base, modality=modality, train=replace(
        base.train, backbone=backbone, video_backbone=video_backbone, lr=lr, loss=loss,
        label_smoothing=label_smoothing, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
        pretrained=pretrained, weights=str(weights) if weights else None, seed=seed, device=device,
        max_params=max_params, aggregate=aggregate, ema_decay=ema,
    ), features=replace(base.features, window_seconds=window_seconds, eval_windows=eval_windows,
                        trim_silence=trim_silence, codec_variants=codec_variants))
    if folds is not None:
        from harness.crossval import check_settings

        check_settings(cfg)
    if nproc is not None:
        _check_nproc(nproc, cfg.train.device)
    from harness.run import check_names  # imports torch and timm: after the cheap checks

    check_names(cfg)
    data_dir = resolve_data(data)
    _, cfg, _ = run_prepare(data_dir, cfg, cache=cache, workers=2, quiet=True)
    if folds is not None:
        run_cross_validation(cfg, data_dir=data_dir, experiment=experiment, cache=cache, folds=folds, group_by=group_by)
        return
    if nproc is not None:
        _train_ranks(ctx, nproc, data_dir)
        return
    run_train(cfg, data_dir=data_dir, experiment=experiment, cache=cache)


def _check_nproc(nproc: int, device: str) -> None:
    """Before any work: not inside a launch already, and one GPU per process."""
    from harness.distributed import launched
    from harness.errors import ConfigError

    if launched():
        raise ConfigError("--nproc: this process is already a rank of a torchrun launch; drop --nproc")
    if device.startswith("cuda") or device == "auto":
        import torch

        gpus = torch.cuda.device_count()
        if gpus and nproc > gpus:
            raise ConfigError(f"--nproc {nproc}: this machine has {gpus} GPU(s), one per process")


def _train_ranks(ctx: typer.Context, nproc: int, data_dir: Path) -> None:
    """`train --nproc N`: the same command as N ranks through torchrun's launcher (features are
    prepared already); the run ends FAILED with the first failing rank's reason."""
    from harness.distributed import launch_ranks
    from harness.distributed.launch import given_options
    from harness.errors import BadInput, JobFailed
    from harness.run import close_after_ranks

    options = given_options(ctx, drop=("nproc", "data"))
    outcome = launch_ranks(nproc, ["-m", "harness", "train", "--data", str(data_dir.resolve()), *options])
    reason = close_after_ranks(outcome)
    if outcome.interrupted:
        raise KeyboardInterrupt
    if reason is not None:
        raise (BadInput if outcome.exit_code == 2 else JobFailed)(reason)


def run_cross_validation(cfg, *, data_dir: Path, experiment: str, cache: Path | None, folds: int, group_by: str) -> str:  # noqa: ANN001
    """Cross-validate with an epoch table per fold; print the summary and return the parent run id."""
    from harness.console import EpochTable
    from harness.crossval import cross_validate
    from harness.errors import JobFailed
    from harness.paths import cache_dir

    title = cfg.train.backbone if cfg.modality == "audio" else f"{cfg.modality}: {cfg.train.backbone}"
    result = cross_validate(cfg, data_dir=data_dir, experiment=experiment, cache_root=cache or cache_dir(), folds=folds,
                            group_by=group_by, callbacks_for=lambda fold: [EpochTable(title=f"fold {fold + 1}/{folds} {title}")])
    typer.echo(f"cross-validation: {result.clips} clips in {result.groups} groups, {folds} folds (group by {group_by})")
    m = result.metrics
    if m:
        typer.echo(f"val AUC over folds {m['cv_val_auc_mean']:.4f} +- {m['cv_val_auc_std']:.4f}; TPR@FPR=1e-3 "
                   f"{m['cv_val_tpr_fpr1e-3_mean']:.4f} +- {m['cv_val_tpr_fpr1e-3_std']:.4f}")
        typer.echo(f"out-of-fold AUC {m['oof_auc']:.4f} (95% bootstrap interval {m['oof_auc_ci_low']:.4f} to "
                   f"{m['oof_auc_ci_high']:.4f}); oof.csv on the parent run")
    typer.echo(f"parent run id: {result.run_id} (name {result.run_name}); fold runs: "
               + ", ".join(r.run_id for r in result.folds))
    if result.status != "FINISHED":
        raise JobFailed(f"cross-validation stopped: fold {len(result.folds) - 1} ended {result.status}")
    return result.run_id


def run_train(cfg, *, data_dir: Path, experiment: str, cache: Path | None) -> str:  # noqa: ANN001
    """Train and record one run with the epoch table on the terminal; print and return its id."""
    from harness.console import EpochTable
    from harness.paths import cache_dir
    from harness.run import train_run

    title = cfg.train.backbone if cfg.modality == "audio" else f"{cfg.modality}: {cfg.train.backbone}"
    result = train_run(cfg, data_dir=data_dir, experiment=experiment, cache_root=cache or cache_dir(),
                       callbacks=[EpochTable(title=title)])
    typer.echo(f"run id: {result.run_id} (name {result.run_name})")
    return result.run_id


@app.command()
def check(
    backbone: Annotated[str, typer.Option(help="timm model name or name.tag.")],
    pretrained: Annotated[bool, typer.Option("--pretrained/--no-pretrained", help="Check the pretrained-weights rule too.")] = True,
    max_params: Annotated[float, typer.Option(help="Parameter cap (thop count).")] = 200e6,
    in_chans: Annotated[int, typer.Option(help="Input channels: 1 for spectrograms, 3 for faces.")] = 1,
    height: Annotated[int, typer.Option(help="Input height.")] = 128,
    width: Annotated[int, typer.Option(help="Input width.")] = 256,
    modality: Annotated[Optional[str], typer.Option(help="Check the whole model of a modality (audio | video | fusion | "
                                                    "image) at the default input sizes instead of one backbone.")] = None,
    video_backbone: Annotated[Optional[str], typer.Option(help="With --modality fusion: the video branch.")] = None,
) -> None:
    """Check a backbone (or a modality's whole model) against the competition rules without training."""
    if modality is None:
        from harness.models import check_compliance

        report = check_compliance(backbone, pretrained=pretrained, in_chans=in_chans, input_size=(height, width),
                                  max_params=max_params)
    else:
        from harness.config import RunConfig, TrainConfig

        cfg = RunConfig(modality=modality, train=TrainConfig(
            backbone=backbone, pretrained=pretrained, max_params=max_params, video_backbone=video_backbone))
        from harness.modalities import check_run  # torch and timm: after the settings are known good

        report = check_run(cfg)
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
def predict(
    paths: Annotated[list[Path], typer.Argument(help="Clips, audio files, face images, or folders of them (searched recursively).")],
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="Score with this MLflow run's best checkpoint (or best / last).")] = None,
    bundle: Annotated[Optional[Path], typer.Option("--bundle", help="Score with a promoted bundle folder.")] = None,
    tta: Annotated[Optional[int], typer.Option(min=1, help="Time shifts averaged per clip (default 1, or the bundle's).")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto.")] = "cpu",
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
    register: Annotated[bool, typer.Option("--register/--no-register", help="Register, alias 'champion', tag the run.")] = True,
    workers: Annotated[int, typer.Option(min=1, help="Parallel decoder processes for the test clips.")] = 2,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto.")] = "cpu",
    strict: Annotated[bool, typer.Option("--strict", help="Refuse (exit 1, nothing written) when the promotion gate "
                                         "warns: val AUC interval at 0.999, audit findings, not better than the champion.")] = False,
    cache: CacheOption = None,
) -> None:
    """Promote a run: a validated prediction.csv, a self-contained Docker bundle, registry alias 'champion'.

    First the promotion gate: the run's val AUC and TPR@1e-3 with intervals, how many runs it was
    picked from, the dataset's audit findings, and a paired bootstrap against the current champion."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from harness.paths import cache_dir
    from harness.submit import submit as promote

    console = Console(stderr=True)
    data_dir = resolve_data(data)
    columns = (TextColumn("features {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("test", total=None)
        report = promote(
            run_id, data_dir=data_dir, out_dir=out, cache_root=cache or cache_dir(), tta=tta, model_name=model_name,
            register=register, workers=workers, device=device, strict=strict,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            on_gate=_print_gate,
        )
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
        typer.echo(f"registered: {report.model_name} version {report.model_version}, alias champion")


def _print_gate(gate) -> None:  # noqa: ANN001
    """The promotion gate's facts on stdout, before anything is scored. Its warnings follow the
    submission's other warnings on stderr once it succeeded (under --strict they are the error), so a
    failing submit still prints one error line on stderr."""
    typer.echo("promotion gate:")
    for fact in gate.facts:
        typer.echo(f"  {fact}")


StudyOption = Annotated[
    str,
    typer.Option("--study", help="Study spec: a name in studies/ (demo, demo-fusion, ffdv-audio) or a TOML file."),
]


@app.command()
def tune(
    study: StudyOption = "demo",
    data: DataOption = None,
    trials: Annotated[Optional[int], typer.Option(min=1, help="Finished (complete + pruned) trials wanted in the study in total; failed ones do not count. Default: the spec's.")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Local worker processes, one GPU each when GPUs exist. Default: the spec's.")] = None,
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage: sqlite:///FILE or postgresql://USER:PASSWORD@HOST/DB. Default: studies/NAME.db.")] = None,
    timeout: Annotated[Optional[float], typer.Option(min=1, help="Start no new trial after this many seconds (running ones finish).")] = None,
    cache: CacheOption = None,
) -> None:
    """Search backbone, learning rate, loss and more with Optuna: pruned, resumable, parallel, one MLflow run tree.

    Running the same command again resumes the same study and MLflow parent run. In a terminal a
    live table shows the trials; in a log file or a pipe, one line per trial as it ends.
    """
    from rich.console import Console

    from harness import tuning
    from harness.data.labels import load_dataset
    from harness.errors import JobFailed

    url = tuning.check_storage(storage)  # a malformed or unreachable storage fails first, in seconds
    spec = tuning.load_spec(study)
    data_dir = resolve_data(data)
    tuning.check_dataset(spec, load_dataset(data_dir).track, where=data_dir)
    for cfg in spec.prepare_configs():  # every input the study can pick, once, up front
        run_prepare(data_dir, cfg, cache=cache, workers=2, quiet=True)
    console = Console(stderr=True)
    options = dict(data_dir=data_dir, storage=url, trials=trials, workers=workers, timeout=timeout, cache_root=cache)
    if console.is_terminal:
        from rich.live import Live

        with Live(console=console, refresh_per_second=2) as live:
            result = tuning.run_study(spec, **options, on_progress=lambda progress: live.update(tuning.trials_table(progress)))
        console.print()
    else:  # nohup, a batch job, a pipe: a line per trial as it ends, each on one line
        console.width = max(console.width, 160)
        result = tuning.run_study(spec, **options, on_progress=tuning.TrialLines(lambda line: typer.echo(line, err=True)))
    console.print(tuning.leaderboard_table(result))
    best = result.best
    if best is None or not best.run_id:
        raise JobFailed(f"study {result.study}: no trial completed ({result.stopped})")
    typer.echo(f"best: trial {best.number}, {result.objectives[0]} {best.value:.4f}, run {best.run_id}")
    typer.echo(f"next: harness submit --run-id {best.run_id}" + (f" --data {data}" if data else ""))


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


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (timeout, docker stop, batch schedulers) takes Ctrl-C's path: workers and servers are
    # stopped and runs end KILLED by the same handlers.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """The `harness` entry point: runs a command with every error mapped to one line and an exit
    code (see `harness.errors`): BadInput -> 2, JobFailed -> 1, an OS-level I/O error (no space,
    read-only, permission) -> 1 naming the path, Ctrl-C or SIGTERM -> 130 (all by
    `_Commands.invoke`; this installs the SIGTERM handler). Usage errors are click's (exit 2).
    """
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(args=argv, standalone_mode=False)
    except (KeyboardInterrupt, typer.Abort):  # outside a command (typer maps most to exit 130 itself)
        typer.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except typer.TyperException as e:  # usage errors: click's message, exit 2
        e.show()
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def _report(message: str, code: int) -> int:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return code


if __name__ == "__main__":
    main()
