"""Study specs: `studies/<name>.toml` read into a checked, frozen `StudySpec`.

A spec holds its search space, sampler, pruner, objectives and the base settings of every trial.
Everything is checked when it loads, naming the key at fault: unknown keys, value types
(`pretrained = "false"` is refused, not read as true), ranges, an empty search space, and every
backbone the space can pick against the competition rules, so a study never fails in its middle
for a reason visible at the start.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import paths
from harness.config import AudioFeatures, RunConfig, VideoFeatures, check_track, from_dict, to_dict
from harness.errors import ConfigError
from harness.tuning.errors import SpecError
from harness.tuning.objectives import CV_OBJECTIVES, OBJECTIVES
from harness.tuning.space import (
    INPUT_SIZE,
    Dimension,
    Fixed,
    check_table_types,
    check_type,
    dim_json,
    parse_dimension,
    path_of,
    searched,
    set_value,
    values_of,
    with_feature,
)
from harness.tuning.strategies import PRUNERS, SAMPLERS, TPE, Heartbeat, MedianPruning, NoPruning, Pruner, Sampler


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
    gpus_per_trial: int = 1  # devices (DDP ranks) each trial trains on; > 1: one device group per worker
    folds: int = 0  # K >= 2: each trial is a grouped K-fold cross-validation (harness.tuning.cv_trial); 0: the split
    group_by: str = "auto"  # the folds' groups: auto | none | a video_name,group file
    max_failures: int = 10  # a study stops once this many of its trials have failed
    heartbeat: Heartbeat = Heartbeat()
    source: str = ""  # the TOML text, logged on the parent run
    path: str | None = None

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives]

    @property
    def searched(self) -> tuple[str, ...]:
        """The dimensions that vary between trials, in spec order."""
        return searched(self.space)

    def dimension(self, name: str) -> Dimension | None:
        return dict(self.space).get(name)

    def config_for(self, values: dict[str, Any]) -> RunConfig:
        """The run settings of one trial: `base`, the fixed dimensions, then `values` applied."""
        config = to_dict(self.base)
        fixed = {n: d.value for n, d in self.space if isinstance(d, Fixed)}
        for name, value in {**fixed, **values}.items():
            set_value(config, name, value, n_mels=self.base.features.n_mels)
        return from_dict(RunConfig, config)

    def modalities(self) -> list[str]:
        dim = self.dimension("modality")
        return [str(v) for v in values_of(dim)] if dim is not None else [self.base.modality]

    def feature_configs(self) -> list[AudioFeatures]:
        """Every distinct audio feature setting a trial can use, so that all are prepared up front."""
        choices = [(n, values_of(d)) for n, d in self.space if n == INPUT_SIZE or path_of(n).startswith("features.")]
        configs = [self.base.features]
        for name, values in choices:
            configs = [with_feature(c, name, v, self.base.features.n_mels) for c in configs for v in values]
        return list(dict.fromkeys(configs))

    def video_configs(self) -> list[VideoFeatures]:
        """Every distinct face-crop setting a trial can use (none when no modality reads faces)."""
        if not any(m != "audio" for m in self.modalities()):
            return []
        configs = [self.base.video]
        for name, dim in self.space:
            if path_of(name).startswith("video."):
                leaf = path_of(name).split(".", 1)[1]
                configs = [dataclasses.replace(c, **{leaf: v}) for c in configs for v in values_of(dim)]
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
        return int(max(values_of(dim))) if dim is not None else self.base.train.epochs

    def space_hash(self) -> str:
        """What a stored study must have been created from to be resumed: objectives, space, base."""
        blob = {"objectives": list(self.objectives), "space": [[n, dim_json(d)] for n, d in self.space],
                "base": to_dict(self.base)}
        if self.folds:  # a value measured on K folds is not comparable with one on the split (older hashes kept)
            blob["cv"] = [self.folds, self.group_by]
        return hashlib.sha1(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_spec(name_or_path: str | Path, *, check_models: bool = True) -> StudySpec:
    """Load `studies/<name>.toml` (or a TOML file) and check it, every backbone included.

    Args:
        name_or_path: a study name (looked up in the project's and the package's `studies/`) or a
            path to a TOML file.
        check_models: also check every backbone the space can pick (builds each model once; off
            for commands that only read a study's storage).

    Returns:
        The checked spec.

    Raises:
        SpecError: naming the file and every problem: unknown keys, values of the wrong type, bad
            ranges, an empty search space, an unknown study name, an unknown timm name, a tag that
            is not ImageNet-1k only, a backbone over the parameter cap or failing at an input size.

    Example:
        >>> spec = load_spec("demo", check_models=False)
        >>> spec.objectives
        ('val_auc',)
    """
    path = _spec_path(name_or_path)
    try:
        text = path.read_text()
        raw = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise SpecError(f"{path}: {e}") from None
    try:
        spec = _parse_spec(raw, default_name=path.stem, source=text, path=str(path))
    except (TypeError, ValueError) as e:  # SpecError included
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
    folders = list(dict.fromkeys([paths.studies_dir(), Path(__file__).resolve().parents[2] / "studies"]))
    for folder in folders:
        if (folder / f"{name_or_path}.toml").is_file():
            return folder / f"{name_or_path}.toml"
    known = sorted({p.stem for f in folders if f.is_dir() for p in f.glob("*.toml")})
    raise SpecError(f"no study named {name_or_path!r} in {folders[0]}; known: {', '.join(known) or 'none'}")


_TABLES = {"study", "sampler", "pruner", "space", "base", "heartbeat"}
# The [study] table's keys and their types (TOML values).
_STUDY_TYPES: dict[str, Any] = {
    "name": str, "experiment": str, "objectives": str | list[str], "trials": int, "workers": int,
    "max_failures": int, "gpus_per_trial": int, "pretrained": bool, "max_params": float, "description": str,
    "folds": int, "group_by": str,
}


def _parse_spec(raw: dict[str, Any], *, default_name: str, source: str, path: str | None) -> StudySpec:
    _no_unknown("spec", raw, _TABLES)
    for table in _TABLES:
        if table in raw:
            check_type(f"[{table}]", raw[table], dict)
    study = dict(raw.get("study", {}))
    _no_unknown("[study]", study, set(_STUDY_TYPES))
    for key, value in study.items():
        check_type(f"[study] {key}", value, _STUDY_TYPES[key])
    name = study.get("name", default_name)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise SpecError(f"study name {name!r}: use letters, digits, '.', '_' and '-'")
    objectives = study.get("objectives", ["val_auc"])
    objectives = (objectives,) if isinstance(objectives, str) else tuple(objectives)
    for o in objectives:
        if o not in OBJECTIVES:
            raise SpecError(f"unknown objective {o!r}; choose from {', '.join(OBJECTIVES)}")
    if not objectives or len(set(objectives)) != len(objectives):
        raise SpecError("objectives must be a non-empty list without repeats")

    base = _parse_base(raw.get("base", {}), study)
    space = tuple((n, parse_dimension(n, v, base)) for n, v in raw.get("space", {}).items())
    names = [n for n, _ in space]
    paths_used = [path_of(n) for n in names]
    if len(set(paths_used)) != len(paths_used):
        raise SpecError(f"two dimensions set the same setting: {', '.join(names)}")
    if not searched(space):
        raise SpecError("[space]: nothing to search (no dimension with a list of two or more choices or a range), "
                        "so every trial would be identical")

    sampler = _strategy("sampler", raw.get("sampler", {"kind": "tpe"}), SAMPLERS)
    pruner = _strategy("pruner", raw.get("pruner", {"kind": "median"}), PRUNERS)
    if len(objectives) > 1 and not isinstance(pruner, NoPruning):
        raise SpecError("pruning needs a single objective: set [pruner] kind = \"none\" for a multi-objective study")
    heartbeat_table = raw.get("heartbeat", {})
    _no_unknown("[heartbeat]", heartbeat_table, {f.name for f in dataclasses.fields(Heartbeat)})
    check_table_types("[heartbeat]", heartbeat_table, Heartbeat)
    heartbeat = Heartbeat(**heartbeat_table)
    if heartbeat.interval < 1 or heartbeat.grace_period <= heartbeat.interval or heartbeat.max_retry < 0:
        raise SpecError("[heartbeat]: need interval >= 1, grace_period > interval (whole seconds), max_retry >= 0")
    spec = StudySpec(
        name=name, experiment=study.get("experiment", f"tune-{name}"), objectives=objectives, space=space,
        base=base, sampler=sampler, pruner=pruner, trials=study.get("trials", 50),
        workers=study.get("workers", 1), max_failures=study.get("max_failures", 10),
        gpus_per_trial=study.get("gpus_per_trial", 1), folds=study.get("folds", 0),
        group_by=study.get("group_by", "auto"), heartbeat=heartbeat, source=source, path=path,
    )
    if spec.trials < 1 or spec.workers < 1 or spec.max_failures < 1:
        raise SpecError("[study]: trials, workers and max_failures must be at least 1")
    if spec.gpus_per_trial < 1:
        raise SpecError(f"[study] gpus_per_trial = {spec.gpus_per_trial}: give at least 1 (the devices a trial trains on)")
    _check_folds(spec)
    _check_strategies(spec)
    _check_values(spec)
    return spec


def _check_folds(spec: StudySpec) -> None:
    """A cross-validated study (`folds = K`) optimises cross-validated objectives, a study on the
    official split the split's; each fold trains in one process (`harness.crossval`), with any
    feature settings (whole-clip images, windows, codec variants)."""
    cv = [o for o in spec.objectives if o in CV_OBJECTIVES]
    if spec.folds == 0 and cv:
        raise SpecError(f"objective {cv[0]!r} needs a cross-validated study: set [study] folds = K (at least 2)")
    if spec.folds == 0:
        return
    if spec.folds < 2:
        raise SpecError(f"[study] folds = {spec.folds}: give at least 2, or leave it out to train on the official split")
    if len(cv) != len(spec.objectives):
        other = next(o for o in spec.objectives if o not in CV_OBJECTIVES)
        raise SpecError(f"[study] folds = {spec.folds}: objective {other!r} is measured on the official split; "
                        f"choose from {', '.join(CV_OBJECTIVES)}")
    if spec.group_by not in ("auto", "none") and not Path(spec.group_by).is_file():
        raise SpecError(f"[study] group_by = {spec.group_by!r}: not auto, none or an existing video_name,group file")
    if spec.gpus_per_trial > 1:
        raise SpecError("[study] folds with gpus_per_trial > 1 is not supported yet: each fold trains in one process")


def _parse_base(table: dict[str, Any], study: dict[str, Any]) -> RunConfig:
    """[base] as a RunConfig, with [study]'s pretrained and max_params applied to its training."""
    check_table_types("[base]", table, RunConfig)
    try:
        base = from_dict(RunConfig, table)
    except (TypeError, ValueError) as e:
        raise SpecError(f"[base]: {e}") from None
    train_changes: dict[str, Any] = {}
    if "pretrained" in study:
        train_changes["pretrained"] = study["pretrained"]
    if "max_params" in study:
        train_changes["max_params"] = float(study["max_params"])
    if train_changes:
        base = dataclasses.replace(base, train=dataclasses.replace(base.train, **train_changes))
    return base


def _no_unknown(where: str, table: dict[str, Any], known: set[str]) -> None:
    unknown = set(table) - known
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")


def _strategy(where: str, table: dict[str, Any], kinds: dict[str, type]) -> Any:
    table = dict(table)
    kind = table.pop("kind", None)
    if kind not in kinds:
        raise SpecError(f"[{where}] kind = {kind!r}; choose from {', '.join(kinds)}")
    label = f"[{where}] ({kind})"
    _no_unknown(label, table, {f.name for f in dataclasses.fields(kinds[kind])})
    check_table_types(label, table, kinds[kind])
    return kinds[kind](**table)


def _check_strategies(spec: StudySpec) -> None:
    """Build the sampler and pruner once, so that Optuna's own range checks run at load time."""
    for where, build in (("[sampler]", spec.sampler.build), ("[pruner]", lambda: spec.pruner.build(max_epochs=spec.max_epochs()))):
        try:
            build()
        except (TypeError, ValueError) as e:
            raise SpecError(f"{where}: {e}") from None


def _check_values(spec: StudySpec) -> None:
    """Every edge value of every dimension builds a valid RunConfig (the config checks names,
    types and ranges itself and names the key)."""
    for name, dim in spec.space:
        for value in values_of(dim):
            try:
                spec.config_for({name: value})
            except (TypeError, ValueError, KeyError) as e:
                raise SpecError(f"[space] {name} = {value!r}: {e}") from None


def check_backbones(spec: StudySpec) -> list[str]:
    """The rule problems of every model the study can build: each backbone (and video backbone) a
    `name.tag` with an ImageNet-1k-only tag, and each modality x backbone x input size under the
    study's parameter cap as one module (a fusion model counts both branches), with a forward pass
    that works. Empty when all is well."""
    from harness.modalities import check_run
    from harness.models import ModelRuleError, pretrained_tag_problem, resolve_name

    def values(name: str, default: Any) -> list[Any]:
        dim = spec.dimension(name)
        return values_of(dim) if dim is not None else [default]

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


def check_dataset(spec: StudySpec, track: str, *, where: object = "") -> None:
    """Image-track datasets tune image models only, clip datasets the others (the one rule,
    `harness.config.check_track`, applied to every modality the study can pick). Raises SpecError."""
    for modality in spec.modalities():
        try:
            check_track(track, modality, where=where)
        except ConfigError as e:
            hint = ' (set modality = "image" in [base] and in no [space])' if track == "image" else ""
            raise SpecError(f"study {spec.name}: {e}{hint}") from None
