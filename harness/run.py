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
from harness.data.cache import feature_dir, prepare_audio
from harness.data.dataset import load_arrays
from harness.data.labels import Dataset, load_dataset
from harness.engine import fit, head_outputs, seed_everything

PRUNED_PREFIX = "pruned"


@dataclass
class RunResult:
    run_id: str
    status: str
    fit: FitResult | None


def features_for(ds: Dataset, cfg: RunConfig, cache_root: Path, *, workers: int = 2) -> Path:
    """The run's feature folder, computing whatever is missing (a no-op when all is cached)."""
    if cfg.modality != "audio":
        raise ValueError(f"modality {cfg.modality!r} is not available yet; use audio")
    prepare_audio(ds, cfg.features, cache_root=cache_root, workers=workers, splits=("train", "val"))
    return feature_dir(ds, cfg.features, cache_root)


def gate(cfg: RunConfig):  # noqa: ANN201 - ComplianceReport
    """The competition rules, checked before the first step. Raises ModelRuleError."""
    from harness.models import ModelRuleError, check_compliance

    t = cfg.train
    report = check_compliance(
        t.backbone, pretrained=t.pretrained or t.weights is not None, in_chans=1,
        input_size=cfg.features.shape, max_params=t.max_params, num_classes=head_outputs(t.loss),
    )
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
    from harness.models import create_model, model_data_config

    ds = load_dataset(data_dir)  # a bad dataset fails before any run is created
    client = tracking.setup()
    recorder = tracking.RunRecorder(
        client,
        experiment_id=tracking.get_or_create_experiment(client, experiment),
        run_name=run_name,
        config=cfg,
        parent_run_id=parent_run_id,
        tags={"data.path": str(ds.root), "data.fingerprint": f"{ds.fingerprint()}-{cfg.features.key()}", **(tags or {})},
    )
    try:
        report = gate(cfg)
        features = features_for(ds, cfg, cache_root)
        train, val = load_arrays(features, "train"), load_arrays(features, "val")
        t = cfg.train
        seed_everything(t.seed)  # before the head is initialised: same seed, same run
        model = create_model(t.backbone, pretrained=t.pretrained or t.weights is not None, in_chans=1,
                             num_classes=head_outputs(t.loss), weights=t.weights, drop_rate=t.drop_rate)
        data_cfg = model_data_config(model, in_chans=1)
        info = {"backbone": report.resolved, "params": report.params, "thop_params": report.thop_params,
                "macs": report.macs, "input_size": "x".join(map(str, report.input_size))}
        with tempfile.TemporaryDirectory(prefix="harness-run-") as work:
            result = fit(t, model, train=train, val=val, mean=data_cfg["mean"], std=data_cfg["std"],
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
