"""The search space: dimensions, a spec's `[space]` parsed into them, a trial's values made run settings.

A dimension names a `RunConfig` setting by an alias (`lr`: `ALIASES`), a dotted path (`train.optimizer`) or
as `input_size` ("HxW": mel bins x time steps). Its spec value says its kind: a list of two or more choices
(`Categorical`), a table with `low` and `high` (`IntRange`/`FloatRange` by the setting's type), or one
value (`Fixed`). Every value is type-checked when the spec loads, naming the key.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import typing
from dataclasses import dataclass
from typing import Any

from harness.config import MODALITIES, AudioFeatures, RunConfig, TrainConfig, VideoFeatures, from_dict
from harness.tuning.errors import SpecError
from harness.validation import cli_face, type_problem


def _aliases() -> dict[str, str]:
    """Short names of dimensions: a setting's command-line name (`lr`, `face_size`), and a few more."""
    names = {"weight_decay": "train.weight_decay", "augment_strength": "train.augment.strength",
             "drop_rate": "train.drop_rate", "mixup": "train.augment.mixup", "frame_aggregate": "train.frame_aggregate",
             "jpeg": "train.augment.jpeg", "jpeg_quality": "train.augment.jpeg_quality", "downscale": "train.augment.downscale"}
    for section, cls in (("audio", AudioFeatures), ("video", VideoFeatures), ("train", TrainConfig)):
        faces = ((cli_face(f), f.name) for f in dataclasses.fields(cls))
        names.update((face[2:].replace("-", "_"), f"{section}.{name}") for face, name in faces if face)
    return names


ALIASES = _aliases()
INPUT_SIZE = "input_size"  # "HxW" strings: audio.height (mel axis) x audio.width (time axis)
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


def check_type(where: str, value: Any, annotation: Any) -> None:
    """Raise SpecError("<where>: expected ..., got ...") when `value` does not fit `annotation`."""
    if (problem := type_problem(value, annotation)) is not None:
        raise SpecError(f"{where}: {problem}")


def no_unknown(where: str, table: dict[str, Any], known: set[str]) -> None:
    """Raise SpecError naming the keys of `table` that are not `known`."""
    if unknown := set(table) - known:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")


def path_of(name: str) -> str:
    """The RunConfig path a dimension sets ("lr" -> "train.lr")."""
    return "audio.height+width" if name == INPUT_SIZE else ALIASES.get(name, name)


def setting(path: str, base: RunConfig) -> tuple[Any, Any]:
    """The default value and type annotation of the setting at dotted `path` in `base`."""
    obj: Any = base
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
    path = path_of(name)
    choices = value if isinstance(value, list) else [value]
    if name == INPUT_SIZE:
        for v in choices:
            parse_size(v)
        return _choices(where, choices)
    if path == "modality":
        if not choices or any(not isinstance(v, str) or v not in MODALITIES for v in choices):
            raise SpecError(f"[space] modality: choose from {', '.join(MODALITIES)}, got {value!r}")
        if "image" in choices and len(choices) > 1:
            raise SpecError("[space] modality: image (face-image datasets) cannot be mixed with clip modalities")
        return _choices(where, choices)
    if path.split(".")[0] not in ("train", "audio", "video"):
        raise SpecError(f"[space]: {name!r} is not a modality, train, audio or video setting")
    if path in STUDY_SETTINGS:
        raise SpecError(f"[space]: {name} is a study setting, not a search dimension; set it in [study] or [base]")
    default, annotation = setting(path, base)
    if isinstance(value, dict):
        return _parse_range(where, value, path, default)
    for v in choices:
        if isinstance(value, list) and not isinstance(v, (str, int, float, bool)):
            raise SpecError(f"{where}: choices must be strings, numbers or booleans, got {v!r}")
        check_type(where, v, annotation)
    return _choices(where, choices)


def _choices(where: str, values: list[Any]) -> Categorical | Fixed:
    if not values:
        raise SpecError(f"{where}: an empty list of choices")
    return Categorical(tuple(values)) if len(values) > 1 else Fixed(values[0])


def _parse_range(where: str, value: dict[str, Any], path: str, default: Any) -> IntRange | FloatRange:
    no_unknown(where, value, {"low", "high", "log", "step"})
    if "low" not in value or "high" not in value:
        raise SpecError(f"{where}: a range needs low and high")
    if path.startswith(("audio.", "video.")):
        raise SpecError(f"{where}: feature settings take a list of choices, not a range "
                        "(every value needs its own feature cache, prepared before the study)")
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        raise SpecError(f"{where}: a range needs a numeric setting; give a list of choices")
    integer = isinstance(default, int)
    low, high, log, step = value["low"], value["high"], value.get("log", False), value.get("step")
    for key in (k for k in ("low", "high", "step") if k in value):
        check_type(f"{where}.{key}", value[key], int if integer else float)
    check_type(f"{where}.log", log, bool)
    if not low < high or (log and low <= 0):
        raise SpecError(f"{where}: need low < high (and low > 0 with log = true), got {low}, {high}")
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


def values_of(dim: Dimension) -> list[Any]:
    """The values a dimension can take at its edges (all choices; a range's ends)."""
    if isinstance(dim, Categorical):
        return list(dim.choices)
    return [dim.value] if isinstance(dim, Fixed) else [dim.low, dim.high]


def searched(space: tuple[tuple[str, Dimension], ...]) -> tuple[str, ...]:
    """The names of the dimensions that vary between trials (not `Fixed`), in spec order."""
    return tuple(n for n, d in space if not isinstance(d, Fixed))


def describe(dim: Dimension) -> str:
    """A dimension in a few characters, for the parent run's params: "a|b", "1e-4..0.1 log"."""
    if isinstance(dim, (Categorical, Fixed)):
        return "|".join(map(str, values_of(dim)))
    return f"{dim.low}..{dim.high}{' log' if dim.log else ''}"


def set_value(config: dict[str, Any], name: str, value: Any, *, n_mels: int) -> None:
    """Write dimension `name`'s `value` into `config` (a RunConfig as nested dicts)."""
    if name == INPUT_SIZE:
        height, width = parse_size(value)
        config["audio"]["height"] = None if height == config["audio"].get("n_mels", n_mels) else height
        config["audio"]["width"] = width
        return
    *parents, leaf = path_of(name).split(".")
    functools.reduce(dict.__getitem__, parents, config)[leaf] = value


def with_feature(features: AudioFeatures, name: str, value: Any, n_mels: int) -> AudioFeatures:
    """`features` with one `audio.*` (or input_size) dimension set to `value`."""
    config = {"audio": dataclasses.asdict(features)}
    set_value(config, name, value, n_mels=n_mels)
    return from_dict(AudioFeatures, config["audio"])


def suggest(trial: Any, name: str, dim: Dimension) -> Any:
    """Draw dimension `name`'s value for an Optuna trial (`Fixed` ones are not recorded on it)."""
    if isinstance(dim, Categorical):
        return trial.suggest_categorical(name, list(dim.choices))
    if isinstance(dim, Fixed):
        return dim.value
    suggest_range = trial.suggest_int if isinstance(dim, IntRange) else trial.suggest_float
    return suggest_range(name, dim.low, dim.high, log=dim.log, step=dim.step)
