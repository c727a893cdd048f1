"""`run_study`: run (or resume) a study with K spawned worker processes, watch it, wrap it up.

Workers run on one GPU each (or share the CPU cores), on G of their own with `gpus_per_trial` G > 1. A dead
worker's trial goes stale after the heartbeat's grace period and is re-queued. Each session reopens the
study's MLflow parent run and ends it: FINISHED; KILLED when interrupted or a worker crashed; FAILED when
the session broke.
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
import sqlalchemy

from harness import paths
from harness.tracking import tags as T
from harness.tuning.errors import SpecError, StudyError
from harness.tuning.results import FINISHED_STATES, Progress, StudyResult, TrialRow, trial_rows
from harness.tuning.space import describe
from harness.tuning.spec import StudySpec, check_dataset
from harness.tuning.storage import (PARENT_ATTR, Lock, fail_stale, identity, load_or_create_study, locked, open_storage,
                                    redact, resolve_storage, study_lock)
from harness.tuning.worker import Job, record_progress, run_worker

if TYPE_CHECKING:
    from harness.tracking.lifecycle import TrackedRun
    from harness.tracking.study_runs import StudyRuns

_POLL_S = 1.0


@dataclass
class _Session:
    spec: StudySpec
    url: str
    target: int
    study: optuna.Study
    lock: Lock
    runs: StudyRuns
    parent: str
    parent_run: TrackedRun  # the parent, open for this session
    start: float
    deadline: float | None

    def rows(self) -> tuple[TrialRow, ...]:
        return trial_rows(self.study, self.spec.objectives)


def run_study(spec: StudySpec, *, data_dir: Path, storage: str | None = None, trials: int | None = None,
              workers: int | None = None, timeout: float | None = None, cache_root: Path | None = None,
              on_progress: Callable[[Progress], None] | None = None, gpus_per_trial: int | None = None) -> StudyResult:
    """Run (or resume) `spec`'s study until it holds `trials` finished (complete + pruned) trials in total.

    Every input a trial can read in `data_dir` is prepared first. `trials`, `workers` and `gpus_per_trial`
    default to the spec's; `timeout`: seconds after which no new trial starts; `on_progress` is called about
    once a second while something changed. Raises SpecError, StorageError, StorageUnavailable, DatasetError,
    StudyError (a worker crashed; `.result` says what the session did), KeyboardInterrupt (workers stopped).
    """
    from harness.data.labels import load_dataset
    from harness.preflight import preflight

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
    devices = device_groups(spec, _cuda_devices() if spec.base.train.device != "cpu" else [], n_workers)  # before feature work
    url = resolve_storage(storage, spec)
    cache = Path(cache_root) if cache_root is not None else paths.cache_dir()
    ds = load_dataset(Path(data_dir))
    check_dataset(spec, ds.track, where=ds.root)
    for cfg in spec.prepare_configs():  # every input a trial can read, once, before workers race for the cache
        preflight(ds, cfg, cache_root=cache)
    session = _open_session(spec, url, target, start, None if timeout is None else start + timeout)
    with session.parent_run:  # ended by `_wrap_up`; FAILED (KILLED on Ctrl-C) if the session breaks first
        processes = _start_workers(session, Path(data_dir), cache, devices)
        interrupted = _watch(session, processes, on_progress)
        result = _wrap_up(session, processes, interrupted)
    if interrupted:
        raise KeyboardInterrupt
    if crashed := [f"worker {i}: exit {code}" for i, code in enumerate(result.worker_exitcodes) if code not in (0, 130)]:
        raise StudyError(f"study {spec.name}: {', '.join(crashed)}; {result.finished}/{target} trials finished, "
                         f"run the same command again to resume", result=result)
    return result


def _open_session(spec: StudySpec, url: str, target: int, start: float, deadline: float | None) -> _Session:
    """Open the storage and the study, find (or make) the parent run and mark it RUNNING, and `_heal`."""
    from harness.tracking.study_runs import StudyRuns

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = open_storage(url, spec.heartbeat)
    lock = study_lock(url, spec.name)
    runs = StudyRuns.open(spec.experiment)
    with locked(lock):
        study = load_or_create_study(spec, store)
        parent = runs.find_or_create_parent(study=spec.name, storage=identity(url), params=_spec_params(spec),
                                            known_run_id=study.user_attrs.get(PARENT_ATTR), space_hash=spec.space_hash(),
                                            spec_text=spec.source)
        study.set_user_attr(PARENT_ATTR, parent)
        session = _Session(spec, url, target, study, lock, runs, parent, runs.start_session(parent, target=target),
                           start, deadline)
        with session.parent_run.ended_on_error():
            _heal(session)
    return session


def _heal(session: _Session) -> None:
    """Under the study lock: fail stale trials (retries queued) and close the runs dead workers left open."""
    fail_stale(session.study)
    states = {t.number: t.state.name for t in session.study.get_trials(deepcopy=False)}
    session.runs.close_orphaned_trials(session.parent, states)


def _spec_params(spec: StudySpec) -> dict[str, Any]:
    train = spec.base.train
    return {"study.name": spec.name, "study.objectives": ",".join(spec.objectives), "sampler": repr(spec.sampler),
            "pruner": repr(spec.pruner), **{f"space.{name}": describe(dim) for name, dim in spec.space},
            "base.backbone": train.backbone, "base.pretrained": train.pretrained, "base.max_params": train.max_params,
            "base.seed": train.seed}


def device_groups(spec: StudySpec, gpus: list[str], workers: int) -> list[str | None]:
    """Each worker's CUDA_VISIBLE_DEVICES: one GPU, round-robin, when a trial takes one; `gpus_per_trial`
    GPUs of its own when more (SpecError when workers x gpus_per_trial exceed them); None without GPUs."""
    per_trial = spec.gpus_per_trial
    if not gpus or per_trial == 1:
        return [gpus[i % len(gpus)] if gpus else None for i in range(workers)]
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
    n_workers = max(0, min(len(devices), session.target - sum(r.state in FINISHED_STATES for r in rows)))
    on_gpus = any(d is not None for d in devices)
    # Threads per process that trains: a worker, or each rank of a trial over several devices.
    threads = None if on_gpus and spec.gpus_per_trial == 1 else _cpu_threads(n_workers * spec.gpus_per_trial)
    context = multiprocessing.get_context("spawn")
    processes = []
    for index in range(n_workers):
        job = Job(spec=spec, storage_url=session.url, data_dir=str(data_dir.resolve()), cache_root=str(cache.resolve()),
                  experiment_id=session.runs.experiment_id, parent_run_id=session.parent, target=session.target,
                  deadline=session.deadline, seed_offset=1000 * index + len(rows), cuda_device=devices[index], threads=threads)
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
            if on_progress is not None and (rows := session.rows()) != last:
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
        for p in (p for p in processes if action is not None and p.is_alive()):
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
    for p in (p for p in processes if p.is_alive()):
        p.kill()


def _wrap_up(session: _Session, processes: list[Any], interrupted: bool) -> StudyResult:
    """The session's last word: `_heal`, the parent's counts, figures and status, and why it stopped."""
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
    if counts["RUNNING"]:  # trials of other machines still running: the study goes on there
        session.parent_run.release()
    else:
        session.parent_run.end(T.KILLED if interrupted or crashed else T.FINISHED)
    why = {"interrupted": interrupted, "target reached": counts["COMPLETE"] + counts["PRUNED"] >= session.target,
           "too many failures": counts["FAIL"] >= spec.max_failures, "worker died": crashed,
           "timeout": session.deadline is not None and time.time() >= session.deadline}
    return StudyResult(study=spec.name, storage=redact(session.url), experiment_id=session.runs.experiment_id,
                       parent_run_id=session.parent, objectives=spec.objectives, dimensions=spec.searched,
                       target=session.target, rows=rows, seconds=time.time() - session.start, worker_exitcodes=exitcodes,
                       epochs_trained=sum(r.epoch for r in rows), stopped=next((w for w, hit in why.items() if hit), "stopped"))


def study_rows(spec: StudySpec, *, storage: str | None = None) -> tuple[TrialRow, ...]:
    """The trials of `spec`'s study as stored, without running anything (`harness pack --study`); a SQLite
    database that is not there is refused (SpecError), not created empty."""
    url = resolve_storage(storage, spec)
    if url.startswith("sqlite:") and not Path(sqlalchemy.engine.make_url(url).database or "").is_file():
        raise SpecError(f"study {spec.name}: no study database at {sqlalchemy.engine.make_url(url).database} "
                        f"(run harness tune --study {spec.name} first, or give --storage)")
    study = optuna.load_study(study_name=spec.name, storage=open_storage(url, spec.heartbeat))
    return trial_rows(study, spec.objectives)


def _cpu_threads(workers: int) -> int:
    """Torch threads per CPU worker: $OMP_NUM_THREADS when set, else the cores shared out (on a machine busy
    with other work 1 is much the fastest: idle OpenMP threads spin for CPU time)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else max(1, (os.cpu_count() or 1) // max(1, workers))


def _cuda_devices() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no CUDA: CPU workers
        return []
