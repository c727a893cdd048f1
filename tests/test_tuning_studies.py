"""Studies run for real: parallel and resumable, kill -9 recovery with `harness tune`'s plain per-trial
lines outside a terminal. Two machines on one PostgreSQL study: tests/test_server.py; a study with two
objectives: tests/test_run_lifecycle.py.

The studies run spawned workers on SQLite Optuna storage and a SQLite MLflow store, on a
tiny generated data set (40 clips of 1.5 s) with tiny timm models for 1-3 epochs at 64x64, so each
trial takes a couple of seconds. One MLflow store and feature cache serve the whole module.
"""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from harness import tuning
from tests.conftest import isolated_home, wait_until

from .tuning_helpers import CLI, write_spec

pytestmark = pytest.mark.slow  # trains models in spawned worker processes

ROOT = Path(__file__).resolve().parent.parent
STATUS_OF = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    """HARNESS_HOME, feature cache and MLflow store in a temporary folder, plus a tiny data set."""
    from harness.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("tune")
    with isolated_home(root) as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # one torch thread per worker: on a busy machine much the fastest
        data = make_demo_dataset(root / "data", clips=40, seconds=1.5)
        from harness import tracking

        tracking.setup()  # create the store (schema migrations) once, before any process races for it
        yield root, data


def child_runs(client: MlflowClient, result_or_parent: str, experiment_id: str) -> list:
    return client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result_or_parent}'",
                              max_results=1000)


def parents(client: MlflowClient, experiment_id: str) -> list:
    return [r for r in client.search_runs([experiment_id], max_results=1000) if "mlflow.parentRunId" not in r.data.tags]


def assert_tree_matches(client: MlflowClient, storage: str, spec: tuning.StudySpec, experiment_id: str, parent: str) -> list:
    """Every trial that got a run has exactly one, and its status and tags match the trial's state."""
    study = optuna.load_study(study_name=spec.name, storage=tuning.normalise_storage(storage))
    runs = child_runs(client, parent, experiment_id)
    by_number: dict[int, list] = {}
    for run in runs:
        by_number.setdefault(int(run.data.tags["optuna.trial_number"]), []).append(run)
    assert all(len(v) == 1 for v in by_number.values()), "a trial ran twice"
    for t in study.trials:
        runs_of = by_number.get(t.number, [])
        assert t.state != optuna.trial.TrialState.RUNNING
        if t.state.name in ("COMPLETE", "PRUNED"):
            assert runs_of, f"trial {t.number} ({t.state.name}) has no run"
        if not runs_of:
            continue
        run = runs_of[0]
        pruned = f" (pruned at epoch {run.data.tags.get('pruned_at_epoch')})" if t.state.name == "PRUNED" else ""
        assert run.info.run_name == f"trial-{t.number:03d}{pruned}"  # a pruned run says so in its name
        assert run.data.tags["optuna.study"] == spec.name
        assert run.data.tags["optuna.state"] == t.state.name
        if run.data.tags.get("orphaned") == "true":
            assert run.info.status == "KILLED" and t.state.name == "FAIL"
        else:
            assert run.info.status == STATUS_OF[t.state.name], (t.number, t.state, run.info.status)
        if t.state.name == "PRUNED":
            assert run.data.tags["pruned_at_epoch"] == str(t.user_attrs["epoch"])
        if t.state.name == "FAIL" and run.data.tags.get("orphaned") != "true":
            assert run.data.tags["error"] and t.user_attrs["error"]
        assert t.user_attrs.get("mlflow_run_id") in (None, run.info.run_id)
    return study.trials


def test_two_workers_one_study_each_trial_once_failures_go_on_and_resume(home, tmp_path: Path):
    """Two workers on one SQLite study: exactly N finished trials, each run exactly once; a trial
    over the cap and one whose loss turns NaN end FAILED and the study goes on; run again: the same
    study and parent run, and --trials N+1 adds exactly one finished trial."""
    _, data = home
    # test_resnet is over this cap (0.37M > 0.3M): loaded unchecked, so the trial itself must refuse it.
    # Two settings in three fail, so 5 finished trials take about 10 failures, and with two workers the
    # draw order (so the count) varies from run to run: 12 allowed failures ended the study early about
    # 1 run in 5. The limit itself has its own test; here it must stay out of the way.
    path = write_spec(tmp_path, "pair", trials=4, workers=2, max_params=3e5, max_failures=60,
                      backbones=("test_byobnet.r160_in1k", "test_efficientnet.r160_in1k", "test_resnet.r160_in1k"),
                      lrs=(3e-3, 1e30), pruner='kind = "successive_halving"\nmin_resource = 1\nreduction_factor = 100')
    spec = tuning.load_spec(path, check_models=False)
    storage = f"sqlite:///{tmp_path / 'pair.db'}"
    result = tuning.run_study(spec, data_dir=data, storage=storage)
    assert result.finished == 4 and result.stopped == "target reached"
    assert result.worker_exitcodes == (0, 0)
    client = MlflowClient()
    trials = assert_tree_matches(client, storage, spec, result.experiment_id, result.parent_run_id)
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 4
    errors = " ".join(t.user_attrs.get("error", "") for t in trials)
    assert states.count("FAIL") >= 1, "expected the seeded sampler to draw failing settings"
    assert "ModelRuleError" in errors or "TrainingDiverged" in errors
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers took trials
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["harness.study"] == "pair"
    assert parent.data.metrics["trials/finished"] == 4
    best = result.best
    assert parent.data.tags["best.run_id"] == best.run_id and parent.data.metrics["best_trial/val_auc"] == round(best.value, 4)
    # The best trial's one-line result with its interval, as its own run's description says it.
    best_note = client.get_run(best.run_id).data.tags["mlflow.note.content"]
    assert re.fullmatch(r"val AUC [0-9.]+ \[[0-9.]+, [0-9.]+\], best epoch \d of \d", best_note), best_note
    assert f"), val_auc **{best.value:.4f}**; {best_note}\n" in parent.data.tags["mlflow.note.content"]
    artifacts = {Path(a.path).name for a in client.list_artifacts(result.parent_run_id, "study")}
    assert {"trials.csv", "optimization_history.png", "parallel_coordinate.png", "spec.toml"} <= artifacts

    again = tuning.run_study(spec, data_dir=data, storage=storage)  # resumes: nothing to do
    assert again.parent_run_id == result.parent_run_id and len(again.rows) == len(result.rows)
    more = tuning.run_study(spec, data_dir=data, storage=storage, trials=5, workers=2)
    assert more.parent_run_id == result.parent_run_id and more.finished == 5
    assert len(parents(client, result.experiment_id)) == 1
    assert_tree_matches(client, storage, spec, result.experiment_id, result.parent_run_id)
    changed = dataclasses.replace(spec, space=(*spec.space[:-1], ("epochs", tuning.Fixed(3))))
    with pytest.raises(tuning.SpecError, match="another search space"):
        tuning.run_study(changed, data_dir=data, storage=storage)


