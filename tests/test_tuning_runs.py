"""The study's MLflow run tree (`harness.tracking.study_runs`) against a throwaway SQLite store:
one parent found again and reopened by each session, best-so-far on it, trial run states in step
with their trials, a dead trial's run closed once its trial is no longer RUNNING, the study's files logged."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import isolated_home


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    from harness.tracking.study_runs import StudyRuns

    with isolated_home(tmp_path_factory.mktemp("runs")):
        yield StudyRuns.open("tune-runs")


def parent_of(runs, study: str = "s", **kw) -> str:  # noqa: ANN001 - StudyRuns
    options = {"storage": "sqlite:////x/s.db", "known_run_id": None, "params": {"study.name": study, "space.lr": "1e-4..0.1 log"},
               "space_hash": "abc123", "spec_text": "[study]\n", **kw}
    return runs.find_or_create_parent(study=study, **options)


def trial_run(runs, parent: str, number: int) -> str:  # noqa: ANN001
    """A trial's run as `harness.run.train_run` starts it."""
    from harness.tracking import tags as T
    from harness.tracking.study_runs import trial_tags

    tags = {**trial_tags("s", number), T.MLFLOW_PARENT: parent}
    return runs.client.create_run(runs.experiment_id, run_name=f"trial-{number:03d}", tags=tags).info.run_id


def test_parent_is_found_again_not_made_twice(runs):
    parent = parent_of(runs, "found")
    assert parent_of(runs, "found") == parent  # by its tags
    assert parent_of(runs, "found", known_run_id=parent) == parent  # by the id the study remembers
    assert parent_of(runs, "found", known_run_id="0" * 32) == parent  # a stale id: found by tags
    assert parent_of(runs, "found", storage="postgresql://me@db/x") != parent  # another storage, another study
    run = runs.client.get_run(parent)
    assert run.info.run_name == "study-found" and run.data.tags["harness.kind"] == "study"
    assert run.data.params["space.lr"] == "1e-4..0.1 log" and run.data.tags["harness.space_hash"] == "abc123"
    assert [a.path for a in runs.client.list_artifacts(parent, "study")] == ["study/spec.toml"]


def test_session_status_and_best_so_far(runs):
    from harness.tracking.study_runs import BestTrial

    parent = parent_of(runs, "best")
    session = runs.start_session(parent, target=5)
    assert runs.client.get_run(parent).info.status == "RUNNING"
    states = {0: "COMPLETE", 1: "PRUNED", 2: "FAIL", 3: "RUNNING"}
    run0 = trial_run(runs, parent, 0)
    runs.record_progress(parent, states=states, epochs_trained=9, target=5,
                         best=BestTrial(0, run0, {"val_auc": 0.6423611111111112, "val_eer": float("nan")}, {"lr": 0.01}))
    data = runs.client.get_run(parent).data
    # A copy rounded as people read it (the trial's run keeps the exact value); NaN left out.
    assert data.metrics["best_trial/val_auc"] == 0.6424 and "best_trial/val_eer" not in data.metrics
    assert (data.metrics["trials/finished"], data.metrics["trials/failed"], data.metrics["trials/epochs_trained"]) == (2, 1, 9)
    assert (data.tags["best.run_id"], data.tags["best.trial_number"], data.tags["best.lr"]) == (run0, "0", "0.01")
    assert data.tags["harness.trials_target"] == "5" and "summary/best_val_auc" not in data.metrics
    session.end("KILLED")
    assert runs.client.get_run(parent).info.status == "KILLED"
    with runs.start_session(parent, target=6):  # resumed: RUNNING again, FINISHED when the session is
        assert runs.client.get_run(parent).info.status == "RUNNING"
    assert runs.client.get_run(parent).info.status == "FINISHED"


def test_a_session_reopens_the_parent_as_its_own(runs):
    """A session left the parent RUNNING and died (its pid is gone): the next session's parent
    carries the new process's tags (so the dead-run rule can heal it), not the old error marks."""
    import os
    import subprocess

    from harness.tracking import tags as T

    parent = parent_of(runs, "reopened")
    done = subprocess.Popen(["true"])
    done.wait()
    runs.client.set_tag(parent, T.PID, str(done.pid))  # what a session killed with -9 leaves
    runs.client.set_tag(parent, T.ERROR, "an old error")
    session = runs.start_session(parent, target=2)
    run = runs.client.get_run(parent)
    assert run.info.status == "RUNNING" and run.data.tags[T.PID] == str(os.getpid()) and T.ERROR not in run.data.tags
    assert run.data.tags[T.KIND] == "study" and "git.commit" in run.data.tags and "version.mlflow" in run.data.tags
    session.release()  # trials of another machine still run: RUNNING, and no longer this process's
    run = runs.client.get_run(parent)
    assert run.info.status == "RUNNING" and T.PID not in run.data.tags and T.HOST not in run.data.tags


