"""MLflow tracking against a real SQLite store in a temporary folder.

Creating a store runs mlflow's schema migrations (several seconds), so one store serves the module
and only the default-location test creates a second.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from harness import provenance, tracking
from harness.callbacks import EpochReport, FitResult
from harness.config import Augment, AudioFeatures, RunConfig, TrainConfig
from harness.errors import BadInput
from harness.metrics import classification_metrics
from tests.conftest import isolated_home

ROOT = Path(__file__).resolve().parent.parent
N_EPOCHS = 3
CONFIG = RunConfig(
    audio=AudioFeatures(fmax=None, width=128),
    train=TrainConfig(lr=3e-4, epochs=N_EPOCHS, augment=Augment(mixup=0.2, hflip=False)),
)


def fake_fit(tmp: Path, *, n: int = 60, seed: int = 0) -> FitResult:
    """Scores that separate the classes imperfectly, a tiny checkpoint and a short history."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    scores = np.clip(0.35 * labels + 0.65 * rng.random(n), 0, 1)
    checkpoint = tmp / "best.safetensors"
    save_file({"w": np.ones((2, 3), np.float32)}, str(checkpoint))
    best = {f"val_{k}": v for k, v in classification_metrics(labels, scores).items()}
    history = [
        EpochReport(epoch, {"train_loss": 1.0 / epoch, "lr": 1e-3, **best}, improved=True)
        for epoch in range(1, N_EPOCHS + 1)
    ]
    return FitResult(
        best_epoch=N_EPOCHS, best_metrics=best, checkpoint=checkpoint,
        val_names=[f"clip{i}.mp4" for i in range(n)], val_labels=labels, val_scores=scores,
        history=history, stopped_by="early stopping",
        info={"device": "cpu", "params": 11_200_000, "macs": 1.8e9, "input_size": (1, 128, 128)},
    )


def record(client, experiment_id: str, result: FitResult, **kwargs) -> tracking.RunRecorder:
    with tracking.RunRecorder(
        client, experiment_id=experiment_id, run_name="unit", config=CONFIG,
        tags={"data.fingerprint": "abc123"}, **kwargs,
    ) as rec:
        rec.on_start(result.info)
        for report in result.history:
            rec.on_epoch(report)
        rec.on_end(result)
    return rec


@pytest.fixture(scope="module")
def finished(store, tmp_path_factory):
    client, experiment_id, _ = store
    result = fake_fit(tmp_path_factory.mktemp("fit"))
    return record(client, experiment_id, result), result


def artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_recorder_logs_params_metrics_tags_and_artifacts(store, finished):
    client, _, home = store
    rec, result = finished
    run = client.get_run(rec.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "unit"
    assert run.data.params["train.lr"] == "0.0003"
    assert run.data.params["audio.fmax"] == "None"
    assert run.data.params["train.augment.mixup"] == "0.2"
    tags = run.data.tags
    assert {"git.commit", "git.dirty", "version.mlflow", "version.numpy"} <= set(tags)
    assert tags["harness.kind"] == "train" and tags["data.fingerprint"] == "abc123"
    # its result in one line, rounded as people read it
    m = run.data.metrics
    assert tags["mlflow.note.content"] == (f"val AUC {m['summary/best_val_auc']:.4g} [{m['summary/val_auc_ci_low']:.4g}, "
                                           f"{m['summary/val_auc_ci_high']:.4g}], best epoch {N_EPOCHS} of {N_EPOCHS}")
    assert tags["device"] == "cpu"
    assert tags["info.input_size"] == "(1, 128, 128)"
    assert tags["stopped_by"] == "early stopping"
    metrics = run.data.metrics
    assert metrics["model/params"] == 11_200_000
    assert metrics["summary/best_epoch"] == N_EPOCHS
    auc = metrics["summary/best_val_auc"]
    assert auc == pytest.approx(result.best_metrics["val_auc"])
    low, high = metrics["summary/val_auc_ci_low"], metrics["summary/val_auc_ci_high"]
    assert 0 <= low < auc < high <= 1
    # the old flat names are gone: every value lives in one section (system/: MLflow's system metrics)
    assert {k.split("/")[0] for k in metrics if "/" in k} == {"epoch", "model", "summary", "train", "system"}
    assert all("/" in k for k in metrics), sorted(metrics)

    history = client.get_metric_history(rec.run_id, "epoch/train_loss")
    assert [m.step for m in history] == list(range(1, N_EPOCHS + 1))
    assert [m.value for m in history] == pytest.approx([1.0, 0.5, 1 / 3])
    # One timestamp per epoch: all of an epoch's metrics share it.
    lr = client.get_metric_history(rec.run_id, "train/lr")
    assert [m.timestamp for m in lr] == [m.timestamp for m in history]

    assert {
        "plots/roc.png", "plots/pr.png", "plots/confusion.png", "plots/score_hist.png",
        "val_predictions.csv", "checkpoint/config.json", "checkpoint/params.json",
        "checkpoint/best.safetensors",
    } <= artifact_paths(client, rec.run_id)
    assert client.get_experiment(run.info.experiment_id).artifact_location == (home / "artifacts").as_uri()
    assert 0 < rec.log_seconds()


def test_predictions_csv_holds_every_clip(store, finished, tmp_path):
    client, _, _ = store
    rec, result = finished
    csv_path = Path(client.download_artifacts(rec.run_id, "val_predictions.csv", str(tmp_path)))
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "name,label,score"
    assert len(lines) == 1 + len(result.val_names)
    name, label, score = lines[1].split(",")
    assert (name, int(label), float(score)) == ("clip0.mp4", 0, pytest.approx(result.val_scores[0]))


def test_one_log_batch_per_epoch(store, tmp_path, monkeypatch):
    client, experiment_id, _ = store
    result = fake_fit(tmp_path)
    calls = []
    real = client.log_batch
    monkeypatch.setattr(client, "log_batch", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    with tracking.RunRecorder(client, experiment_id=experiment_id, run_name=None, config=CONFIG) as rec:
        rec.on_start(result.info)
        calls.clear()
        for report in result.history:
            rec.on_epoch(report)
        assert len(calls) == N_EPOCHS
        assert all(len(kw["metrics"]) == len(result.history[0].metrics) for kw in calls)


def test_error_marks_run_failed_with_one_line_tag(store):
    client, experiment_id, _ = store
    with pytest.raises(ValueError, match="bad batch"):
        with tracking.RunRecorder(client, experiment_id=experiment_id, run_name="boom", config=CONFIG) as rec:
            raise ValueError("bad batch\nshape (3, 4)" + "x" * 1000)
    run = client.get_run(rec.run_id)
    assert run.info.status == "FAILED"
    error = run.data.tags["error"]
    assert error.startswith("ValueError: bad batch shape (3, 4)")
    assert "\n" not in error and len(error) == 500


def test_ctrl_c_marks_run_killed(store):
    client, experiment_id, _ = store
    with pytest.raises(KeyboardInterrupt):
        with tracking.RunRecorder(client, experiment_id=experiment_id, run_name="ctrl-c", config=CONFIG) as rec:
            raise KeyboardInterrupt
    run = client.get_run(rec.run_id)
    assert run.info.status == "KILLED"
    assert "error" not in run.data.tags


def test_explicit_finish_is_not_overwritten_on_exit(store):
    client, experiment_id, _ = store
    with tracking.RunRecorder(client, experiment_id=experiment_id, run_name="pruned", config=CONFIG) as rec:
        rec.finish("KILLED", extra_tags={"pruned": "true"})
    run = client.get_run(rec.run_id)
    assert (run.info.status, run.data.tags["pruned"]) == ("KILLED", "true")


def test_resolve_run_round_trip(store, finished):
    client, _, home = store
    rec, _ = finished
    found = tracking.resolve_run(client, rec.run_id)
    assert found.config == CONFIG and found.run_id == rec.run_id and found.run.info.status == "FINISHED"
    assert found.weights.is_file() and found.weights.name == "best.safetensors"
    assert found.weights.is_relative_to(home / ".cache" / "runs")
    again = tracking.resolve_run(client, rec.run_id)  # from the cache
    assert (again.config, again.weights) == (found.config, found.weights)
    settings = tracking.resolve_run(client, rec.run_id, weights=False)  # `--like`: the settings alone
    assert settings.config == CONFIG and settings.weights is None


def test_a_download_killed_midway_is_cleaned_by_the_next(store, tmp_path):
    client, experiment_id, home = store
    rec = record(client, experiment_id, fake_fit(tmp_path, n=10))
    runs = home / ".cache" / "runs"
    stale = runs / f".{rec.run_id}.tmp-{_dead_pid()}"  # what a kill -9 during a download leaves
    (stale / "checkpoint").mkdir(parents=True)
    weights = tracking.resolve_run(client, rec.run_id).weights
    assert weights.is_file() and weights.parent.parent == runs / rec.run_id
    assert not stale.exists() and not list(runs.glob(".*.tmp-*"))


def test_resolve_run_refuses_unknown_runs_runs_without_checkpoint_and_cv_parents_as_models(store):
    client, experiment_id, _ = store
    with pytest.raises(LookupError, match="no run"):
        tracking.resolve_run(client, "0" * 32)
    with pytest.raises(BadInput, match="is not a run id"):
        tracking.resolve_run(client, "../../x")
    with tracking.RunRecorder(client, experiment_id=experiment_id, run_name="empty", config=CONFIG) as rec:
        pass
    for weights in (True, False):
        with pytest.raises(LookupError, match="no checkpoint"):
            tracking.resolve_run(client, rec.run_id, weights=weights)
    refused = []
    with pytest.raises(LookupError, match="no checkpoint"):
        tracking.resolve_run(client, rec.run_id, check=refused.append)  # the check sees the run first
    assert [r.info.run_id for r in refused] == [rec.run_id]


def test_get_or_create_experiment_is_idempotent(store):
    client, experiment_id, _ = store
    assert tracking.get_or_create_experiment(client, "tests") == experiment_id
    client.delete_experiment(experiment_id)
    assert tracking.get_or_create_experiment(client, "tests") == experiment_id  # restored
    assert client.get_experiment(experiment_id).lifecycle_stage == "active"


def test_default_store_is_anchored_to_project_root(tmp_path, monkeypatch):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HARNESS_HOME", str(home))
    monkeypatch.chdir(elsewhere)
    client = tracking.setup()
    assert client.tracking_uri == f"sqlite:///{home / 'mlruns' / 'mlflow.db'}"
    experiment_id = tracking.get_or_create_experiment(client, "default store")
    rec = record(client, experiment_id, fake_fit(tmp_path, n=10))
    assert (home / "mlruns" / "mlflow.db").is_file()
    run_folders = list((home / "mlruns" / "artifacts").glob(f"*/{rec.run_id}/artifacts"))
    assert len(run_folders) == 1
    assert (run_folders[0] / "plots" / "roc.png").is_file()
    assert (run_folders[0] / "checkpoint" / "best.safetensors").is_file()
    assert not (elsewhere / "mlruns").exists()


def test_git_state_inside_and_outside_a_checkout(tmp_path):
    inside = provenance.git_state(ROOT)
    if inside["git.commit"] == "unknown":
        pytest.skip("the project is not a git checkout here")
    assert len(inside["git.commit"]) == 40 and inside["git.dirty"] in ("true", "false")
    assert provenance.git_state(tmp_path) == {"git.commit": "unknown", "git.dirty": "unknown"}


def test_package_versions():
    versions = provenance.package_versions()
    assert versions["version.harness"] == "0.1.0"
    assert {"version.mlflow", "version.numpy", "version.torch"} <= set(versions)


def test_ui_url_opens_model_training_view():
    assert tracking.ui_url("127.0.0.1", 5000) == "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
    assert tracking.ui_url("0.0.0.0", 8080).startswith("http://127.0.0.1:8080/#/")


# ---- runs left RUNNING by a dead process, and the UI server


def test_runs_record_their_host_and_pid(store, finished):
    client, _, _ = store
    rec, _ = finished
    tags = client.get_run(rec.run_id).data.tags
    assert (tags["harness.host"], tags["harness.pid"]) == (socket.gethostname(), str(os.getpid()))


def _dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def test_close_dead_runs_closes_only_this_hosts_gone_processes(store):
    client, _, _ = store
    experiment_id = tracking.get_or_create_experiment(client, "dead runs")
    host, me, dead = socket.gethostname(), str(os.getpid()), str(_dead_pid())

    def running(tags: dict[str, str], **kwargs) -> str:
        return client.create_run(experiment_id, tags=tags, **kwargs).info.run_id

    gone = running({"harness.host": host, "harness.pid": dead})
    # our own pid, but the run started a day before this process did: the pid was reused
    reused = running({"harness.host": host, "harness.pid": me}, start_time=int((time.time() - 86400) * 1000))
    alive = running({"harness.host": host, "harness.pid": me})
    elsewhere = running({"harness.host": host + "-other", "harness.pid": dead})
    untagged = running({})  # runs recorded before the process tags: nothing says who owns them
    # children judged by the same rule: a study's trial, a cross-validation's fold
    trial = running({"harness.host": host, "harness.pid": dead, "mlflow.parentRunId": untagged,
                     "optuna.trial_number": "3"})
    fold = running({"harness.host": host, "harness.pid": dead, "mlflow.parentRunId": untagged})

    assert set(tracking.close_dead_runs(client)) == {gone, reused, trial, fold}
    for run_id in (gone, reused, trial, fold):
        run = client.get_run(run_id)
        assert (run.info.status, run.data.tags["orphaned"]) == ("KILLED", "true")
        assert run.data.tags["mlflow.note.content"] == "**Ended KILLED**: this run was orphaned by a crashed process."
    for run_id in (alive, elsewhere, untagged):
        assert client.get_run(run_id).info.status == "RUNNING"
        client.set_terminated(run_id)
    assert tracking.close_dead_runs(client) == []


def test_ui_url_opens_an_experiments_runs_in_model_training_view(store):
    client, _, _ = store
    experiment_id = tracking.get_or_create_experiment(client, "newest")
    client.set_terminated(client.create_run(experiment_id).info.run_id)
    assert tracking.latest_experiment(client) == experiment_id
    assert tracking.ui_url("127.0.0.1", 5000, experiment_id) == (
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=harness-best-first")


def test_check_port_free():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BadInput, match=f"port {port} on 127.0.0.1 is in use"):
            tracking.check_port_free("127.0.0.1", port)
    tracking.check_port_free("127.0.0.1", port)  # closed: free again


KEEP_A_RUN_OPEN = """
import time
from harness import tracking
from harness.config import RunConfig

client = tracking.setup()
rec = tracking.RunRecorder(client, experiment_id=tracking.get_or_create_experiment(client, "crash"), run_name="doomed",
                           config=RunConfig())
print(rec.run_id, flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_a_run_killed_with_sigkill_is_closed_by_the_next_run(tmp_path):
    with isolated_home(tmp_path):
        doomed = subprocess.Popen([sys.executable, "-c", KEEP_A_RUN_OPEN], stdout=subprocess.PIPE, text=True)
        try:
            run_id = doomed.stdout.readline().strip()
        finally:
            doomed.kill()  # SIGKILL: no handler runs, the run stays RUNNING
            doomed.wait()
        client = tracking.setup()
        assert client.get_run(run_id).info.status == "RUNNING"
        experiment_id = tracking.get_or_create_experiment(client, "crash")
        with tracking.RunRecorder(client, experiment_id=experiment_id, run_name="next", config=CONFIG) as rec:
            killed = client.get_run(run_id)
            assert (killed.info.status, killed.data.tags["orphaned"]) == ("KILLED", "true")
            assert killed.data.tags["harness.pid"] == str(doomed.pid)
            assert client.get_run(rec.run_id).info.status == "RUNNING"


def test_best_and_last_resolve_among_finished_models(store):
    """`best` ranks by `summary/best_val_auc` among FINISHED runs, a study's own best trial first
    among ties; a study parent (`best_trial/val_auc`) and a flat `best_val_auc` never count."""
    from harness.tracking import metric_names as M

    client, _, _ = store
    experiment_id = tracking.get_or_create_experiment(client, "names")

    def run(name: str, metrics: dict[str, float], status: str = "FINISHED") -> str:
        run_id = client.create_run(experiment_id, run_name=name, tags={"harness.kind": "train"}).info.run_id
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        client.set_terminated(run_id, status=status)
        time.sleep(0.01)  # distinct start times
        return run_id

    first = run("first", {M.BEST_VAL_AUC: 0.91, M.BEST_EPOCH: 3.0, M.VAL_AUC_CI_LOW: 0.8})
    new = run("new", {M.BEST_VAL_AUC: 0.87, M.BEST_EPOCH: 2.0})
    run("flat", {"best_val_auc": 0.99})
    run("parent", {"best_trial/val_auc": 0.99})
    run("failed", {M.BEST_VAL_AUC: 0.99}, status="FAILED")
    assert tracking.resolve_run_id(client, "best", experiment="names") == first
    assert tracking.resolve_run_id(client, "last", experiment="names") == new
    newest = run("newest", {M.BEST_VAL_AUC: 0.95})
    assert tracking.resolve_run_id(client, "best", experiment="names") == newest
    # among runs tied on the metric, a study's own best trial (tagged best=true) wins over a newer one
    client.set_tag(newest, "best", "true")
    tied_newer = run("tied", {M.BEST_VAL_AUC: 0.95})
    assert tracking.resolve_run_id(client, "best", experiment="names") == newest
    client.set_tag(newest, "best", "false")
    assert tracking.resolve_run_id(client, "best", experiment="names") == tied_newer
    # the flat summary the bundle and the card keep
    assert M.summary(client.get_run(first).data.metrics) == {"best_epoch": 3.0, "best_val_auc": 0.91, "val_auc_ci_low": 0.8}


def test_a_run_logs_its_splits_as_mlflow_datasets(store, shared_sample, tmp_path):
    """The Dataset column: name, a digest of label file + clip list, source, split size and context;
    one changed label changes that split's digest only."""
    from harness.data.labels import load_dataset
    from tests.conftest import copy_tree

    client, experiment_id, _ = store

    def logged(root: Path) -> tuple[dict[str, str], dict[str, Any]]:
        with tracking.RunRecorder(client, experiment_id=experiment_id, run_name="data", config=CONFIG) as rec:
            digests = rec.log_dataset(load_dataset(root))
        inputs = client.get_run(rec.run_id).inputs.dataset_inputs
        by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in inputs}
        return digests, by_context

    digests, datasets = logged(shared_sample)
    assert set(datasets) == {"training", "validation"}
    train = datasets["training"]
    assert (train.name, train.digest, train.source_type) == ("ffdv-phase1-sample", digests["train"], "local")
    assert json.loads(train.source)["uri"] == str(shared_sample.resolve())
    assert json.loads(train.profile)["num_rows"] == 5 and json.loads(datasets["validation"].profile)["num_rows"] == 5
    assert "video_name" in train.schema and "target" in train.schema
    assert digests["train"] != digests["val"]

    copy = copy_tree(shared_sample, tmp_path / "ffdv-phase1-sample")
    labels = copy / "trainset_label.txt"
    rows = labels.read_text().splitlines()
    name, target = rows[1].split(",")
    labels.write_text("\n".join([rows[0], f"{name},{1 - int(target)}", *rows[2:]]) + "\n")
    changed, _ = logged(copy)
    assert changed["train"] != digests["train"] and changed["val"] == digests["val"]


def test_the_package_imports_its_names_on_first_use_and_only_the_module_asked_for() -> None:
    """`harness.tracking` resolves each public name from its module on first use; importing the
    audit's recorder module does not import the training recorder (plots, sklearn)."""
    code = (
        "import sys, harness.tracking as t\n"
        "import harness.tracking.audit_run\n"
        "assert 'harness.tracking.recorder' not in sys.modules, 'recorder imported eagerly'\n"
        "names = {n: getattr(t, n) for n in t.__all__}\n"
        "assert names['RunRecorder'].__module__ == 'harness.tracking.recorder'\n"
        "assert names['UiServer'].__module__ == 'harness.tracking.ui'\n"
        "try:\n    t.no_such_name\nexcept AttributeError as e:\n    print('missing:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "has no attribute 'no_such_name'" in out.stdout


@pytest.mark.slow
def test_processes_opening_a_new_store_at_once_all_get_it(tmp_path: Path) -> None:
    # `harness train` right after `harness audit` opens the new SQLite store while the audit's
    # background recorder creates its schema: each must wait for the other, not fail on "table exists".
    code = "from harness import tracking; tracking.setup().search_experiments(); print('ok')"
    env = {**os.environ, "HARNESS_HOME": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outcomes = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-300:] for _, err in outcomes]
    assert all(out.strip() == "ok" for out, _ in outcomes)


def test_best_and_last_never_pick_a_folds_run(tmp_path: Path) -> None:
    # A fold's run validates on a fold of train + val: its val AUC is not comparable with the others'.
    with isolated_home(tmp_path):
        client = tracking.setup()
        experiment_id = tracking.get_or_create_experiment(client, "folds")

        def run(kind: str, auc: float) -> str:
            run_id = client.create_run(experiment_id, tags={"harness.kind": kind}).info.run_id
            client.log_metric(run_id, "summary/best_val_auc", auc)
            client.set_terminated(run_id)
            return run_id

        trained = run("train", 0.7)
        run("fold", 0.9)  # newer and better on its own clips
        assert tracking.resolve_run_id(client, "best") == trained
        assert tracking.resolve_run_id(client, "last") == trained
