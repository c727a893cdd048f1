"""The one error policy: library code raises these; `harness.cli.main` maps them to exit codes once.

- `BadInput` (exit 2): the user can fix it by changing an argument, a file or a dataset — an unknown
  name, a value out of range, a malformed label file, a run id that does not exist.
- `JobFailed` (exit 1): the input was acceptable but the job did not succeed — a diverged loss, a
  study where no trial completed, a prediction file that failed its own validation, a full disk.
- Interrupted (exit 130): Ctrl-C or SIGTERM; `cli.main` turns SIGTERM into KeyboardInterrupt so
  both take the same cleanup path.

Every message is one line that names the file, key or value at fault. Subclasses exist where a
caller needs to tell cases apart (`DatasetError`, `SpecError`, ...); they keep their exit code by
inheriting from one of the two bases. They also inherit `ValueError`/`RuntimeError` so code written
against the older built-in types keeps working.
"""
from __future__ import annotations

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class HarnessError(Exception):
    """Base of every error the command line reports as one line."""

    exit_code = EXIT_FAILED


class BadInput(HarnessError, ValueError):
    """Something the user gave is wrong (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class JobFailed(HarnessError, RuntimeError):
    """The job ran on acceptable input and did not succeed (exit 1)."""

    exit_code = EXIT_FAILED


class ConfigError(BadInput):
    """A setting has an unknown name, the wrong type or a value out of range."""


class NotFound(BadInput, LookupError):
    """A run, study, model, backbone or path that was named does not exist."""


def io_message(error: OSError) -> str:
    """One line for an OS-level I/O error, naming the path: 'no space left on device: /x/y'."""
    import os

    reason = os.strerror(error.errno).lower() if error.errno else str(error)
    where = error.filename if error.filename is not None else ""
    if error.filename2 is not None:
        where = f"{where} -> {error.filename2}"
    return f"{reason}: {where}" if where else reason
