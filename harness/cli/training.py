"""Commands that train or judge a model: `train` (one run, DDP ranks or cross-validation) and `check`."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from harness.cli import CacheOption, DataOption, app, resolve_data
from harness.cli.prepare import CROP_QUALITY_HELP, CROP_STORAGE_HELP, run_prepare
from harness.errors import EXIT_BAD_INPUT

if TYPE_CHECKING:
    from harness.config import RunConfig


@app.command()
def train(
    ctx: typer.Context,
    data: DataOption = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML file with [features], [video] and [train] tables.")] = None,
    like: Annotated[Optional[str], typer.Option(help="Start from the settings of a recorded run (a trial, a "
                                                "cross-validation: train its settings on the official split to "
                                                "submit them); other options override.")] = None,
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
    crop_storage: Annotated[Optional[str], typer.Option(help=CROP_STORAGE_HELP)] = None,
    crop_quality: Annotated[Optional[int], typer.Option(help=CROP_QUALITY_HELP)] = None,
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
    if like is not None:
        base = _settings_of(like, config)
    cfg = replace(base, modality=modality, train=replace(
        base.train, backbone=backbone, video_backbone=video_backbone, lr=lr, loss=loss,
        label_smoothing=label_smoothing, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
        pretrained=pretrained, weights=str(weights) if weights else None, seed=seed, device=device,
        max_params=max_params, aggregate=aggregate, ema_decay=ema,
    ), features=replace(base.features, window_seconds=window_seconds, eval_windows=eval_windows,
                        trim_silence=trim_silence, codec_variants=codec_variants),
        video=replace(base.video, crop_storage=crop_storage, crop_quality=crop_quality))
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


def _settings_of(run: str, config: Path | None) -> RunConfig:
    """`--like RUN`: the run's recorded settings (one of --config and --like)."""
    from harness import tracking
    from harness.errors import ConfigError

    if config is not None:
        raise ConfigError("--config and --like both give the starting settings: use one")
    client = tracking.setup()
    return tracking.run_settings(client, tracking.resolve_run_id(client, run))


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
