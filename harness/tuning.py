"""Hyperparameter search with Optuna: study specs, parallel resumable workers, one MLflow run tree.

The only module that imports optuna. A study is described by a TOML spec (`studies/<name>.toml`,
loaded by `load_spec`): its search space, sampler, pruner, objectives and fixed settings. Every
backbone the space can pick is checked against the competition rules when the spec loads, not in
the middle of the study.

`run_study` runs K worker processes (spawned; one GPU each when GPUs exist) on one Optuna study in
an RDB storage (SQLite by default, PostgreSQL across machines) with heartbeats: a trial whose worker
died (kill -9, a lost machine) goes stale after `grace_period` seconds, is marked FAIL and re-queued
once with the same parameters. Running the same study again resumes it.

Count semantics: `trials=N` means N *finished* trials in the study in total, finished meaning
COMPLETE or PRUNED; failed trials do not count (a study stops early after `max_failures` of them).
Workers take a study-wide lock (a file lock for SQLite, an advisory lock for PostgreSQL) before
starting a trial and start one only while finished + running < N, so the study never overshoots N,
whatever the number of workers or machines; a worker waits rather than stops while trials of other
workers are running, since a failed or stale one needs a replacement.

MLflow: one parent run per study (found again by the study's user attribute `mlflow.parent_run_id`
or by its tags `harness.study` + `harness.study_storage`), one child run per trial logged by
`harness.run.train_run` (`trial-007`, tags `optuna.study`, `optuna.trial_number`, `optuna.state`).
Trial state and run status agree: COMPLETE -> FINISHED, PRUNED -> KILLED (tag `pruned_at_epoch`),
FAIL -> FAILED (tag `error`); a run whose worker was killed is closed KILLED with `orphaned=true`.
Every call goes through an MlflowClient with explicit run ids (never mlflow's active-run stack, the
cause of optuna#5148). The parent carries the best trial so far (metrics `best_trial_<objective>`,
not `best_val_auc`, so `--run-id best` never picks the parent; tags `best.*`, since MLflow params
cannot change once logged) and, after each session, the optimisation
history, parameter importances, parallel coordinates, intermediate values (PNG, via
optuna.visualization.matplotlib) and `trials.csv`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import inspect
import json
import math
import multiprocessing
import os
import re
import socket
import sys
import tempfile
import time
import tomllib
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from harness.errors import ConfigError, JobFailed
from harness import paths
from harness.callbacks import EpochReport, FitResult, StopTraining
from harness.config import MODALITIES, AudioFeatures, RunConfig, VideoFeatures, from_dict, to_dict

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
    from rich.console import RenderableType

# Objective name -> direction. They are val metrics of the best epoch (`FitResult.best_metrics`).
OBJECTIVES = {"val_auc": "maximize", "val_tpr_fpr1e-3": "maximize", "val_eer": "minimize", "val_logloss": "minimize"}
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
}
INPUT_SIZE = "input_size"  # "HxW" strings: features.height (mel axis) x features.width (time axis)
PARENT_ATTR = "mlflow.parent_run_id"
SPACE_ATTR = "harness.space_hash"
_POLL_S = 1.0


class SpecError(ConfigError):
    """The study spec (or the study it names in the storage) cannot be used as it is."""


class StudyError(JobFailed):
    """A worker process crashed. `result` holds what the session did all the same."""

    def __init__(self, message: str, *, result: StudyResult | None = None) -> None:
        super().__init__(message)
        self.result = result


# --------------------------------------------------------------------------------- search space

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


# ------------------------------------------------------------------------- samplers and pruners

@dataclass(frozen=True)
class TPE:
    """Optuna's TPE, seeded. Each worker adds its index and the study's trial count to the seed, so
    parallel workers and resumed sessions do not draw the same random start-up points again."""

    seed: int = 0
    n_startup_trials: int = 10
    multivariate: bool = True
    constant_liar: bool = True  # running trials count as bad guesses, so parallel workers spread out

    def build(self, *, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=self.seed + seed_offset, n_startup_trials=self.n_startup_trials,
                multivariate=self.multivariate, constant_liar=self.constant_liar,
            )


@dataclass(frozen=True)
class RandomSearch:
    seed: int = 0

    def build(self, *, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=self.seed + seed_offset)


@dataclass(frozen=True)
class NoPruning:
    def build(self, spec: StudySpec) -> optuna.pruners.BasePruner:
        return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class MedianPruning:
    """Stop a trial whose best val AUC so far is below the median of earlier trials at that epoch."""

    n_startup_trials: int = 5
    n_warmup_steps: int = 1

    def build(self, spec: StudySpec) -> optuna.pruners.BasePruner:
        return optuna.pruners.MedianPruner(n_startup_trials=self.n_startup_trials, n_warmup_steps=self.n_warmup_steps)


@dataclass(frozen=True)
class SuccessiveHalving:
    """Rungs at min_resource * reduction_factor**k epochs; only the top 1/reduction_factor go on."""

    min_resource: int = 1
    reduction_factor: int = 3
    min_early_stopping_rate: int = 0

    def build(self, spec: StudySpec) -> optuna.pruners.BasePruner:
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=self.min_resource, reduction_factor=self.reduction_factor,
            min_early_stopping_rate=self.min_early_stopping_rate,
        )


@dataclass(frozen=True)
class Hyperband:
    """Several successive-halving brackets with different first rungs; max_resource defaults to
    the study's largest epoch budget."""

    min_resource: int = 1
    reduction_factor: int = 3
    max_resource: int | None = None

    def build(self, spec: StudySpec) -> optuna.pruners.BasePruner:
        return optuna.pruners.HyperbandPruner(
            min_resource=self.min_resource, max_resource=self.max_resource or spec.max_epochs(),
            reduction_factor=self.reduction_factor,
        )


Sampler = TPE | RandomSearch
Pruner = NoPruning | MedianPruning | SuccessiveHalving | Hyperband
SAMPLERS: dict[str, type] = {"tpe": TPE, "random": RandomSearch}
PRUNERS: dict[str, type] = {
    "none": NoPruning, "median": MedianPruning, "successive_halving": SuccessiveHalving, "hyperband": Hyperband,
}


@dataclass(frozen=True)
class Heartbeat:
    """A running trial writes a heartbeat every `interval` s; one silent for `grace_period` s is
    failed by the next worker that looks and re-queued (same parameters) up to `max_retry` times."""

    interval: int = 10
    grace_period: int = 30
    max_retry: int = 2


# ---------------------------------------------------------------------------------------- spec

