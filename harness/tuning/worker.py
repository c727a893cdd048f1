"""A worker process of a study: take a trial slot, train the trial, record it, repeat.

Count semantics: `target` means finished (COMPLETE or PRUNED) trials in the study in total; failed
ones do not count, and a study stops after `max_failures` of them. `TrialGate` starts a trial only
while finished + running < target, under the study lock (see `harness.tuning.storage`), so the
study never overshoots its target whatever the number of workers or machines; a worker waits
rather than stops while trials of other workers are running, since a failed or stale one needs a
replacement.

Each trial is one `harness.run.train_run` under the study's parent run (`trial-007`); its run's
`optuna.state` is kept in step with the trial by `harness.tracking.study_runs`. With
`gpus_per_trial` G > 1 the trial trains as G DDP ranks on the worker's device group
(`harness.tuning.rank`): rank 0 reports and prunes for the trial, the objective reads its outcome.
"""
from __future__ import annotations

import dataclasses
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from harness.config import RunConfig, to_dict
from harness.tuning.objectives import sign
from harness.tuning.rank import RankJob, RanksFailed, TrialOutcome, pruner_table, train_over_ranks
from harness.tuning.results import TrialRow, best_row, trial_rows
from harness.tuning.space import suggest
from harness.tuning.spec import StudySpec
from harness.tuning.storage import Lock, fail_stale, locked, open_storage, study_lock
from harness.tuning.strategies import PRUNERS, trial_callbacks

if TYPE_CHECKING:
    from harness.tracking.study_runs import StudyRuns


@dataclass(frozen=True)
class Job:
    """What one worker process is asked to do (plain values: it crosses a process boundary)."""

    spec: StudySpec
    storage_url: str
    data_dir: str
    cache_root: str
    experiment_id: str
    parent_run_id: str
    target: int
    deadline: float | None  # time.time() after which no trial starts
    index: int
    seed_offset: int
    cuda_device: str | None  # CUDA_VISIBLE_DEVICES of the worker: one GPU, or a trial's group of G
    threads: int | None  # torch threads of the worker (of each rank when a trial has several)


class TrialGate:
    """Hands out trial slots under the study lock so the study ends at exactly `target` finished
    trials. `acquire` returns True *holding the lock*; the objective releases it once `ask()` has
    created its trial (RUNNING), so the next worker's count includes it."""

    def __init__(self, study: optuna.Study, lock: Lock, *, target: int, max_failures: int,
                 deadline: float | None = None, poll_s: float = 1.0,
                 on_trial_end: Callable[[], None] = lambda: None) -> None:
        self.study = study
        self.lock = lock
        self.target = target
        self.max_failures = max_failures
        self.deadline = deadline
        self.poll_s = poll_s
        self.on_trial_end = on_trial_end
        self.held = False

    def acquire(self) -> bool:
        """True (holding the lock) when a trial may start now; False when the study is done, failing
        or past its deadline. Waits while the slots left are taken by running trials."""
        while True:
            if self.deadline is not None and time.time() >= self.deadline:
                return False
            self.lock.acquire()
            try:
                fail_stale(self.study)
                states = [t.state for t in self.study.get_trials(deepcopy=False)]
            except BaseException:
                self.lock.release()
                raise
            finished = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
            if finished >= self.target or states.count(TrialState.FAIL) >= self.max_failures:
                self.lock.release()  # the study is done (or failing): stop
                return False
            if finished + states.count(TrialState.RUNNING) < self.target:
                self.held = True  # ask() runs next: a WAITING (re-queued) trial first, else a new one
                return True
            self.lock.release()
            time.sleep(self.poll_s)  # others' running trials may fail and need a replacement

    def release(self) -> None:
        if self.held:
            self.held = False
            self.lock.release()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback after each trial: update the parent run, then take the next slot."""
        self.on_trial_end()
        if not self.acquire():
            study.stop()


def record_progress(runs: StudyRuns, parent_run_id: str, spec: StudySpec, rows: Sequence[TrialRow], target: int) -> None:
    """Counts and the best trial so far on the parent run (plain values for the run tree)."""
    from harness.tracking.study_runs import BestTrial

    best = best_row(rows, spec.objectives)

    def plain(row: TrialRow) -> BestTrial:
        return BestTrial(row.number, row.run_id, dict(zip(spec.objectives, row.values or ())), dict(row.params))

    complete = [r for r in rows if r.state == "COMPLETE" and r.values]
    leaders = sorted(complete, key=lambda r: (-sign(spec.objectives[0]) * r.values[0], r.number))[:5]
    runs.record_progress(
        parent_run_id, states={r.number: r.state for r in rows}, epochs_trained=sum(r.epoch for r in rows),
        target=target, best=None if best is None else plain(best), leaders=[plain(r) for r in leaders],
    )


def pruner_name(pruner: object) -> str:
    """The pruner in words, as a pruned run's description names it ("median pruner")."""
    kind = next((k for k, v in PRUNERS.items() if isinstance(pruner, v)), type(pruner).__name__)
    return f"{kind.replace('_', ' ')} pruner"