def test_a_parent_resumed_by_a_younger_process_is_not_closed_as_orphaned(runs):
    """`harness tune` again, on a study finished an hour ago: the session's process began after the parent
    run did, so by the run's start time its pid looked reused and the session's own heal (and each worker's)
    closed its parent KILLED, `orphaned=true`, a tag that stayed on the parent once the session ended FINISHED."""
    import time

    from harness.tracking import tags as T
    from harness.tracking.lifecycle import close_dead_runs

    an_hour_ago = int(time.time() * 1000) - 3_600_000
    tags = {T.KIND: "study", T.STUDY: "resumed", T.STUDY_STORAGE: "sqlite:////x/s.db"}
    parent = runs.client.create_run(runs.experiment_id, start_time=an_hour_ago, tags=tags).info.run_id
    runs.client.set_terminated(parent, status="FINISHED")
    session = runs.start_session(parent, target=3)
    assert parent not in close_dead_runs(runs.client)  # what the session's `_heal` and each worker do
    assert runs.client.get_run(parent).info.status == "RUNNING"
    session.end("FINISHED")
    run = runs.client.get_run(parent)
    assert run.info.status == "FINISHED" and T.ORPHANED not in run.data.tags


def test_parent_description_links_the_best_trial_and_the_best_tag_moves(runs):
    from harness.tracking.study_runs import BestTrial

    parent = parent_of(runs, "board")
    first, second, third = (trial_run(runs, parent, n) for n in range(3))
    t0 = BestTrial(0, first, {"val_auc": 0.71}, {"lr": 0.01, "backbone": "resnet"})
    runs.record_progress(parent, states={0: "COMPLETE", 1: "RUNNING"}, epochs_trained=3, target=3, best=t0, leaders=[t0])
    tags = lambda run_id: runs.client.get_run(run_id).data.tags  # noqa: E731
    assert tags(first)["best"] == "true" and "best" not in tags(second)
    best_line = next(line for line in tags(parent)["mlflow.note.content"].splitlines() if line.startswith("Best: "))
    assert best_line.endswith(", val_auc **0.7100**")  # its run says no result yet: no interval made up
    runs.client.set_tag(third, "mlflow.note.content", "val AUC 0.93 [0.8512, 0.99], best epoch 3 of 3")  # its result line
    t2 = BestTrial(2, third, {"val_auc": 0.93}, {"lr": 0.003, "backbone": "vit"})
    runs.record_progress(parent, states={0: "COMPLETE", 1: "PRUNED", 2: "COMPLETE"}, epochs_trained=7, target=3,
                         best=t2, leaders=[t2, t0])
    assert tags(third)["best"] == "true" and "best" not in tags(first)  # moved, not copied
    note = tags(parent)["mlflow.note.content"]
    link = f"[trial 2](#/experiments/{runs.experiment_id}/runs/{third}?workflowType=machine_learning)"
    assert f"\nBest: {link}, val_auc **0.9300**; val AUC 0.93 [0.8512, 0.99], best epoch 3 of 3\n" in note
    rows = [line for line in note.splitlines() if line.startswith("| ")]
    assert rows[0] == "| rank | trial | val_auc | params |"
    assert rows[1] == f"| 1 | {link} | 0.9300 | lr=0.003, backbone=vit |"
    assert rows[2].startswith(f"| 2 | [trial 0](#/experiments/{runs.experiment_id}/runs/{first}?workflowType=machine_learning) | 0.7100 |")
    assert "**3 of 3 trials finished**: 2 complete, 1 pruned, 0 failed." in note


