"""One training run end to end: cache, gates, engine, MLflow record, and how each failure ends."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.callbacks import EpochReport
from harness.config import RunConfig, TrainConfig
from harness.data.labels import DatasetError
from harness.engine import TrainingDiverged
from harness.models import ModelRuleError
from harness.run import train_run

TINY = TrainConfig(backbone="test_byobnet.r160_in1k", pretrained=False, epochs=2, batch_size=2, device="cpu", patience=0)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path))
    from harness import tracking

    return tracking.setup()


def _run(data: Path, tmp_path: Path, train: TrainConfig = TINY, **kw):
    return train_run(RunConfig(train=train), data_dir=data, experiment="t", cache_root=tmp_path / "cache", **kw)


def _only_run(client):
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert len(runs) == 1
    return runs[0]


def test_finished_run_is_fully_recorded(small_dataset: Path, tmp_path: Path, store) -> None:
    result = _run(small_dataset, tmp_path)
    run = store.get_run(result.run_id)
    assert run.info.status == "FINISHED" and result.status == "FINISHED"
    assert run.data.params["train.backbone"] == "test_byobnet.r160_in1k"
    assert [m.step for m in store.get_metric_history(result.run_id, "val_auc")] == [1, 2]
    assert run.data.metrics["info.params"] > 0 and run.data.tags["device"] == "cpu"
    assert "data.fingerprint" in run.data.tags and "git.commit" in run.data.tags
    artifacts = {a.path for a in store.list_artifacts(result.run_id)} | {a.path for a in store.list_artifacts(result.run_id, "checkpoint")}
    assert {"plots", "val_predictions.csv", "checkpoint/config.json", "checkpoint/best.safetensors"} <= artifacts


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
        (TrainConfig(**{**TINY.__dict__, "backbone": "resnet81"}), "unknown timm model"),
    ],
    ids=["over-cap", "not-in1k", "unknown"],
)
def test_refused_models_fail_before_training(small_dataset: Path, tmp_path: Path, store, train: TrainConfig, message: str) -> None:
    with pytest.raises(ModelRuleError, match=message):
        _run(small_dataset, tmp_path, train)
    run = _only_run(store)
    assert run.info.status == "FAILED" and message in run.data.tags["error"]
    assert not (tmp_path / "cache").exists()  # refused before any feature was computed


def test_missing_data_creates_no_run(tmp_path: Path, store) -> None:
    with pytest.raises(DatasetError, match="dataset folder not found"):
        _run(tmp_path / "nowhere", tmp_path)
    assert store.get_experiment_by_name("t") is None


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


def test_best_and_last_resolve_to_finished_runs(small_dataset: Path, tmp_path: Path, store) -> None:
    from harness.tracking import resolve_run_id

    with pytest.raises(LookupError, match="no finished training run"):
        resolve_run_id(store, "best", experiment="t")
    first = _run(small_dataset, tmp_path)
    second = _run(small_dataset, tmp_path, TrainConfig(**{**TINY.__dict__, "seed": 1}))
    assert resolve_run_id(store, "last", experiment="t") == second.run_id
    aucs = {r.run_id: store.get_run(r.run_id).data.metrics["best_val_auc"] for r in (first, second)}
    best = resolve_run_id(store, "best", experiment="t")
    assert aucs[best] == max(aucs.values())
    if aucs[first.run_id] == aucs[second.run_id]:
        assert best == second.run_id  # ties go to the newer run
    assert resolve_run_id(store, first.run_id, experiment="t") == first.run_id
