"""Every kind of run (train, fold, cv, study, trial, audit) through every ending: FINISHED, FAILED with
its one-line error, KILLED on Ctrl-C; an explicit end (pruned) that stands; the same provenance tags
on every kind; a Ctrl-C that lands inside an MLflow write (the DDP Ctrl-C race of issue #23).

The fast tests drive each kind's own recorder (`RunRecorder`, `CvParent`, the study's parent,
`record_queued`) against a real SQLite store; the slow ones train tiny models through the real code
paths (`train_run`, `cross_validate`, `run_study`) on a 24-clip data set.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import pytest

from harness.callbacks import EpochReport
from harness.config import RunConfig, TrainConfig, flat
from tests.conftest import isolated_home

PROVENANCE = {"harness.kind", "harness.host", "harness.pid", "git.commit", "git.dirty", "version.mlflow",
              "version.harness"}
ENDINGS = ["FINISHED", "FAILED", "KILLED"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A client on a SQLite store of its own (HARNESS_HOME beside it) and the experiment `life`."""
    root = tmp_path_factory.mktemp("life")
    with isolated_home(root):
        from harness import tracking

        client = tracking.setup()
        yield client, tracking.get_or_create_experiment(client, "life"), root


def end_in(ending: str) -> None:
    """Leave a run's block the way `ending` says."""
    if ending == "FAILED":
        raise ValueError("bad batch\n  shape (3, 4)")
    if ending == "KILLED":
        raise KeyboardInterrupt


def check_ending(client, run_id: str, ending: str, kind: str, *, here: bool = True) -> dict[str, str]:  # noqa: ANN001
    """The run ended as `ending` says, with its kind, its provenance (`here`: made by this process)
    and the description and `error` tag that ending calls for."""
    run = client.get_run(run_id)
    tags = run.data.tags
    assert run.info.status == ending, tags.get("error")
    assert tags["harness.kind"] == kind and PROVENANCE <= set(tags)
    assert tags["harness.pid"] == str(os.getpid()) or not here
    note = tags.get("mlflow.note.content", "")
    if ending == "FAILED":
        assert tags["error"].endswith("ValueError: bad batch shape (3, 4)") and "\n" not in tags["error"]
        assert note.startswith(f"**Ended FAILED**: this run failed: {tags['error']}.")
    elif ending == "KILLED":
        assert "error" not in tags and note.startswith("**Ended KILLED**: this run was interrupted.")
    else:
        assert "error" not in tags and not note.startswith("**Ended")
    return tags


# ---------------------------------------------------------------------------------- each kind's own recorder


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("kind", ["train", "fold", "trial"])
def test_a_training_run_of_each_kind_ends_as_its_block(store, tmp_path: Path, kind: str, ending: str) -> None:
    from harness import tracking
    from tests.test_tracking import fake_fit

    client, experiment_id, _ = store
    result = fake_fit(tmp_path)
    with pytest.raises((ValueError, KeyboardInterrupt)) if ending != "FINISHED" else nullcontext():
        with tracking.RunRecorder(client, experiment_id=experiment_id, run_name=f"{kind}-{ending}", config=RunConfig(),
                                  kind=kind, params={"world_size": 1}) as rec:
            rec.on_start(result.info)
            rec.on_epoch(result.history[0])
            rec.on_end(result)
            end_in(ending)
    tags = check_ending(client, rec.run_id, ending, kind)
    run = client.get_run(rec.run_id)
    assert run.data.params["world_size"] == "1" and run.data.params["train.backbone"] == RunConfig().train.backbone
    assert len(run.data.params) == len(flat(RunConfig())) + 1
    # the result, rounded, under the line that says how it ended
    assert tags["mlflow.note.content"].endswith(f", best epoch {result.best_epoch} of {len(result.history)}")
    assert "val AUC 0." in tags["mlflow.note.content"]