@dataclass(frozen=True)
class StudySpec:
    name: str
    experiment: str  # MLflow experiment of the parent and trial runs
    objectives: tuple[str, ...]  # the first one is the one pruned on and ranked by
    space: tuple[tuple[str, Dimension], ...]
    base: RunConfig  # every setting a dimension does not set
    sampler: Sampler = TPE()
    pruner: Pruner = MedianPruning()
    trials: int = 50  # default target: finished (complete + pruned) trials in total
    workers: int = 1  # default number of local worker processes
    max_failures: int = 10  # a study stops once this many of its trials have failed
    heartbeat: Heartbeat = Heartbeat()
    source: str = ""  # the TOML text, logged on the parent run
    path: str | None = None

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives]

    def dimension(self, name: str) -> Dimension | None:
        return dict(self.space).get(name)

    def config_for(self, values: dict[str, Any]) -> RunConfig:
        """The run settings of one trial: `base`, the fixed dimensions, then `values` applied."""
        config = to_dict(self.base)
        fixed = {n: d.value for n, d in self.space if isinstance(d, Fixed)}
        for name, value in {**fixed, **values}.items():
            _set_value(config, name, value, n_mels=self.base.features.n_mels)
        return from_dict(RunConfig, config)

    def modalities(self) -> list[str]:
        dim = self.dimension("modality")
        return [str(v) for v in _values_of(dim)] if dim is not None else [self.base.modality]

    def feature_configs(self) -> list[AudioFeatures]:
        """Every distinct audio feature setting a trial can use, so that all are prepared up front."""
        choices = [(n, _values_of(d)) for n, d in self.space if n == INPUT_SIZE or _path(n).startswith("features.")]
        configs = [self.base.features]
        for name, values in choices:
            configs = [_with(c, name, v, self.base.features.n_mels) for c in configs for v in values]
        return list(dict.fromkeys(configs))

    def video_configs(self) -> list[VideoFeatures]:
        """Every distinct face-crop setting a trial can use (none when no modality reads faces)."""
        if not any(m != "audio" for m in self.modalities()):
            return []
        configs = [self.base.video]
        for name, dim in self.space:
            if _path(name).startswith("video."):
                leaf = _path(name).split(".", 1)[1]
                configs = [dataclasses.replace(c, **{leaf: v}) for c in configs for v in _values_of(dim)]
        return list(dict.fromkeys(configs))

    def prepare_configs(self) -> list[RunConfig]:
        """Run settings that, prepared, cover every input a trial can read: what `tune` prepares first."""
        out = [dataclasses.replace(self.base, modality="audio", features=f) for f in self.feature_configs()
               if "audio" in self.modalities() or "fusion" in self.modalities()]
        face = "image" if "image" in self.modalities() else "video"
        out += [dataclasses.replace(self.base, modality=face, video=v) for v in self.video_configs()]
        return out

    def max_epochs(self) -> int:
        dim = self.dimension("epochs")
        return int(max(_values_of(dim))) if dim is not None else self.base.train.epochs

    def space_hash(self) -> str:
        """What a stored study must have been created from to be resumed: objectives, space, base."""
        blob = {"objectives": list(self.objectives), "space": [[n, _dim_json(d)] for n, d in self.space],
                "base": to_dict(self.base)}
        return hashlib.sha1(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_spec(name_or_path: str | Path, *, check_models: bool = True) -> StudySpec:
    """Load `studies/<name>.toml` (or a TOML file) and check it, every backbone included.

    Raises SpecError naming every problem: unknown keys, bad ranges, an unknown timm name, a tag
    that is not ImageNet-1k only, a backbone over the parameter cap or failing at an input size.
    """
    path = _spec_path(name_or_path)
    try:
        text = path.read_text()
        raw = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SpecError(f"{path}: {e}") from None
    try:
        spec = _parse_spec(raw, default_name=path.stem, source=text, path=str(path))
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
    except (TypeError, ValueError) as e:
        raise SpecError(f"{path}: {e}") from None
    if check_models:
        problems = check_backbones(spec)
        if problems:
            raise SpecError(f"{path}: " + "; ".join(problems))
    return spec


def _spec_path(name_or_path: str | Path) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.is_file() or len(candidate.parts) > 1:
        if not candidate.is_file():
            raise SpecError(f"study spec {candidate} does not exist")
        return candidate
    folders = list(dict.fromkeys([paths.studies_dir(), Path(__file__).resolve().parent.parent / "studies"]))
    for folder in folders:
        if (folder / f"{name_or_path}.toml").is_file():
            return folder / f"{name_or_path}.toml"
    known = sorted({p.stem for f in folders if f.is_dir() for p in f.glob("*.toml")})
    raise SpecError(f"no study named {name_or_path!r} in {folders[0]}; known: {', '.join(known) or 'none'}")


_TABLES = {"study", "sampler", "pruner", "space", "base", "heartbeat"}
_STUDY_KEYS = {"name", "experiment", "objectives", "trials", "workers", "max_failures", "pretrained", "max_params", "description"}


def _parse_spec(raw: dict[str, Any], *, default_name: str, source: str, path: str | None) -> StudySpec:
    _no_unknown("spec", raw, _TABLES)
    study = dict(raw.get("study", {}))
    _no_unknown("[study]", study, _STUDY_KEYS)
    name = str(study.get("name", default_name))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise SpecError(f"study name {name!r}: use letters, digits, '.', '_' and '-'")
    objectives = study.get("objectives", ["val_auc"])
    objectives = (objectives,) if isinstance(objectives, str) else tuple(objectives)
    for o in objectives:
        if o not in OBJECTIVES:
            raise SpecError(f"unknown objective {o!r}; choose from {', '.join(OBJECTIVES)}")
    if not objectives or len(set(objectives)) != len(objectives):
        raise SpecError("objectives must be a non-empty list without repeats")

    base_raw = raw.get("base", {})
    try:
        base = from_dict(RunConfig, base_raw)
    except (TypeError, ValueError) as e:
        raise SpecError(f"[base]: {e}") from None
    train_changes: dict[str, Any] = {}
    if "pretrained" in study:
        train_changes["pretrained"] = bool(study["pretrained"])
    if "max_params" in study:
        train_changes["max_params"] = float(study["max_params"])
    if train_changes:
        base = dataclasses.replace(base, train=dataclasses.replace(base.train, **train_changes))

    space = tuple((n, _parse_dimension(n, v, base)) for n, v in raw.get("space", {}).items())
    names = [n for n, _ in space]
    paths_used = [_path(n) for n in names]
    if len(set(paths_used)) != len(paths_used):
        raise SpecError(f"two dimensions set the same setting: {', '.join(names)}")

    sampler = _strategy("sampler", raw.get("sampler", {"kind": "tpe"}), SAMPLERS)
    pruner = _strategy("pruner", raw.get("pruner", {"kind": "median"}), PRUNERS)
    if len(objectives) > 1 and not isinstance(pruner, NoPruning):
        raise SpecError("pruning needs a single objective: set [pruner] kind = \"none\" for a multi-objective study")
    heartbeat = Heartbeat(**_checked("[heartbeat]", raw.get("heartbeat", {}), Heartbeat))
    if heartbeat.interval < 1 or heartbeat.grace_period <= heartbeat.interval:
        raise SpecError("[heartbeat]: need interval >= 1 and grace_period > interval (whole seconds)")
    spec = StudySpec(
        name=name, experiment=str(study.get("experiment", f"tune-{name}")), objectives=objectives, space=space,
        base=base, sampler=sampler, pruner=pruner, trials=int(study.get("trials", 50)),
        workers=int(study.get("workers", 1)), max_failures=int(study.get("max_failures", 10)),
        heartbeat=heartbeat, source=source, path=path,
    )
    if spec.trials < 1 or spec.workers < 1 or spec.max_failures < 1:
        raise SpecError("[study]: trials, workers and max_failures must be at least 1")
    _check_values(spec)
    return spec


def _no_unknown(where: str, table: dict[str, Any], known: set[str]) -> None:
    unknown = set(table) - known
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")


def _checked(where: str, table: dict[str, Any], cls: type) -> dict[str, Any]:
    _no_unknown(where, table, {f.name for f in dataclasses.fields(cls)})
    return table


def _strategy(where: str, table: dict[str, Any], kinds: dict[str, type]) -> Any:
    table = dict(table)
    kind = table.pop("kind", None)
    if kind not in kinds:
        raise SpecError(f"[{where}] kind = {kind!r}; choose from {', '.join(kinds)}")
    return kinds[kind](**_checked(f"[{where}] ({kind})", table, kinds[kind]))


def _path(name: str) -> str:
    return "features.height+width" if name == INPUT_SIZE else ALIASES.get(name, name)


def _field_default(path: str, base: RunConfig) -> Any:
    obj: Any = base
    for part in path.split("."):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            raise SpecError(f"[space]: {path!r} is not a setting; use one of {', '.join(ALIASES)}, "
                            f"{INPUT_SIZE} or a dotted path such as train.optimizer")
        obj = getattr(obj, part)
    if dataclasses.is_dataclass(obj):
        raise SpecError(f"[space]: {path!r} is a group of settings, not one setting")
    return obj


def _parse_dimension(name: str, value: Any, base: RunConfig) -> Dimension:
    if name == INPUT_SIZE:
        values = value if isinstance(value, list) else [value]
        for v in values:
            _parse_size(v)
        return Categorical(tuple(values)) if len(values) > 1 else Fixed(values[0])
    path = _path(name)
    if path == "modality":
        choices = value if isinstance(value, list) else [value]
        if not choices or any(v not in MODALITIES for v in choices):
            raise SpecError(f"[space] modality: choose from {', '.join(MODALITIES)}, got {value!r}")
        if "image" in choices and len(choices) > 1:
            raise SpecError("[space] modality: image (face-image datasets) cannot be mixed with clip modalities")
        return Categorical(tuple(choices)) if len(choices) > 1 else Fixed(choices[0])
    if path.split(".")[0] not in ("train", "features", "video"):
        raise SpecError(f"[space]: {name!r} is not a modality, train, features or video setting")
    if path in ("train.max_params", "train.seed", "train.device", "train.weights", "train.pretrained"):
        raise SpecError(f"[space]: {name} is a study setting, not a search dimension; set it in [study] or [base]")
    default = _field_default(path, base)
    if isinstance(value, list):
        if not value:
            raise SpecError(f"[space] {name}: an empty list of choices")
        for v in value:
            if not isinstance(v, (str, int, float, bool)):
                raise SpecError(f"[space] {name}: choices must be strings, numbers or booleans, got {v!r}")
        return Categorical(tuple(value)) if len(value) > 1 else Fixed(value[0])
    if isinstance(value, dict):
        _no_unknown(f"[space] {name}", value, {"low", "high", "log", "step"})
        if "low" not in value or "high" not in value:
            raise SpecError(f"[space] {name}: a range needs low and high")
        if path.startswith(("features.", "video.")):
            raise SpecError(f"[space] {name}: feature settings take a list of choices, not a range "
                            "(every value needs its own feature cache, prepared before the study)")
        low, high, log = value["low"], value["high"], bool(value.get("log", False))
        if not low < high or (log and low <= 0):
            raise SpecError(f"[space] {name}: need low < high (and low > 0 with log = true), got {low}, {high}")
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            raise SpecError(f"[space] {name}: a range needs a numeric setting; give a list of choices")
        if isinstance(default, int):
            return IntRange(int(low), int(high), log=log, step=int(value.get("step", 1)))
        step = value.get("step")
        return FloatRange(float(low), float(high), log=log, step=None if step is None else float(step))
    return Fixed(value)


def _parse_size(value: Any) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", str(value))
    if not match:
        raise SpecError(f"[space] {INPUT_SIZE}: {value!r} is not \"HxW\" (mel bins x time steps, e.g. \"128x256\")")
    return int(match[1]), int(match[2])


def _values_of(dim: Dimension) -> list[Any]:
    """The values a dimension can take at its edges (all choices; a range's ends)."""
    if isinstance(dim, Categorical):
        return list(dim.choices)
    if isinstance(dim, Fixed):
        return [dim.value]
    return [dim.low, dim.high]


def _dim_json(dim: Dimension) -> dict[str, Any]:
    return {"kind": type(dim).__name__, **dataclasses.asdict(dim)}


def _set_value(config: dict[str, Any], name: str, value: Any, *, n_mels: int) -> None:
    if name == INPUT_SIZE:
        height, width = _parse_size(value)
        config["features"]["height"] = None if height == config["features"].get("n_mels", n_mels) else height
        config["features"]["width"] = width
        return
    node = config
    *parents, leaf = _path(name).split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value


def _with(features: AudioFeatures, name: str, value: Any, n_mels: int) -> AudioFeatures:
    config = {"features": dataclasses.asdict(features)}
    _set_value(config, name, value, n_mels=n_mels)
    return from_dict(AudioFeatures, config["features"])


def _check_values(spec: StudySpec) -> None:
    """Every edge value of every dimension builds a valid RunConfig with sane names."""
    from harness.engine import LOSSES, OPTIMIZERS

    for name, dim in spec.space:
        for value in _values_of(dim):
            try:
                cfg = spec.config_for({name: value})
            except (TypeError, ValueError, KeyError) as e:
                raise SpecError(f"[space] {name} = {value!r}: {e}") from None
            t = cfg.train
            if t.loss not in LOSSES or t.optimizer not in OPTIMIZERS:
                raise SpecError(f"[space] {name} = {value!r}: loss must be one of {', '.join(LOSSES)}, "
                                f"optimizer one of {', '.join(OPTIMIZERS)}")
            if t.epochs < 1 or t.batch_size < 2 or t.lr <= 0:
                raise SpecError(f"[space] {name} = {value!r}: need epochs >= 1, batch_size >= 2, lr > 0")


def check_backbones(spec: StudySpec) -> list[str]:
    """The rule problems of every model the study can build: each backbone (and video backbone) a
    `name.tag` with an ImageNet-1k-only tag, and each modality x backbone x input size under the
    study's parameter cap as one module (a fusion model counts both branches), with a forward pass
    that works. Empty when all is well."""
    from harness.modalities import check_run
    from harness.models import ModelRuleError, pretrained_tag_problem, resolve_name

    def values(name: str, default: Any) -> list[Any]:
        dim = spec.dimension(name)
        return _values_of(dim) if dim is not None else [default]

    backbones = values("backbone", spec.base.train.backbone)
    video_backbones = values("video_backbone", spec.base.train.video_backbone)
    losses = values("loss", spec.base.train.loss)
    loss = "ce" if "ce" in losses else losses[0]  # the larger head
    problems: list[str] = []
    usable = set()
    for name in dict.fromkeys([*backbones, *(v for v in video_backbones if v)]):
        try:
            resolved = resolve_name(name)
        except ModelRuleError as e:
            problems.append(str(e))
            continue
        if resolved != name:
            problems.append(f"{name}: give the pretrained tag too ({resolved}), so the weights' data can be checked")
        elif problem := pretrained_tag_problem(name):
            problems.append(problem)
        else:
            usable.add(name)
    for modality in spec.modalities():
        faces = modality != "audio"
        for backbone in backbones:
            for video_backbone in (video_backbones if faces else [None]):
                if backbone not in usable or (video_backbone and video_backbone not in usable):
                    continue
                for features in (spec.feature_configs() if modality in ("audio", "fusion") else [spec.base.features]):
                    for video in (spec.video_configs() if faces else [spec.base.video]):
                        cfg = dataclasses.replace(spec.base, modality=modality, features=features, video=video,
                                                  train=dataclasses.replace(spec.base.train, backbone=backbone,
                                                                            video_backbone=video_backbone, loss=loss))
                        report = check_run(cfg)
                        shape = "x".join(map(str, cfg.features_for("video").shape if modality in ("video", "image")
                                             else features.shape))
                        problems.extend(f"{report.name} ({modality}) at {shape}: {p}" for p in report.problems)
    return list(dict.fromkeys(problems))


def check_dataset(spec: StudySpec, track: str) -> None:
    """Image-track datasets tune image models only, clip datasets the others. Raises SpecError."""
    image = [m == "image" for m in spec.modalities()]
    if track == "image" and not all(image):
        raise SpecError('an image-track dataset (face images): set modality = "image" in [base] (and in no [space])')
    if track != "image" and any(image):
        raise SpecError("modality image is for face-image datasets; this dataset holds clips (use video)")


# ------------------------------------------------------------------------------- trial callbacks

class PruningCallback:
    """A `harness.callbacks.Callback` that reports each epoch's best val metric so far to the trial
    (step = epoch) and ends training with StopTraining("pruned at epoch N") when the pruner says so.

    The best-so-far value is reported (not the epoch's own) because the objective is the best epoch's
    value: a trial is judged on what it would return if it stopped now.
    """

    def __init__(self, trial: optuna.Trial, *, metric: str = "val_auc") -> None:
        self.trial = trial
        self.metric = metric
        self.sign = 1.0 if OBJECTIVES.get(metric, "maximize") == "maximize" else -1.0
        self.best: float | None = None

    def on_start(self, info: dict[str, Any]) -> None:
        pass

    def on_epoch(self, report: EpochReport) -> None:
        value = report.metrics.get(self.metric)
        if value is not None and math.isfinite(value):
            if self.best is None or self.sign * value > self.sign * self.best:
                self.best = float(value)
            self.trial.report(self.best, report.epoch)
        if self.trial.should_prune():
            raise StopTraining(f"pruned at epoch {report.epoch}")

    def on_end(self, result: FitResult) -> None:
        pass


class _EpochProgress:
    """Records the epoch reached on the trial (user attribute `epoch`) for the live table."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_start(self, info: dict[str, Any]) -> None:
        pass

    def on_epoch(self, report: EpochReport) -> None:
        self.trial.set_user_attr("epoch", report.epoch)

    def on_end(self, result: FitResult) -> None:
        pass


# ------------------------------------------------------------------------------ progress, result

@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    params: dict[str, Any]
    values: tuple[float, ...] | None  # the objectives, for COMPLETE trials
    reported: float | None  # best value reported so far (pruned and running trials too)
    epoch: int  # epochs trained
    run_id: str | None  # the MLflow child run
    retry_of: int | None  # the stale trial this one re-runs
    error: str | None
    seconds: float | None
    worker: str | None  # host:pid

    @property
    def value(self) -> float | None:
        """The first objective when complete, else the best value reported so far."""
        return self.values[0] if self.values else self.reported


@dataclass(frozen=True)
class Progress:
    study: str
    objectives: tuple[str, ...]
    dimensions: tuple[str, ...]  # searched dimensions, in spec order
    target: int
    rows: tuple[TrialRow, ...]
    elapsed_s: float

    def count(self, *states: str) -> int:
        return sum(r.state in states for r in self.rows)

    @property
    def finished(self) -> int:
        return self.count("COMPLETE", "PRUNED")

    @property
    def best(self) -> TrialRow | None:
        return _best_row(self.rows, self.objectives)


@dataclass(frozen=True)
class StudyResult:
    study: str
    storage: str  # the URL, password hidden
    experiment_id: str
    parent_run_id: str
    objectives: tuple[str, ...]
    dimensions: tuple[str, ...]
    target: int
    rows: tuple[TrialRow, ...]
    seconds: float  # this session's wall time
    epochs_trained: int  # over all trials of the study, failed and pruned ones included
    stopped: str  # why the session ended: "target reached", "timeout", "too many failures", ...
    worker_exitcodes: tuple[int, ...]

    @property
    def finished(self) -> int:
        return sum(r.state in ("COMPLETE", "PRUNED") for r in self.rows)

    @property
    def best(self) -> TrialRow | None:
        return _best_row(self.rows, self.objectives)

    def ranked(self) -> list[TrialRow]:
        """COMPLETE trials, best first by the first objective."""
        sign = -1.0 if OBJECTIVES[self.objectives[0]] == "maximize" else 1.0
        done = [r for r in self.rows if r.state == "COMPLETE" and r.values]
        return sorted(done, key=lambda r: (sign * r.values[0], r.number))


def _best_row(rows: Iterable[TrialRow], objectives: Sequence[str]) -> TrialRow | None:
    sign = 1.0 if OBJECTIVES[objectives[0]] == "maximize" else -1.0
    done = [r for r in rows if r.state == "COMPLETE" and r.values and math.isfinite(r.values[0])]
    return max(done, key=lambda r: (sign * r.values[0], -r.number)) if done else None


def _row(t: optuna.trial.FrozenTrial, sign: float) -> TrialRow:
    reported = [v for v in t.intermediate_values.values() if v is not None and math.isfinite(v)]
    end = t.datetime_complete or (None if t.datetime_start is None else _now())
    seconds = (end - t.datetime_start).total_seconds() if t.datetime_start and end else None
    epoch = int(t.user_attrs.get("epoch", max(t.intermediate_values, default=0)))
    return TrialRow(
        number=t.number, state=t.state.name, params=dict(t.params),
        values=tuple(t.values) if t.state == TrialState.COMPLETE and t.values else None,
        reported=(max(reported, key=lambda v: sign * v) if reported else None), epoch=epoch,
        run_id=t.user_attrs.get("mlflow_run_id"), retry_of=t.system_attrs.get("failed_trial"),
        error=t.user_attrs.get("error"), seconds=seconds, worker=t.user_attrs.get("worker"),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now()  # naive local time, as optuna stores trial times


def _rows(study: optuna.Study, spec: StudySpec) -> tuple[TrialRow, ...]:
    sign = 1.0 if spec.directions[0] == "maximize" else -1.0
    return tuple(_row(t, sign) for t in study.get_trials(deepcopy=False))


# ------------------------------------------------------------------------------------- storage

def default_storage(spec: StudySpec) -> str:
    """SQLite under the project's studies/ folder (git-ignored): `studies/<name>.db`."""
    return f"sqlite:///{paths.studies_dir() / f'{spec.name}.db'}"


def redact(url: str) -> str:
    """The storage URL with any password hidden, for tags and messages."""
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is reported by the storage itself
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0].lower()


