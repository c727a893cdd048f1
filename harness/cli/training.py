"""Commands that train or judge a model: `train` (one run, DDP ranks or cross-validation) and `check`."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from harness.cli import CacheOption, DataOption, MethodsOption, app, resolve_data
from harness.cli.prepare import run_prepare
from harness.cli.settings import settings_options
from harness.errors import EXIT_BAD_INPUT

if TYPE_CHECKING:
    from harness.config import RunConfig


@app.command()
@settings_options("audio", "video", "train")
def train(
    ctx: typer.Context,
    changes: dict,
    data: DataOption = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML file with [audio], [video] and [train] tables.")] = None,
    like: Annotated[Optional[str], typer.Option(help="Start from the settings of a recorded run (a trial, a "
                                                "cross-validation: train its settings on the official split to "
                                                "submit them); other options override.")] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = "harness",
    folds: Annotated[Optional[int], typer.Option(min=2, help="Grouped K-fold cross-validation on train+val pooled: one "
                                                 "run per fold under a parent run with the CV metrics and oof.csv.")] = None,
    group_by: Annotated[str, typer.Option(help="With --folds: auto (the audit's near-duplicate clusters), none, method "
                                          "(leave forgery methods out: each fold validates on methods its training "
                                          "never saw), or a video_name,group CSV file. A group never straddles "
                                          "folds.")] = "auto",
    methods: MethodsOption = None,
    cache: CacheOption = None,
    nproc: Annotated[Optional[int], typer.Option(min=1, help="Train one model over N processes on this machine with "
                                                 "DDP (torchrun's launcher; gloo on CPU, one GPU each with NCCL). "
                                                 "--batch-size is per process. Collective timeout: "
                                                 "$HARNESS_COLLECTIVE_TIMEOUT seconds (300).")] = None,
) -> None:
    """Train one timm model on the feature cache and record the run in MLflow.

    Refused (exit 2) before any feature work: a bad setting or backbone, a dataset that does not load or fit
    the modality, a --group-by file naming no clip, --group-by method with too few fake methods.

    Several machines: `torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT
    -m harness train ...` on each; one run is recorded."""
    if folds is not None:
        from harness.crossval import check_group_by
        from harness.errors import ConfigError

        if nproc is not None:
            raise ConfigError("--folds and --nproc together are not supported yet: cross-validate in one process per fold")
        check_group_by(group_by)  # a typo in the file name fails before any feature work
    from harness.config import RunConfig, read_config_file, with_changes

    base = read_config_file(config) if config is not None else RunConfig()
    if like is not None:
        base = _settings_of(like, config)
    cfg = with_changes(base, changes)
    if nproc is not None:
        _check_nproc(nproc, cfg.train.device)
    data_dir = resolve_data(data)
    if folds is not None:
        _check_group_file(group_by, data_dir)
    ready = run_prepare(data_dir, cfg, cache=cache, workers=2, quiet=True, splits=("train", "val"), methods=methods)
    if folds is not None:
        run_cross_validation(ready, experiment=experiment, folds=folds, group_by=group_by)
    elif nproc is not None:
        _train_ranks(ctx, nproc, data_dir)
    else:
        run_train(ready, experiment=experiment)


def _check_group_file(group_by: str, data_dir: Path) -> None:
    """`--group-by FILE` checked before any feature work: refused naming no clip, a warning when missing some."""
    from harness.data.folds import check_group_file
    from harness.data.labels import load_dataset

    if group_by in ("auto", "none", "method"):
        return
    ds = load_dataset(data_dir)
    for line in check_group_file(Path(group_by), [f"{split}/{s.name}" for split in ("train", "val") for s in ds.split(split)]):
        typer.secho(f"warning: {line}", err=True, fg=typer.colors.YELLOW)


def _settings_of(run: str, config: Path | None) -> RunConfig:
    """`--like RUN`: the run's recorded settings (one of --config and --like)."""
    from harness import tracking
    from harness.errors import ConfigError

    if config is not None:
        raise ConfigError("--config and --like both give the starting settings: use one")
    return tracking.resolve_run(tracking.setup(), run, weights=False).config


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
    """`train --nproc N`: the same command as N torchrun ranks; the run ends FAILED with the first failing rank's reason."""
    from harness.distributed import launch_ranks
    from harness.distributed.launch import given_options
    from harness.errors import BadInput, JobFailed
    from harness.tracking import close_after_ranks

    options = given_options(ctx, drop=("nproc", "data"))
    outcome = launch_ranks(nproc, ["-m", "harness", "train", "--data", str(data_dir.resolve()), *options])
    reason = close_after_ranks(outcome)
    if outcome.interrupted:
        raise KeyboardInterrupt
    if reason is not None:
        raise (BadInput if outcome.exit_code == 2 else JobFailed)(reason)


def run_cross_validation(ready, *, experiment: str, folds: int, group_by: str) -> str:  # noqa: ANN001 - preflight.Ready
    """Cross-validate with an epoch table per fold; print the summary and return the parent run id."""
    from harness.console import EpochTable
    from harness.crossval import cross_validate
    from harness.errors import JobFailed

    cfg = ready.config
    title = cfg.train.backbone if cfg.modality == "audio" else f"{cfg.modality}: {cfg.train.backbone}"
    result = cross_validate(ready, experiment=experiment, folds=folds, group_by=group_by,
                            callbacks_for=lambda fold: [EpochTable(title=f"fold {fold}/{folds} {title}")])
    typer.echo(f"cross-validation: {result.clips} clips in {result.groups} groups, {folds} folds (group by {group_by})")
    if m := result.metrics:
        typer.echo(f"val AUC over folds {m['cv_val_auc_mean']:.4f} +- {m['cv_val_auc_std']:.4f}; TPR@FPR=1e-3 "
                   f"{m['cv_val_tpr_fpr1e-3_mean']:.4f} +- {m['cv_val_tpr_fpr1e-3_std']:.4f}")
        typer.echo(f"out-of-fold AUC {m['oof_auc']:.4f} (95% bootstrap interval {m['oof_auc_ci_low']:.4f} to "
                   f"{m['oof_auc_ci_high']:.4f}); oof.csv on the parent run")
        if "unseen_auc_mean" in m:
            each = ", ".join(f"{k[7:-4]} {v:.4f}" for k, v in m.items() if k.startswith("unseen/") and k.endswith("/auc"))
            typer.echo(f"unseen-method AUC mean {m['unseen_auc_mean']:.4f}, min {m['unseen_auc_min']:.4f} ({each})")
    if result.worst_slice:
        typer.echo(f"worst slice (out-of-fold): {result.worst_slice}")
    typer.echo(f"parent run id: {result.run_id} (name {result.run_name}); fold runs: "
               + ", ".join(r.run_id for r in result.folds))
    if result.status != "FINISHED":
        raise JobFailed(f"cross-validation stopped: fold {len(result.folds)} ended {result.status}")
    return result.run_id


def run_train(ready, *, experiment: str) -> str:  # noqa: ANN001 - preflight.Ready
    """Train and record one run with the epoch table on the terminal; print and return its id."""
    from harness.console import EpochTable
    from harness.run import train_run

    result = train_run(ready, experiment=experiment, callbacks=[EpochTable()])
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