def test_an_explicit_end_stands_and_a_second_end_does_nothing(store) -> None:
    from harness import tracking

    client, experiment_id, _ = store
    with tracking.RunRecorder(client, experiment_id=experiment_id, run_name="pruned", config=RunConfig(),
                              kind="trial") as rec:
        rec.finish("KILLED", extra_tags={"pruned_at_epoch": "2"})
        rec.finish("FAILED", error="not this")
    run = client.get_run(rec.run_id)
    assert (run.info.status, run.data.tags["pruned_at_epoch"]) == ("KILLED", "2") and "error" not in run.data.tags
    assert run.data.tags["mlflow.note.content"] == "**Ended KILLED**: this run was pruned at epoch 2."


@pytest.mark.parametrize("ending", [*ENDINGS, "pruned"])
def test_a_cross_validation_parent_ends_as_its_block(store, tmp_path: Path, ending: str) -> None:
    from harness.tracking.cv_runs import CvParent

    client, _, _ = store
    (tmp_path / "oof.csv").write_text("video_name,target,score,fold,split\n")
    with pytest.raises((ValueError, KeyboardInterrupt)) if ending in ("FAILED", "KILLED") else nullcontext():
        with CvParent(experiment="life", run_name=f"cv-{ending}", params={"cv.folds": 3}, tags={"cv.folds": "3"},
                      config={"modality": "audio"}) as parent:
            for fold in (1, 2):
                parent.fold = fold
                parent.log_fold(fold, {"auc": 0.7 + fold / 100, "tpr_fpr1e-3": 0.1})
            if ending == "pruned":
                parent.stop("KILLED", pruned_after=2)
            else:
                end_in(ending)
                parent.finish({"cv_val_auc_mean": 0.715, "oof_auc": 0.70123456, "oof_auc_ci_low": 0.6,
                               "oof_auc_ci_high": 0.8}, artifacts=tmp_path)
    tags = client.get_run(parent.run_id).data.tags
    if ending == "pruned":
        assert (client.get_run(parent.run_id).info.status, tags["pruned_at_fold"]) == ("KILLED", "2")
        assert tags["mlflow.note.content"] == "**Ended KILLED**: this run was pruned after fold 2.\n\nfolds 0.71/0.72"
        return
    tags = check_ending(client, parent.run_id, ending, "cv")
    if ending == "FAILED":
        assert tags["error"] == "fold 2: ValueError: bad batch shape (3, 4)"  # the fold it broke in
    metrics = client.get_run(parent.run_id).data.metrics
    assert [m.step for m in client.get_metric_history(parent.run_id, "fold/auc")] == [1, 2]
    if ending == "FINISHED":
        assert metrics["cv/val_auc_mean"] == 0.715 and metrics["oof/auc"] == 0.70123456
        assert tags["mlflow.note.content"] == "out-of-fold AUC 0.7012 [0.6, 0.8]; folds 0.71/0.72"
        assert {a.path for a in client.list_artifacts(parent.run_id)} == {"config.json", "oof.csv"}


@pytest.mark.parametrize("ending", ENDINGS)
def test_a_study_parent_is_reopened_and_ended_by_each_session(store, ending: str) -> None:
    from harness.tracking.study_runs import StudyRuns

    client, experiment_id, _ = store
    runs = StudyRuns(client, experiment_id)
    parent = runs.find_or_create_parent(study=f"s-{ending}", storage="sqlite:///x.db", known_run_id=None,
                                        params={"study.name": f"s-{ending}"}, space_hash="h", spec_text="[study]\n")
    with runs.start_session(parent, target=2):  # a first session that finished
        pass
    with pytest.raises((ValueError, KeyboardInterrupt)) if ending != "FINISHED" else nullcontext():
        with runs.start_session(parent, target=4):  # a resumed one
            assert client.get_run(parent).info.status == "RUNNING"
            end_in(ending)
    tags = check_ending(client, parent, ending, "study")
    assert tags["harness.trials_target"] == "4" and tags["harness.study"] == f"s-{ending}"