def open_storage(url: str, heartbeat: Heartbeat = Heartbeat()) -> optuna.storages.RDBStorage:
    """An RDBStorage with heartbeats and a retry of stale trials (SQLite or PostgreSQL)."""
    scheme = _scheme(url)
    if scheme not in ("sqlite", "postgresql"):
        raise SpecError(f"storage {redact(url)}: use sqlite:///FILE or postgresql://USER:PASSWORD@HOST/DB")
    if scheme == "sqlite":
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Several workers and heartbeat threads share the file: wait for a lock instead of failing.
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    storages = optuna.storages
    retry_cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    parameters = inspect.signature(storages.RDBStorage.__init__).parameters
    keyword = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in parameters else "failed_trial_callback"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # Two machines starting on a fresh PostgreSQL database would both create Optuna's tables and
        # types, and one fails ("duplicate key ... pg_type_typname_nsp_index"): one at a time.
        try:
            with _locked(_study_lock(url, "\0schema")) if scheme == "postgresql" else contextlib.nullcontext():
                return storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat.interval,
                    grace_period=heartbeat.grace_period, **{keyword: retry_cls(max_retry=heartbeat.max_retry)},
                )
        except ImportError as e:
            raise SpecError(f"storage {redact(url)}: {e} (for PostgreSQL: pip install psycopg2-binary)") from None


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class _FileLock:
    """An exclusive flock held by this process; the kernel drops it when the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd

    def release(self) -> None:
        import fcntl

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class _AdvisoryLock:
    """A PostgreSQL session advisory lock on its own connection: the server drops it when the
    connection does, so a machine that dies never leaves the study locked."""

    def __init__(self, url: str, key: int) -> None:
        import sqlalchemy

        self._engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        self._key = key
        self._conn: Any = None

    def acquire(self) -> None:
        import sqlalchemy

        conn = self._engine.connect()
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
        self._conn = conn

    def release(self) -> None:
        import sqlalchemy

        if self._conn is not None:
            try:
                self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            finally:
                self._conn.close()
                self._conn = None


def _study_lock(url: str, study: str) -> _FileLock | _AdvisoryLock:
    digest = hashlib.sha1(f"harness.tuning:{redact(url)}:{study}".encode()).digest()
    if _scheme(url) == "postgresql":
        return _AdvisoryLock(url, int.from_bytes(digest[:8], "big", signed=True))
    return _FileLock(Path(tempfile.gettempdir()) / f"harness-study-{digest.hex()[:16]}.lock")


@contextlib.contextmanager
def _locked(lock: _FileLock | _AdvisoryLock) -> Iterator[None]:
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _load_or_create_study(spec: StudySpec, storage: optuna.storages.BaseStorage, *, sampler_offset: int = 0) -> optuna.Study:
    study = optuna.create_study(
        storage=storage, study_name=spec.name, directions=spec.directions, load_if_exists=True,
        sampler=spec.sampler.build(seed_offset=sampler_offset), pruner=spec.pruner.build(spec),
    )
    if [d.name.lower() for d in study.directions] != spec.directions:
        raise SpecError(f"study {spec.name!r} in the storage optimises {len(study.directions)} objective(s) "
                        f"in other directions; give this spec another name or use another --storage")
    stored = study.user_attrs.get(SPACE_ATTR)
    if stored is None:
        study.set_user_attr(SPACE_ATTR, spec.space_hash())
    elif stored != spec.space_hash():
        raise SpecError(f"study {spec.name!r} in the storage was created from another search space, objectives "
                        f"or base settings; give this spec another name or use another --storage")
    return study


# ------------------------------------------------------------------------------- MLflow parent

def _parent_run(client: MlflowClient, experiment_id: str, study: optuna.Study, spec: StudySpec, storage_url: str) -> str:
    """The study's parent run: the one the study names, else the one tagged with this study and
    storage, else a new one. Called under the study lock, so two machines never make two."""
    from mlflow.entities import Param, RunTag
    from mlflow.exceptions import MlflowException

    run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id:
        try:
            run = client.get_run(run_id)
            if run.info.experiment_id == experiment_id and run.info.lifecycle_stage == "active":
                return run_id
        except MlflowException:
            pass
    where = redact(storage_url)
    query = f"tags.`harness.study` = '{_quote(spec.name)}' and tags.`harness.study_storage` = '{_quote(where)}'"
    found = client.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time ASC"], max_results=1)
    if found:
        run_id = found[0].info.run_id
    else:
        tags = {"harness.study": spec.name, "harness.study_storage": where, "harness.kind": "study",
                "mlflow.note.content": f"Optuna study `{spec.name}` in `{where}`; one child run per trial."}
        run_id = client.create_run(experiment_id, run_name=f"study-{spec.name}", tags=tags).info.run_id
        params = [Param(k, str(v)[:500]) for k, v in _spec_params(spec).items()]
        client.log_batch(run_id, params=params[:100], tags=[RunTag("harness.space_hash", spec.space_hash())])
        with tempfile.TemporaryDirectory(prefix="harness-study-") as tmp:
            (Path(tmp) / "spec.toml").write_text(spec.source or "")
            client.log_artifact(run_id, str(Path(tmp) / "spec.toml"), "study")
    study.set_user_attr(PARENT_ATTR, run_id)
    return run_id


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _spec_params(spec: StudySpec) -> dict[str, Any]:
    params: dict[str, Any] = {"study.name": spec.name, "study.objectives": ",".join(spec.objectives),
                              "sampler": repr(spec.sampler), "pruner": repr(spec.pruner)}
    for name, dim in spec.space:
        params[f"space.{name}"] = _describe(dim)
    params["base.backbone"] = spec.base.train.backbone
    params["base.pretrained"] = spec.base.train.pretrained
    params["base.max_params"] = spec.base.train.max_params
    params["base.seed"] = spec.base.train.seed
    return params


def _describe(dim: Dimension) -> str:
    if isinstance(dim, Categorical):
        return "|".join(map(str, dim.choices))
    if isinstance(dim, Fixed):
        return str(dim.value)
    return f"{dim.low}..{dim.high}{' log' if dim.log else ''}"


def _update_parent(client: MlflowClient, parent_run_id: str, spec: StudySpec, rows: Sequence[TrialRow], target: int) -> None:
    """Best trial so far and trial counts on the parent (metrics at step = finished trials)."""
    from mlflow.entities import Metric, RunTag

    counts = Counter(r.state for r in rows)
    step = counts["COMPLETE"] + counts["PRUNED"]
    now = int(time.time() * 1000)
    values = {"trials_complete": counts["COMPLETE"], "trials_pruned": counts["PRUNED"], "trials_failed": counts["FAIL"],
              "trials_finished": step, "epochs_trained": sum(r.epoch for r in rows)}
    tags = {"harness.trials_target": str(target)}
    best = _best_row(rows, spec.objectives)
    if best is not None:
        values.update({f"best_trial_{o}": v for o, v in zip(spec.objectives, best.values or ()) if math.isfinite(v)})
        tags.update({"best.trial_number": str(best.number), "best.run_id": best.run_id or ""})
        tags.update({f"best.{k}": str(v)[:500] for k, v in best.params.items()})
    metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
    client.log_batch(parent_run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])


def _close_orphans(client: MlflowClient, experiment_id: str, parent_run_id: str, study: optuna.Study) -> list[str]:
    """Close KILLED (tag orphaned=true) every RUNNING trial run whose Optuna trial is no longer
    running: its worker died. Unlike tracking.close_orphans this spares runs of trials still
    running, which may belong to live workers on other machines."""
    from mlflow.entities import RunTag

    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    query = f"attributes.status = 'RUNNING' and tags.mlflow.parentRunId = '{parent_run_id}'"
    closed = []
    for run in client.search_runs([experiment_id], filter_string=query, max_results=5000):
        number = run.data.tags.get("optuna.trial_number")
        state = states.get(int(number)) if number and number.isdigit() else None
        if state is None or state == TrialState.RUNNING:
            continue
        tags = [RunTag("orphaned", "true"), RunTag("optuna.state", state.name)]
        client.log_batch(run.info.run_id, tags=tags)
        client.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    return closed


_FIGURE_INCHES = {"parallel_coordinate": (14, 7), "intermediate_values": (10, 6)}


def _log_study_artifacts(client: MlflowClient, parent_run_id: str, study: optuna.Study, spec: StudySpec) -> None:
    """trials.csv and the optuna.visualization.matplotlib figures under `study/` on the parent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    first = spec.objectives[0]
    target = (lambda t: t.values[0]) if len(spec.objectives) > 1 else None
    plots: dict[str, Callable[[], Any]] = {
        "optimization_history": lambda: vis.plot_optimization_history(study, target=target, target_name=first),
        "param_importances": lambda: vis.plot_param_importances(study, target=target, target_name=first),
        "parallel_coordinate": lambda: vis.plot_parallel_coordinate(study, target=target, target_name=first),
        "intermediate_values": lambda: vis.plot_intermediate_values(study),
    }
    if isinstance(spec.pruner, NoPruning):
        del plots["intermediate_values"]  # nothing is reported without a pruner
    with tempfile.TemporaryDirectory(prefix="harness-study-") as tmp:
        out = Path(tmp) / "study"
        out.mkdir()
        study.trials_dataframe().to_csv(out / "trials.csv", index=False)
        skipped = {}
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # "too few trials" goes to plots_skipped.json
        for name, plot in plots.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    axes = plot()
                    figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
                    figure.set_size_inches(*_FIGURE_INCHES.get(name, (8, 5)))
                    figure.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
                plt.close(figure)
            except Exception as e:  # noqa: BLE001 - too few trials for a plot is not an error of the study
                skipped[name] = f"{type(e).__name__}: {e}"[:300]
            plt.close("all")
        optuna.logging.set_verbosity(verbosity)
        if skipped:
            (out / "plots_skipped.json").write_text(json.dumps(skipped, indent=2))
        client.log_artifacts(parent_run_id, str(out), "study")


