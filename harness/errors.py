"""The one error policy: library code raises these; `harness.cli.main` maps them to exit codes once:
`BadInput` (exit 2: the user can fix an argument, a file or a dataset), `JobFailed` (exit 1: acceptable
input, failed job), interrupted (exit 130: Ctrl-C, or SIGTERM turned into KeyboardInterrupt), the reader of
stdout gone (exit 141, quietly: `harness score ... | head -1`). Messages are
one line naming the file, key or value at fault. Bad input is not a `ValueError`, so a handler for a
library's ValueError never swallows a refusal.
"""
from __future__ import annotations

import os

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE: what a shell reports for a Unix tool whose reader went away (`| head`)


class HarnessError(Exception):
    """Base of every error the command line reports as one line."""

    exit_code = EXIT_FAILED


class BadInput(HarnessError):
    """Something the user gave is wrong (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class JobFailed(HarnessError, RuntimeError):
    """The job ran on acceptable input and did not succeed (exit 1)."""


class ConfigError(BadInput):
    """A setting has an unknown name, the wrong type or a value out of range."""


class NotFound(BadInput, LookupError):
    """A run, study, model, backbone or path that was named does not exist."""


def io_message(error: OSError) -> str:
    """One line for an OS-level I/O error, naming the path: 'no space left on device: /x/y'."""
    reason = os.strerror(error.errno).lower() if error.errno else str(error)
    where = " -> ".join(str(f) for f in (error.filename, error.filename2) if f is not None)
    return f"{reason}: {where}" if where else reason
