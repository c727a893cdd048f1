"""A study's figures as PNG bytes and its trials as CSV text.

Optimisation history, parameter importances and parallel coordinates (the searched parameters, short labels)
are optuna.visualization.matplotlib's. The intermediate values are drawn here, coloured by state with the best
few named, where Optuna's gives every trial its own colour and legend entry. A figure that cannot be drawn yet
(too few trials) is left out with its reason.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from harness.tuning.objectives import sign
from harness.tuning.spec import StudySpec
from harness.tuning.strategies import NoPruning

_FIGURE_INCHES = {"parallel_coordinate": (12, 6), "intermediate_values": (10, 6)}
_DPI = 110
_LABEL_CHARS = 18  # an axis label longer than this is shortened with an ellipsis
_HIGHLIGHT = 3  # complete trials drawn bold and named on the intermediate-values plot
# State -> (colour, line width, alpha, z-order): pruned trials recede, failures stand out.
_STATE_STYLE = {"COMPLETE": ("#4C72B0", 1.0, 0.55, 2), "PRUNED": ("#BBBBBB", 0.8, 0.7, 1),
                "FAIL": ("#C44E52", 1.0, 0.8, 2), "RUNNING": ("#55A868", 1.0, 0.8, 2)}
_BEST_COLOURS = ("#DD8452", "#8172B3", "#937860")


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
        "parallel_coordinate": lambda: _readable_axes(vis.plot_parallel_coordinate(
            study, params=list(spec.searched) or None, target=target, target_name=first)),
        "intermediate_values": lambda: intermediate_values(study, first, sign(first)),
    }
    if isinstance(spec.pruner, NoPruning):
        del plots["intermediate_values"]  # nothing is reported without a pruner
    pngs, skipped = {}, {}
    with warnings.catch_warnings(), contextlib.ExitStack() as restore:
        warnings.simplefilter("ignore")
        restore.callback(optuna.logging.set_verbosity, optuna.logging.get_verbosity())
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # "too few trials" goes to `skipped`
        for name, plot in plots.items():
            try:
                axes = plot()
                figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
                figure.set_size_inches(*_FIGURE_INCHES.get(name, (8, 5)))
                buffer = io.BytesIO()
                figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
                pngs[name] = buffer.getvalue()
            except Exception as e:  # noqa: BLE001 - too few trials for a plot is not an error of the study
                skipped[name] = f"{type(e).__name__}: {e}"[:300]
            plt.close("all")
    return pngs, skipped


def intermediate_values(study: optuna.Study, objective: str, direction: int) -> Any:
    """The per-epoch values the trials reported, a line a trial coloured by its state, the best `_HIGHLIGHT`
    complete ones (by `direction`, 1 or -1) bold and named; the axes. ValueError: nothing reported yet."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        raise ValueError("no trial has reported an intermediate value yet")
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    best = sorted(complete, key=lambda t: (-direction * t.value, t.number))[:_HIGHLIGHT]
    figure, ax = plt.subplots()

    def draw(trial: optuna.trial.FrozenTrial, **style: Any) -> Any:
        steps = sorted(trial.intermediate_values)
        return ax.plot(steps, [trial.intermediate_values[s] for s in steps], marker="o", **style)[0]

    for trial in (t for t in trials if t not in best):
        colour, width, alpha, order = _STATE_STYLE.get(trial.state.name, ("#999999", 0.8, 0.6, 1))
        draw(trial, color=colour, lw=width, alpha=alpha, zorder=order, ms=2)
    handles = [Line2D([], [], color=_STATE_STYLE[state][0], lw=1.5, label=f"{state.lower()} ({n})")
               for state in _STATE_STYLE if (n := sum(t.state.name == state for t in trials))]
    handles += [draw(t, color=_BEST_COLOURS[rank], lw=2.6, zorder=5, ms=4,
                     label=f"#{rank + 1}: trial {t.number} ({t.value:.4f})") for rank, t in enumerate(best)]
    ax.set(xlabel="epoch", ylabel=f"best {objective} so far (reported to the pruner)",
           title=f"Intermediate values of {len(trials)} trials, by state; the best {len(best)} in colour")
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.85)
    return ax


def _readable_axes(axes: Any) -> Any:
    """Optuna's parallel-coordinate plot with its names and category labels shortened, on a light box."""
    ax = axes.flat[0] if hasattr(axes, "flat") else axes
    labels = [_shorten(label.get_text()) for label in ax.get_xticklabels()]
    ax.set_xticks(ax.get_xticks(), labels, rotation=25, ha="right", fontsize=9)
    for other in (a for a in ax.figure.axes if a is not ax and a.get_label() != "<colorbar>"):
        texts = [t.get_text() for t in other.get_yticklabels()]
        # Category names only: numeric axes carry mathtext ("$10^{-3}$") that must stay whole.
        if any(len(t) > _LABEL_CHARS for t in texts) and not any(t.startswith("$") for t in texts):
            other.set_yticks(other.get_yticks(), [_shorten(t.split(".")[0]) for t in texts])
        for tick in other.get_yticklabels():
            tick.set_bbox({"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})
    return axes


def _shorten(text: str) -> str:
    """`train.augment.strength` -> `augment.strength`; then at most `_LABEL_CHARS` characters."""
    text = text.removeprefix("train.").removeprefix("params_")
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "…"


def trials_csv(study: optuna.Study) -> str:
    """Every trial of the study, one row each (Optuna's trials dataframe)."""
    return study.trials_dataframe().to_csv(index=False)