# -------------------------------------------------------------------------------------- worker

@dataclass(frozen=True)
class _Job:
    spec: StudySpec
    storage_url: str
    data_dir: str
    cache_root: str
    experiment_id: str
    parent_run_id: str
    target: int
    deadline: float | None  # time.time() after which no trial starts
    index: int
    seed_offset: int
    cuda_device: str | None
    threads: int | None


class _Gate:
    """Hands out trial slots under the study lock so the study ends at exactly `target` finished
    trials. `acquire` returns True *holding the lock*; the objective releases it once `ask()` has
    created its trial (RUNNING), so the next worker's count includes it."""

    def __init__(self, study: optuna.Study, lock: _FileLock | _AdvisoryLock, job: _Job, on_trial_end: Callable[[], None]) -> None:
        self.study = study
        self.lock = lock
        self.job = job
        self.on_trial_end = on_trial_end
        self.held = False
        self.poll_s = min(2.0, job.spec.heartbeat.interval / 2)

    def acquire(self) -> bool:
        while True:
            if self.job.deadline is not None and time.time() >= self.job.deadline:
                return False
            self.lock.acquire()
            try:
                _fail_stale(self.study)
                counts = Counter(t.state for t in self.study.get_trials(deepcopy=False))
            except BaseException:
                self.lock.release()
                raise
            finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
            if finished >= self.job.target or counts[TrialState.FAIL] >= self.job.spec.max_failures:
                pass  # the study is done (or failing): stop
            elif finished + counts[TrialState.RUNNING] < self.job.target:
                self.held = True  # ask() runs next: a WAITING (re-queued) trial first, else a new one
                return True
            else:
                self.lock.release()
                time.sleep(self.poll_s)  # others' running trials may fail and need a replacement
                continue
            self.lock.release()
            return False

    def release(self) -> None:
        if self.held:
            self.held = False
            self.lock.release()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback after each trial: update the parent run, then take the next slot."""
        self.on_trial_end()
        if not self.acquire():
            study.stop()


class _Objective:
    def __init__(self, job: _Job, gate: _Gate, client: MlflowClient) -> None:
        self.job = job
        self.spec = job.spec
        self.gate = gate
        self.client = client

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        from harness.run import train_run

        self.gate.release()  # the trial exists now (RUNNING): the next worker counts it
        spec = self.spec
        try:
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            for inherited in ("mlflow_run_id", "error"):  # a re-queued trial copies the stale one's
                if trial.user_attrs.get(inherited) is not None:
                    trial.set_user_attr(inherited, None)
            trial.set_user_attr("epoch", 0)
            cfg = spec.config_for({name: _suggest(trial, name, dim) for name, dim in spec.space})
            tags = {"optuna.study": spec.name, "optuna.trial_number": str(trial.number), "optuna.state": "RUNNING"}
            retry_of = _retry_of(self.gate.study, trial.number)
            if retry_of is not None:
                tags["optuna.retry_of"] = str(retry_of)
            callbacks: list[Any] = [_EpochProgress(trial)]
            if len(spec.objectives) == 1 and not isinstance(spec.pruner, NoPruning):
                callbacks.append(PruningCallback(trial, metric=spec.objectives[0]))
            result = train_run(
                cfg, data_dir=Path(self.job.data_dir), experiment=spec.experiment, cache_root=Path(self.job.cache_root),
                run_name=f"trial-{trial.number:03d}", parent_run_id=self.job.parent_run_id, callbacks=callbacks, tags=tags,
            )
        except BaseException as e:
            self._failed(trial, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
            raise
        trial.set_user_attr("mlflow_run_id", result.run_id)
        trial.set_user_attr("epoch", len(result.fit.history) if result.fit else 0)
        if result.status == "KILLED":  # pruned: run.py ended the run KILLED with pruned_at_epoch
            self.client.set_tag(result.run_id, "optuna.state", "PRUNED")
            raise optuna.TrialPruned(result.fit.stopped_by if result.fit else "pruned")
        best = result.fit.best_metrics if result.fit else {}
        objective = [float(best.get(o, float("nan"))) for o in spec.objectives]
        if not all(math.isfinite(v) for v in objective):
            error = f"ValueError: objective {dict(zip(spec.objectives, objective))} is not a number (one class in val?)"
            self.client.set_tag(result.run_id, "error", error)
            self.client.set_terminated(result.run_id, status="FAILED")
            self._failed(trial, error, run_id=result.run_id)
            raise ValueError(error)
        self.client.set_tag(result.run_id, "optuna.state", "COMPLETE")
        return objective[0] if len(objective) == 1 else objective

    def _failed(self, trial: optuna.Trial, error: str, *, run_id: str | None = None) -> None:
        """Tag the trial's run (found by its tags when train_run raised) and the trial itself."""
        try:
            trial.set_user_attr("error", " ".join(error.split())[:500])
            if run_id is None:
                query = (f"tags.mlflow.parentRunId = '{self.job.parent_run_id}' and "
                         f"tags.`optuna.trial_number` = '{trial.number}'")
                found = self.client.search_runs([self.job.experiment_id], filter_string=query, max_results=1)
                run_id = found[0].info.run_id if found else None
            if run_id is not None:
                trial.set_user_attr("mlflow_run_id", run_id)
                self.client.set_tag(run_id, "optuna.state", "FAIL")
        except Exception:  # noqa: BLE001, S110 - never hide the trial's own error behind a bookkeeping one
            pass


