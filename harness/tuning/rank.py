"""A trial over several devices (`gpus_per_trial` > 1): the worker's side and `python -m harness.tuning.rank JOB`.

The worker writes the trial's job (its resolved run settings and what rank 0 needs to act for the
trial) to a file and starts G ranks through `harness.distributed.launch_ranks`, as `harness train
--nproc G` does. Every rank runs `harness.run.train_run` in one process group (DDP: gloo on CPU,
NCCL with one GPU each among the worker's CUDA_VISIBLE_DEVICES). Rank 0 alone opens the study and
rebuilds the running trial (`optuna.trial.Trial(study, trial_id)`): it reports each epoch, asks the
pruner and records the trial's MLflow run, exactly as a one-process trial does. Pruning, like early
stopping, is rank 0's decision, which the engine broadcasts to the other ranks
(`harness.distributed.agree`), so every rank ends that epoch and exits: no rank is left waiting.

Rank 0 leaves the outcome (or its error) in the job's result file. `train_over_ranks` reads it;
when a rank died it closes the run with `harness.run.close_after_ranks` and raises `RanksFailed`
with the reason ("rank 1 exited with signal 9 (SIGKILL)"), which fails the trial.
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

from harness.errors import JobFailed

if TYPE_CHECKING:
    import optuna

    from harness.run import RunResult
    from harness.tuning.strategies import Pruner


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

    @classmethod
    def of(cls, result: RunResult) -> TrialOutcome:
        fit = result.fit
        return cls(run_id=result.run_id, status=result.status, epochs=len(fit.history) if fit else 0,
                   stopped_by=fit.stopped_by if fit else None,
                   best_metrics={k: float(v) for k, v in (fit.best_metrics if fit else {}).items()})


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
    from harness.tuning.strategies import PRUNERS

    kind = next(k for k, v in PRUNERS.items() if isinstance(pruner, v))
    return {"kind": kind, **dataclasses.asdict(pruner)}


def train_over_ranks(job: RankJob, nproc: int, *, threads: int | None = None) -> TrialOutcome:
    """Train the trial as `nproc` DDP ranks on this machine and return rank 0's outcome.

    Raises:
        RanksFailed: a rank failed; the run (when rank 0 made one) is closed FAILED with the reason.
        KeyboardInterrupt: Ctrl-C or SIGTERM reached the launcher; the run is closed KILLED.
    """
    from harness.distributed import launch_ranks
    from harness.fileio import write_text
    from harness.run import close_after_ranks

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


def _rank() -> int:
    # Set by the launcher before the process starts; the process group itself comes up inside train_run.
    return int(os.environ.get("RANK", "0"))


def _trial(job: RankJob) -> optuna.Trial:
    """The running trial, rebuilt on rank 0 from the study's storage (public Optuna API only)."""
    import optuna

    from harness.tuning.storage import open_storage
    from harness.tuning.strategies import PRUNERS, Heartbeat

    table = dict(job.pruner)
    pruner = PRUNERS[table.pop("kind")](**table).build(max_epochs=job.max_epochs)
    storage = open_storage(job.storage_url, Heartbeat(**job.heartbeat))
    # The trial's values are drawn already: a sampler that draws nothing relative when the trial is rebuilt.
    study = optuna.load_study(study_name=job.study, storage=storage, sampler=optuna.samplers.RandomSampler(),
                              pruner=pruner)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(job.study),
                                                               job.trial_number)
    return optuna.trial.Trial(study, trial_id)


def run_rank(job: RankJob) -> TrialOutcome:
    """This rank's share of the trial: `train_run` in the launcher's process group, with the trial's
    callbacks on rank 0 (the other ranks follow its decisions)."""
    from harness.config import RunConfig, from_dict
    from harness.run import train_run
    from harness.tuning.strategies import PRUNERS, trial_callbacks

    cfg = from_dict(RunConfig, job.config)
    callbacks: list[Any] = []
    if _rank() == 0:
        table = dict(job.pruner)
        pruner = PRUNERS[table.pop("kind")](**table)
        callbacks = trial_callbacks(_trial(job), job.objectives, pruner)
    result = train_run(cfg, data_dir=Path(job.data_dir), experiment=job.experiment, cache_root=Path(job.cache_root),
                       run_name=job.run_name, parent_run_id=job.parent_run_id, callbacks=callbacks, tags=job.tags)
    return TrialOutcome.of(result)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """`python -m harness.tuning.rank JOB.json`: one rank; exits 0, 130 when interrupted (the launcher
    passes Ctrl-C on as SIGTERM), else the error's exit code (2 bad input, 1 otherwise)."""
    import optuna

    args = sys.argv[1:] if argv is None else argv
    job = RankJob(**json.loads(Path(args[0]).read_text()))
    signal.signal(signal.SIGTERM, _interrupt)  # the run ends KILLED, as on Ctrl-C
    warnings.simplefilter("ignore")  # as in a worker: errors are recorded on the trial and its run
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    is_main = _rank() == 0
    try:
        outcome = run_rank(job)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - one line and an exit code, as `harness.cli.main` does
        error = " ".join((f"{type(e).__name__}: {e}" if str(e) else type(e).__name__).split())[:500]
        if is_main:
            _leave(job, {"error": error})  # recorded on the trial (and its run): no line on the study's console
        else:  # the only place another rank's own error shows (its trial records "rank 1 exited with status 1")
            print(f"error: rank {_rank()}: {error}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 1))
    if is_main:
        _leave(job, {"outcome": dataclasses.asdict(outcome)})


def _leave(job: RankJob, found: dict[str, Any]) -> None:
    from harness.fileio import write_text

    if job.result_file:
        write_text(Path(job.result_file), json.dumps(found))


if __name__ == "__main__":
    main()