class Objective:
    """Optuna's objective: one trial = one training run, its outcome recorded on trial and run."""

    def __init__(self, job: Job, gate: TrialGate, runs: StudyRuns) -> None:
        self.job = job
        self.spec = job.spec
        self.gate = gate
        self.runs = runs

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        from harness.tracking.study_runs import trial_tags

        self.gate.release()  # the trial exists now (RUNNING): the next worker counts it
        spec = self.spec
        try:
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            for inherited in ("mlflow_run_id", "error"):  # a re-queued trial copies the stale one's
                if trial.user_attrs.get(inherited) is not None:
                    trial.set_user_attr(inherited, None)
            trial.set_user_attr("epoch", 0)
            cfg = spec.config_for({name: suggest(trial, name, dim) for name, dim in spec.space})
            tags = trial_tags(spec.name, trial.number, retry_of=_retry_of(self.gate.study, trial.number))
            result = self._train(trial, cfg, tags)
        except BaseException as e:
            self._failed(trial, _describe(e))
            raise
        trial.set_user_attr("mlflow_run_id", result.run_id)
        trial.set_user_attr("epoch", result.epochs)
        if result.status == "KILLED":  # pruned: run.py ended the run KILLED with pruned_at_epoch
            self.runs.mark_trial(result.run_id, "PRUNED", pruner=pruner_name(spec.pruner))
            raise optuna.TrialPruned(result.stopped_by or "pruned")
        best = result.best_metrics
        objective = [float(best.get(o, float("nan"))) for o in spec.objectives]
        if not all(math.isfinite(v) for v in objective):
            error = f"ValueError: objective {dict(zip(spec.objectives, objective))} is not a number (one class in val?)"
            self.runs.mark_trial(result.run_id, "FAIL", error=error)
            self._failed(trial, error, run_id=result.run_id)
            raise ValueError(error)
        self.runs.mark_trial(result.run_id, "COMPLETE")
        return objective[0] if len(objective) == 1 else objective

    def _train(self, trial: optuna.Trial, cfg: RunConfig, tags: dict[str, str]) -> TrialOutcome:
        """The trial's training run: in this process, or as `gpus_per_trial` DDP ranks whose rank 0
        acts for the trial (`harness.tuning.rank`)."""
        from harness.run import train_run

        spec, job = self.spec, self.job
        run_name = f"trial-{trial.number:03d}"
        if spec.folds:
            from harness.tuning.cv_trial import run_cv_trial

            return run_cv_trial(trial, cfg, spec=spec, data_dir=Path(job.data_dir), cache_root=Path(job.cache_root),
                                parent_run_id=job.parent_run_id, tags=tags)
        if spec.gpus_per_trial == 1:
            return TrialOutcome.of(train_run(
                cfg, data_dir=Path(job.data_dir), experiment=spec.experiment, cache_root=Path(job.cache_root),
                run_name=run_name, parent_run_id=job.parent_run_id, tags=tags,
                callbacks=trial_callbacks(trial, spec.objectives, spec.pruner)))
        ranks = RankJob(
            config=to_dict(cfg), data_dir=job.data_dir, cache_root=job.cache_root, experiment=spec.experiment,
            run_name=run_name, parent_run_id=job.parent_run_id, tags=tags, study=spec.name,
            storage_url=job.storage_url, trial_number=trial.number, objectives=list(spec.objectives),
            pruner=pruner_table(spec.pruner), max_epochs=spec.max_epochs(),
            heartbeat=dataclasses.asdict(spec.heartbeat))
        return train_over_ranks(ranks, spec.gpus_per_trial, threads=job.threads)

    def _failed(self, trial: optuna.Trial, error: str, *, run_id: str | None = None) -> None:
        """Record the error on the trial and FAIL on its run (found by its tags when train_run raised)."""
        try:
            trial.set_user_attr("error", " ".join(error.split())[:500])
            if run_id is None:
                run_id = self.runs.trial_run(self.job.parent_run_id, trial.number)
            if run_id is not None:
                trial.set_user_attr("mlflow_run_id", run_id)
                self.runs.mark_trial(run_id, "FAIL")
        except Exception:  # noqa: BLE001, S110 - never hide the trial's own error behind a bookkeeping one
            pass


