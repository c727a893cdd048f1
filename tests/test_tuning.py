"""Tuning: study specs, parallel and resumable studies, kill -9 recovery, PostgreSQL across "machines".

The studies run for real (spawned workers, SQLite/PostgreSQL Optuna storage, a SQLite MLflow store)
on a tiny generated data set (40 clips of 1.5 s) with tiny timm models for 1-3 epochs at 64x64, so
each trial takes a couple of seconds. One MLflow store and feature cache serve the whole module.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from harness import tuning
from harness.callbacks import EpochReport, StopTraining
from tests.conftest import isolated_home

from .pg import postgres_or_skip

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


def write_spec(folder: Path, name: str, *, trials: int = 4, workers: int = 1, backbones: tuple[str, ...] = ("test_byobnet.r160_in1k",),
               lrs: tuple[float, ...] = (), max_params: float = 1e6, epochs: int = 2, pruner: str = 'kind = "none"',
               sampler: str = 'kind = "random"\nseed = 0', objectives: str = '["val_auc"]', max_failures: int = 10) -> Path:
    lr = f"lr = {list(lrs)}" if lrs else "lr = { low = 1e-3, high = 1e-2, log = true }"
    text = f"""
[study]
name = "{name}"
trials = {trials}
workers = {workers}
pretrained = false
max_params = {max_params}
max_failures = {max_failures}
objectives = {objectives}

[sampler]
{sampler}

[pruner]
{pruner}

[space]
backbone = {list(backbones)}
{lr}
loss = ["bce", "ce", "focal"]
input_size = ["64x64"]
batch_size = 8
epochs = {epochs}

[base.train]
patience = 0

[heartbeat]
interval = 1
grace_period = 3
max_retry = 1
""".replace("'", '"')
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def child_runs(client: MlflowClient, result_or_parent: str, experiment_id: str) -> list:
    return client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result_or_parent}'",
                              max_results=1000)


def parents(client: MlflowClient, experiment_id: str) -> list:
    return [r for r in client.search_runs([experiment_id], max_results=1000) if "mlflow.parentRunId" not in r.data.tags]


def assert_tree_matches(client: MlflowClient, storage: str, spec: tuning.StudySpec, experiment_id: str, parent: str) -> list:
    """Every trial that got a run has exactly one, and its status and tags match the trial's state."""
    study = optuna.load_study(study_name=spec.name, storage=storage)
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
        assert run.info.run_name == f"trial-{t.number:03d}"
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


# ----------------------------------------------------------------------------------------- specs

def test_shipped_specs_load():
    demo = tuning.load_spec("demo")
    assert demo.name == "demo" and demo.objectives == ("val_auc",)
    assert {"backbone", "lr", "loss", "weight_decay", "batch_size", "augment_strength", "input_size", "epochs"} <= dict(demo.space).keys()
    assert isinstance(demo.sampler, tuning.TPE) and not isinstance(demo.pruner, tuning.NoPruning)
    assert demo.base.train.pretrained is False
    assert len(demo.feature_configs()) == len(dict(demo.space)["input_size"].choices)
    ffdv = tuning.load_spec(ROOT / "studies" / "ffdv-audio.toml")
    assert ffdv.base.train.pretrained is True and ffdv.base.train.max_params <= 200e6
    fusion = tuning.load_spec("demo-fusion")
    assert fusion.modalities() == ["audio", "video", "fusion"] and fusion.base.video.frames == 4


def test_spec_maps_dimensions_onto_run_settings(tmp_path: Path):
    spec = tuning.load_spec(write_spec(tmp_path, "maps"), check_models=False)
    cfg = spec.config_for({"backbone": "test_byobnet.r160_in1k", "lr": 0.004, "loss": "ce", "input_size": "64x96"})
    assert (cfg.train.backbone, cfg.train.lr, cfg.train.loss) == ("test_byobnet.r160_in1k", 0.004, "ce")
    assert cfg.features.shape == (64, 96) and cfg.train.epochs == 2 and cfg.train.batch_size == 8
    assert cfg.train.max_params == 1e6 and cfg.train.patience == 0
    assert spec.config_for({"input_size": "128x64"}).features.height is None  # 128 = n_mels: no resize, one cache
    assert spec.space_hash() == tuning.load_spec(write_spec(tmp_path, "maps"), check_models=False).space_hash()


def test_a_study_can_search_over_modality(tmp_path: Path):
    path = write_spec(tmp_path, "modal")
    text = path.read_text().replace("[space]", '[space]\nmodality = ["audio", "video", "fusion"]\nframes = [2, 4]', 1)
    path.write_text(text + '\n[base.video]\nsize = 32\n')
    spec = tuning.load_spec(path, check_models=True)  # each backbone checked on log-mels and on face crops
    cfg = spec.config_for({"modality": "fusion", "frames": 4})
    assert cfg.modality == "fusion" and cfg.inputs == ("audio", "video") and cfg.video.frames == 4
    prepared = spec.prepare_configs()
    assert {c.modality for c in prepared} == {"audio", "video"}
    assert {c.video.frames for c in prepared if c.modality == "video"} == {2, 4}
    path.write_text(text.replace('["audio", "video", "fusion"]', '["audio", "image"]'))
    with pytest.raises(tuning.SpecError, match="image"):
        tuning.load_spec(path, check_models=False)


