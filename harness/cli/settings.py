"""Command-line options made from the settings' fields, so a setting is declared once, in `harness.config`.

`settings_options("audio", "video", "train")` adds an option per field of those sections with a
command-line face (a help panel per section), `--modality`, and a repeatable `--set section.key=value`
reaching every field. The command gets what was given as one `changes` dict (dotted path -> value) for
`harness.config.with_changes`, which checks it like a config file: the rules live in the fields only.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from harness.config import RunConfig, parse_assignment
from harness.errors import ConfigError
from harness.validation import cli_face

PANELS = {"audio": "Audio features (log-mels)", "video": "Face crops", "train": "Training"}
SET_HELP = ("Any setting, with or without an option of its own: train.weight_decay=0.05, train.augment.mixup=0.2 "
            "(repeatable; the value as in a TOML config file).")


def settings_options(*sections: str, cached_only: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer command taking `changes` with `--modality`, the faces of `sections` (`cached_only`: those
    deciding the cache) and `--set`."""
    faces = _faces(sections, cached_only)

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "changes"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
                 for name, _, annotation in faces]
        added.append(inspect.Parameter("assignments", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[list[str]], typer.Option("--set", metavar="SECTION.KEY=VALUE", help=SET_HELP, rich_help_panel="Settings")]))

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            changes = {path: value for name, path, _ in faces if (value := kwargs.pop(name)) is not None}
            changes.update(parse_assignment(text) for text in kwargs.pop("assignments") or ())
            return command(*args, changes=changes, **kwargs)

        run.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined] - what typer reads
        return run

    return decorate


def _faces(sections: tuple[str, ...], cached_only: bool) -> list[tuple[str, str, Any]]:
    """(parameter name, dotted path, typer annotation) of every field with a face, RunConfig's first."""
    hints = typing.get_type_hints(RunConfig)
    out = [_option(f, f.name, hints[f.name], "Settings") for f in dataclasses.fields(RunConfig) if cli_face(f)]
    for section in sections:
        cls = hints[section]
        for field in dataclasses.fields(cls):
            if cli_face(field) and (field.metadata.get("cached", True) or not cached_only):
                out.append(_option(field, f"{section}.{field.name}", typing.get_type_hints(cls)[field.name], PANELS[section]))
    return out


def _option(field: dataclasses.Field, path: str, hint: Any, panel: str) -> tuple[str, str, Any]:
    name = cli_face(field)
    assert name is not None
    kind = next(a for a in typing.get_args(hint) if a is not type(None)) \
        if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint
    default = field.default
    shown = "" if default is None else f" [default: {('on' if default else 'off') if kind is bool else default}]"
    declared = (f"{name}/--no-{name[2:]}",) if kind is bool else (name,)
    option = typer.Option(*declared, help=field.metadata["help"] + shown, rich_help_panel=panel, show_default=False)
    return path.replace(".", "__"), path, Annotated[Optional[kind], option]


def field_option(cls: type, name: str) -> Any:
    """One field's option for a command taking that setting alone (`predict --device`); its rule refuses a value
    naming the option (exit 2) before the command runs."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    rule = field.metadata["rule"]

    def check(value: Any) -> Any:
        if value is not None and rule is not None and (problem := rule(value)) is not None:
            raise ConfigError(f"{cli_face(field)}: {problem}")
        return value

    return typer.Option(cli_face(field), help=field.metadata["help"], callback=check)