def _retry_of(study: optuna.Study, number: int) -> int | None:
    """The stale trial that trial `number` re-runs (RetryHeartbeatStaleTrialCallback's mark)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number == number:
            return t.system_attrs.get("failed_trial")
    return None


def _suggest(trial: optuna.Trial, name: str, dim: Dimension) -> Any:
    if isinstance(dim, Categorical):
        return trial.suggest_categorical(name, list(dim.choices))
    if isinstance(dim, FloatRange):
        return trial.suggest_float(name, dim.low, dim.high, log=dim.log, step=dim.step)
    if isinstance(dim, IntRange):
        return trial.suggest_int(name, dim.low, dim.high, log=dim.log, step=dim.step)
    return dim.value


def _quiet_worker() -> None:
    """Trial errors are recorded on the trial and its run; keep the coordinator's table readable."""
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optuna.logging.disable_propagation()


def _serialise_feature_preparation(cache_root: Path) -> None:
    """Guard harness.run.features_for with a file lock: prepare_features (called at the start of
    every run, a no-op once the cache is full) removes other processes' temporary files and is
    not safe to run concurrently on one cache folder."""
    from harness import run

    lock = _FileLock(Path(tempfile.gettempdir()) / f"harness-prepare-{hashlib.sha1(str(cache_root).encode()).hexdigest()[:16]}.lock")
    original = run.features_for

    def features_for(*args: Any, **kwargs: Any) -> Path:
        with _locked(lock):
            return original(*args, **kwargs)

    run.features_for = features_for


