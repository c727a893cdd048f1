"""`run_study`: run (or resume) a study with K spawned worker processes, watch it, wrap it up.

Workers run one GPU each when GPUs exist (several may share one), else share the CPU cores; with
`gpus_per_trial` G > 1 each worker gets a group of G GPUs of its own, and each of its trials trains as
G DDP ranks there (gloo ranks sharing the cores on a CPU machine). A trial whose worker died
(kill -9, a lost machine) goes stale after the heartbeat's grace period, is marked FAIL and re-queued
once with the same parameters; running the same study again resumes it, with the same MLflow parent
run. Every MLflow call goes through `harness.tracking.study_runs`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from harness import paths
from harness.tuning.errors import SpecError, StudyError
from harness.tuning.results import FINISHED_STATES, Progress, StudyResult, TrialRow, trial_rows
from harness.tuning.spec import StudySpec, check_dataset
from harness.tuning.storage import (
    PARENT_ATTR,
    Lock,
    fail_stale,
    identity,
    load_or_create_study,
    locked,
    open_storage,
    redact,
    resolve_storage,
    study_lock,
)
from harness.tuning.worker import Job, record_progress, run_worker

if TYPE_CHECKING:
    from harness.tracking.study_runs import StudyRuns

_POLL_S = 1.0


@dataclass
class _Session:
    """One coordinator's hold on a study: its storage, lock, Optuna study and MLflow parent run."""

    spec: StudySpec
    url: str
    target: int
    study: optuna.Study
    lock: Lock
    runs: StudyRuns
    parent: str
    start: float
    deadline: float | None

    def rows(self) -> tuple[TrialRow, ...]:
        return trial_rows(self.study, self.spec.objectives)


def run_study(
    spec: StudySpec,
    *,
    data_dir: Path,
    storage: str | None = None,
    trials: int | None = None,
    workers: int | None = None,
    timeout: float | None = None,
    cache_root: Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    gpus_per_trial: int | None = None,
) -> StudyResult:
    """Run (or resume) `spec`'s study until it holds `trials` finished trials in total.

    Args:
        spec: the study (see `load_spec`).
        data_dir: the dataset folder; every input a trial can read is prepared first.
        storage: an RDB URL (default `default_storage(spec)`).
        trials: finished (complete + pruned) trials wanted in total (default `spec.trials`).
        workers: local worker processes (default `spec.workers`), pinned one GPU each round-robin
            when GPUs exist, else sharing the CPU cores.
        timeout: seconds after which no new trial starts (running ones finish).
        cache_root: the feature cache (default `harness.paths.cache_dir()`).
        on_progress: called from this process about once a second while something changed.
        gpus_per_trial: devices each trial trains on as DDP ranks (default `spec.gpus_per_trial`);
            above 1, workers x gpus_per_trial must not exceed the visible GPUs.

    Returns:
        What the study holds now and why this session stopped.

    Raises:
        SpecError, StorageError: the spec, storage or stored study cannot be used, or the GPUs
            cannot give each worker its own group of gpus_per_trial.
        StorageUnavailable: the PostgreSQL server did not answer.
        DatasetError: a bad `data_dir`.
        StudyError: a worker process crashed (`.result` says what the session did).
        KeyboardInterrupt: after the workers have stopped and recorded their runs KILLED.
    """
    start = time.time()
    target = trials if trials is not None else spec.trials
    n_workers = workers if workers is not None else spec.workers
    if target < 1 or n_workers < 1:
        raise SpecError("trials and workers must be at least 1")
    if gpus_per_trial is not None:
        if gpus_per_trial < 1:
            raise SpecError(f"gpus_per_trial {gpus_per_trial}: give at least 1")
        if gpus_per_trial > 1 and spec.folds:
            raise SpecError(f"gpus_per_trial {gpus_per_trial}: a cross-validated study (folds = {spec.folds}) trains "
                            "each fold in one process")
        spec = dataclasses.replace(spec, gpus_per_trial=gpus_per_trial)
    gpus = _cuda_devices() if spec.base.train.device != "cpu" else []
    devices = device_groups(spec, gpus, n_workers)  # refused before any feature work
    url = resolve_storage(storage, spec)
    cache = Path(cache_root) if cache_root is not None else paths.cache_dir()
    _prepare_inputs(spec, Path(data_dir), cache)
    session = _open_session(spec, url, target, start, None if timeout is None else start + timeout)
    processes = _start_workers(session, Path(data_dir), cache, devices)
    interrupted = _watch(session, processes, on_progress)
    result = _wrap_up(session, processes, interrupted)
    if interrupted:
        raise KeyboardInterrupt
    crashed = [f"worker {i}: exit {code}" for i, code in enumerate(result.worker_exitcodes) if code not in (0, 130)]
    if crashed:
        raise StudyError(f"study {spec.name}: {', '.join(crashed)}; {result.finished}/{target} trials finished, "
                         f"run the same command again to resume", result=result)
    return result


