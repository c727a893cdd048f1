"""Run `harness ...` in-process through `harness.cli.main`, the one place errors become exit codes.

typer's CliRunner calls the app directly, so a typed error would surface as an exception there;
this goes through `main` as the console script does, capturing stdout and stderr apart.
"""
from __future__ import annotations

import signal
import sys
from typing import NamedTuple

from click.testing import CliRunner


class Result(NamedTuple):  # a tuple too: `code, out, err = run_main(...)`
    exit_code: int
    stdout: str
    stderr: str


def run_main(*argv: str) -> Result:
    """`harness *argv` through `harness.cli.main`; its SIGTERM handler is put back afterwards."""
    from harness.cli import main

    previous = signal.getsignal(signal.SIGTERM)
    with CliRunner().isolation() as (stdout, stderr, _):
        try:
            main(list(argv))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            signal.signal(signal.SIGTERM, previous)
            sys.stdout.flush()  # the capture's text layer buffers what was not echoed through click
            sys.stderr.flush()
        out, err = stdout.getvalue().decode(), stderr.getvalue().decode()
    return Result(code, out, err)