@pytest.mark.parametrize("ending", ENDINGS)
def test_an_audit_run_ends_as_its_logging(store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: str) -> None:
    from mlflow.tracking import MlflowClient

    from harness.tracking.audit_run import queue_audit, record_queued

    client, _, _ = store
    (tmp_path / "audit.json").write_text("{}")
    if ending != "FINISHED":
        monkeypatch.setattr(MlflowClient, "log_artifacts", lambda *a, **kw: end_in(ending))
    with pytest.raises((ValueError, KeyboardInterrupt)) if ending != "FINISHED" else nullcontext():
        record_queued(queue_audit(tmp_path, experiment="life", dataset_path="/data/x", dataset_fingerprint="fp",
                                  dataset_id="x-1", metrics={"clips": 10.0, "nan": float("nan")}, params={"workers": 2},
                                  findings=["one finding"], run_name=f"audit-{ending}"))
    (run,) = client.search_runs([client.get_experiment_by_name("life").experiment_id],
                                filter_string=f"attributes.run_name = 'audit-{ending}'")
    tags = check_ending(client, run.info.run_id, ending, "audit")
    assert tags["audit.findings"] == "1" and tags["data.fingerprint"] == "fp"
    assert run.data.metrics == {"clips": 10.0} and run.data.params == {"workers": "2"}
    assert tags["mlflow.note.content"].endswith("- one finding")


def test_every_kind_carries_the_same_provenance(store) -> None:
    from harness.tracking import tags as T
    from harness.tracking.lifecycle import open_run, provenance_tags

    client, experiment_id, _ = store
    keys = set()
    for kind in T.KINDS:
        with open_run(client, kind, experiment_id=experiment_id, run_name=f"kind-{kind}",
                      params={f"p{i}": i / 3 for i in range(150)}) as run:  # past MLflow's 100 a call
            pass
        found = client.get_run(run.run_id).data
        assert found.tags["harness.kind"] == kind and len(found.params) == 150
        keys.add(frozenset(k for k in found.tags if k in provenance_tags(kind)))
    assert len(keys) == 1 and PROVENANCE <= set(next(iter(keys)))
    with pytest.raises(ValueError, match="kind must be one of"):
        provenance_tags("bundle")


def test_dead_runs_of_any_kind_are_closed_by_the_one_rule(store) -> None:
    """A run whose process is gone is closed KILLED + orphaned with its description saying so, above
    what it said before; a study's trial is closed once its Optuna trial is no longer RUNNING."""
    import subprocess

    from harness import tracking
    from harness.tracking.lifecycle import open_run

    client, experiment_id, _ = store
    done = subprocess.Popen(["true"])
    done.wait()
    study = open_run(client, "study", experiment_id=experiment_id, run_name="dead-study")
    client.set_tag(study.run_id, "harness.pid", str(done.pid))  # as a session killed with -9 leaves it
    client.set_tag(study.run_id, "mlflow.note.content", "leaderboard")
    trial = open_run(client, "trial", experiment_id=experiment_id, run_name="remote-trial", parent_run_id=study.run_id,
                     tags={"optuna.trial_number": "0", "harness.host": "another-machine"})
    running = open_run(client, "trial", experiment_id=experiment_id, run_name="live-trial", parent_run_id=study.run_id,
                       tags={"optuna.trial_number": "1", "harness.host": "another-machine"})
    assert tracking.close_dead_runs(client) == [study.run_id]
    closed = client.get_run(study.run_id)
    assert (closed.info.status, closed.data.tags["orphaned"]) == ("KILLED", "true")
    assert closed.data.tags["mlflow.note.content"] == (
        "**Ended KILLED**: this run was orphaned by a crashed process.\n\nleaderboard")
    states = {0: "FAIL", 1: "RUNNING"}
    assert tracking.close_dead_runs(client, study_parent=study.run_id, trial_states=states) == [trial.run_id]
    assert client.get_run(running.run_id).info.status == "RUNNING"
    running.end()


