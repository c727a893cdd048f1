"""Cross-validated studies (`folds = K` in a study spec): the keys, their refusals and the windowed
settings they accept, and (slow) a study whose trials are grouped K-fold cross-validations: the run
tree study -> trial -> fold, the trial's value read from its folds, pruning between folds, and
`harness train --like` training the best trial's settings on the official split."""
from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest

from harness import tuning
from harness.tuning.cv_trial import cv_objective_values
from harness.tuning.spec import SpecError
from tests.conftest import ROOT, isolated_home

from .run_main import run_main
from .tuning_helpers import tiny_dataset, write_spec

CV = 'folds = 2\ngroup_by = "none"'


def test_a_cross_validated_spec_is_read_and_is_its_own_study(tmp_path: Path) -> None:
    spec = tuning.load_spec(write_spec(tmp_path, "cv", objectives='["cv_val_auc_low"]', study_extra=CV), check_models=False)
    assert (spec.folds, spec.group_by, spec.directions) == (2, "none", ["maximize"])
    three = tuning.load_spec(write_spec(tmp_path, "cv3", objectives='["cv_val_auc_low"]', study_extra='folds = 3'),
                             check_models=False)
    assert three.group_by == "auto" and three.space_hash() != spec.space_hash()  # K folds' values are not K+1's
    plain = tuning.load_spec(write_spec(tmp_path, "plain"), check_models=False)
    assert plain.folds == 0


@pytest.mark.parametrize(("objectives", "extra", "message"), [
    ('["cv_val_auc_mean"]', "", "objective 'cv_val_auc_mean' needs a cross-validated study: set [study] folds = K"),
    ('["val_auc"]', CV, "objective 'val_auc' is measured on the official split; choose from cv_val_auc_mean"),
    ('["oof_auc"]', "folds = 1", "[study] folds = 1: give at least 2"),
    ('["oof_auc"]', 'folds = 2\ngroup_by = "nofile.csv"', "group_by = 'nofile.csv': not auto, none, method or an existing"),
    ('["oof_auc"]', CV + "\ngpus_per_trial = 2", "folds with gpus_per_trial > 1 is not supported yet"),
])
def test_bad_cross_validated_specs_are_one_line_naming_the_file(tmp_path: Path, objectives: str, extra: str,
                                                                 message: str) -> None:
    path = write_spec(tmp_path, "bad", objectives=objectives, study_extra=extra)
    with pytest.raises(SpecError, match=f"^{path}: .*" + message.replace("[", r"\[").replace("]", r"\]")) as caught:
        tuning.load_spec(path, check_models=False)
    assert "\n" not in str(caught.value)


def test_a_cross_validated_study_can_search_windows_over_codec_variants(tmp_path: Path) -> None:
    """Windows and codec variants pool into folds (`harness.data.folds.pool`): such a spec loads."""
    path = write_spec(tmp_path, "win", objectives='["oof_auc"]', study_extra=CV)
    text = path.read_text().replace("epochs = 2\n", "epochs = 2\nwindow_seconds = [1.0, 1.5]\n", 1)
    path.write_text(text + "\n[base.audio]\nwindow_seconds = 1.0\ncodec_variants = 1\n")
    spec = tuning.load_spec(path, check_models=False)
    assert spec.folds == 2 and "window_seconds" in spec.searched
    assert spec.base.audio.windowed and spec.base.audio.codec_variants == 1
    # every window length reads one cache entry: whole log-mels with one copy of each training clip
    assert {(f.codec_variants, f.windowed) for f in spec.feature_configs()} == {(1, True)}


def test_the_pessimistic_objective_is_the_mean_less_the_spread() -> None:
    metrics = {"cv_val_auc_mean": 0.8, "cv_val_auc_std": 0.1, "oof_auc": 0.77}
    assert cv_objective_values(metrics, ("cv_val_auc_low", "oof_auc")) == pytest.approx([0.7, 0.77])


# ---------------------------------------------------------------------------------- whole studies (slow)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    """A 24-clip data set and an MLflow store."""
    root = tmp_path_factory.mktemp("tune-cv")
    data = tiny_dataset(root / "ds")
    with isolated_home(root) as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("PYTHONPATH", str(ROOT))
        from harness import tracking

        tracking.setup()
        yield root, data


def _children(client, experiment_id: str, parent: str) -> list:  # noqa: ANN001
    return client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")


