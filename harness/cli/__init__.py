"""The command line: one small typed function per command, in modules `prepare` (demo-data, prepare, audit),
`training` (train, check), `release` (predict, submit, champion), `study` (tune, dashboard), `scoring`,
`pack` and `servers` (ui, server).

Commands let `harness.errors` through: `_Commands.invoke` turns them into one line and an exit code (2 bad
input, 1 failed job or I/O error, 130 Ctrl-C or SIGTERM). Heavy imports live in command bodies (fast --help).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from typer.core import TyperGroup

from harness import __version__
from harness.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_PIPE_CLOSED, HarnessError, io_message


class _Commands(TyperGroup):
    """The one place errors become exit codes: a HarnessError its line and code, an OSError the path and 1,
    Ctrl-C (and SIGTERM) "interrupted" and 130, stdout's reader gone (`| head`) nothing and 141; here, not in
    `main`, so `CliRunner(app)` sees what users do.

    `_plain_help` undoes typer's `<bool>` after flags, `[train]` read as markup and kept line breaks (rich's
    markdown mode would too, at 0.2 s more every --help)."""

    def get_params(self, ctx: click.Context) -> list:
        return _plain_help(super().get_params(ctx))

    def get_command(self, ctx: click.Context, name: str) -> object:
        command = super().get_command(ctx, name)
        if command is not None:
            _plain_help([command, *command.get_params(ctx)])  # the help option is made once and kept: reached too
        return command

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (HarnessError, OSError) as e:
            if isinstance(e, BrokenPipeError) and _silence_closed_output():
                raise typer.Exit(EXIT_PIPE_CLOSED) from None
            harness_error = isinstance(e, HarnessError)
            message = " ".join(str(e).split()) if harness_error else io_message(e)
            typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
            raise typer.Exit(e.exit_code if harness_error else EXIT_FAILED) from None
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

DataOption = Annotated[Optional[Path], typer.Option(
    "--data", help="Dataset folder (trainset/, valset/, testset/, label files). Default: the built-in demo dataset.")]
MethodsOption = Annotated[Optional[Path], typer.Option("--methods", help="video_name,method[,modality] file naming each "
                          "fake's forgery method (reals: real). Default: methods.csv in the dataset folder, when there.")]
CacheOption = Annotated[Optional[Path], typer.Option(
    "--cache", help="Feature cache root. Default: $HARNESS_CACHE, else .cache/features in the project.")]


def _plain_help(items: list) -> list:
    """Each command or parameter once: flags without a metavar, help text reflowed."""
    for item in items:
        if not getattr(item, "_plain", False):
            item._plain = True
            item.help = item.help and _reflow(item.help)
            if getattr(item, "is_flag", False) and item.metavar is None:
                item.metavar = ""
    return items


def _reflow(text: str) -> str:
    """Paragraphs on one line each, brackets escaped from rich's markup."""
    from inspect import cleandoc

    return "\n\n".join(" ".join(p.split()) for p in cleandoc(text).split("\n\n")).replace("[", "\\[")


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
    """The given dataset folder, else the demo dataset, (re)generated when missing or made by another generator
    version; a `data/demo` that is not one, or made with other parameters, is refused (BadInput), untouched."""
    if data is not None:
        return data
    from harness.data.demo import make_demo_dataset
    from harness.paths import demo_data_dir

    out = demo_data_dir()
    return make_demo_dataset(out, replace_older=True,
                             on_build=lambda why: typer.echo(f"Generating the demo dataset in {out} ({why}) ...", err=True))


def _silence_closed_output() -> bool:
    """Whether stdout or stderr lost its reader (a pipe whose reading end closed), each such one pointed at
    /dev/null: nothing more to say (a broken pipe elsewhere, an MLflow server's socket, is an error), and the
    interpreter's last flush at exit would raise again ("Exception ignored ... BrokenPipeError")."""
    import os
    import select

    closed = False
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # replaced by a test runner's buffer: it has no reader to lose
            continue
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        if any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0)):  # Linux: no reader
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
            closed = True
    return closed


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (timeout, docker stop) takes Ctrl-C's clean-up path


def main(argv: list[str] | None = None) -> None:
    """The `harness` entry point: `_Commands.invoke` maps errors to exit codes, this adds the SIGTERM handler;
    usage errors are click's (exit 2)."""
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(args=argv, standalone_mode=False)
        sys.stdout.flush()  # here, not at exit, where a closed pipe is reported after the fact
    except (KeyboardInterrupt, typer.Abort):  # outside a command (typer maps most to exit 130 itself)
        typer.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except typer.TyperException as e:  # usage errors: click's message, exit 2
        e.show()
        sys.exit(e.exit_code)
    except BrokenPipeError:  # the last buffered lines of a command (--help's own: click exits 1, quietly)
        if not _silence_closed_output():
            raise
        sys.exit(EXIT_PIPE_CLOSED)
    sys.exit(code if isinstance(code, int) else 0)


# The command modules register themselves on `app` when imported (help lists them in this order).
from harness.cli import prepare, training, release, scoring, study, pack, servers  # noqa: E402, F401

if __name__ == "__main__":
    main()
