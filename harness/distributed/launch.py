"""`harness train --nproc N`: start N ranks through torch's own elastic launcher and say how they ended.

`torch.distributed.run` (what `torchrun` runs) is called in this process with a standalone rendezvous, so
ranks start as under a user's `torchrun`. Ctrl-C or SIGTERM reaches the launcher, which passes SIGTERM on
and SIGKILLs any rank still there 30 s later; when a rank dies it stops the others. `launch_ranks` reports
which rank ended first and how, and the run id rank 0 announced, so `harness.tracking.close_after_ranks`
can end the run FAILED even when rank 0 never could.
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
from unittest import mock

from harness.distributed.group import RUN_ID_FILE_ENV
from harness.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, ConfigError


@dataclass(frozen=True)
class RankFailure:
    rank: int
    exitcode: int  # negative: killed by that signal
    timestamp: int  # seconds since the epoch, when the launcher saw it

    def describe(self) -> str:
        if self.exitcode >= 0:
            return f"rank {self.rank} exited with status {self.exitcode}"
        name = next((f" ({s.name})" for s in signal.Signals if s == -self.exitcode), "")
        return f"rank {self.rank} exited with signal {-self.exitcode}{name}"


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
        return "interrupted" if self.interrupted else "; ".join(f.describe() for f in self.failures) or None

    @property
    def exit_code(self) -> int:
        """The launching command's exit code: 0, 130, 2 when every rank refused its input, else 1."""
        if self.interrupted or not self.failures:
            return EXIT_INTERRUPTED if self.interrupted else 0
        return EXIT_BAD_INPUT if all(f.exitcode == EXIT_BAD_INPUT for f in self.failures) else EXIT_FAILED


def launch_ranks(nproc: int, command: Sequence[str], *, threads: int | None = None,
                 quiet_ranks: bool = True, max_restarts: int = 0) -> LaunchOutcome:
    """Run `python <command>` (e.g. ``["-m", "harness", "train"]``) as `nproc` ranks here; the outcome, never raised.
    `threads` a rank: default $OMP_NUM_THREADS, else the cores shared out; `quiet_ranks`: only rank 0's stdout kept."""
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: give at least 1 process")
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    per_rank = threads or os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // nproc)
    with tempfile.TemporaryDirectory(prefix="harness-ranks-") as tmp:
        run_id_file = Path(tmp) / "run_id"
        env = {"OMP_NUM_THREADS": str(per_rank), RUN_ID_FILE_ENV: str(run_id_file)}
        argv = ["--standalone", f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}",
                f"--log-dir={Path(tmp) / 'logs'}"]
        if quiet_ranks and nproc > 1:
            argv.append("--redirects=" + ",".join(f"{r}:1" for r in range(1, nproc)))  # 1: stdout
        # As torchrun starts a `-m` module: this interpreter, unbuffered so rank 0's lines come as printed.
        argv += ["--no-python", os.environ.get("PYTHON_EXEC", sys.executable), "-u", *command]
        outcome = LaunchOutcome(run_id=None)
        # The launcher hands the ranks this process's environment: `env` is set for them, then restored.
        with mock.patch.dict(os.environ, env), _launcher_undone():
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
    return sorted(found, key=lambda f: (f.timestamp, 2 if f.exitcode in (EXIT_INTERRUPTED, -signal.SIGTERM)
                                        else int(f.exitcode >= 0), f.rank))


@contextmanager
def _launcher_undone() -> Iterator[None]:
    """The launcher logs each failed rank with a traceback at ERROR (the caller says it in one line) and
    leaves its own handlers for SIGINT, SIGTERM, SIGHUP and SIGQUIT installed: both undone afterwards."""
    names = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
    saved = {getattr(signal, n): signal.getsignal(getattr(signal, n)) for n in names if hasattr(signal, n)}
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        for signum, handler in saved.items():
            if handler is not None:
                signal.signal(signum, handler)


def given_options(ctx: object, *, drop: Sequence[str] = ()) -> list[str]:
    """The options a click/typer command (`ctx`: its context) was given on its command line, not its defaults,
    as arguments that repeat them, paths made absolute: what each rank of `harness train --nproc N` gets."""
    out: list[str] = []
    for param in ctx.command.params:  # type: ignore[attr-defined]
        source = ctx.get_parameter_source(param.name)  # type: ignore[attr-defined]
        if param.param_type_name != "option" or param.name in drop or source is None or source.name == "DEFAULT":
            continue
        value = ctx.params.get(param.name)  # type: ignore[attr-defined]
        if param.is_flag:  # --flag, or --no-flag when the option has that form
            out += [param.opts[0]] if value else param.secondary_opts[:1]
            continue
        for item in value if param.multiple else [value]:
            out += [param.opts[0], str(Path(item).absolute()) if isinstance(item, Path) else str(item)]
    return out
