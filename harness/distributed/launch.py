"""`harness train --nproc N`: start N ranks through torch's own elastic launcher and say how they ended.

The launcher is `torch.distributed.run` (what `torchrun` runs), called in this process with a
standalone c10d rendezvous, so a `--nproc` run and a user's `torchrun --nproc-per-node N -m harness
train ...` start the ranks the same way. Ranks run in sessions of their own: Ctrl-C or SIGTERM
reaches the launcher, which passes SIGTERM on to every rank and SIGKILLs any still there 30 s later.
When a rank dies, the launcher stops the others at once; `launch_ranks` then reports which rank
ended first and how ("rank 1 exited with signal 9 (SIGKILL)"), and the MLflow run id that rank 0
announced, so the caller can end the run FAILED with that reason even when rank 0 never could.

This module knows nothing of MLflow: the caller records the outcome (`harness.run.close_after_ranks`).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.distributed.group import RUN_ID_FILE_ENV
from harness.errors import ConfigError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class RankFailure:
    rank: int
    exitcode: int  # negative: killed by that signal
    timestamp: int  # seconds since the epoch, when the launcher saw it

    def describe(self) -> str:
        if self.exitcode < 0:
            try:
                name = f" ({signal.Signals(-self.exitcode).name})"
            except ValueError:
                name = ""
            return f"rank {self.rank} exited with signal {-self.exitcode}{name}"
        return f"rank {self.rank} exited with status {self.exitcode}"


@dataclass
class LaunchOutcome:
    """How the ranks ended. `failures` lists the ranks the launcher saw fail, the first cause first
    (a rank killed by a signal before one that then exited with an error)."""

    run_id: str | None  # rank 0's MLflow run, once it announced one
    failures: list[RankFailure] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C or SIGTERM reached the launcher

    @property
    def ok(self) -> bool:
        return not self.failures and not self.interrupted

    @property
    def reason(self) -> str | None:
        """One line: why the run did not finish, or None."""
        if self.interrupted:
            return "interrupted"
        return "; ".join(f.describe() for f in self.failures) or None

    @property
    def exit_code(self) -> int:
        """The exit code the launching command should end with: 0, 130, 2 when every rank refused
        its input (a bad config) and 1 otherwise."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        if not self.failures:
            return 0
        return EXIT_BAD_INPUT if all(f.exitcode == EXIT_BAD_INPUT for f in self.failures) else 1


def launch_ranks(nproc: int, command: Sequence[str], *, threads: int | None = None,
                 quiet_ranks: bool = True, max_restarts: int = 0) -> LaunchOutcome:
    """Run `python <command>` as `nproc` ranks on this machine (torchrun --standalone) and wait.

    Args:
        nproc: ranks to start; with CUDA, one per visible GPU at most.
        command: the interpreter's arguments, e.g. ``["-m", "harness", "train", "--epochs", "2"]``.
        threads: OMP/torch threads per rank; default $OMP_NUM_THREADS, else the cores shared out.
        quiet_ranks: send the stdout of ranks other than 0 to a log file that is then deleted
            (they print what rank 0 prints); their stderr, where errors go, stays on the console.
        max_restarts: torchrun's worker-group restarts (0: a failure ends the run).

    Returns:
        The outcome; never raises for a failed rank.

    Example:
        >>> launch_ranks(2, ["-m", "harness", "train", "--device", "cpu"]).ok  # doctest: +SKIP
        True
    """
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: give at least 1 process")
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    cores = os.cpu_count() or 1
    env = {"OMP_NUM_THREADS": str(threads or os.environ.get("OMP_NUM_THREADS") or max(1, cores // nproc))}
    with tempfile.TemporaryDirectory(prefix="harness-ranks-") as tmp:
        run_id_file = Path(tmp) / "run_id"
        env[RUN_ID_FILE_ENV] = str(run_id_file)
        argv = ["--standalone", f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}",
                f"--log-dir={Path(tmp) / 'logs'}"]
        if quiet_ranks and nproc > 1:
            argv.append("--redirects=" + ",".join(f"{r}:1" for r in range(1, nproc)))  # 1: stdout
        # As torchrun starts a `-m` module: this interpreter, unbuffered so rank 0's lines come as printed.
        argv += ["--no-python", os.environ.get("PYTHON_EXEC", sys.executable), "-u", *command]
        outcome = LaunchOutcome(run_id=None)
        with _environ(env), _quiet_logging(), _own_signal_handlers():
            try:
                torchrun.run(torchrun.parse_args(argv))
            except ChildFailedError as e:
                outcome.failures = _failures(e)
            except (SignalException, KeyboardInterrupt):
                outcome.interrupted = True
        if run_id_file.is_file():
            outcome.run_id = run_id_file.read_text().strip() or None
    return outcome


def _failures(error: object) -> list[RankFailure]:
    found = [RankFailure(rank=rank, exitcode=f.exitcode, timestamp=f.timestamp)
             for rank, f in error.failures.items()]  # type: ignore[attr-defined]
    # Within the same second a death by signal is the cause, an exit with an error its consequence
    # (a collective that lost its peer); the launcher's own SIGTERM comes last.
    def cause_first(f: RankFailure) -> tuple[int, int, int]:
        consequence = 2 if f.exitcode in (EXIT_INTERRUPTED, -signal.SIGTERM) else (0 if f.exitcode < 0 else 1)
        return (f.timestamp, consequence, f.rank)

    return sorted(found, key=cause_first)


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set `values` for the ranks (the launcher hands them this process's environment), then restore."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextmanager
def _quiet_logging() -> Iterator[None]:
    """The launcher logs each failed rank with a traceback at ERROR; the caller says it in one line
    (and the ranks' own stderr is on the console). Nothing else logs in this process meanwhile."""
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


@contextmanager
def _own_signal_handlers() -> Iterator[None]:
    """The launcher installs handlers of its own for SIGINT, SIGTERM, SIGHUP and SIGQUIT (to pass them
    on to the ranks) and leaves them there; the caller's come back afterwards."""
    names = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
    saved = {getattr(signal, n): signal.getsignal(getattr(signal, n)) for n in names if hasattr(signal, n)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            if handler is not None:
                signal.signal(signum, handler)


def given_options(ctx: object, *, drop: Sequence[str] = ()) -> list[str]:
    """The options a click/typer command was given on its command line (not its defaults), as
    arguments that repeat them: what each rank of `harness train --nproc N` is started with.
    Paths are made absolute. `ctx` is the command's `typer.Context` (a click context)."""
    out: list[str] = []
    for param in ctx.command.params:  # type: ignore[attr-defined]
        if param.param_type_name != "option" or param.name in drop:
            continue
        source = ctx.get_parameter_source(param.name)  # type: ignore[attr-defined]
        if source is None or source.name == "DEFAULT":
            continue
        value = ctx.params.get(param.name)  # type: ignore[attr-defined]
        if param.is_flag:
            if param.secondary_opts:
                out.append(param.opts[0] if value else param.secondary_opts[0])
            elif value:
                out.append(param.opts[0])
            continue
        for item in value if param.multiple else [value]:
            out += [param.opts[0], str(Path(item).absolute()) if isinstance(item, Path) else str(item)]
    return out