def _worker(job: _Job) -> None:
    """A spawned worker process: trials until the gate says stop."""
    if job.cuda_device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = job.cuda_device
    if job.threads:
        os.environ["OMP_NUM_THREADS"] = str(job.threads)
    _quiet_worker()
    try:
        _work(job)
    except KeyboardInterrupt:
        sys.exit(130)


def _work(job: _Job) -> None:
    import torch

    from harness import tracking

    if job.threads:
        torch.set_num_threads(job.threads)
    _serialise_feature_preparation(Path(job.cache_root))
    spec = job.spec
    storage = open_storage(job.storage_url, spec.heartbeat)
    study = optuna.load_study(study_name=spec.name, storage=storage,
                              sampler=spec.sampler.build(seed_offset=job.seed_offset), pruner=spec.pruner.build(spec))
    client = tracking.setup()
    lock = _study_lock(job.storage_url, spec.name)

    def on_trial_end() -> None:
        with _locked(lock):  # one writer at a time, so "best so far" never goes back
            _update_parent(client, job.parent_run_id, spec, _rows(study, spec), job.target)

    gate = _Gate(study, lock, job, on_trial_end)
    if not gate.acquire():
        return
    try:
        timeout = None if job.deadline is None else max(1.0, job.deadline - time.time())
        study.optimize(_Objective(job, gate, client), timeout=timeout, catch=(Exception,), callbacks=[gate])
    finally:
        gate.release()


