"""A worker process of a study: take a trial slot, train the trial, record it, repeat.

`TrialSlots` starts a trial only while finished + running < target, under the study lock, so the study
never overshoots whatever the number of workers or machines; a worker waits while others' trials run, since
a failed or stale one needs a replacement. A trial is one `harness.run.train_run` (`trial-007`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from harness.config import RunConfig, to_dict
from harness.tuning.cv_trial import run_cv_trial
from harness.tuning.rank import RankJob, RanksFailed, TrialOutcome, child_process, pruner_table, train_over_ranks
from harness.tuning.results import TrialRow, best_row, ranked_rows, trial_rows
from harness.tuning.space import suggest
from harness.tuning.spec import StudySpec
from harness.tuning.storage import Lock, fail_stale, locked, open_storage, study_lock
from harness.tuning.strategies import trial_callbacks

if TYPE_CHECKING:
    from harness.data.labels import Dataset
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
    seed_offset: int
    cuda_device: str | None  # CUDA_VISIBLE_DEVICES of the worker: one GPU, or a trial's group of G
    threads: int | None  # torch threads of the worker (of each rank when a trial has several)


@dataclass(eq=False)
class TrialSlots:
    """Hands out trial slots under the study lock so the study ends at exactly `target` finished
    trials. `acquire` returns True *holding the lock*; the objective releases it once `ask()` has
    created its trial (RUNNING), so the next worker's count includes it."""

    study: optuna.Study
    lock: Lock
    target: int
    max_failures: int
    deadline: float | None = None
    poll_s: float = 1.0
    on_trial_end: Callable[[], None] = lambda: None
    held: bool = field(default=False, init=False)

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

    def plain(row: TrialRow) -> BestTrial:
        return BestTrial(row.number, row.run_id, dict(zip(spec.objectives, row.values or ())), dict(row.params))

    best = best_row(rows, spec.objectives)
    runs.record_progress(parent_run_id, states={r.number: r.state for r in rows}, epochs_trained=sum(r.epoch for r in rows),
                         target=target, best=None if best is None else plain(best),
                         leaders=[plain(r) for r in ranked_rows(rows, spec.objectives)[:5]])