@pytest.mark.parametrize(("backbone", "max_params", "message"), [
    ("test_resnet.r160_in1k", 1e5, "exceed the 0.1M cap"),
    ("vit_tiny_patch16_224.augreg_in21k", 200e6, "not ImageNet-1k only"),
    ("resnet18", 200e6, "give the pretrained tag too"),
    ("resnet_does_not_exist.a1_in1k", 200e6, "unknown timm model"),
])
def test_spec_refuses_backbone_at_load(tmp_path: Path, backbone: str, max_params: float, message: str):
    path = write_spec(tmp_path, "refused", backbones=("test_byobnet.r160_in1k", backbone), max_params=max_params)
    with pytest.raises(tuning.SpecError, match=message):
        tuning.load_spec(path)


@pytest.mark.parametrize(("change", "message"), [
    (("[space]", "[space]\nbogus = [1, 2]"), "bogus"),
    (("[study]", "[study]\ncolour = 1"), "unknown key"),
    (('["val_auc"]', '["val_auc", "val_tpr_fpr1e-3"]'), "pruning needs a single objective"),
    (('["val_auc"]', '["accuracy"]'), "unknown objective"),
    (("epochs = 2", "epochs = { low = 3, high = 1 }"), "need low < high"),
    (('input_size = ["64x64"]', 'input_size = ["64 by 64"]'), "is not \"HxW\""),
])
def test_spec_errors(tmp_path: Path, change: tuple[str, str], message: str):
    path = write_spec(tmp_path, "bad", pruner='kind = "median"')
    path.write_text(path.read_text().replace(*change, 1))
    with pytest.raises(tuning.SpecError, match=message):
        tuning.load_spec(path, check_models=False)


# -------------------------------------------------------------------------------------- pruning

class StubTrial:
    """Records reports; the pruner says "prune" on its `prune_at`-th question."""

    def __init__(self, prune_at: int) -> None:
        self.reported: list[tuple[float, int]] = []
        self.asked = 0
        self.prune_at = prune_at

    def report(self, value: float, step: int) -> None:
        self.reported.append((value, step))

    def should_prune(self) -> bool:
        self.asked += 1
        return self.asked >= self.prune_at


def test_pruning_callback_reports_best_so_far_and_stops():
    trial = StubTrial(prune_at=3)
    cb = tuning.PruningCallback(trial)
    cb.on_epoch(EpochReport(1, {"val_auc": 0.6}, True))
    cb.on_epoch(EpochReport(2, {"val_auc": 0.55}, False))
    with pytest.raises(StopTraining, match="pruned at epoch 3"):
        cb.on_epoch(EpochReport(3, {"val_auc": float("nan")}, False))
    assert trial.reported == [(0.6, 1), (0.6, 2)]