def test_a_study_whose_trials_all_fail_stops_at_max_failures(home, tmp_path: Path):
    _, data = home
    # test_resnet (0.37M) is over this cap, so every trial is refused when it starts.
    path = write_spec(tmp_path, "doomed", trials=4, max_params=3e5, max_failures=3, backbones=("test_resnet.r160_in1k",))
    spec = tuning.load_spec(path, check_models=False)
    result = tuning.run_study(spec, data_dir=data, storage=f"sqlite:///{tmp_path / 'doomed.db'}")
    assert result.stopped == "too many failures" and result.finished == 0
    assert [r.state for r in result.rows] == ["FAIL"] * 3


def test_kill_9_worker_mid_trial_then_rerun_recovers(home, tmp_path: Path):
    """kill -9 a worker while it trains: `harness tune` exits 1; rerunning keeps every finished
    trial, fails and re-runs the stale one (heartbeat) and closes its orphaned MLflow run; no run
    is left RUNNING. The first writes to a file, not a terminal (nohup, a batch job): one plain line a
    trial as it ends (number, state, value, epochs, seconds), no live table; the leaderboard and the pick
    that such a `harness tune` prints last are checked in tests/test_server.py."""
    _, data = home
    path = write_spec(tmp_path, "killed", trials=2, workers=1, epochs=6, lrs=(3e-3,))
    spec = tuning.load_spec(path, check_models=False)
    storage = f"sqlite:///{tmp_path / 'killed.db'}"
    command = [*CLI, "tune", "--study", str(path), "--data", str(data), "--storage", storage]
    first_log = tmp_path / "first.log"
    with first_log.open("w") as log:
        coordinator = subprocess.Popen(command, cwd=ROOT, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT,
                                       text=True)

    def running_after_a_finished_one() -> optuna.trial.FrozenTrial | None:
        assert coordinator.poll() is None, "the study ended before a trial was caught running after a finished one"
        try:
            trials = optuna.load_study(study_name="killed", storage=storage).trials
        except KeyError:  # not created yet
            return None
        running = [t for t in trials if t.state.name == "RUNNING" and t.user_attrs.get("epoch", 0) >= 1]
        return running[0] if running and any(t.state.is_finished() for t in trials) else None

    try:
        victim = wait_until(running_after_a_finished_one, 150, what="a trial running after a finished one")
        # the finished trial's line is in the file while the study still runs: printed as the trial ended
        wait_until(lambda: re.search(r"^trial 0 COMPLETE val_auc=0\.\d+ epochs=6 \d+s ", first_log.read_text(), re.M),
                   30, what="trial 0's line in the log while trial 1 runs")
        os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
        coordinator.wait(timeout=120)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
    out = first_log.read_text()
    assert coordinator.returncode == 1, out  # a worker died: reported, study left to resume
    assert "error: study killed: worker 0: exit -9" in out and "Traceback" not in out
    before = {t.number: (t.state, t.values) for t in optuna.load_study(study_name="killed", storage=storage).trials
              if t.state.is_finished()}

    result = tuning.run_study(spec, data_dir=data, storage=storage)
    study = optuna.load_study(study_name="killed", storage=storage)
    assert result.finished == 2
    for number, (state, values) in before.items():  # no finished trial lost
        assert (study.trials[number].state, study.trials[number].values) == (state, values)
    stale = study.trials[victim.number]
    assert stale.state.name == "FAIL"
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state.name in ("COMPLETE", "PRUNED") and retries[0].params == victim.params
    client = MlflowClient()
    experiment_id, parent_run_id = result.experiment_id, result.parent_run_id
    assert_tree_matches(client, storage, spec, experiment_id, parent_run_id)
    orphan = client.get_run(stale.user_attrs["mlflow_run_id"]) if "mlflow_run_id" in stale.user_attrs else None
    killed_runs = child_runs(client, parent_run_id, experiment_id)
    orphaned = [r for r in killed_runs if r.data.tags.get("orphaned") == "true"]
    assert len(orphaned) == 1 and orphaned[0].data.tags["optuna.trial_number"] == str(victim.number)
    assert orphan is None or orphan.info.status == "KILLED"
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'")
    assert running == []
    assert len(parents(client, experiment_id)) == 1