class Objective:
    """Optuna's objective: one trial = one training run, its outcome recorded on trial and run."""

    def __init__(self, job: Job, slots: TrialSlots, runs: StudyRuns, dataset: Dataset) -> None:
        self.job, self.spec, self.slots, self.runs = job, job.spec, slots, runs
        self.dataset = dataset  # loaded once per worker; each trial's pre-flight checks its settings against it

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        from harness.tracking.lifecycle import error_line
        from harness.tracking.study_runs import trial_tags

        self.slots.release()  # the trial exists now (RUNNING): the next worker counts it
        spec = self.spec
        try:
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            for inherited in (k for k in ("mlflow_run_id", "error") if trial.user_attrs.get(k) is not None):
                trial.set_user_attr(inherited, None)  # a re-queued trial copies the stale one's
            trial.set_user_attr("epoch", 0)
            cfg = spec.config_for({name: suggest(trial, name, dim) for name, dim in spec.space})
            tags = trial_tags(spec.name, trial.number, retry_of=_retry_of(self.slots.study, trial.number))
            result = self._train(trial, cfg, tags)
        except BaseException as e:  # a rank failure's message is its one line already
            self._failed(trial, error_line(str(e) if isinstance(e, RanksFailed) else e))
            raise
        for key, value in (("mlflow_run_id", result.run_id), ("epoch", result.epochs), ("worst_slice", result.worst_slice)):
            trial.set_user_attr(key, value)
        if result.status == "KILLED":  # pruned: run.py ended the run KILLED with pruned_at_epoch
            kind = pruner_table(spec.pruner)["kind"]
            self.runs.mark_trial(result.run_id, "PRUNED", pruner=f"{kind.replace('_', ' ')} pruner")
            raise optuna.TrialPruned(result.stopped_by or "pruned")
        objective = [float(result.best_metrics.get(o, float("nan"))) for o in spec.objectives]
        if not all(math.isfinite(v) for v in objective):
            error = f"ValueError: objective {dict(zip(spec.objectives, objective))} is not a number (one class in val?)"
            self.runs.mark_trial(result.run_id, "FAIL", error=error)
            self._failed(trial, error, run_id=result.run_id)
            raise ValueError(error)
        self.runs.mark_trial(result.run_id, "COMPLETE")
        return objective[0] if len(objective) == 1 else objective

    def _train(self, trial: optuna.Trial, cfg: RunConfig, tags: dict[str, str]) -> TrialOutcome:
        """The trial's training run: in this process, or as `gpus_per_trial` DDP ranks (`harness.tuning.rank`)."""
        from harness.preflight import preflight
        from harness.run import train_run

        spec, job = self.spec, self.job
        run_name = f"trial-{trial.number:03d}"
        if spec.gpus_per_trial > 1:  # each rank makes its own pre-flight
            ranks = RankJob(config=to_dict(cfg), data_dir=job.data_dir, cache_root=job.cache_root, experiment=spec.experiment,
                            run_name=run_name, parent_run_id=job.parent_run_id, tags=tags, study=spec.name,
                            storage_url=job.storage_url, trial_number=trial.number, objectives=list(spec.objectives),
                            pruner=pruner_table(spec.pruner), max_epochs=spec.max_epochs(),
                            heartbeat=dataclasses.asdict(spec.heartbeat))
            return train_over_ranks(ranks, spec.gpus_per_trial, threads=job.threads)
        # The coordinator prepared every input the study can read: here this finds them in the cache.
        ready = preflight(self.dataset, cfg, cache_root=Path(job.cache_root), workers=1)
        if spec.folds:
            return run_cv_trial(trial, ready, spec=spec, parent_run_id=job.parent_run_id, tags=tags)
        return TrialOutcome.of(train_run(ready, experiment=spec.experiment, run_name=run_name, parent_run_id=job.parent_run_id,
                                         tags=tags, kind="trial", callbacks=trial_callbacks(trial, spec.objectives, spec.pruner)))

    def _failed(self, trial: optuna.Trial, error: str, *, run_id: str | None = None) -> None:
        """Record the error (one line) on the trial and FAIL on its run (found by its tags when train_run raised)."""
        with contextlib.suppress(Exception):  # never hide the trial's own error behind a bookkeeping one
            trial.set_user_attr("error", error)
            if (run_id := run_id or self.runs.trial_run(self.job.parent_run_id, trial.number)) is not None:
                trial.set_user_attr("mlflow_run_id", run_id)
                self.runs.mark_trial(run_id, "FAIL")


def _retry_of(study: optuna.Study, number: int) -> int | None:
    """The stale trial that trial `number` re-runs (RetryHeartbeatStaleTrialCallback's mark)."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return next((t.system_attrs.get("failed_trial") for t in running if t.number == number), None)


def run_worker(job: Job) -> None:
    """A spawned worker process: trials until the slots run out; 130 on Ctrl-C or SIGTERM (run KILLED)."""
    if job.cuda_device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = job.cuda_device  # before torch is imported
    if job.threads:
        os.environ["OMP_NUM_THREADS"] = str(job.threads)
    child_process()  # the coordinator stops workers with SIGINT, then SIGTERM
    optuna.logging.disable_propagation()
    import torch

    from harness.data.labels import load_dataset
    from harness.tracking.study_runs import StudyRuns

    if job.threads:
        torch.set_num_threads(job.threads)
    spec = job.spec
    try:
        storage = open_storage(job.storage_url, spec.heartbeat)
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=spec.sampler.build(seed_offset=job.seed_offset),
                                  pruner=spec.pruner.build(max_epochs=spec.max_epochs()))
        runs = StudyRuns.attach(job.experiment_id)
        lock = study_lock(job.storage_url, spec.name)

        def on_trial_end() -> None:
            with locked(lock):  # one writer at a time, so "best so far" never goes back
                record_progress(runs, job.parent_run_id, spec, trial_rows(study, spec.objectives), job.target)

        slots = TrialSlots(study, lock, target=job.target, max_failures=spec.max_failures, deadline=job.deadline,
                           poll_s=min(2.0, spec.heartbeat.interval / 2), on_trial_end=on_trial_end)
        objective = Objective(job, slots, runs, load_dataset(Path(job.data_dir)))
        if not slots.acquire():
            return
        try:
            timeout = None if job.deadline is None else max(1.0, job.deadline - time.time())
            study.optimize(objective, timeout=timeout, catch=(Exception,), callbacks=[slots])
        finally:
            slots.release()
    except KeyboardInterrupt:
        sys.exit(130)