@pytest.mark.slow
def test_each_trial_is_a_cross_validation_and_its_value_comes_from_the_folds(home, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    _, data = home
    path = write_spec(tmp_path, "cv-study", trials=2, epochs=1, lrs=(3e-3, 6e-3), objectives='["cv_val_auc_low"]',
                      study_extra=CV)
    spec = tuning.load_spec(path, check_models=False)
    storage = f"sqlite:///{tmp_path / 'cv.db'}"
    result = tuning.run_study(spec, data_dir=data, storage=storage)
    assert result.finished == 2 and result.worker_exitcodes == (0,)
    client = MlflowClient()
    trials = optuna.load_study(study_name=spec.name, storage=storage).trials
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in _children(client, result.experiment_id, result.parent_run_id)}
    assert sorted(runs) == [0, 1]
    for t in trials:  # study -> trial (a cross-validation) -> fold
        run = runs[t.number]
        assert t.state.name == "COMPLETE" and run.info.status == "FINISHED" and run.data.tags["harness.kind"] == "cv"
        assert run.info.run_name == f"trial-{t.number:03d}" and run.data.tags["optuna.state"] == "COMPLETE"
        folds = _children(client, result.experiment_id, run.info.run_id)
        assert sorted(f.data.tags["cv.fold"] for f in folds) == ["1", "2"] and {f.info.status for f in folds} == {"FINISHED"}
        assert {f.data.tags["harness.kind"] for f in folds} == {"fold"}
        assert sorted(f.info.run_name for f in folds) == [f"trial-{t.number:03d}-fold1", f"trial-{t.number:03d}-fold2"]
        m = run.data.metrics
        assert t.value == pytest.approx(m["cv/val_auc_mean"] - m["cv/val_auc_std"])  # the folds' mean less their spread
        assert run.data.tags["mlflow.note.content"].startswith("out-of-fold AUC ")
        assert float(run.data.params["train.lr"]) == t.params["lr"]
    best = result.best
    # The best trial's settings, trained once more on the official split: a model to submit.
    code, out, err = run_main("train", "--like", best.run_id, "--data", str(data), "--experiment", "retrain")
    assert code == 0, err
    retrained = client.search_runs([client.get_experiment_by_name("retrain").experiment_id])[0]
    assert retrained.info.status == "FINISHED" and float(retrained.data.params["train.lr"]) == best.params["lr"]
    assert retrained.data.params["train.loss"] == trials[best.number].params["loss"]
    # A cross-validation is no model: submitting it says what to do instead.
    code, _, err = run_main("submit", "--run-id", best.run_id, "--data", str(data))
    assert code == 2 and "is a cross-validation (harness.kind=cv) with no model of its own" in err


@pytest.mark.slow
def test_a_cross_validated_trial_is_pruned_between_folds(home, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    _, data = home
    path = write_spec(tmp_path, "cv-pruned", trials=2, epochs=1, lrs=(3e-3, 6e-3), objectives='["cv_val_auc_mean"]',
                      study_extra=CV, pruner='kind = "median"\nn_startup_trials = 1\nn_warmup_steps = 0')
    spec = tuning.load_spec(path, check_models=False)
    storage = f"sqlite:///{tmp_path / 'pruned.db'}"
    # A finished trial no model can match (AUC 2.0 after each fold): the real one stops after fold 1.
    study = tuning.storage.load_or_create_study(spec, tuning.open_storage(storage, spec.heartbeat))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=2.0,
                                              intermediate_values={1: 2.0, 2: 2.0}, params={}, distributions={}))
    started = time.monotonic()
    result = tuning.run_study(spec, data_dir=data, storage=storage)
    assert result.worker_exitcodes == (0,) and result.finished == 2 and time.monotonic() - started < 600
    trial = optuna.load_study(study_name=spec.name, storage=storage).trials[1]
    assert trial.state.name == "PRUNED" and trial.user_attrs["epoch"] == 1  # one fold trained
    client = MlflowClient()
    run, = _children(client, result.experiment_id, result.parent_run_id)
    assert run.info.status == "KILLED" and run.data.tags["pruned_at_fold"] == "1"
    assert run.info.run_name == "trial-001 (pruned after fold 1)" and run.data.tags["optuna.state"] == "PRUNED"
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("Pruned after fold 1 by the median pruner") and "\nfolds 0." in note, note
    assert len(_children(client, result.experiment_id, run.info.run_id)) == 1