def _cpu_threads(workers: int) -> int:
    """Torch threads per CPU worker: $OMP_NUM_THREADS when set, else the cores shared out. On a
    machine busy with other work, 1 is much the fastest: idle OpenMP threads spin for CPU time."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _cuda_devices() -> list[str]:
    """GPU ids to pin workers to: those in CUDA_VISIBLE_DEVICES, else all that torch sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no CUDA: CPU workers
        return []


# ---------------------------------------------------------------------------------- coordinator

def run_study(
    spec: StudySpec,
    *,
    data_dir: Path,
    storage: str | None = None,
    trials: int | None = None,
    workers: int | None = None,
    timeout: float | None = None,
    cache_root: Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> StudyResult:
    """Run (or resume) `spec`'s study until it holds `trials` finished trials in total.

    `storage`: an RDB URL (default `default_storage(spec)`). `workers`: local worker processes
    (default `spec.workers`), pinned one GPU each round-robin when GPUs exist, else sharing the CPU
    cores. `timeout`: seconds after which no new trial starts (running ones finish). `on_progress`
    is called from this process about once a second while something changed.

    Raises SpecError (storage or stored study unusable), DatasetError (bad data_dir), StudyError
    (a worker process crashed); KeyboardInterrupt after the workers have stopped.
    """
    from harness import run, tracking
    from harness.data.labels import load_dataset

    start = time.time()
    target = int(trials if trials is not None else spec.trials)
    n_workers = int(workers if workers is not None else spec.workers)
    if target < 1 or n_workers < 1:
        raise SpecError("trials and workers must be at least 1")
    url = storage or default_storage(spec)
    cache = Path(cache_root) if cache_root is not None else paths.cache_dir()
    ds = load_dataset(Path(data_dir))
    check_dataset(spec, ds.track)
    for cfg in spec.prepare_configs():  # here, once, before workers race for the cache
        run.features_for(ds, cfg, cache)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = open_storage(url, spec.heartbeat)
    lock = _study_lock(url, spec.name)
    client = tracking.setup()
    experiment_id = tracking.get_or_create_experiment(client, spec.experiment)
    with _locked(lock):
        study = _load_or_create_study(spec, store)
        parent = _parent_run(client, experiment_id, study, spec, url)
        client.update_run(parent, status="RUNNING")
        client.set_tag(parent, "harness.trials_target", str(target))
        _fail_stale(study)
    _close_orphans(client, experiment_id, parent, study)

    rows = _rows(study, spec)
    finished = sum(r.state in ("COMPLETE", "PRUNED") for r in rows)
    n_workers = max(0, min(n_workers, target - finished))
    gpus = _cuda_devices() if spec.base.train.device != "cpu" else []
    threads = None if gpus else _cpu_threads(n_workers)
    deadline = None if timeout is None else start + timeout
    context = multiprocessing.get_context("spawn")
    processes = []
    for index in range(n_workers):
        job = _Job(spec=spec, storage_url=url, data_dir=str(Path(data_dir).resolve()), cache_root=str(cache.resolve()),
                   experiment_id=experiment_id, parent_run_id=parent, target=target, deadline=deadline, index=index,
                   seed_offset=1000 * index + len(rows), cuda_device=gpus[index % len(gpus)] if gpus else None,
                   threads=threads)
        process = context.Process(target=_worker, args=(job,), name=f"harness-tune-{index}", daemon=False)
        process.start()
        processes.append(process)

    interrupted = False
    try:
        _watch(study, spec, target, processes, start, on_progress)
    except KeyboardInterrupt:
        interrupted = True
        _stop_workers(processes)
    except BaseException:  # on_progress raised, or the storage failed: never leave workers behind
        _stop_workers(processes, signalled=False)
        raise
    rows = _rows(study, spec)
    exitcodes = tuple(p.exitcode if p.exitcode is not None else -1 for p in processes)

    # Wrap up: fail stale trials, close their runs, the parent's last word and figures.
    with _locked(lock):
        _fail_stale(study)
        rows = _rows(study, spec)
        _update_parent(client, parent, spec, rows, target)
    _close_orphans(client, experiment_id, parent, study)
    _log_study_artifacts(client, parent, study, spec)
    counts = Counter(r.state for r in rows)
    finished = counts["COMPLETE"] + counts["PRUNED"]
    crashed = [i for i, code in enumerate(exitcodes) if code not in (0, 130)]
    if interrupted:
        stopped = "interrupted"
    elif finished >= target:
        stopped = "target reached"
    elif counts["FAIL"] >= spec.max_failures:
        stopped = "too many failures"
    elif crashed:
        stopped = "worker died"
    elif deadline is not None and time.time() >= deadline:
        stopped = "timeout"
    else:
        stopped = "stopped"
    if counts["RUNNING"] == 0:  # trials of other machines still running: the study goes on there
        client.set_terminated(parent, status="KILLED" if interrupted or crashed else "FINISHED")
    result = StudyResult(
        study=spec.name, storage=redact(url), experiment_id=experiment_id, parent_run_id=parent,
        objectives=spec.objectives, dimensions=_searched(spec), target=target, rows=rows,
        seconds=time.time() - start, epochs_trained=sum(r.epoch for r in rows), stopped=stopped,
        worker_exitcodes=exitcodes,
    )
    if interrupted:
        raise KeyboardInterrupt
    if crashed:
        codes = ", ".join(f"worker {i}: exit {exitcodes[i]}" for i in crashed)
        raise StudyError(f"study {spec.name}: {codes}; {finished}/{target} trials finished, "
                         f"run the same command again to resume", result=result)
    return result


def _searched(spec: StudySpec) -> tuple[str, ...]:
    return tuple(n for n, d in spec.space if not isinstance(d, Fixed))


def _watch(study: optuna.Study, spec: StudySpec, target: int, processes: list, start: float,
           on_progress: Callable[[Progress], None] | None) -> None:
    last = None
    while True:
        alive = any(p.is_alive() for p in processes)
        if on_progress is not None:
            rows = _rows(study, spec)
            if rows != last:
                on_progress(Progress(study=spec.name, objectives=spec.objectives, dimensions=_searched(spec),
                                     target=target, rows=rows, elapsed_s=time.time() - start))
                last = rows
        if not alive:
            return
        for p in processes:
            p.join(timeout=_POLL_S / max(1, len(processes)))


def _stop_workers(processes: list, *, signalled: bool = True) -> None:
    """Stop the workers: interrupt them (after Ctrl-C in a terminal they got SIGINT already, so
    first give them a moment), wait for them to record their runs as KILLED, then terminate."""
    import signal

    steps = ((3.0, None), (30.0, signal.SIGINT), (10.0, signal.SIGTERM))
    for wait_s, action in steps if signalled else steps[1:]:
        if action is not None:
            for p in processes:
                if p.is_alive():
                    with contextlib.suppress(OSError):
                        os.kill(p.pid, action)
        deadline = time.time() + wait_s
        while any(p.is_alive() for p in processes) and time.time() < deadline:
            try:
                time.sleep(0.2)
            except KeyboardInterrupt:
                break
        if not any(p.is_alive() for p in processes):
            return
    for p in processes:
        if p.is_alive():
            p.kill()


def replay_pruning(spec: StudySpec, curves: Sequence[Sequence[float]]) -> tuple[int, float | None]:
    """Feed recorded per-epoch curves of the first objective (one per trial, in trial order)
    through `spec.pruner` as if the trials ran again: (epochs it would train, best value it keeps).

    Separates the pruner's decisions from the sampler's path: in a live study, pruning also changes
    which trials the sampler proposes next."""
    sign = 1.0 if spec.directions[0] == "maximize" else -1.0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=spec.directions[0], pruner=spec.pruner.build(spec))
    epochs, kept = 0, []
    for curve in curves:
        trial, best, stop = study.ask(), None, len(curve)
        for step, value in enumerate(curve, 1):
            if math.isfinite(value):
                best = value if best is None or sign * value > sign * best else best
                trial.report(best, step)
            if trial.should_prune():
                stop = step
                break
        epochs += stop
        if best is not None:
            kept.append(best)
        if stop < len(curve) or best is None:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, best)
    return epochs, (max(kept, key=lambda v: sign * v) if kept else None)


