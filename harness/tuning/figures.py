"""A study's figures: optimisation history, parameter importances, parallel coordinates and
intermediate values (optuna.visualization.matplotlib) as PNG bytes, and its trials as CSV text.

A figure that cannot be drawn yet (too few trials, one value per parameter) is not an error of the
study: it is left out and its reason returned, so the parent run says why it is missing.
"""
from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from harness.tuning.spec import StudySpec
from harness.tuning.strategies import NoPruning

_FIGURE_INCHES = {"parallel_coordinate": (14, 7), "intermediate_values": (10, 6)}
_DPI = 110


def study_pngs(study: optuna.Study, spec: StudySpec) -> tuple[dict[str, bytes], dict[str, str]]:
    """({figure name: PNG bytes}, {figure name: why it was skipped})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    first = spec.objectives[0]
    target = (lambda t: t.values[0]) if len(spec.objectives) > 1 else None
    plots: dict[str, Callable[[], Any]] = {
        "optimization_history": lambda: vis.plot_optimization_history(study, target=target, target_name=first),
        "param_importances": lambda: vis.plot_param_importances(study, target=target, target_name=first),
        "parallel_coordinate": lambda: vis.plot_parallel_coordinate(study, target=target, target_name=first),
        "intermediate_values": lambda: vis.plot_intermediate_values(study),
    }
    if isinstance(spec.pruner, NoPruning):
        del plots["intermediate_values"]  # nothing is reported without a pruner
    pngs, skipped = {}, {}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "too few trials" goes to `skipped`
    try:
        for name, plot in plots.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    axes = plot()
                    figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
                    figure.set_size_inches(*_FIGURE_INCHES.get(name, (8, 5)))
                    buffer = io.BytesIO()
                    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
                pngs[name] = buffer.getvalue()
            except Exception as e:  # noqa: BLE001 - too few trials for a plot is not an error of the study
                skipped[name] = f"{type(e).__name__}: {e}"[:300]
            plt.close("all")
    finally:
        optuna.logging.set_verbosity(verbosity)
    return pngs, skipped


def trials_csv(study: optuna.Study) -> str:
    """Every trial of the study, one row each (Optuna's trials dataframe)."""
    return study.trials_dataframe().to_csv(index=False)
