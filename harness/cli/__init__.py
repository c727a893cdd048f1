"""The command line: one small typed function per command, grouped by what they work on.

- `harness.cli.prepare`: demo-data, prepare, audit;  `harness.cli.training`: train, check;
- `harness.cli.release`: predict, submit;  `harness.cli.study`: tune, dashboard;
- `harness.cli.servers`: ui, server.

Library code raises `harness.errors` types and commands let them through: `_Commands.invoke` turns
them into one line and an exit code once (2 bad input, 1 failed job or I/O error, 130 Ctrl-C or
SIGTERM). Heavy libraries are imported inside command bodies so that `harness --help` stays fast.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from typer.core import TyperGroup

from harness import __version__
from harness.errors import EXIT_FAILED, EXIT_INTERRUPTED, HarnessError, io_message


class _Commands(TyperGroup):
    """The one place errors become exit codes (see `harness.errors`): a HarnessError is one line
    and its code (BadInput 2, JobFailed 1); an OSError (no space, read-only) names the path, exit 1;
    Ctrl-C (and SIGTERM, which `main` turns into Ctrl-C) is "interrupted", 130. Here, not in `main`,
    so that `CliRunner(app)` in tests sees exactly what the console script does."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except HarnessError as e:
            raise typer.Exit(_report(" ".join(str(e).split()), e.exit_code)) from None
        except OSError as e:
            raise typer.Exit(_report(io_message(e), EXIT_FAILED)) from None
        except KeyboardInterrupt:
            # Cleanup already ran on the way out (runs closed KILLED, servers and workers stopped).
            typer.echo("interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None


app = typer.Typer(
    cls=_Commands,
    add_completion=False,
    no_args_is_help=True,
    help="Experiment-tracking harness for the multimedia deepfake detection challenge.",
    pretty_exceptions_enable=False,
)

DataOption = Annotated[
    Optional[Path],
    typer.Option("--data", help="Dataset folder (trainset/, valset/, testset/, label files). Default: the built-in demo dataset."),
]
CacheOption = Annotated[
    Optional[Path],
    typer.Option("--cache", help="Feature cache root. Default: $HARNESS_CACHE, else .cache/features in the project."),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"harness {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    """Prepare features, train, tune and submit, with every run recorded in MLflow."""


def resolve_data(data: Path | None) -> Path:
    """The dataset folder to use: the given one, or the demo dataset, generated on first use."""
    if data is not None:
        return data
    from harness.data.demo import make_demo_dataset
    from harness.paths import demo_data_dir

    out = demo_data_dir()
    if not (out / ".demo.json").exists():
        typer.echo(f"Generating the demo dataset in {out} (first use) ...", err=True)
    try:
        return make_demo_dataset(out)
    except ValueError:
        # Our own folder, made by an older version of the generator: make it again.
        import shutil

        typer.echo(f"Regenerating the demo dataset in {out} (made by another version) ...", err=True)
        shutil.rmtree(out)
        return make_demo_dataset(out)


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (timeout, docker stop, batch schedulers) takes Ctrl-C's path: workers and servers are
    # stopped and runs end KILLED by the same handlers.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """The `harness` entry point: runs a command with every error mapped to one line and an exit
    code (see `harness.errors`): BadInput -> 2, JobFailed -> 1, an OS-level I/O error (no space,
    read-only, permission) -> 1 naming the path, Ctrl-C or SIGTERM -> 130 (all by
    `_Commands.invoke`; this installs the SIGTERM handler). Usage errors are click's (exit 2).
    """
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(args=argv, standalone_mode=False)
    except (KeyboardInterrupt, typer.Abort):  # outside a command (typer maps most to exit 130 itself)
        typer.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except typer.TyperException as e:  # usage errors: click's message, exit 2
        e.show()
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def _report(message: str, code: int) -> int:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return code


# The command modules register themselves on `app` when imported (help lists them in this order).
from harness.cli import prepare, training, release, study, servers  # noqa: E402, F401
from harness.cli.prepare import run_prepare  # noqa: E402, F401 - used by tests and other commands
from harness.cli.training import run_train  # noqa: E402, F401

if __name__ == "__main__":
    main()
