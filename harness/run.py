"""One training run, end to end: features -> compliance gates -> model -> engine, recorded in MLflow.

This is what `harness train` runs once and `harness tune` runs per trial (with a pruning callback and
a parent run). Statuses: FINISHED; KILLED on Ctrl-C or when pruned (tag `pruned_at_epoch`); FAILED
with the error as a tag, for a refused model, a diverged loss or any other error.

What is refused before a run exists (no MLflow run, no features): a bad setting (the config refuses
it when built), a dataset that does not load or does not fit the modality, and a backbone name timm
does not know (`check_names`: a typo, not a result worth recording). A model that resolves but breaks
a competition rule is recorded as a FAILED run, so a study shows which of its picks were refused.

Under a launcher (torchrun, `harness train --nproc N`) every rank runs `train_run`; rank 0 alone
creates and records the one MLflow run (param `world_size`), and the others learn its id.
`close_after_ranks` is the launching side's half: it ends the run FAILED with the first rank's
failure ("rank 1 exited with signal 9 (SIGKILL)"), also when rank 0 died before it could.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.callbacks import Callback, FitResult
from harness.config import AudioFeatures, RunConfig, check_track
from harness.data.cache import feature_dir, prepare_features
from harness.data.dataset import SplitArrays, load_arrays
from harness.data.labels import Dataset, DatasetError, load_dataset
from harness.distributed import LaunchOutcome, World, agree, announce_run, process_group
from harness.engine import fit, seed_everything

PRUNED_PREFIX = "pruned"
# Feature folders (one per input) -> (train, val): how a run picks its samples (a CV fold passes its own).
SplitChooser = Callable[[dict[str, Path]], tuple[SplitArrays, SplitArrays]]


@dataclass
class RunResult:
    run_id: str
    status: str
    fit: FitResult | None
    run_name: str = ""


def data_fingerprint(ds: Dataset, cfg: RunConfig) -> str:
    """The label files and the feature settings a run reads: what `submit` compares a dataset with."""
    return "-".join([ds.fingerprint(), *(cfg.features_for(name).key() for name in cfg.inputs)])


def readable_run_name(cfg: RunConfig, when: float | None = None) -> str:
    """A readable name for a run of `harness train`: backbone, modality, local month-day-hour-minute,
    e.g. `lite0-audio-1201-0130` (MLflow would make up "powerful-deer-112"). Trials name their own."""
    names = "+".join(dict.fromkeys(_short_backbone(name) for name in _backbones(cfg)))
    return f"{names}-{cfg.modality}-{time.strftime('%m%d-%H%M', time.localtime(when))}"


def _backbones(cfg: RunConfig) -> list[str]:
    """The timm names the model of `cfg.modality` is built from (as modalities.build_model does)."""
    video = cfg.train.video_backbone or cfg.train.backbone
    return {"audio": [cfg.train.backbone], "fusion": [cfg.train.backbone, video]}.get(cfg.modality, [video])


def _short_backbone(name: str) -> str:
    # The architecture without its pretrained tag, and without the words every EfficientNet repeats:
    # tf_efficientnet_lite0.in1k -> lite0, efficientnet_b0.ra_in1k -> effnet_b0, resnet18.a1_in1k -> resnet18.
    arch = name.split(".")[0].removeprefix("tf_")
    return arch.replace("efficientnet_lite", "lite").replace("efficientnet", "effnet")


def check_names(cfg: RunConfig) -> None:
    """Every backbone the run builds is a timm model (and tag) that exists; raises ModelRuleError
    (exit 2). Costs the timm import and a registry lookup, no model."""
    from harness.models import resolve_name

    for name in dict.fromkeys(_backbones(cfg)):
        resolve_name(name)


def features_for(ds: Dataset, cfg: RunConfig, cache_root: Path, *, workers: int = 2) -> dict[str, Path]:
    """The run's feature folder per input, computing whatever is missing (a no-op when all is cached)."""
    check_track(ds.track, cfg.modality, where=ds.root)
    folders = {}
    for name in cfg.inputs:
        features = cfg.features_for(name)
        prepare_features(ds, features, cache_root=cache_root, workers=workers, splits=("train", "val"))
        folders[name] = feature_dir(ds, features, cache_root)
    return folders


def official_splits(features: dict[str, Path], audio: AudioFeatures | None = None) -> tuple[SplitArrays, SplitArrays]:
    """The dataset's own train and val splits, usable clips only (`audio`: how windows are cut)."""
    return load_arrays(features, "train", features=audio), load_arrays(features, "val", features=audio)


def low_fpr_analysis(val: SplitArrays, *, title: str) -> Callable[[FitResult, Path], dict[str, float]]:
    """The recorder's end-of-run analysis: TPR at FPR 1e-3 and 1e-2 with intervals, the most
    confidently wrong val clips with thumbnails of what the model saw (`harness.analysis`)."""
    from harness.analysis import split_thumbnails, write_low_fpr_analysis

    def analyse(result: FitResult, folder: Path) -> dict[str, float]:
        found = write_low_fpr_analysis(folder, result.val_names, result.val_labels, result.val_scores,
                                       thumbnails=split_thumbnails(val), title=title)
        # The point values are the best epoch's `best_val_tpr_fpr1e-*` already: only the intervals are new.
        return {k: v for k, v in found.items() if "_ci_" in k}

    return analyse


def gate(cfg: RunConfig):  # noqa: ANN201 - ComplianceReport
    """The competition rules, checked before the first step. Raises ModelRuleError."""
    from harness.modalities import check_run
    from harness.models import ModelRuleError

    report = check_run(cfg)
    if not report.ok:
        raise ModelRuleError(report.summary())
    return report


