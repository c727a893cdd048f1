"""Trials over several devices (`gpus_per_trial` in a study spec): the key, the device groups the
coordinator hands its workers, and (slow) studies whose trials train as 2 gloo ranks on the CPU:
each trial one FINISHED run with world_size=2 and one metric point per epoch, the study's values
those runs' results, a trial whose ranks refuse its model failing with rank 0's reason, and a trial
pruned by rank 0 ending pruned on every rank."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import optuna
import pytest

from harness import tuning
from harness.tuning.coordinator import device_groups
from harness.tuning.rank import RankJob, pruner_table
from tests.conftest import ROOT, isolated_home

from .tuning_helpers import tiny_dataset, write_spec

# ---------------------------------------------------------------------------------- the key


def test_gpus_per_trial_defaults_to_one_and_is_read(tmp_path: Path) -> None:
    assert tuning.load_spec(write_spec(tmp_path, "one"), check_models=False).gpus_per_trial == 1
    assert tuning.load_spec("demo", check_models=False).gpus_per_trial == 1
    assert tuning.load_spec(write_spec(tmp_path, "two", gpus_per_trial=2), check_models=False).gpus_per_trial == 2


@pytest.mark.parametrize(("value", "message"), [
    ("0", "[study] gpus_per_trial = 0: give at least 1"),
    ("-2", "[study] gpus_per_trial = -2: give at least 1"),
    ('"2"', '[study] gpus_per_trial: expected an integer, got "2"'),
    ("1.5", "[study] gpus_per_trial: expected an integer, got 1.5"),
])
def test_a_bad_gpus_per_trial_is_one_line_naming_file_and_key(tmp_path: Path, value: str, message: str) -> None:
    path = write_spec(tmp_path, "bad", gpus_per_trial=2)
    path.write_text(path.read_text().replace("gpus_per_trial = 2", f"gpus_per_trial = {value}"))
    with pytest.raises(tuning.SpecError) as caught:
        tuning.load_spec(path, check_models=False)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------------------- device groups


def test_each_worker_gets_its_own_group_of_gpus(tmp_path: Path) -> None:
    spec = tuning.load_spec(write_spec(tmp_path, "groups"), check_models=False)
    two = dataclasses.replace(spec, gpus_per_trial=2)
    assert device_groups(spec, ["0", "1"], 3) == ["0", "1", "0"]  # one GPU a trial: round-robin, as before
    assert device_groups(two, ["0", "1", "2", "3"], 2) == ["0,1", "2,3"]
    assert device_groups(two, ["4", "6", "7"], 1) == ["4,6"]  # the ids CUDA_VISIBLE_DEVICES gave
    assert device_groups(two, [], 3) == [None, None, None]  # CPU: each trial's ranks use gloo
    with pytest.raises(tuning.SpecError) as caught:
        device_groups(two, ["0", "1", "2", "3"], 3)
    assert str(caught.value) == (f"{spec.path}: [study] gpus_per_trial = 2 x 3 worker(s) needs 6 GPUs, this machine "
                                 "has 4 (0,1,2,3); lower --workers or gpus_per_trial")


def test_too_few_gpus_are_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tuning.load_spec(write_spec(tmp_path, "few", workers=2, gpus_per_trial=2), check_models=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    missing = tmp_path / "no-such-dataset"  # any feature or storage work would fail on it differently
    with pytest.raises(tuning.SpecError, match="needs 4 GPUs, this machine has 3"):
        tuning.run_study(spec, data_dir=missing, storage=f"sqlite:///{tmp_path / 'few.db'}")
    with pytest.raises(tuning.SpecError, match="needs 6 GPUs"):
        tuning.run_study(spec, data_dir=missing, workers=2, gpus_per_trial=3)
    assert not (tmp_path / "few.db").exists()


def test_the_ranks_job_carries_the_pruner_as_the_spec_wrote_it(tmp_path: Path) -> None:
    import json

    spec = tuning.load_spec(write_spec(tmp_path, "p", pruner='kind = "successive_halving"\nmin_resource = 2'),
                            check_models=False)
    table = pruner_table(spec.pruner)
    assert table == {"kind": "successive_halving", "min_resource": 2, "reduction_factor": 3, "min_early_stopping_rate": 0}
    job = RankJob(config={}, data_dir="d", cache_root="c", experiment="e", run_name="trial-000", parent_run_id="p",
                  tags={"optuna.trial_number": "0"}, study="p", storage_url="sqlite:///x.db", trial_number=0,
                  objectives=["val_auc"], pruner=table, max_epochs=2, heartbeat=dataclasses.asdict(spec.heartbeat))
    again = RankJob(**json.loads(json.dumps(dataclasses.asdict(job))))
    assert again == job
    kind = dict(again.pruner).pop("kind")
    assert tuning.PRUNERS[kind](**{k: v for k, v in again.pruner.items() if k != "kind"}) == spec.pruner


# ---------------------------------------------------------------------------------- whole studies (slow)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    """A 24-clip data set and an MLflow store; ranks run one torch thread each and time out in 30 s."""
    root = tmp_path_factory.mktemp("tune-ddp")
    data = tiny_dataset(root / "ds")
    with isolated_home(root) as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("HARNESS_COLLECTIVE_TIMEOUT", "30")  # a rank left waiting would fail its trial in 30 s
        mp.setenv("PYTHONPATH", str(ROOT))  # the ranks run this checkout
        mp.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        from harness import tracking

        tracking.setup()  # the store's schema, once, before any process races for it
        yield root, data


def _trial_runs(result: tuning.StudyResult) -> dict[int, object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.search_runs([result.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    return {int(r.data.tags["optuna.trial_number"]): r for r in found}


def _steps(run_id: str, key: str = "epoch/val_auc") -> list[int]:
    from mlflow.tracking import MlflowClient

    return [m.step for m in MlflowClient().get_metric_history(run_id, key)]


@pytest.mark.slow
def test_each_trial_trains_as_two_ranks_and_the_study_reads_their_runs(home, tmp_path: Path) -> None:
    """Trials over two ranks each: a finished trial's value, epochs and settings are its ranks' one run's;
    a trial whose ranks refuse the model (test_resnet, 0.37M parameters, is over the 0.3M cap) fails with
    rank 0's reason on the trial and on its run, and the study goes on to its target."""
    from .test_tuning_studies import assert_tree_matches

    _, data = home
    path = write_spec(tmp_path, "ddp2", trials=2, workers=1, epochs=2, lrs=(3e-3, 6e-3), gpus_per_trial=2,
                      max_params=3e5, backbones=("test_byobnet.r160_in1k", "test_resnet.r160_in1k"))
    spec = tuning.load_spec(path, check_models=False)
    storage = f"sqlite:///{tmp_path / 'ddp2.db'}"
    # The draws, in this order: one over the cap, then two that train (a fixed order, not the sampler's luck).
    study = tuning.storage.load_or_create_study(spec, tuning.open_storage(storage, spec.heartbeat))
    for backbone, lr in (("test_resnet.r160_in1k", 3e-3), ("test_byobnet.r160_in1k", 3e-3), ("test_byobnet.r160_in1k", 6e-3)):
        study.enqueue_trial({"backbone": backbone, "lr": lr, "loss": "bce"})
    result = tuning.run_study(spec, data_dir=data, storage=storage)
    assert result.finished == 2 and result.stopped == "target reached" and result.worker_exitcodes == (0,)
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    trials = assert_tree_matches(client, storage, spec, result.experiment_id, result.parent_run_id)
    runs = _trial_runs(result)
    assert sorted(runs) == [t.number for t in trials]  # every trial, failed ones too, has its one run
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    for t in complete:
        run = runs[t.number]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"] and t.user_attrs["epoch"] == 2
        assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
        assert _steps(run.info.run_id) == [1, 2] and _steps(run.info.run_id, "epoch/train_loss") == [1, 2]
        assert t.value == pytest.approx(run.data.metrics["summary/best_val_auc"])  # the study's value is the run's
        assert float(run.data.params["train.lr"]) == t.params["lr"]  # the trial's draw reached the ranks
    for t in failed:
        run = runs[t.number]
        assert t.params["backbone"] == "test_resnet.r160_in1k" and "ModelRuleError" in t.user_attrs["error"]
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.info.status == "FAILED" and "ModelRuleError" in run.data.tags["error"]
        assert run.data.tags["optuna.state"] == "FAIL" and run.data.params["world_size"] == "2"
    best = result.best
    assert best.run_id == runs[best.number].info.run_id
    assert client.get_run(result.parent_run_id).data.tags["best.run_id"] == best.run_id


