"""What a study holds, as plain frozen values: one `TrialRow` per trial (`trial_rows`), the `Progress` a
live view shows, and the `StudyResult` of a session."""
from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from harness.tuning.objectives import sign

FINISHED_STATES = ("COMPLETE", "PRUNED")  # what counts towards a study's target


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    params: dict[str, Any]
    values: tuple[float, ...] | None  # the objectives, for COMPLETE trials
    reported: float | None  # best value reported so far (pruned and running trials too)
    epoch: int  # epochs trained
    run_id: str | None  # the MLflow child run
    retry_of: int | None  # the stale trial this one re-runs
    error: str | None
    seconds: float | None
    worker: str | None  # host:pid
    worst_slice: str | None = None  # `harness.slices`' worst slice of the trial's run, when methods are known

    @property
    def value(self) -> float | None:
        """The first objective when complete, else the best value reported so far."""
        return self.values[0] if self.values else self.reported


def best_row(rows: Iterable[TrialRow], objectives: Sequence[str]) -> TrialRow | None:
    """The COMPLETE trial best by the first objective (ties: the earliest), or None."""
    finite = [r for r in rows if r.values and math.isfinite(r.values[0])]
    return next(iter(ranked_rows(finite, objectives)), None)


def ranked_rows(rows: Iterable[TrialRow], objectives: Sequence[str]) -> list[TrialRow]:
    """COMPLETE trials, best first by the first objective (ties: the earliest)."""
    direction = sign(objectives[0])
    done = (r for r in rows if r.state == "COMPLETE" and r.values)
    return sorted(done, key=lambda r: (-direction * r.values[0], r.number))


class _Rows:
    """What a live view and a session's result both read from their `rows`."""

    rows: tuple[TrialRow, ...]
    objectives: tuple[str, ...]

    def count(self, *states: str) -> int:
        return sum(r.state in states for r in self.rows)

    @property
    def finished(self) -> int:
        return self.count(*FINISHED_STATES)

    @property
    def best(self) -> TrialRow | None:
        return best_row(self.rows, self.objectives)


@dataclass(frozen=True)
class Progress(_Rows):
    study: str
    objectives: tuple[str, ...]
    dimensions: tuple[str, ...]  # searched dimensions, in spec order
    target: int
    rows: tuple[TrialRow, ...]
    elapsed_s: float


@dataclass(frozen=True)
class StudyResult(_Rows):
    study: str
    storage: str  # the URL, password hidden
    experiment_id: str
    parent_run_id: str
    objectives: tuple[str, ...]
    dimensions: tuple[str, ...]
    target: int
    rows: tuple[TrialRow, ...]
    seconds: float  # this session's wall time
    epochs_trained: int  # over all trials of the study, failed and pruned ones included
    stopped: str  # why the session ended: "target reached", "timeout", "too many failures", ...
    worker_exitcodes: tuple[int, ...]

    def ranked(self) -> list[TrialRow]:
        return ranked_rows(self.rows, self.objectives)


def trial_rows(study: optuna.Study, objectives: Sequence[str]) -> tuple[TrialRow, ...]:
    """Every trial of `study` as a row, in trial order."""
    direction = sign(objectives[0])
    return tuple(_row(t, direction) for t in study.get_trials(deepcopy=False))


def _row(t: optuna.trial.FrozenTrial, direction: float) -> TrialRow:
    reported = [v for v in t.intermediate_values.values() if v is not None and math.isfinite(v)]
    end = t.datetime_complete or datetime.datetime.now()  # naive local time, as optuna stores trial times
    seconds = (end - t.datetime_start).total_seconds() if t.datetime_start else None
    epoch = int(t.user_attrs.get("epoch", max(t.intermediate_values, default=0)))
    return TrialRow(number=t.number, state=t.state.name, params=dict(t.params), epoch=epoch, seconds=seconds,
                    values=tuple(t.values) if t.state == TrialState.COMPLETE and t.values else None,
                    reported=(max(reported, key=lambda v: direction * v) if reported else None),
                    run_id=t.user_attrs.get("mlflow_run_id"), retry_of=t.system_attrs.get("failed_trial"),
                    error=t.user_attrs.get("error"), worker=t.user_attrs.get("worker"),
                    worst_slice=t.user_attrs.get("worst_slice"))