def _prepare_inputs(spec: StudySpec, data_dir: Path, cache: Path) -> None:
    """Every input a trial can read, computed here once, before workers race for the cache."""
    from harness import run
    from harness.data.labels import load_dataset

    ds = load_dataset(data_dir)
    check_dataset(spec, ds.track, where=ds.root)
    for cfg in spec.prepare_configs():
        run.features_for(ds, cfg, cache)


def _open_session(spec: StudySpec, url: str, target: int, start: float, deadline: float | None) -> _Session:
    """Open the storage and the study, find (or make) the parent run, mark it RUNNING, and fail
    stale trials and close orphaned runs left by dead workers; all under the study lock."""
    from harness.tracking.study_runs import StudyRuns

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = open_storage(url, spec.heartbeat)
    lock = study_lock(url, spec.name)
    runs = StudyRuns.open(spec.experiment)
    with locked(lock):
        study = load_or_create_study(spec, store)
        parent = runs.find_or_create_parent(
            study=spec.name, storage=identity(url), known_run_id=study.user_attrs.get(PARENT_ATTR),
            params=_spec_params(spec), space_hash=spec.space_hash(), spec_text=spec.source)
        study.set_user_attr(PARENT_ATTR, parent)
        runs.start_session(parent, target=target)
        session = _Session(spec, url, target, study, lock, runs, parent, start, deadline)
        _heal(session)
    return session


def _heal(session: _Session) -> None:
    """Fail stale trials (their retry is queued) and close the runs their dead workers left open.
    Call it under the study lock."""
    fail_stale(session.study)
    states = {t.number: t.state.name for t in session.study.get_trials(deepcopy=False)}
    session.runs.close_orphaned_trials(session.parent, states)


def _spec_params(spec: StudySpec) -> dict[str, Any]:
    from harness.tuning.space import describe

    params: dict[str, Any] = {"study.name": spec.name, "study.objectives": ",".join(spec.objectives),
                              "sampler": repr(spec.sampler), "pruner": repr(spec.pruner)}
    for name, dim in spec.space:
        params[f"space.{name}"] = describe(dim)
    train = spec.base.train
    params.update({"base.backbone": train.backbone, "base.pretrained": train.pretrained,
                   "base.max_params": train.max_params, "base.seed": train.seed})
    return params


def device_groups(spec: StudySpec, gpus: list[str], workers: int) -> list[str | None]:
    """Each worker's CUDA_VISIBLE_DEVICES: one GPU each, round-robin, when a trial takes one (workers
    may share a GPU); a group of `gpus_per_trial` GPUs of its own each when a trial takes more; None
    each without GPUs (CPU trials; several ranks each with gloo).

    Raises:
        SpecError: naming the spec and the key, when workers x gpus_per_trial exceed the GPUs.
    """
    per_trial = spec.gpus_per_trial
    if not gpus:
        return [None] * workers
    if per_trial == 1:
        return [gpus[i % len(gpus)] for i in range(workers)]
    if workers * per_trial > len(gpus):
        where = spec.path or f"study {spec.name}"
        raise SpecError(f"{where}: [study] gpus_per_trial = {per_trial} x {workers} worker(s) needs "
                        f"{workers * per_trial} GPUs, this machine has {len(gpus)} ({','.join(gpus)}); "
                        f"lower --workers or gpus_per_trial")
    return [",".join(gpus[i * per_trial:(i + 1) * per_trial]) for i in range(workers)]


def _start_workers(session: _Session, data_dir: Path, cache: Path, devices: list[str | None]) -> list[Any]:
    """Spawn as many workers as there are trials left to finish (at most one per entry of `devices`)."""
    spec = session.spec
    rows = session.rows()
    finished = sum(r.state in FINISHED_STATES for r in rows)
    n_workers = max(0, min(len(devices), session.target - finished))
    on_gpus = any(d is not None for d in devices)
    # Threads per process that trains: a worker, or each rank of a trial over several devices.
    trainers = n_workers * spec.gpus_per_trial
    threads = None if on_gpus and spec.gpus_per_trial == 1 else _cpu_threads(trainers)
    context = multiprocessing.get_context("spawn")
    processes = []
    for index in range(n_workers):
        job = Job(spec=spec, storage_url=session.url, data_dir=str(data_dir.resolve()), cache_root=str(cache.resolve()),
                  experiment_id=session.runs.experiment_id, parent_run_id=session.parent, target=session.target,
                  deadline=session.deadline, index=index, seed_offset=1000 * index + len(rows),
                  cuda_device=devices[index], threads=threads)
        process = context.Process(target=run_worker, args=(job,), name=f"harness-tune-{index}", daemon=False)
        process.start()
        processes.append(process)
    return processes


