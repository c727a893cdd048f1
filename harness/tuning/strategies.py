"""How a study searches and stops: samplers (TPE, random), pruners (median, successive halving, Hyperband,
none), heartbeats, and the pruning callback. Each is a frozen dataclass of the spec's values with a `build`
making the Optuna object, so a spec is checked, hashed and sent to workers without Optuna state.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from harness.callbacks import EpochReport, FitResult, StopTraining
from harness.tuning.objectives import sign


@dataclass(frozen=True)
class TPE:
    """Optuna's TPE, seeded; workers offset the seed (index, trial count) so none redraws the same start-up points."""

    seed: int = 0
    n_startup_trials: int = 10
    multivariate: bool = True
    constant_liar: bool = True  # running trials count as bad guesses, so parallel workers spread out

    def build(self, *, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(**{**dataclasses.asdict(self), "seed": self.seed + seed_offset})


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
        return optuna.pruners.MedianPruner(**dataclasses.asdict(self))


@dataclass(frozen=True)
class SuccessiveHalving:
    """Rungs at min_resource * reduction_factor**k epochs; only the top 1/reduction_factor go on."""

    min_resource: int = 1
    reduction_factor: int = 3
    min_early_stopping_rate: int = 0

    def build(self, *, max_epochs: int) -> optuna.pruners.BasePruner:
        return optuna.pruners.SuccessiveHalvingPruner(**dataclasses.asdict(self))


@dataclass(frozen=True)
class Hyperband:
    """Successive-halving brackets with different first rungs; max_resource defaults to the largest epochs."""

    min_resource: int = 1
    reduction_factor: int = 3
    max_resource: int | None = None

    def build(self, *, max_epochs: int) -> optuna.pruners.BasePruner:
        return optuna.pruners.HyperbandPruner(**{**dataclasses.asdict(self), "max_resource": self.max_resource or max_epochs})


Sampler = TPE | RandomSearch
Pruner = NoPruning | MedianPruning | SuccessiveHalving | Hyperband
SAMPLERS: dict[str, type] = {"tpe": TPE, "random": RandomSearch}
PRUNERS: dict[str, type] = {"none": NoPruning, "median": MedianPruning, "successive_halving": SuccessiveHalving,
                             "hyperband": Hyperband}


@dataclass(frozen=True)
class Heartbeat:
    """A running trial writes a heartbeat every `interval` s; one silent for `grace_period` s is
    failed by the next worker that looks and re-queued (same parameters) up to `max_retry` times."""

    interval: int = 10
    grace_period: int = 30
    max_retry: int = 2


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


class PruningCallback(EpochProgress):
    """Reports each epoch's best val metric so far to the trial (step = epoch: the objective is the best
    epoch's value) and raises StopTraining("pruned at epoch N") when the pruner says so."""

    def __init__(self, trial: optuna.Trial, *, metric: str = "val_auc") -> None:
        super().__init__(trial)
        self.metric, self.sign = metric, sign(metric)
        self.best: float | None = None

    def on_epoch(self, report: EpochReport) -> None:
        value = report.metrics.get(self.metric)
        if value is not None and math.isfinite(value):
            if self.best is None or self.sign * value > self.sign * self.best:
                self.best = float(value)
            self.trial.report(self.best, report.epoch)
        if self.trial.should_prune():
            raise StopTraining(f"pruned at epoch {report.epoch}")


def trial_callbacks(trial: optuna.Trial, objectives: Sequence[str], pruner: Pruner) -> list[Any]:
    """What a trial's training reports to the trial: the epoch reached, and with one objective and a pruner,
    the pruning callback."""
    callbacks: list[Any] = [EpochProgress(trial)]
    if len(objectives) == 1 and not isinstance(pruner, NoPruning):
        callbacks.append(PruningCallback(trial, metric=objectives[0]))
    return callbacks