def test_a_pruned_trial_says_so_in_its_name_and_description(runs):
    from harness.tracking import tags as T

    from harness.tracking.lifecycle import end_run

    parent = parent_of(runs, "pruned")
    run_id = trial_run(runs, parent, 7)
    runs.client.set_tag(run_id, T.MLFLOW_NOTE, "val AUC 0.7 [0.6, 0.8], best epoch 2 of 3")  # its result so far
    end_run(runs.client, run_id, "KILLED", tags={T.PRUNED_AT_EPOCH: 3})  # as harness.run ends a pruned run
    runs.mark_trial(run_id, "PRUNED", pruner="median pruner")
    runs.mark_trial(run_id, "PRUNED", pruner="median pruner")  # idempotent: the name is not extended twice
    run = runs.client.get_run(run_id)
    assert run.info.run_name == "trial-007 (pruned at epoch 3)"
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("Pruned at epoch 3 by the median pruner") and note.endswith("\n\nval AUC 0.7 [0.6, 0.8], best epoch 2 of 3")
    assert (run.data.tags["pruned_by"], run.data.tags["optuna.state"], run.info.status) == ("median pruner", "PRUNED", "KILLED")


def test_trial_states_follow_their_trials(runs):
    parent = parent_of(runs, "states")
    done, diverged = trial_run(runs, parent, 0), trial_run(runs, parent, 1)
    assert runs.trial_run(parent, 1) == diverged and runs.trial_run(parent, 7) is None
    runs.client.set_terminated(done, status="FINISHED")
    runs.mark_trial(done, "COMPLETE")
    runs.client.set_terminated(diverged, status="FINISHED")  # trained, but its objective was NaN
    runs.mark_trial(diverged, "FAIL", error="ValueError: objective\n is not a number")
    ok, bad = runs.client.get_run(done), runs.client.get_run(diverged)
    assert (ok.info.status, ok.data.tags["optuna.state"]) == ("FINISHED", "COMPLETE")
    assert (bad.info.status, bad.data.tags["optuna.state"]) == ("FAILED", "FAIL")
    assert bad.data.tags["error"] == "ValueError: objective is not a number"
    assert bad.data.tags["mlflow.note.content"] == "**Ended FAILED**: this run failed: ValueError: objective is not a number."


def test_a_trial_run_is_closed_once_its_trial_is_no_longer_running(runs):
    parent = parent_of(runs, "orphans")
    dead, alive = trial_run(runs, parent, 0), trial_run(runs, parent, 1)
    healed = trial_run(runs, parent, 2)
    runs.client.set_tag(healed, "orphaned", "true")  # closed by someone else, state tag left behind
    runs.client.set_terminated(healed, status="KILLED")

    # Trial 0 went stale (its worker died, maybe on another machine) and was failed; trial 1 runs.
    assert runs.close_orphaned_trials(parent, {0: "FAIL", 1: "RUNNING", 2: "FAIL"}) == [dead]
    run = runs.client.get_run(dead)
    assert (run.info.status, run.data.tags["orphaned"], run.data.tags["optuna.state"]) == ("KILLED", "true", "FAIL")
    assert runs.client.get_run(alive).info.status == "RUNNING"
    assert runs.client.get_run(alive).data.tags["optuna.state"] == "RUNNING"
    assert runs.client.get_run(healed).data.tags["optuna.state"] == "FAIL"  # closed runs get their trial's state

    runs.client.set_terminated(alive, status="FINISHED")
    runs.mark_trial(alive, "COMPLETE")
    assert runs.close_orphaned_trials(parent, {0: "FAIL", 1: "COMPLETE", 2: "FAIL", 3: "WAITING"}) == []
    assert runs.client.get_run(alive).info.status == "FINISHED"
    assert "orphaned" not in runs.client.get_run(alive).data.tags


def test_study_files_are_logged_under_study(runs):
    parent = parent_of(runs, "files")
    runs.log_study_artifacts(parent, pngs={"optimization_history": b"\x89PNG fake"}, trials_csv="number,value\n0,0.5\n",
                             skipped={"param_importances": "ValueError: too few trials"})
    names = {Path(a.path).name for a in runs.client.list_artifacts(parent, "study")}
    assert names == {"spec.toml", "trials.csv", "optimization_history.png", "plots_skipped.json"}
    folder = Path(runs.client.download_artifacts(parent, "study"))
    assert (folder / "trials.csv").read_text() == "number,value\n0,0.5\n"
    assert (folder / "optimization_history.png").read_bytes() == b"\x89PNG fake"