@pytest.mark.slow
def test_a_trial_pruned_by_rank_zero_ends_pruned_on_every_rank(home, tmp_path: Path) -> None:
    _, data = home
    path = write_spec(tmp_path, "ddp-pruned", trials=2, workers=1, epochs=3, lrs=(3e-3, 6e-3), gpus_per_trial=2,
                      pruner='kind = "median"\nn_startup_trials = 1\nn_warmup_steps = 0')
    spec = tuning.load_spec(path, check_models=False)
    storage = f"sqlite:///{tmp_path / 'pruned.db'}"
    # A finished trial no model can match (val AUC 2.0 at every epoch): the median pruner stops the
    # real trial at its first report, a decision only rank 0 makes.
    study = tuning.storage.load_or_create_study(spec, tuning.open_storage(storage, spec.heartbeat))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=2.0,
                                              intermediate_values={1: 2.0, 2: 2.0, 3: 2.0}, params={}, distributions={}))
    started = time.monotonic()
    result = tuning.run_study(spec, data_dir=data, storage=storage)
    took = time.monotonic() - started
    assert result.worker_exitcodes == (0,) and result.finished == 2
    trial = optuna.load_study(study_name=spec.name, storage=storage).trials[1]
    assert trial.state.name == "PRUNED" and trial.user_attrs["epoch"] == 1
    run = _trial_runs(result)[1]
    assert run.info.status == "KILLED" and run.data.params["world_size"] == "2"
    assert run.data.tags["pruned_at_epoch"] == "1" and run.info.run_name == "trial-001 (pruned at epoch 1)"
    assert run.data.tags["optuna.state"] == "PRUNED" and _steps(run.info.run_id) == [1]
    # Rank 1 learnt the decision at once: waiting for a next epoch would have failed the trial after
    # the 30 s collective timeout instead.
    assert "error" not in run.data.tags and took < 300
