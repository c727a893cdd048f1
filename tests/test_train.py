"""One training run end to end: cache, gates, engine, MLflow record, and how each failure ends.

Tests that train a model are marked slow; the refusals before training are fast.
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from harness.callbacks import EpochReport
from harness.config import RunConfig, TrainConfig
from harness.data.labels import DatasetError
from harness.engine import TrainingDiverged
from harness.errors import ConfigError
from harness.models import ModelRuleError
from harness.preflight import preflight
from harness.run import readable_run_name, train_run

TINY = TrainConfig(backbone="test_byobnet.r160_in1k", pretrained=False, epochs=2, batch_size=2, device="cpu", patience=0)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path):
    """A fresh store for each test here (conftest's `store` is one per module), copied from conftest's template."""
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path))
    from harness import tracking

    return tracking.setup()


def _run(data: Path, tmp_path: Path, train: TrainConfig = TINY, **kw):
    return train_run(preflight(data, RunConfig(train=train), cache_root=tmp_path / "cache"), experiment="t", **kw)


def _only_run(client):
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert len(runs) == 1
    return runs[0]


@pytest.mark.slow
def test_finished_run_is_fully_recorded(small_dataset: Path, tmp_path: Path, store) -> None:
    result = _run(small_dataset, tmp_path)
    run = store.get_run(result.run_id)
    assert run.info.status == "FINISHED" and result.status == "FINISHED"
    # a readable name (backbone, modality, date), not MLflow's made-up one; who ran it, for orphan closing
    assert re.fullmatch(r"test_byobnet-audio-\d{4}-\d{4}", run.info.run_name) and result.run_name == run.info.run_name
    assert run.data.tags["harness.pid"].isdigit() and run.data.tags["harness.host"]
    assert run.data.params["train.backbone"] == "test_byobnet.r160_in1k"
    assert [m.step for m in store.get_metric_history(result.run_id, "epoch/val_auc")] == [1, 2]
    assert run.data.metrics["model/params"] > 0 and run.data.tags["device"] == "cpu"
    assert "data.fingerprint" in run.data.tags and "git.commit" in run.data.tags
    artifacts = {a.path for a in store.list_artifacts(result.run_id)} | {a.path for a in store.list_artifacts(result.run_id, "checkpoint")}
    assert {"plots", "val_predictions.csv", "checkpoint/config.json", "checkpoint/best.safetensors"} <= artifacts
    # no methods file: the val scores are sliced by clip length (every clip here is 1 s long)
    assert "slice/duration.0-2s/auc" in run.data.metrics and "slices.csv" in artifacts


@pytest.mark.slow
def test_nan_loss_fails_the_run_with_the_reason(small_dataset: Path, tmp_path: Path, store) -> None:
    diverging = TrainConfig(**{**TINY.__dict__, "lr": 1e12, "optimizer": "sgd", "grad_clip": 0.0})
    with pytest.raises(TrainingDiverged):
        _run(small_dataset, tmp_path, diverging)
    run = _only_run(store)
    assert run.info.status == "FAILED" and "train loss became nan" in run.data.tags["error"]


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (TrainConfig(**{**TINY.__dict__, "max_params": 1e4}), "exceed the 0.01M cap"),
        (TrainConfig(**{**TINY.__dict__, "backbone": "convnext_base", "pretrained": True}), "in22k"),
    ],
    ids=["over-cap", "not-in1k"],
)
def test_refused_models_fail_before_training(small_dataset: Path, tmp_path: Path, store, train: TrainConfig, message: str) -> None:
    with pytest.raises(ModelRuleError, match=message):
        _run(small_dataset, tmp_path, train)
    run = _only_run(store)
    assert run.info.status == "FAILED" and message in run.data.tags["error"]
    assert not any(k.startswith("epoch/") for k in run.data.metrics)  # refused before the first step


@pytest.mark.parametrize(
    ("cfg", "error", "message"),
    [
        (RunConfig(train=TrainConfig(**{**TINY.__dict__, "backbone": "resnet81"})), ModelRuleError, "unknown timm model"),
        (RunConfig(modality="fusion", train=TrainConfig(**{**TINY.__dict__, "video_backbone": "resnet18.nope"})),
         ModelRuleError, "has no tag 'nope'"),
        (RunConfig(modality="image", train=TINY), ConfigError, "this dataset holds clips"),
    ],
    ids=["unknown-backbone", "unknown-video-tag", "track"],
)
def test_unknown_names_and_wrong_track_fail_before_any_run(small_dataset: Path, tmp_path: Path, store,
                                                           cfg: RunConfig, error: type, message: str) -> None:
    # A typo in a name is bad input, not a result: no run is recorded for it (a rule breach is, above).
    with pytest.raises(error, match=message):
        preflight(small_dataset, cfg, cache_root=tmp_path / "cache")
    assert store.get_experiment_by_name("t") is None
    assert not (tmp_path / "cache").exists()


def test_readable_run_names() -> None:
    when = time.mktime((2025, 12, 1, 1, 30, 0, 0, 0, -1))
    assert readable_run_name(RunConfig(), when) == "lite0-audio-1201-0130"
    fusion = RunConfig(modality="fusion", train=TrainConfig(video_backbone="resnet18.a1_in1k"))
    assert readable_run_name(fusion, when) == "lite0+resnet18-fusion-1201-0130"
    video = RunConfig(modality="video", train=TrainConfig(backbone="efficientnet_b0.ra_in1k"))
    assert readable_run_name(video, when) == "effnet_b0-video-1201-0130"


def test_missing_data_creates_no_run(tmp_path: Path, store) -> None:
    with pytest.raises(DatasetError, match="dataset folder not found"):
        _run(tmp_path / "nowhere", tmp_path)
    assert store.get_experiment_by_name("t") is None


@pytest.mark.slow
def test_ctrl_c_kills_the_run_and_keeps_the_checkpoint(small_dataset: Path, tmp_path: Path, store) -> None:
    class CtrlC:
        def on_start(self, info: dict) -> None: ...

        def on_epoch(self, report: EpochReport) -> None:
            raise KeyboardInterrupt

        def on_end(self, result) -> None: ...

    with pytest.raises(KeyboardInterrupt):
        _run(small_dataset, tmp_path, callbacks=[CtrlC()])
    run = _only_run(store)
    assert run.info.status == "KILLED" and run.data.tags.get("stopped_by") == "interrupted"
    assert "checkpoint/best.safetensors" in {a.path for a in store.list_artifacts(run.info.run_id, "checkpoint")}


@pytest.mark.slow
def test_best_and_last_resolve_to_finished_runs(small_dataset: Path, tmp_path: Path, store) -> None:
    from harness.tracking import resolve_run_id

    with pytest.raises(LookupError, match="no finished training run"):
        resolve_run_id(store, "best", experiment="t")
    first = _run(small_dataset, tmp_path)
    second = _run(small_dataset, tmp_path, TrainConfig(**{**TINY.__dict__, "seed": 1}))
    assert resolve_run_id(store, "last", experiment="t") == second.run_id
    aucs = {r.run_id: store.get_run(r.run_id).data.metrics["summary/best_val_auc"] for r in (first, second)}
    best = resolve_run_id(store, "best", experiment="t")
    assert aucs[best] == max(aucs.values())
    if aucs[first.run_id] == aucs[second.run_id]:
        assert best == second.run_id  # ties go to the newer run
    assert resolve_run_id(store, first.run_id, experiment="t") == first.run_id