def _describe(error: BaseException) -> str:
    """The error as a trial records it: `Type: message` (a rank failure's line is already that)."""
    if isinstance(error, RanksFailed):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _retry_of(study: optuna.Study, number: int) -> int | None:
    """The stale trial that trial `number` re-runs (RetryHeartbeatStaleTrialCallback's mark)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number == number:
            return t.system_attrs.get("failed_trial")
    return None


def run_worker(job: Job) -> None:
    """The entry point of a spawned worker process: trials until the gate says stop.

    Exits 130 on Ctrl-C or SIGTERM (after recording the running trial's run KILLED)."""
    import signal

    if job.cuda_device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = job.cuda_device
    if job.threads:
        os.environ["OMP_NUM_THREADS"] = str(job.threads)
    # The coordinator stops workers with SIGINT, then SIGTERM: both end the trial as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    # Trial errors are recorded on the trial and its run; keep the coordinator's output readable.
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optuna.logging.disable_propagation()
    try:
        _work(job)
    except KeyboardInterrupt:
        sys.exit(130)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _work(job: Job) -> None:
    import torch

    from harness.tracking.study_runs import StudyRuns

    if job.threads:
        torch.set_num_threads(job.threads)
    spec = job.spec
    storage = open_storage(job.storage_url, spec.heartbeat)
    study = optuna.load_study(study_name=spec.name, storage=storage,
                              sampler=spec.sampler.build(seed_offset=job.seed_offset),
                              pruner=spec.pruner.build(max_epochs=spec.max_epochs()))
    runs = StudyRuns.attach(job.experiment_id)
    lock = study_lock(job.storage_url, spec.name)

    def on_trial_end() -> None:
        with locked(lock):  # one writer at a time, so "best so far" never goes back
            record_progress(runs, job.parent_run_id, spec, trial_rows(study, spec.objectives), job.target)

    gate = TrialGate(study, lock, target=job.target, max_failures=spec.max_failures, deadline=job.deadline,
                     poll_s=min(2.0, spec.heartbeat.interval / 2), on_trial_end=on_trial_end)
    if not gate.acquire():
        return
    try:
        timeout = None if job.deadline is None else max(1.0, job.deadline - time.time())
        study.optimize(Objective(job, gate, runs), timeout=timeout, catch=(Exception,), callbacks=[gate])
    finally:
        gate.release()
