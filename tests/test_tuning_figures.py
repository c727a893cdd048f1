"""A study's figures read at a glance: intermediate values coloured by state with the best few named
and a short legend; parallel coordinates over the searched parameters only, with short rotated labels.
Drawn from a 50-trial in-memory study shaped like a real one (complete, pruned and failed trials)."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from harness.tuning.figures import intermediate_values, study_pngs
from harness.tuning.spec import load_spec
from tests.tuning_helpers import write_spec

BACKBONES = ("test_byobnet.r160_in1k", "test_convnext.r160_in1k", "test_efficientnet.r160_in1k")


def fifty_trials() -> optuna.Study:
    """Trials whose AUC curves rise with a per-trial ceiling; a third pruned early, two failed."""
    rng = np.random.default_rng(0)
    study = optuna.create_study(direction="maximize")
    for number in range(50):
        trial = study.ask()
        trial.suggest_categorical("backbone", list(BACKBONES))
        trial.suggest_float("lr", 1e-3, 1e-2, log=True)
        trial.suggest_categorical("loss", ["bce", "ce", "focal"])
        ceiling = 0.6 + 0.35 * rng.random()
        epochs = 2 if number % 3 == 1 else 6
        for epoch in range(1, epochs + 1):
            trial.report(ceiling * (1 - 0.5 ** epoch), epoch)
        if number in (10, 20):
            study.tell(trial, state=TrialState.FAIL)
        elif epochs == 2:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, ceiling * (1 - 0.5 ** epochs))
    return study


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("spec")
    return load_spec(write_spec(folder, "figs", backbones=BACKBONES, pruner='kind = "median"'), check_models=False)


def test_intermediate_values_colour_by_state_and_name_the_best_three():
    import matplotlib

    matplotlib.use("Agg")
    study = fifty_trials()
    ax = intermediate_values(study, "val_auc", 1)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    complete = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    counts = {s: sum(t.state == s for t in study.trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    assert list(counts.values()) == [32, 16, 2]  # the shape fifty_trials promises
    assert legend[:3] == ["complete (32)", "pruned (16)", "fail (2)"]
    assert legend[3:] == [f"#{i + 1}: trial {t.number} ({t.value:.4f})" for i, t in enumerate(complete[:3])]
    colours = {tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color() for line in ax.get_lines()}
    assert len(ax.get_lines()) == 50 and len(colours) == 3 + 3  # one colour per state, one per highlighted trial
    assert ax.get_xlabel() == "epoch"
    with pytest.raises(ValueError, match="no trial has reported"):
        intermediate_values(optuna.create_study(), "val_auc", 1)


def test_study_pngs_limit_parallel_coordinates_to_searched_params(spec, tmp_path: Path):
    import matplotlib.image

    study = fifty_trials()
    pngs, skipped = study_pngs(study, spec)
    assert skipped == {} and set(pngs) == {"optimization_history", "param_importances", "parallel_coordinate",
                                           "intermediate_values"}
    for name, png in pngs.items():
        image = matplotlib.image.imread(io.BytesIO(png))
        assert image.shape[0] > 300 and image.shape[1] > 500, name
        if os.environ.get("HARNESS_KEEP_FIGURES"):  # to look at them: HARNESS_KEEP_FIGURES=1 pytest ...
            (Path(os.environ["HARNESS_KEEP_FIGURES"]) / f"{name}.png").write_bytes(png)
    assert spec.searched == ("backbone", "lr", "loss")
