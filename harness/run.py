"""One training run, end to end: features -> compliance gates -> model -> engine, recorded in MLflow.

This is what `harness train` runs once and `harness tune` runs per trial (with a pruning callback and
a parent run). Statuses: FINISHED; KILLED on Ctrl-C or when pruned (tag `pruned_at_epoch`); FAILED
with the error as a tag, for a refused model, a diverged loss or any other error.
"""
from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.callbacks import Callback, FitResult
from harness.config import RunConfig
from harness.data.cache import feature_dir, prepare_features
from harness.data.dataset import load_arrays
from harness.data.labels import Dataset, load_dataset
from harness.engine import fit, seed_everything

PRUNED_PREFIX = "pruned"


@dataclass
class RunResult:
    run_id: str
    status: str
    fit: FitResult | None


def data_fingerprint(ds: Dataset, cfg: RunConfig) -> str:
    """The label files and the feature settings a run reads: what `submit` compares a dataset with."""
    return "-".join([ds.fingerprint(), *(cfg.features_for(name).key() for name in cfg.inputs)])


def check_track(ds: Dataset, cfg: RunConfig) -> None:
    """Image-track datasets train `image` models, clip datasets the others. Raises ValueError."""
    if ds.track == "image" and cfg.modality != "image":
        raise ValueError(f"{ds.root}: an image-track dataset (face images) trains modality image, not {cfg.modality}")
    if ds.track != "image" and cfg.modality == "image":
        raise ValueError(f"{ds.root}: this dataset holds clips; modality image is for face-image datasets (use video)")


def features_for(ds: Dataset, cfg: RunConfig, cache_root: Path, *, workers: int = 2) -> dict[str, Path]:
    """The run's feature folder per input, computing whatever is missing (a no-op when all is cached)."""
    check_track(ds, cfg)
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
    """Train one model and record it. Errors are recorded on the run, then raised."""
    from harness import tracking
    from harness.modalities import build_model, input_stats

    ds = load_dataset(data_dir)  # a bad dataset fails before any run is created
    client = tracking.setup()
    recorder = tracking.RunRecorder(
        client,
        experiment_id=tracking.get_or_create_experiment(client, experiment),
        run_name=run_name,
        config=cfg,
        parent_run_id=parent_run_id,
        tags={"data.path": str(ds.root), **(tags or {}),
              "data.fingerprint": data_fingerprint(ds, cfg)},
    )
    try:
        report = gate(cfg)
        features = features_for(ds, cfg, cache_root)
        train, val = load_arrays(features, "train"), load_arrays(features, "val")
        if not len(train) or not len(val):
            raise ValueError(f"no usable {'/'.join(cfg.inputs)} features to train on (train={len(train)}, val={len(val)}); "
                             f"see failures.csv in {', '.join(map(str, features.values()))}")
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
        recorder.finish("KILLED", extra_tags={"pruned_at_epoch": str(result.history[-1].epoch)})
        return RunResult(recorder.run_id, "KILLED", result)
    recorder.finish("FINISHED")
    return RunResult(recorder.run_id, "FINISHED", result)