def study_rows(spec: StudySpec, *, storage: str | None = None) -> tuple[TrialRow, ...]:
    """The trials of `spec`'s study as stored (for a leaderboard without running anything)."""
    study = optuna.load_study(study_name=spec.name, storage=open_storage(storage or default_storage(spec), spec.heartbeat))
    return _rows(study, spec)


def serve_dashboard(*, storage: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """optuna-dashboard on the study storage (blocks until Ctrl-C)."""
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise SpecError("optuna-dashboard is not installed: pip install 'harness[dashboard]'") from None
    run_server(storage, host=host, port=port)


# ----------------------------------------------------------------------------------- rendering

def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e3 else f"{value:.4g}"
    return str(value)


_SHORT = {"backbone": lambda v: str(v).split(".")[0]}
_HEADER = {"weight_decay": "wd", "augment_strength": "aug", "batch_size": "bs", "input_size": "input",
           "label_smoothing": "ls", "optimizer": "opt"}
_STATE_STYLE = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "magenta"}


def trials_table(progress: Progress, *, limit: int = 20) -> RenderableType:
    """The live table: the last `limit` trials with state, parameters, value and epoch reached,
    and a summary line."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    first = progress.objectives[0]
    best = progress.best
    running = progress.count("RUNNING")
    caption = (f"{progress.finished}/{progress.target} finished ({progress.count('PRUNED')} pruned), "
               f"{progress.count('FAIL')} failed, {running} running, {progress.elapsed_s / 60:.1f} min")
    if best is not None:
        caption += f" - best {first} {best.value:.4f} (trial {best.number})"
    table = Table(title=f"study {progress.study}", title_justify="left", box=None, pad_edge=False)
    for name in ("#", "state", *progress.dimensions, first, "epoch", "s"):
        table.add_column(_HEADER.get(name, name), justify="left" if name in ("state", "backbone", "loss") else "right",
                         no_wrap=True)
    for r in progress.rows[-limit:]:
        style = _STATE_STYLE.get(r.state, "")
        params = [_SHORT.get(d, _fmt)(r.params[d]) if d in r.params else "" for d in progress.dimensions]
        value = "" if r.value is None else f"{r.value:.4f}"
        if best is not None and r.number == best.number:
            value = f"[bold green]{value}[/]"
        table.add_row(str(r.number), f"[{style}]{r.state.lower()}[/]", *params, value, str(r.epoch or ""),
                      "" if r.seconds is None else f"{r.seconds:.0f}")
    return Group(table, Text(caption))


def leaderboard_table(result: StudyResult, *, top: int = 10) -> RenderableType:
    """The best COMPLETE trials with their MLflow run ids, and a summary line."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    finished = result.finished
    pruned = sum(r.state == "PRUNED" for r in result.rows)
    failed = sum(r.state == "FAIL" for r in result.rows)
    caption = (f"{finished}/{result.target} finished ({pruned} pruned), {failed} failed; {result.stopped}; "
               f"{result.epochs_trained} epochs trained; this session {result.seconds / 60:.1f} min; "
               f"parent run {result.parent_run_id}")
    table = Table(title=f"study {result.study}: leaderboard", title_justify="left", box=None, pad_edge=False)
    for name in ("rank", "#", *result.dimensions, *result.objectives, "epochs", "run id"):
        table.add_column(_HEADER.get(name, name), justify="left" if name in ("backbone", "loss", "run id") else "right",
                         no_wrap=True)
    for rank, r in enumerate(result.ranked()[:top], 1):
        params = [_fmt(r.params[d]) if d in r.params else "" for d in result.dimensions]
        table.add_row(str(rank), str(r.number), *params, *(f"{v:.4f}" for v in r.values or ()), str(r.epoch), r.run_id or "")
    return Group(table, Text(caption))


# ------------------------------------------------------------------------------- command line

def main(argv: Sequence[str] | None = None) -> int:
    """`python -m harness.tuning`: the tune command without the CLI's live table (for scripts, tests
    and remote machines). Prints one line per finished trial and the leaderboard."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.tuning", description=main.__doc__)
    parser.add_argument("--study", default="demo", help="study name in studies/ or a TOML file")
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default: the demo dataset)")
    parser.add_argument("--trials", type=int, default=None, help="finished trials wanted in total")
    parser.add_argument("--workers", type=int, default=None, help="local worker processes")
    parser.add_argument("--storage", default=None, help="sqlite:///FILE or postgresql://... (default: studies/NAME.db)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds after which no trial starts")
    args = parser.parse_args(argv)
    from rich.console import Console

    from harness.data.labels import DatasetError

    console = Console(stderr=True, width=160)
    try:
        spec = load_spec(args.study)
        data = args.data
        if data is None:
            from harness.data.demo import make_demo_dataset

            data = make_demo_dataset(paths.demo_data_dir())
        seen: set[tuple[int, str]] = set()

        def report(progress: Progress) -> None:
            for r in progress.rows:
                if r.state in ("COMPLETE", "PRUNED", "FAIL") and (r.number, r.state) not in seen:
                    seen.add((r.number, r.state))
                    value = "" if r.value is None else f" {progress.objectives[0]}={r.value:.4f}"
                    console.print(f"trial {r.number} {r.state}{value} epochs={r.epoch} {r.params}"
                                  + (f" error={r.error}" if r.error else ""), highlight=False)

        result = run_study(spec, data_dir=data, storage=args.storage, trials=args.trials, workers=args.workers,
                           timeout=args.timeout, on_progress=report)
    except (SpecError, DatasetError) as e:
        console.print(f"error: {e}", highlight=False)
        return 2
    except StudyError as e:
        console.print(f"error: {e}", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    console.print(leaderboard_table(result))
    if result.best is not None and result.best.run_id:
        console.print(f"next: harness submit --run-id {result.best.run_id}", highlight=False)
    return 0


if __name__ == "__main__":
    from harness.tuning import main as _main  # the package module, not __main__: workers unpickle its classes

    sys.exit(_main())