def _watch(session: _Session, processes: list[Any], on_progress: Callable[[Progress], None] | None) -> bool:
    """Report progress until every worker has exited; True when interrupted (workers then stopped)."""
    spec = session.spec
    last = None
    try:
        while True:
            alive = any(p.is_alive() for p in processes)
            if on_progress is not None:
                rows = session.rows()
                if rows != last:
                    on_progress(Progress(study=spec.name, objectives=spec.objectives, dimensions=spec.searched,
                                         target=session.target, rows=rows, elapsed_s=time.time() - session.start))
                    last = rows
            if not alive:
                return False
            for p in processes:
                p.join(timeout=_POLL_S / max(1, len(processes)))
    except KeyboardInterrupt:
        _stop_workers(processes)
        return True
    except BaseException:  # on_progress raised, or the storage failed: never leave workers behind
        _stop_workers(processes, signalled=False)
        raise


def _stop_workers(processes: list[Any], *, signalled: bool = True) -> None:
    """Stop the workers: interrupt them (after Ctrl-C in a terminal they got SIGINT already, so
    first give them a moment), wait for them to record their runs as KILLED, then terminate."""
    steps = ((3.0, None), (30.0, signal.SIGINT), (10.0, signal.SIGTERM))
    for wait_s, action in steps if signalled else steps[1:]:
        if action is not None:
            for p in processes:
                if p.is_alive():
                    with contextlib.suppress(OSError):
                        os.kill(p.pid, action)
        deadline = time.time() + wait_s
        while any(p.is_alive() for p in processes) and time.time() < deadline:
            try:
                time.sleep(0.2)
            except KeyboardInterrupt:
                break
        if not any(p.is_alive() for p in processes):
            return
    for p in processes:
        if p.is_alive():
            p.kill()


def _wrap_up(session: _Session, processes: list[Any], interrupted: bool) -> StudyResult:
    """The session's last word: stale trials failed, orphans closed, the parent's counts, figures and
    status, and why the session stopped."""
    from harness.tuning.figures import study_pngs, trials_csv

    spec = session.spec
    exitcodes = tuple(p.exitcode if p.exitcode is not None else -1 for p in processes)
    with locked(session.lock):
        _heal(session)
        rows = session.rows()
        record_progress(session.runs, session.parent, spec, rows, session.target)
    pngs, skipped = study_pngs(session.study, spec)
    session.runs.log_study_artifacts(session.parent, pngs=pngs, trials_csv=trials_csv(session.study), skipped=skipped)
    counts = Counter(r.state for r in rows)
    crashed = any(code not in (0, 130) for code in exitcodes)
    if counts["RUNNING"] == 0:  # trials of other machines still running: the study goes on there
        session.runs.end_session(session.parent, stopped_early=interrupted or crashed)
    return StudyResult(
        study=spec.name, storage=redact(session.url), experiment_id=session.runs.experiment_id,
        parent_run_id=session.parent, objectives=spec.objectives, dimensions=spec.searched, target=session.target,
        rows=rows, seconds=time.time() - session.start, epochs_trained=sum(r.epoch for r in rows),
        stopped=_why_stopped(session, counts, interrupted, crashed), worker_exitcodes=exitcodes,
    )


def _why_stopped(session: _Session, counts: Counter, interrupted: bool, crashed: bool) -> str:
    if interrupted:
        return "interrupted"
    if counts["COMPLETE"] + counts["PRUNED"] >= session.target:
        return "target reached"
    if counts["FAIL"] >= session.spec.max_failures:
        return "too many failures"
    if crashed:
        return "worker died"
    if session.deadline is not None and time.time() >= session.deadline:
        return "timeout"
    return "stopped"


def study_rows(spec: StudySpec, *, storage: str | None = None) -> tuple[TrialRow, ...]:
    """The trials of `spec`'s study as stored (for a leaderboard without running anything)."""
    url = resolve_storage(storage, spec)
    study = optuna.load_study(study_name=spec.name, storage=open_storage(url, spec.heartbeat))
    return trial_rows(study, spec.objectives)


def _cpu_threads(workers: int) -> int:
    """Torch threads per CPU worker: $OMP_NUM_THREADS when set, else the cores shared out. On a
    machine busy with other work, 1 is much the fastest: idle OpenMP threads spin for CPU time."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _cuda_devices() -> list[str]:
    """GPU ids to pin workers to: those in CUDA_VISIBLE_DEVICES, else all that torch sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no CUDA: CPU workers
        return []