# ---------------------------------------------------------------------------------- the Ctrl-C race


def test_ctrl_c_is_held_until_the_block_is_done_then_delivered() -> None:
    from harness.tracking.lifecycle import uninterrupted

    steps = []
    with pytest.raises(KeyboardInterrupt):
        with uninterrupted():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # a handler would have run by now
            steps.append("whole")
        steps.append("not reached")
    assert steps == ["whole"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    done = []
    thread = threading.Thread(target=lambda: done.append(uninterrupted().__enter__() is None))
    thread.start()
    thread.join()
    assert done == [True]  # off the main thread the block runs as it is (no handler can be set there)


def test_a_ctrl_c_inside_an_mlflow_write_still_ends_the_run_killed_with_its_result(
        store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race `tests/test_ddp.py` met under load: the interrupt landed inside rank 0's epoch write.
    Interrupted mid-transaction, SQLite kept its write lock with the broken connection and every later
    write failed "database is locked": no best metrics, no checkpoint, the run FAILED."""
    from sqlalchemy import event

    from harness import tracking
    from tests.test_tracking import fake_fit

    client, experiment_id, _ = store
    monkeypatch.setenv("HARNESS_SYSTEM_METRICS_S", "0")  # no sampling thread writing meanwhile
    result = fake_fit(tmp_path, n=10)
    engine = client._tracking_client.store.engine  # the SQLite store's engine
    fired: list[int] = []

    def interrupt(*_args: object) -> None:  # the Ctrl-C arrives in the middle of the epoch's write
        if not fired and threading.current_thread() is threading.main_thread():
            fired.append(1)
            os.kill(os.getpid(), signal.SIGINT)

    rec = tracking.RunRecorder(client, experiment_id=experiment_id, run_name="race", config=RunConfig())
    event.listen(engine, "before_cursor_execute", interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            with rec:
                try:
                    rec.on_epoch(EpochReport(1, {"val_auc": 0.7, "train_loss": 0.5}, True))
                except KeyboardInterrupt:  # the engine's Ctrl-C path: keep what the run reached
                    rec.on_end(result)
                    raise
    finally:
        event.remove(engine, "before_cursor_execute", interrupt)
    run = client.get_run(rec.run_id)
    assert fired and run.info.status == "KILLED", run.data.tags.get("error")
    assert run.data.metrics["epoch/val_auc"] == 0.7  # the write it landed in was whole
    assert "summary/best_val_auc" in run.data.metrics
    assert "checkpoint/best.safetensors" in {a.path for a in client.list_artifacts(rec.run_id, "checkpoint")}


# ---------------------------------------------------------------------------------- the real code paths (slow)

TINY = TrainConfig(backbone="test_byobnet.r160_in1k", pretrained=False, epochs=1, batch_size=4, device="cpu", patience=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, store) -> Path:  # noqa: ANN001 - in the store's home
    from tests.tuning_helpers import tiny_dataset

    return tiny_dataset(tmp_path_factory.mktemp("data") / "ds")


class _EndsIn:
    """An engine callback that ends training the way `ending` says, after the first epoch."""

    def __init__(self, ending: str) -> None:
        self.ending = ending

    def on_start(self, info: dict) -> None: ...

    def on_epoch(self, report: EpochReport) -> None:
        end_in(self.ending)

    def on_end(self, result) -> None: ...  # noqa: ANN001


@pytest.mark.slow
@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("kind", ["train", "fold", "trial"])
def test_train_run_of_each_kind_ends_as_training_does(store, data: Path, kind: str, ending: str) -> None:
    from harness.preflight import preflight
    from harness.run import train_run

    client, _, root = store
    with pytest.raises((ValueError, KeyboardInterrupt)) if ending != "FINISHED" else nullcontext():
        train_run(preflight(data, RunConfig(train=TINY), cache_root=root / "cache"), experiment="life-train",
                  run_name=f"{kind}-{ending}", kind=kind, callbacks=[_EndsIn(ending)])
    (run,) = client.search_runs([client.get_experiment_by_name("life-train").experiment_id],
                                filter_string=f"attributes.run_name = '{kind}-{ending}'")
    tags = check_ending(client, run.info.run_id, ending, kind)
    assert "data.fingerprint" in tags and run.data.params["world_size"] == "1"
    if ending != "FAILED":  # finished or interrupted, the run keeps its best epoch so far: result and checkpoint
        assert "val AUC " in tags["mlflow.note.content"]
        assert "checkpoint/best.safetensors" in {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}


@pytest.mark.slow
@pytest.mark.parametrize("ending", ENDINGS)
def test_cross_validate_ends_its_parent_and_folds_alike(store, data: Path, ending: str) -> None:
    from harness.crossval import cross_validate
    from harness.preflight import preflight

    client, _, root = store
    stop_in = {"FINISHED": None, "FAILED": 2, "KILLED": 1}[ending]
    with pytest.raises((ValueError, KeyboardInterrupt)) if stop_in else nullcontext():
        cross_validate(preflight(data, RunConfig(train=TINY), cache_root=root / "cache"), experiment="life-cv", folds=2,
                       group_by="none", run_name=f"cv-{ending}",
                       callbacks_for=lambda fold: [_EndsIn(ending)] if fold == stop_in else [])
    experiment_id = client.get_experiment_by_name("life-cv").experiment_id
    (parent,) = client.search_runs([experiment_id], filter_string=f"attributes.run_name = 'cv-{ending}'")
    tags = check_ending(client, parent.info.run_id, ending, "cv")
    folds = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(f.info.run_name for f in folds) == [f"cv-{ending}-fold{i}" for i in range(1, (stop_in or 2) + 1)]
    assert sorted(f.info.status for f in folds) == sorted(["FINISHED"] * ((stop_in or 3) - 1) + ([ending] if stop_in else []))
    if ending == "FAILED":
        assert tags["error"] == "fold 2: ValueError: bad batch shape (3, 4)"
    if ending == "FINISHED":
        assert tags["mlflow.note.content"].startswith("out-of-fold AUC ")


@pytest.mark.slow
@pytest.mark.parametrize("ending", ENDINGS)
def test_a_study_session_ends_its_parent(store, data: Path, tmp_path: Path, ending: str) -> None:
    """A session that finishes, one whose live view breaks (FAILED), one interrupted (KILLED). The study
    has two objectives: the finished one's trial carries both values and its parent both best values."""
    from harness import tuning
    from tests.tuning_helpers import write_spec

    client, _, root = store
    spec = tuning.load_spec(write_spec(tmp_path, f"life-{ending.lower()}", trials=1, epochs=1, lrs=(3e-3,),
                                       objectives='["val_auc", "val_tpr_fpr1e-3"]'), check_models=False)

    def on_progress(progress: object) -> None:
        end_in(ending)

    with pytest.raises((ValueError, KeyboardInterrupt)) if ending != "FINISHED" else nullcontext():
        result = tuning.run_study(spec, data_dir=data, storage=f"sqlite:///{tmp_path / 'study.db'}",
                                  cache_root=root / "cache", on_progress=on_progress if ending != "FINISHED" else None)
    (parent,) = client.search_runs([client.get_experiment_by_name(spec.experiment).experiment_id],
                                   filter_string=f"tags.`harness.study` = '{spec.name}'")
    check_ending(client, parent.info.run_id, ending, "study")
    if ending == "FINISHED":
        (trial,) = client.search_runs([result.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
        check_ending(client, trial.info.run_id, "FINISHED", "trial", here=False)  # made by the worker
        assert trial.info.run_name == "trial-000" and "val AUC " in trial.data.tags["mlflow.note.content"]
        assert result.finished == 1 and all(len(r.values) == 2 for r in result.ranked())
        assert {"best_trial/val_auc", "best_trial/val_tpr_fpr1e-3"} <= client.get_run(parent.info.run_id).data.metrics.keys()
