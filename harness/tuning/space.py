"""The search space: what a dimension is, how a spec's `[space]` table becomes dimensions, how a
trial's values become run settings, and how a trial draws its values.

A dimension names a `RunConfig` setting by a short alias (`lr`, `backbone`, ...; see `ALIASES`), by
a dotted path (`train.optimizer`, `features.n_mels`) or as `input_size` ("HxW": mel bins x time
steps). Its value in the spec says what kind it is: a list of two or more choices (`Categorical`),
a table with `low` and `high` (`IntRange` or `FloatRange`, following the setting's type), or one
value (`Fixed`, applied to every trial). Every value is type-checked against the setting's
annotation when the spec loads, naming the key.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from harness.config import MODALITIES, AudioFeatures, RunConfig, from_dict
from harness.tuning.errors import SpecError

# Short names for the usual dimensions; any other dimension is a dotted RunConfig path
# ("train.optimizer", "train.augment.mixup", "features.n_mels").
ALIASES = {
    "backbone": "train.backbone",
    "lr": "train.lr",
    "loss": "train.loss",
    "weight_decay": "train.weight_decay",
    "batch_size": "train.batch_size",
    "augment_strength": "train.augment.strength",
    "epochs": "train.epochs",
    "optimizer": "train.optimizer",
    "label_smoothing": "train.label_smoothing",
    "drop_rate": "train.drop_rate",
    "mixup": "train.augment.mixup",
    "video_backbone": "train.video_backbone",
    "frames": "video.frames",
    "face_size": "video.size",
    "window_seconds": "features.window_seconds",
    "eval_windows": "features.eval_windows",
    "trim_silence": "features.trim_silence",
    "codec_variants": "features.codec_variants",
    "aggregate": "train.aggregate",
    "frame_aggregate": "train.frame_aggregate",
    "ema": "train.ema_decay",
    "jpeg": "train.augment.jpeg",
    "jpeg_quality": "train.augment.jpeg_quality",
    "downscale": "train.augment.downscale",
}
INPUT_SIZE = "input_size"  # "HxW" strings: features.height (mel axis) x features.width (time axis)
# Settings of the study as a whole: the same in every trial, so never searched.
STUDY_SETTINGS = ("train.max_params", "train.seed", "train.device", "train.weights", "train.pretrained")


@dataclass(frozen=True)
class Categorical:
    choices: tuple[Any, ...]


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False
    step: float | None = None


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False
    step: int = 1


@dataclass(frozen=True)
class Fixed:
    value: Any


Dimension = Categorical | FloatRange | IntRange | Fixed


# ------------------------------------------------------------------------------------- types

def type_problem(value: Any, annotation: Any) -> str | None:
    """None when `value` (as TOML gives it) fits `annotation`, else "expected ..., got ...".

    An int is fine where a float is expected; a bool is never a number.

    Example:
        >>> type_problem("false", bool)
        "expected true or false, got 'false'"
    """
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if _fits(value, option):
            return None
    wanted = " or ".join(_NAMES.get(o, _describe_type(o)) for o in options if o is not type(None))
    return f"expected {wanted}, got {value!r}"


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}


def _fits(value: Any, option: Any) -> bool:
    if option is Any:
        return True
    if option is bool:
        return isinstance(value, bool)
    if option is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if option is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if option is str:
        return isinstance(value, str)
    origin = typing.get_origin(option)
    if origin in (list, tuple):
        inner = typing.get_args(option)[:1] or (Any,)
        return isinstance(value, list) and all(_fits(v, inner[0]) for v in value)
    return isinstance(option, type) and isinstance(value, option)


def _describe_type(option: Any) -> str:
    if typing.get_origin(option) in (list, tuple):
        inner = (typing.get_args(option)[:1] or (Any,))[0]
        return f"a list of {_NAMES.get(inner, 'values').removeprefix('a ').removeprefix('an ')}s"
    return getattr(option, "__name__", str(option))


def check_type(where: str, value: Any, annotation: Any) -> None:
    """Raise SpecError("<where>: expected ..., got ...") when `value` does not fit `annotation`."""
    problem = type_problem(value, annotation)
    if problem is not None:
        raise SpecError(f"{where}: {problem}")


def check_table_types(where: str, table: dict[str, Any], cls: type, *, prefix: str = "") -> None:
    """Type-check every value of a TOML table against the fields of dataclass `cls`, nested tables
    against nested dataclasses, naming the key: "[base] train.epochs: expected an integer, got '3'".
    Unknown keys are left to the caller (they get their own message)."""
    hints = typing.get_type_hints(cls)
    for key, value in table.items():
        if key not in hints:
            continue
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            check_table_types(where, value, hints[key], prefix=f"{prefix}{key}.")
        else:
            check_type(f"{where} {prefix}{key}", value, hints[key])


# ------------------------------------------------------------------------------ parsing

def path_of(name: str) -> str:
    """The RunConfig path a dimension sets ("lr" -> "train.lr")."""
    return "features.height+width" if name == INPUT_SIZE else ALIASES.get(name, name)


def setting(path: str, base: RunConfig) -> tuple[Any, Any]:
    """The default value and type annotation of the setting at dotted `path` in `base`."""
    obj: Any = base
    annotation: Any = RunConfig
    for part in path.split("."):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            raise SpecError(f"[space]: {path!r} is not a setting; use one of {', '.join(ALIASES)}, "
                            f"{INPUT_SIZE} or a dotted path such as train.optimizer")
        annotation = typing.get_type_hints(type(obj))[part]
        obj = getattr(obj, part)
    if dataclasses.is_dataclass(obj):
        raise SpecError(f"[space]: {path!r} is a group of settings, not one setting")
    return obj, annotation


def parse_dimension(name: str, value: Any, base: RunConfig) -> Dimension:
    """One `[space]` entry as a dimension, its values type-checked. Raises SpecError naming `name`."""
    where = f"[space] {name}"
    if name == INPUT_SIZE:
        values = value if isinstance(value, list) else [value]
        for v in values:
            parse_size(v)
        return _choices(where, values)
    path = path_of(name)
    if path == "modality":
        choices = value if isinstance(value, list) else [value]
        if not choices or any(not isinstance(v, str) or v not in MODALITIES for v in choices):
            raise SpecError(f"[space] modality: choose from {', '.join(MODALITIES)}, got {value!r}")
        if "image" in choices and len(choices) > 1:
            raise SpecError("[space] modality: image (face-image datasets) cannot be mixed with clip modalities")
        return _choices(where, choices)
    if path.split(".")[0] not in ("train", "features", "video"):
        raise SpecError(f"[space]: {name!r} is not a modality, train, features or video setting")
    if path in STUDY_SETTINGS:
        raise SpecError(f"[space]: {name} is a study setting, not a search dimension; set it in [study] or [base]")
    default, annotation = setting(path, base)
    if isinstance(value, list):
        for v in value:
            if not isinstance(v, (str, int, float, bool)):
                raise SpecError(f"{where}: choices must be strings, numbers or booleans, got {v!r}")
            check_type(where, v, annotation)
        return _choices(where, value)
    if isinstance(value, dict):
        return _parse_range(where, value, path, default, annotation)
    check_type(where, value, annotation)
    return Fixed(value)


def _choices(where: str, values: list[Any]) -> Categorical | Fixed:
    if not values:
        raise SpecError(f"{where}: an empty list of choices")
    return Categorical(tuple(values)) if len(values) > 1 else Fixed(values[0])


def _parse_range(where: str, value: dict[str, Any], path: str, default: Any, annotation: Any) -> IntRange | FloatRange:
    unknown = set(value) - {"low", "high", "log", "step"}
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: high, log, low, step")
    if "low" not in value or "high" not in value:
        raise SpecError(f"{where}: a range needs low and high")
    if path.startswith(("features.", "video.")):
        raise SpecError(f"{where}: feature settings take a list of choices, not a range "
                        "(every value needs its own feature cache, prepared before the study)")
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        raise SpecError(f"{where}: a range needs a numeric setting; give a list of choices")
    integer = isinstance(default, int)
    number = int if integer else float
    for key in ("low", "high", "step"):
        if key in value:
            check_type(f"{where}.{key}", value[key], number)
    check_type(f"{where}.log", value.get("log", False), bool)
    low, high, log = value["low"], value["high"], value.get("log", False)
    if not low < high or (log and low <= 0):
        raise SpecError(f"{where}: need low < high (and low > 0 with log = true), got {low}, {high}")
    step = value.get("step")
    if step is not None and step <= 0:
        raise SpecError(f"{where}.step: need a step > 0, got {step}")
    if log and step is not None and (not integer or step != 1):
        raise SpecError(f"{where}: a log range takes no step")
    if integer:
        return IntRange(int(low), int(high), log=bool(log), step=int(step or 1))
    return FloatRange(float(low), float(high), log=bool(log), step=None if step is None else float(step))


def parse_size(value: Any) -> tuple[int, int]:
    """An `input_size` value "HxW" as (height, width). Raises SpecError."""
    match = re.fullmatch(r"(\d+)x(\d+)", str(value)) if isinstance(value, str) else None
    if not match:
        raise SpecError(f"[space] {INPUT_SIZE}: {value!r} is not \"HxW\" (mel bins x time steps, e.g. \"128x256\")")
    return int(match[1]), int(match[2])


# ------------------------------------------------------------------------- values and settings

def values_of(dim: Dimension) -> list[Any]:
    """The values a dimension can take at its edges (all choices; a range's ends)."""
    if isinstance(dim, Categorical):
        return list(dim.choices)
    if isinstance(dim, Fixed):
        return [dim.value]
    return [dim.low, dim.high]


def searched(space: tuple[tuple[str, Dimension], ...]) -> tuple[str, ...]:
    """The names of the dimensions that vary between trials (not `Fixed`), in spec order."""
    return tuple(n for n, d in space if not isinstance(d, Fixed))


def dim_json(dim: Dimension) -> dict[str, Any]:
    """A dimension as plain JSON values (for the space hash)."""
    return {"kind": type(dim).__name__, **dataclasses.asdict(dim)}


def describe(dim: Dimension) -> str:
    """A dimension in a few characters, for the parent run's params: "a|b", "1e-4..0.1 log"."""
    if isinstance(dim, Categorical):
        return "|".join(map(str, dim.choices))
    if isinstance(dim, Fixed):
        return str(dim.value)
    return f"{dim.low}..{dim.high}{' log' if dim.log else ''}"


def set_value(config: dict[str, Any], name: str, value: Any, *, n_mels: int) -> None:
    """Write dimension `name`'s `value` into `config` (a RunConfig as nested dicts)."""
    if name == INPUT_SIZE:
        height, width = parse_size(value)
        config["features"]["height"] = None if height == config["features"].get("n_mels", n_mels) else height
        config["features"]["width"] = width
        return
    node = config
    *parents, leaf = path_of(name).split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value


def with_feature(features: AudioFeatures, name: str, value: Any, n_mels: int) -> AudioFeatures:
    """`features` with one `features.*` (or input_size) dimension set to `value`."""
    config = {"features": dataclasses.asdict(features)}
    set_value(config, name, value, n_mels=n_mels)
    return from_dict(AudioFeatures, config["features"])


def suggest(trial: Any, name: str, dim: Dimension) -> Any:
    """Draw dimension `name`'s value for an Optuna trial (`Fixed` ones are not recorded on it)."""
    if isinstance(dim, Categorical):
        return trial.suggest_categorical(name, list(dim.choices))
    if isinstance(dim, FloatRange):
        return trial.suggest_float(name, dim.low, dim.high, log=dim.log, step=dim.step)
    if isinstance(dim, IntRange):
        return trial.suggest_int(name, dim.low, dim.high, log=dim.log, step=dim.step)
    return dim.value