# --------------------------------------------------------------------------------------- studies

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
    assert parent.data.metrics["trials_finished"] == 4
    best = result.best
    assert parent.data.tags["best.run_id"] == best.run_id and parent.data.metrics["best_trial_val_auc"] == pytest.approx(best.value)
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
    """kill -9 a worker while it trains: rerunning keeps every finished trial, fails and re-runs the
    stale one (heartbeat) and closes its orphaned MLflow run; no run is left RUNNING."""
    _, data = home
    path = write_spec(tmp_path, "killed", trials=3, workers=1, epochs=6, lrs=(3e-3,))
    spec = tuning.load_spec(path, check_models=False)
    storage = f"sqlite:///{tmp_path / 'killed.db'}"
    command = [sys.executable, "-m", "harness.tuning", "--study", str(path), "--data", str(data), "--storage", storage]
    coordinator = subprocess.Popen(command, cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
    victim = None
    deadline = time.time() + 150
    try:
        while victim is None and time.time() < deadline and coordinator.poll() is None:
            time.sleep(0.1)
            try:
                trials = optuna.load_study(study_name="killed", storage=storage).trials
            except KeyError:  # not created yet
                continue
            done = [t for t in trials if t.state.is_finished()]
            running = [t for t in trials if t.state.name == "RUNNING" and t.user_attrs.get("epoch", 0) >= 1]
            if done and running:
                victim = running[0]
        assert victim is not None, "no trial was caught running after a finished one"
        os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
        out, _ = coordinator.communicate(timeout=120)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
    assert coordinator.returncode == 1, out  # a worker died: reported, study left to resume
    before = {t.number: (t.state, t.values) for t in optuna.load_study(study_name="killed", storage=storage).trials
              if t.state.is_finished()}

    result = tuning.run_study(spec, data_dir=data, storage=storage)
    study = optuna.load_study(study_name="killed", storage=storage)
    assert result.finished == 3
    for number, (state, values) in before.items():  # no finished trial lost
        assert (study.trials[number].state, study.trials[number].values) == (state, values)
    stale = study.trials[victim.number]
    assert stale.state.name == "FAIL"
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state.name in ("COMPLETE", "PRUNED") and retries[0].params == victim.params
    client = MlflowClient()
    assert_tree_matches(client, storage, spec, result.experiment_id, result.parent_run_id)
    orphan = client.get_run(stale.user_attrs["mlflow_run_id"]) if "mlflow_run_id" in stale.user_attrs else None
    killed_runs = child_runs(client, result.parent_run_id, result.experiment_id)
    orphaned = [r for r in killed_runs if r.data.tags.get("orphaned") == "true"]
    assert len(orphaned) == 1 and orphaned[0].data.tags["optuna.trial_number"] == str(victim.number)
    assert orphan is None or orphan.info.status == "KILLED"
    running = client.search_runs([result.experiment_id], filter_string="attributes.status = 'RUNNING'")
    assert running == []
    assert len(parents(client, result.experiment_id)) == 1


def test_two_machines_share_a_postgresql_study(home, tmp_path: Path):
    """Two coordinators (as on two machines) on one study in PostgreSQL: one parent run, exactly N
    finished trials, each trial run once."""
    _, data = home
    path = write_spec(tmp_path, "shared", trials=4, workers=1, lrs=(3e-3, 1e-2))
    spec = tuning.load_spec(path, check_models=False)
    with postgres_or_skip() as storage:
        command = [sys.executable, "-m", "harness.tuning", "--study", str(path), "--data", str(data), "--storage", storage]
        machines = [subprocess.Popen(command, cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True) for _ in range(2)]
        outputs = [m.communicate(timeout=240)[0] for m in machines]
        assert [m.returncode for m in machines] == [0, 0], outputs
        study = optuna.load_study(study_name="shared", storage=storage)
        finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
        assert len(finished) == 4
        assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both machines ran trials
        client = MlflowClient()
        experiment_id = client.get_experiment_by_name(spec.experiment).experiment_id
        (parent,) = parents(client, experiment_id)
        assert study.user_attrs[tuning.PARENT_ATTR] == parent.info.run_id
        assert_tree_matches(client, storage, spec, experiment_id, parent.info.run_id)


def test_multi_objective_study(home, tmp_path: Path):
    _, data = home
    path = write_spec(tmp_path, "pareto", trials=2, workers=1, epochs=1, objectives='["val_auc", "val_tpr_fpr1e-3"]')
    spec = tuning.load_spec(path, check_models=False)
    result = tuning.run_study(spec, data_dir=data, storage=f"sqlite:///{tmp_path / 'pareto.db'}")
    assert result.finished == 2 and all(len(r.values) == 2 for r in result.ranked())
    parent = MlflowClient().get_run(result.parent_run_id)
    assert {"best_trial_val_auc", "best_trial_val_tpr_fpr1e-3"} <= parent.data.metrics.keys()


def test_tables_render():
    from rich.console import Console

    rows = (
        tuning.TrialRow(0, "COMPLETE", {"backbone": "test_resnet.r160_in1k", "lr": 0.00312}, (0.75,), 0.75, 12, "run0", None, None, 30.0, "h:1"),
        tuning.TrialRow(1, "PRUNED", {"backbone": "test_vit.r160_in1k", "lr": 0.02}, None, 0.52, 3, "run1", None, None, 8.0, "h:2"),
        tuning.TrialRow(2, "FAIL", {"backbone": "test_vit.r160_in1k", "lr": 1e30}, None, None, 1, "run2", None, "TrainingDiverged: nan", 2.0, "h:1"),
        tuning.TrialRow(3, "RUNNING", {"backbone": "test_byobnet.r160_in1k"}, None, 0.61, 2, None, 1, None, 5.0, "h:2"),
    )
    progress = tuning.Progress("demo", ("val_auc",), ("backbone", "lr"), 50, rows, 65.0)
    assert progress.finished == 2 and progress.best.number == 0
    console = Console(width=150, record=True)
    console.print(tuning.trials_table(progress))
    text = console.export_text()
    assert "2/50 finished (1 pruned), 1 failed, 1 running" in text and "test_resnet" in text and "0.7500" in text
    result = tuning.StudyResult("demo", "sqlite:///x.db", "1", "parent", ("val_auc",), ("backbone", "lr"), 50, rows, 65.0,
                                18, "target reached", (0, 0))
    console.print(tuning.leaderboard_table(result))
    assert "run0" in console.export_text() and [r.number for r in result.ranked()] == [0]