def train_run(
    cfg: RunConfig,
    *,
    data_dir: Path,
    experiment: str,
    cache_root: Path,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    callbacks: Sequence[Callback] = (),
    tags: dict[str, str] | None = None,
    splits: SplitChooser | None = None,
) -> RunResult:
    """Train one model and record it. Errors are recorded on the run, then raised; what is refused
    before the run exists is listed in the module docstring. `run_name` None: a readable one.

    Inside a launcher's process group this is one rank of a DDP run: only rank 0 records (and runs
    `callbacks`), the others return the same run id. `splits` None: the official train and val
    splits; cross-validation passes a fold's."""
    ds = load_dataset(data_dir)  # a bad dataset fails before any run is created
    check_track(ds.track, cfg.modality, where=ds.root)
    check_names(cfg)
    with process_group(cfg.train.device) as world:
        return _train_and_record(cfg, ds, world, experiment=experiment, cache_root=cache_root, run_name=run_name,
                                 parent_run_id=parent_run_id, callbacks=callbacks, tags=tags, splits=splits)


def _train_and_record(cfg: RunConfig, ds: Dataset, world: World, *, experiment: str, cache_root: Path,
                      run_name: str | None, parent_run_id: str | None, callbacks: Sequence[Callback],
                      tags: dict[str, str] | None, splits: SplitChooser | None = None) -> RunResult:
    from harness import tracking
    from harness.modalities import build_model, input_stats

    T = tracking.tags
    recorder = None
    if world.is_main:
        client = tracking.setup()
        recorder = tracking.RunRecorder(
            client,
            experiment_id=tracking.get_or_create_experiment(client, experiment),
            run_name=run_name or readable_run_name(cfg),
            config=cfg,
            parent_run_id=parent_run_id,
            tags={T.DATA_PATH: str(ds.root), **(tags or {}),
                  T.DATA_FINGERPRINT: data_fingerprint(ds, cfg)},
        )
        client.log_param(recorder.run_id, "world_size", str(world.size))
        announce_run(recorder.run_id)
    run_id = agree(recorder.run_id if recorder else "", world)
    run_label = recorder.run_name if recorder else ""
    if recorder is None:
        callbacks = ()  # rank 0 reports, prunes and prints; its decisions reach this rank through fit
    try:
        if recorder:
            recorder.log_dataset(ds)  # the runs table's Dataset column: name, digest, split sizes
        report = gate(cfg)
        features = features_for(ds, cfg, cache_root)
        train, val = splits(features) if splits else official_splits(features, cfg.features)
        if not len(train) or not len(val):
            raise DatasetError(f"no usable {'/'.join(cfg.inputs)} features to train on (train={len(train)}, "
                               f"val={len(val)}); see failures.csv in {', '.join(map(str, features.values()))}")
        t = cfg.train
        seed_everything(t.seed)  # before the head is initialised: same seed, same run
        model = build_model(cfg)
        info = {"modality": cfg.modality, "backbone": report.resolved, "params": report.params,
                "thop_params": report.thop_params, "macs": report.macs,
                "input_size": "x".join(map(str, report.input_size))}
        if cfg.modality != "audio":
            info["faces"] = "x".join(map(str, cfg.features_for("video").shape))
        if recorder:
            recorder.analyse = low_fpr_analysis(val, title=recorder.run_name)
        with tempfile.TemporaryDirectory(prefix="harness-run-") as work:
            result = fit(t, model, train=train, val=val, stats=input_stats(cfg, model),
                         out_dir=Path(work), callbacks=[*([recorder] if recorder else []), *callbacks], info=info)
    except KeyboardInterrupt:
        if recorder:
            recorder.finish(T.KILLED)
        raise
    except Exception as e:
        if recorder:
            recorder.finish(T.FAILED, error=f"{type(e).__name__}: {e}")
        raise
    if result.stopped_by and result.stopped_by.startswith(PRUNED_PREFIX):
        if recorder:
            recorder.finish(T.KILLED, extra_tags={T.PRUNED_AT_EPOCH: str(result.history[-1].epoch)})
        return RunResult(run_id, T.KILLED, result, run_label)
    if recorder:
        chosen = {T.BEST_WEIGHTS: result.info["best_weights"]} if "best_weights" in result.info else None
        recorder.finish(T.FINISHED, extra_tags=chosen)
    return RunResult(run_id, T.FINISHED, result, run_label)


def close_after_ranks(outcome: LaunchOutcome) -> str | None:
    """The launching side of a DDP run: make rank 0's run say how the ranks ended, and return that
    in one line (None when all went well).

    Interrupted: a run still RUNNING (rank 0 killed first) ends KILLED. A rank's failure: the run
    ends FAILED with the first failing rank and how it ended ("rank 1 exited with signal 9
    (SIGKILL)"), then rank 0's own error if it recorded one; when rank 0 was itself the first to
    fail with an error, its recorded error stands. A FINISHED run stays FINISHED.
    """
    if outcome.ok:
        return None
    reason = outcome.reason or "a rank failed"
    if outcome.run_id is None:
        return reason
    from harness import tracking
    from harness.tracking import tags as T

    client = tracking.setup()
    run = tracking.get_run(client, outcome.run_id)
    own = run.data.tags.get(T.ERROR, "")
    if run.info.status == T.FINISHED:
        return reason
    if outcome.interrupted:
        if run.info.status == T.RUNNING:
            client.set_terminated(outcome.run_id, status=T.KILLED)
        return reason
    first = outcome.failures[0]
    if first.rank == 0 and 0 < first.exitcode != 130 and run.info.status == T.FAILED and own:
        return own
    error = " ".join((reason + (f"; rank 0: {own}" if own else "")).split())[:500]
    client.set_tag(outcome.run_id, T.ERROR, error)
    client.set_terminated(outcome.run_id, status=T.FAILED)
    return error
