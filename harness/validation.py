"""Settings fields and their checks, for `harness.config` and the study spec's tables: `setting` declares
a field once, `Validated` checks a frozen dataclass when built (types, rules, `_check` across fields),
`from_dict` builds one from nested plain values refusing unknown keys. Every problem is a one-line
`ConfigError` naming the key: `train.epochs: expected an integer, got "1"`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import types
import typing
from typing import Any, Callable

from harness.errors import ConfigError

# A rule takes a value of the right type and says what is wrong with it (None: fine).
Rule = Callable[[Any], "str | None"]


def setting(default: Any, rule: Rule | None = None, help: str = "", *, option: str | bool = False,
            cached: bool = True) -> Any:
    """A settings field; `option`: True for `--field-name`, a name, or False; `cached=False`: not in cache keys."""
    return dataclasses.field(default=default, metadata={"rule": rule, "help": help, "option": option, "cached": cached})


def cli_face(field: dataclasses.Field) -> str | None:
    """The option name of a field (`--face-size`), or None when it has none."""
    option = field.metadata.get("option")
    return f"--{field.name.replace('_', '-')}" if option is True else option or None


def _shown(value: Any) -> str:
    """A value as the user wrote it: strings quoted, true/false/null as in TOML and JSON."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def at_least(low: float) -> Rule:
    return lambda v: None if v >= low else f"must be >= {low:g}, got {_shown(v)}"


def more_than(low: float) -> Rule:
    return lambda v: None if v > low else f"must be > {low:g}, got {_shown(v)}"


def at_most(high: float) -> Rule:
    return lambda v: None if v <= high else f"must be <= {high:g}, got {_shown(v)}"


def between(low: float, high: float, *, high_open: bool = False, low_open: bool = False) -> Rule:
    """low <= v <= high (or < high, > low)."""
    opening, close = ("(" if low_open else "["), (")" if high_open else "]")
    return lambda v: None if (v > low if low_open else v >= low) and (v < high if high_open else v <= high) \
        else f"must lie in {opening}{low:g}, {high:g}{close}, got {_shown(v)}"


def one_of(choices: tuple[str, ...], what: str, *, pattern: tuple[str, str] | None = None) -> Rule:
    """A name from `choices` (or matching `pattern`: (regex, how it reads)); the message lists them."""
    listed = ", ".join(choices) + (f" or {pattern[1]}" if pattern else "")
    return lambda v: None if v in choices or (pattern is not None and re.fullmatch(pattern[0], v)) \
        else f"unknown {what} {v!r}; choose from {listed}"


def not_empty(v: str) -> str | None:
    return None if v.strip() else f"must not be empty, got {_shown(v)}"


def optional(rule: Rule) -> Rule:
    return lambda v: None if v is None else rule(v)


_field_types: Callable[[type], dict[str, Any]] = functools.cache(typing.get_type_hints)
_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}


def type_problem(value: Any, hint: Any) -> str | None:
    """None when `value` (from TOML or a command line) fits `hint`, else "expected ..., got ...". An int fits a
    float; a bool is never a number; a float must be finite; a list fits `list[X]` and `tuple[X, ...]`."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if (value is None and type(None) in options) or any(_fits(value, o) for o in options if o is not type(None)):
        return None
    options = tuple(o for o in options if o is not type(None))
    if float in options and isinstance(value, float):
        return f"expected a finite number, got {_shown(value)}"
    return f"expected {' or '.join(_describe(o) for o in options)}, got {_shown(value)}"


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint in (str, dict) or (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
        return isinstance(value, hint)
    if origin in (list, tuple):
        inner = args[0] if args else Any
        return isinstance(value, (list, tuple)) and all(inner is Any or _fits(v, inner) for v in value)
    return True


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (list, tuple):
        inner = (typing.get_args(hint) or (Any,))[0]
        return f"a list of {_WORDS.get(inner, 'values').removeprefix('a ').removeprefix('an ')}s"
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return "a table of settings"
    return _WORDS.get(hint, getattr(hint, "__name__", str(hint)))


class Validated:
    """Checks a frozen settings dataclass when built (types, rules, `_check`); `_SECTION` names it in messages."""

    _SECTION = ""

    def __post_init__(self) -> None:
        prefix = f"{self._SECTION}." if self._SECTION else ""
        hints = _field_types(type(self))
        for field in dataclasses.fields(self):  # type: ignore[arg-type] - subclasses are dataclasses
            value, rule = getattr(self, field.name), field.metadata.get("rule")
            if problem := type_problem(value, hints[field.name]) or (rule(value) if rule else None):
                raise ConfigError(f"{prefix}{field.name}: {problem}")
        self._check()

    def _check(self) -> None:
        """Rules across fields; raise ConfigError."""


def from_dict(cls: type, values: dict[str, Any], *, where: str = "") -> Any:
    """Any dataclass from nested plain values, each checked, unknown keys refused; ConfigError after `where`."""
    try:
        return _build(cls, values)
    except ConfigError as e:
        if not where:
            raise
        raise ConfigError(f"{where}: {e}") from None


def _build(cls: type, values: Any, section: str = "") -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{section or cls.__name__}: expected a table of settings, got {_shown(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if renamed := getattr(cls, "RENAMED", None):  # a key's old name, still read where the new one is absent
        values = {renamed[k] if k in renamed and renamed[k] not in values else k: v for k, v in values.items()}
    where = f"{section}." if section else ""
    if unknown := sorted(set(values) - set(fields)):
        raise ConfigError(f"{', '.join(where + k for k in unknown)}: unknown setting; known: {', '.join(fields)}")
    hints = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, where + name)
        elif problem := type_problem(value, hint):
            raise ConfigError(f"{where}{name}: {problem}")
        else:
            kwargs[name] = tuple(value) if isinstance(value, list) and typing.get_origin(hint) is tuple else value
    return cls(**kwargs)
