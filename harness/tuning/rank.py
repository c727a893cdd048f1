"""A trial over several devices (`gpus_per_trial` > 1): the worker's side and `python -m harness.tuning.rank JOB`.

The worker writes the trial's job to a file and starts G ranks (`harness.distributed.launch_ranks`), each
running `harness.run.train_run` in one DDP group. Rank 0 alone rebuilds the running trial from the storage,
reports, prunes (its decisions reach the other ranks through the engine) and leaves the outcome in the
job's result file; when a rank died `train_over_ranks` closes the run and raises `RanksFailed`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from harness.config import RunConfig, from_dict
from harness.errors import JobFailed
from harness.fileio import write_text
from harness.tuning.storage import open_storage
from harness.tuning.strategies import PRUNERS, Heartbeat, Pruner, trial_callbacks

if TYPE_CHECKING:
    from harness.run import RunResult


class RanksFailed(JobFailed):
    """A trial's ranks did not all end well; the message is the one line the trial records."""


@dataclass(frozen=True)
class TrialOutcome:
    """What the objective needs from a trial's training, in one process or from rank 0."""

    run_id: str
    status: str  # FINISHED, or KILLED when pruned
    epochs: int  # epochs trained
    stopped_by: str | None
    best_metrics: dict[str, float] = field(default_factory=dict)
    worst_slice: str | None = None  # `harness.slices`' worst slice, as the leaderboard shows it

    @classmethod
    def of(cls, result: RunResult) -> TrialOutcome:
        if (fit := result.fit) is None:
            return cls(run_id=result.run_id, status=result.status, epochs=0, stopped_by=None)
        return cls(result.run_id, result.status, len(fit.history), fit.stopped_by,
                   {k: float(v) for k, v in fit.best_metrics.items()}, fit.info.get("worst_slice"))


@dataclass(frozen=True)
class RankJob:
    """A trial's training as its ranks run it (plain values: it crosses processes as JSON)."""

    config: dict[str, Any]  # the trial's RunConfig (`harness.config.to_dict`)
    data_dir: str
    cache_root: str
    experiment: str
    run_name: str
    parent_run_id: str
    tags: dict[str, str]
    study: str
    storage_url: str
    trial_number: int
    objectives: list[str]
    pruner: dict[str, Any]  # {"kind": a key of PRUNERS, **its fields}
    max_epochs: int
    heartbeat: dict[str, int]
    result_file: str = ""


def pruner_table(pruner: Pruner) -> dict[str, Any]:
    """A pruner as plain values, as the spec's [pruner] table writes it."""
    return {"kind": next(k for k, v in PRUNERS.items() if isinstance(pruner, v)), **dataclasses.asdict(pruner)}


def _pruner(job: RankJob) -> Pruner:
    return PRUNERS[job.pruner["kind"]](**{k: v for k, v in job.pruner.items() if k != "kind"})


def train_over_ranks(job: RankJob, nproc: int, *, threads: int | None = None) -> TrialOutcome:
    """Train the trial as `nproc` DDP ranks here; rank 0's outcome. RanksFailed: a rank failed (the run
    closed FAILED with the reason); KeyboardInterrupt: the run closed KILLED."""
    from harness.distributed import launch_ranks
    from harness.tracking import close_after_ranks

    with tempfile.TemporaryDirectory(prefix="harness-trial-") as tmp:
        job_file, result_file = Path(tmp) / "job.json", Path(tmp) / "result.json"
        write_text(job_file, json.dumps(dataclasses.asdict(dataclasses.replace(job, result_file=str(result_file)))))
        outcome = launch_ranks(nproc, ["-m", "harness.tuning.rank", str(job_file)], threads=threads)
        reason = close_after_ranks(outcome)
        left = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if outcome.interrupted:
        raise KeyboardInterrupt
    if reason is not None:
        # Before the run existed (a refused model, a bad dataset) only rank 0's own error says why.
        raise RanksFailed(left["error"] if outcome.run_id is None and left.get("error") else reason)
    if "outcome" not in left:
        raise RanksFailed("rank 0 ended without leaving the trial's outcome")
    return TrialOutcome(**left["outcome"])


def _trial(job: RankJob) -> optuna.Trial:
    """The running trial, rebuilt on rank 0 from the study's storage (public Optuna API only)."""
    storage = open_storage(job.storage_url, Heartbeat(**job.heartbeat))
    # The trial's values are drawn already: a sampler that draws nothing relative when the trial is rebuilt.
    study = optuna.load_study(study_name=job.study, storage=storage, sampler=optuna.samplers.RandomSampler(),
                              pruner=_pruner(job).build(max_epochs=job.max_epochs))
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(job.study),
                                                               job.trial_number)
    return optuna.trial.Trial(study, trial_id)


def run_rank(job: RankJob, *, is_main: bool) -> TrialOutcome:
    """This rank's share of the trial: `train_run` in the launcher's process group, the trial's callbacks on rank 0."""
    from harness.preflight import preflight
    from harness.run import train_run

    callbacks = trial_callbacks(_trial(job), job.objectives, _pruner(job)) if is_main else []
    ready = preflight(Path(job.data_dir), from_dict(RunConfig, job.config), cache_root=Path(job.cache_root), workers=1)
    result = train_run(ready, experiment=job.experiment, run_name=job.run_name, parent_run_id=job.parent_run_id,
                       callbacks=callbacks, tags=job.tags, kind="trial")
    return TrialOutcome.of(result)


def child_process() -> None:
    """In a worker or rank: SIGTERM ends the trial as Ctrl-C does (its run KILLED), and errors are recorded
    on the trial and its run rather than printed, keeping the study's console readable."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def main(argv: list[str] | None = None) -> None:
    """`python -m harness.tuning.rank JOB.json`: one rank; exits 0, 130 when interrupted, else the error's code."""
    job = RankJob(**json.loads(Path((sys.argv[1:] if argv is None else argv)[0]).read_text()))
    child_process()
    rank = int(os.environ.get("RANK", "0"))  # set by the launcher; the process group comes up inside train_run
    try:
        outcome = run_rank(job, is_main=rank == 0)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - one line and an exit code, as `harness.cli.main` does
        from harness.tracking.lifecycle import error_line

        error = error_line(e)
        if rank == 0:
            _leave(job, {"error": error})  # recorded on the trial (and its run): no line on the study's console
        else:  # the only place another rank's own error shows (its trial records "rank 1 exited with status 1")
            print(f"error: rank {rank}: {error}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 1))
    if rank == 0:
        _leave(job, {"outcome": dataclasses.asdict(outcome)})


def _leave(job: RankJob, found: dict[str, Any]) -> None:
    if job.result_file:
        write_text(Path(job.result_file), json.dumps(found))


if __name__ == "__main__":
    main()
