"""How a study searches and stops: samplers (TPE, random), pruners (median, successive halving,
Hyperband, none), heartbeats, the callbacks that report epochs to a trial (`trial_callbacks`), and a
replay of pruning decisions over recorded learning curves.

Each strategy is a frozen dataclass of the spec's values with a `build` that makes the Optuna
object, so a spec can be checked, hashed and sent to worker processes without Optuna state.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from harness.callbacks import EpochReport, FitResult, StopTraining
from harness.tuning.objectives import sign

if TYPE_CHECKING:
    from harness.tuning.spec import StudySpec


@dataclass(frozen=True)
class TPE:
    """Optuna's TPE, seeded. Each worker adds its index and the study's trial count to the seed, so
    parallel workers and resumed sessions do not draw the same random start-up points again."""

    seed: int = 0
    n_startup_trials: int = 10
    multivariate: bool = True
    constant_liar: bool = True  # running trials count as bad guesses, so parallel workers spread out

    def build(self, *, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=self.seed + seed_offset, n_startup_trials=self.n_startup_trials,
                multivariate=self.multivariate, constant_liar=self.constant_liar,
            )


@dataclass(frozen=True)
class RandomSearch:
    seed: int = 0

    def build(self, *, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=self.seed + seed_offset)


@dataclass(frozen=True)
class NoPruning:
    def build(self, *, max_epochs: int) -> optuna.pruners.BasePruner:
        return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class MedianPruning:
    """Stop a trial whose best val AUC so far is below the median of earlier trials at that epoch."""

    n_startup_trials: int = 5
    n_warmup_steps: int = 1

    def build(self, *, max_epochs: int) -> optuna.pruners.BasePruner:
        return optuna.pruners.MedianPruner(n_startup_trials=self.n_startup_trials, n_warmup_steps=self.n_warmup_steps)


@dataclass(frozen=True)
class SuccessiveHalving:
    """Rungs at min_resource * reduction_factor**k epochs; only the top 1/reduction_factor go on."""

    min_resource: int = 1
    reduction_factor: int = 3
    min_early_stopping_rate: int = 0

    def build(self, *, max_epochs: int) -> optuna.pruners.BasePruner:
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=self.min_resource, reduction_factor=self.reduction_factor,
            min_early_stopping_rate=self.min_early_stopping_rate,
        )


@dataclass(frozen=True)
class Hyperband:
    """Several successive-halving brackets with different first rungs; max_resource defaults to
    the study's largest epoch budget."""

    min_resource: int = 1
    reduction_factor: int = 3
    max_resource: int | None = None

    def build(self, *, max_epochs: int) -> optuna.pruners.BasePruner:
        return optuna.pruners.HyperbandPruner(
            min_resource=self.min_resource, max_resource=self.max_resource or max_epochs,
            reduction_factor=self.reduction_factor,
        )


Sampler = TPE | RandomSearch
Pruner = NoPruning | MedianPruning | SuccessiveHalving | Hyperband
SAMPLERS: dict[str, type] = {"tpe": TPE, "random": RandomSearch}
PRUNERS: dict[str, type] = {
    "none": NoPruning, "median": MedianPruning, "successive_halving": SuccessiveHalving, "hyperband": Hyperband,
}


@dataclass(frozen=True)
class Heartbeat:
    """A running trial writes a heartbeat every `interval` s; one silent for `grace_period` s is
    failed by the next worker that looks and re-queued (same parameters) up to `max_retry` times."""

    interval: int = 10
    grace_period: int = 30
    max_retry: int = 2


class PruningCallback:
    """A `harness.callbacks.Callback` that reports each epoch's best val metric so far to the trial
    (step = epoch) and ends training with StopTraining("pruned at epoch N") when the pruner says so.

    The best-so-far value is reported (not the epoch's own) because the objective is the best epoch's
    value: a trial is judged on what it would return if it stopped now.
    """

    def __init__(self, trial: optuna.Trial, *, metric: str = "val_auc") -> None:
        self.trial = trial
        self.metric = metric
        self.sign = sign(metric)
        self.best: float | None = None

    def on_start(self, info: dict[str, Any]) -> None:
        pass

    def on_epoch(self, report: EpochReport) -> None:
        value = report.metrics.get(self.metric)
        if value is not None and math.isfinite(value):
            if self.best is None or self.sign * value > self.sign * self.best:
                self.best = float(value)
            self.trial.report(self.best, report.epoch)
        if self.trial.should_prune():
            raise StopTraining(f"pruned at epoch {report.epoch}")

    def on_end(self, result: FitResult) -> None:
        pass


class EpochProgress:
    """Records the epoch reached on the trial (user attribute `epoch`) for the live table."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_start(self, info: dict[str, Any]) -> None:
        pass

    def on_epoch(self, report: EpochReport) -> None:
        self.trial.set_user_attr("epoch", report.epoch)

    def on_end(self, result: FitResult) -> None:
        pass


def trial_callbacks(trial: optuna.Trial, objectives: Sequence[str], pruner: Pruner) -> list[Any]:
    """What a trial's training reports to the trial: the epoch reached, and with one objective and a
    pruner, the pruning callback. The same in a one-process trial and on rank 0 of a DDP trial."""
    callbacks: list[Any] = [EpochProgress(trial)]
    if len(objectives) == 1 and not isinstance(pruner, NoPruning):
        callbacks.append(PruningCallback(trial, metric=objectives[0]))
    return callbacks


def replay_pruning(spec: StudySpec, curves: Sequence[Sequence[float]]) -> tuple[int, float | None]:
    """Feed recorded per-epoch curves of the first objective (one per trial, in trial order)
    through `spec.pruner` as if the trials ran again: (epochs it would train, best value it keeps).

    Separates the pruner's decisions from the sampler's path: in a live study, pruning also changes
    which trials the sampler proposes next."""
    direction = sign(spec.objectives[0])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=spec.directions[0], pruner=spec.pruner.build(max_epochs=spec.max_epochs()))
    epochs, kept = 0, []
    for curve in curves:
        trial, best, stop = study.ask(), None, len(curve)
        for step, value in enumerate(curve, 1):
            if math.isfinite(value):
                best = value if best is None or direction * value > direction * best else best
                trial.report(best, step)
            if trial.should_prune():
                stop = step
                break
        epochs += stop
        if best is not None:
            kept.append(best)
        if stop < len(curve) or best is None:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, best)
    return epochs, (max(kept, key=lambda v: direction * v) if kept else None)
