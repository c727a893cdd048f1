"""One training run, end to end: features -> compliance gates -> model -> engine, recorded in MLflow.

This is what `harness train` runs once and `harness tune` runs per trial (with a pruning callback and
a parent run). Statuses: FINISHED; KILLED on Ctrl-C or when pruned (tag `pruned_at_epoch`); FAILED
with the error as a tag, for a refused model, a diverged loss or any other error.

What is refused before a run exists (no MLflow run, no features): a bad setting (the config refuses
it when built), a dataset that does not load or does not fit the modality, and a backbone name timm
does not know (`check_names`: a typo, not a result worth recording). A model that resolves but breaks
a competition rule is recorded as a FAILED run, so a study shows which of its picks were refused.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.callbacks import Callback, FitResult
from harness.config import RunConfig, check_track
from harness.data.cache import feature_dir, prepare_features
from harness.data.dataset import load_arrays
from harness.data.labels import Dataset, DatasetError, load_dataset
from harness.engine import fit, seed_everything

PRUNED_PREFIX = "pruned"


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
) -> RunResult:
    """Train one model and record it. Errors are recorded on the run, then raised; what is refused
    before the run exists is listed in the module docstring. `run_name` None: a readable one."""
    from harness import tracking
    from harness.modalities import build_model, input_stats

    ds = load_dataset(data_dir)  # a bad dataset fails before any run is created
    check_track(ds.track, cfg.modality, where=ds.root)
    check_names(cfg)
    client = tracking.setup()
    T = tracking.tags
    recorder = tracking.RunRecorder(
        client,
        experiment_id=tracking.get_or_create_experiment(client, experiment),
        run_name=run_name or readable_run_name(cfg),
        config=cfg,
        parent_run_id=parent_run_id,
        tags={T.DATA_PATH: str(ds.root), **(tags or {}),
              T.DATA_FINGERPRINT: data_fingerprint(ds, cfg)},
    )
    try:
        report = gate(cfg)
        features = features_for(ds, cfg, cache_root)
        train, val = (load_arrays(features, split, features=cfg.features) for split in ("train", "val"))
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
        with tempfile.TemporaryDirectory(prefix="harness-run-") as work:
            result = fit(t, model, train=train, val=val, stats=input_stats(cfg, model),
                         out_dir=Path(work), callbacks=[recorder, *callbacks], info=info)
    except KeyboardInterrupt:
        recorder.finish("KILLED")
        raise
    except Exception as e:
        recorder.finish("FAILED", error=f"{type(e).__name__}: {e}")
        raise
    if result.stopped_by and result.stopped_by.startswith(PRUNED_PREFIX):
        recorder.finish("KILLED", extra_tags={T.PRUNED_AT_EPOCH: str(result.history[-1].epoch)})
        return RunResult(recorder.run_id, "KILLED", result, recorder.run_name)
    chosen = {T.BEST_WEIGHTS: result.info["best_weights"]} if "best_weights" in result.info else None
    recorder.finish("FINISHED", extra_tags=chosen)
    return RunResult(recorder.run_id, "FINISHED", result, recorder.run_name)
