"""Study specs: `studies/<name>.toml` read into a checked, frozen `StudySpec`.

Everything is checked when it loads, naming the key at fault (unknown keys, value types, ranges, an empty
search space, every backbone the space can pick against the rules), so a study never fails in its middle
for a reason visible at the start.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from harness import paths
from harness.config import AudioFeatures, RunConfig, VideoFeatures, check_track, from_dict, to_dict
from harness.errors import ConfigError
from harness.tuning.errors import SpecError
from harness.tuning.objectives import CV_OBJECTIVES, OBJECTIVES, UNSEEN_OBJECTIVES, sign
from harness.tuning.space import (INPUT_SIZE, Dimension, Fixed, check_type, no_unknown, parse_dimension,
                                  path_of, searched, set_value, values_of, with_feature)
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
    group_by: str = "auto"  # the folds' groups: auto | none | method | a video_name,group file
    max_failures: int = 10  # a study stops once this many of its trials have failed
    heartbeat: Heartbeat = Heartbeat()
    source: str = ""  # the TOML text, logged on the parent run
    path: str | None = None

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives]

    @property
    def searched(self) -> tuple[str, ...]:
        return searched(self.space)

    def dimension(self, name: str) -> Dimension | None:
        return dict(self.space).get(name)

    def values(self, name: str, default: Any) -> list[Any]:
        """The edge values of dimension `name`, or `[default]` when the space does not name it."""
        dim = self.dimension(name)
        return values_of(dim) if dim is not None else [default]

    def config_for(self, values: dict[str, Any]) -> RunConfig:
        """The run settings of one trial: `base`, the fixed dimensions, then `values` applied."""
        config = to_dict(self.base)
        fixed = {n: d.value for n, d in self.space if isinstance(d, Fixed)}
        for name, value in {**fixed, **values}.items():
            set_value(config, name, value, n_mels=self.base.audio.n_mels)
        return from_dict(RunConfig, config)

    def modalities(self) -> list[str]:
        return [str(v) for v in self.values("modality", self.base.modality)]

    def feature_configs(self) -> list[AudioFeatures]:
        """Every distinct audio feature setting a trial can use, so that all are prepared up front."""
        configs = [self.base.audio]
        for name, dim in self.space:
            if name == INPUT_SIZE or path_of(name).startswith("audio."):
                configs = [with_feature(c, name, v, self.base.audio.n_mels) for c in configs for v in values_of(dim)]
        return list(dict.fromkeys(configs))

    def video_configs(self) -> list[VideoFeatures]:
        """Every distinct face-crop setting a trial can use (none when no modality reads faces)."""
        if not any(m != "audio" for m in self.modalities()):
            return []
        configs = [self.base.video]
        for name, dim in self.space:
            if (path := path_of(name)).startswith("video."):
                configs = [dataclasses.replace(c, **{path[len("video."):]: v}) for c in configs for v in values_of(dim)]
        return list(dict.fromkeys(configs))

    def prepare_configs(self) -> list[RunConfig]:
        """Run settings that, prepared, cover every input a trial can read: what `tune` prepares first."""
        out = [dataclasses.replace(self.base, modality="audio", audio=f) for f in self.feature_configs()
               if "audio" in self.modalities() or "fusion" in self.modalities()]
        face = "image" if "image" in self.modalities() else "video"
        out += [dataclasses.replace(self.base, modality=face, video=v) for v in self.video_configs()]
        return out

    def max_epochs(self) -> int:
        return int(max(self.values("epochs", self.base.train.epochs)))

    def space_hash(self) -> str:
        """What a stored study must have been created from to be resumed: objectives, space, base."""
        space = [[n, {"kind": type(d).__name__, **dataclasses.asdict(d)}] for n, d in self.space]
        blob = {"objectives": list(self.objectives), "space": space, "base": to_dict(self.base)}
        if self.folds:  # values on K folds are not comparable with the split's (older hashes kept)
            blob["cv"] = [self.folds, self.group_by]
        return hashlib.sha1(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_spec(name_or_path: str | Path, *, check_models: bool = True) -> StudySpec:
    """Load `studies/<name>.toml` (the project's, then the package's) or a TOML file, and check it (SpecError);
    `check_models` builds every backbone the space can pick once (off for commands that only read storage)."""
    path = _spec_path(name_or_path)
    try:
        text = path.read_text()
        spec = _parse_spec(tomllib.loads(text), default_name=path.stem, source=text, path=str(path))
    except (OSError, ConfigError, TypeError, ValueError) as e:  # TOML and Unicode errors are ValueErrors
        raise SpecError(f"{path}: {e}") from None
    if check_models and (problems := check_backbones(spec)):
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
_STUDY_TYPES: dict[str, Any] = {"name": str, "experiment": str, "objectives": str | list[str], "trials": int, "workers": int,
                                "max_failures": int, "gpus_per_trial": int, "pretrained": bool, "max_params": float,
                                "description": str, "folds": int, "group_by": str}


def _parse_spec(raw: dict[str, Any], *, default_name: str, source: str, path: str | None) -> StudySpec:
    no_unknown("spec", raw, _TABLES)
    for table in (t for t in _TABLES if t in raw):
        check_type(f"[{table}]", raw[table], dict)
    study = dict(raw.get("study", {}))
    no_unknown("[study]", study, set(_STUDY_TYPES))
    for key, value in study.items():
        check_type(f"[study] {key}", value, _STUDY_TYPES[key])
    name = study.get("name", default_name)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise SpecError(f"study name {name!r}: use letters, digits, '.', '_' and '-'")
    objectives = study.get("objectives", ["val_auc"])
    objectives = (objectives,) if isinstance(objectives, str) else tuple(objectives)
    if unknown := [o for o in objectives if o not in OBJECTIVES]:
        raise SpecError(f"unknown objective {unknown[0]!r}; choose from {', '.join(OBJECTIVES)}")
    if not objectives or len(set(objectives)) != len(objectives):
        raise SpecError("objectives must be a non-empty list without repeats")

    base = from_dict(RunConfig, raw.get("base", {}), where="[base]")
    if train := {k: float(v) if k == "max_params" else v for k, v in study.items() if k in ("pretrained", "max_params")}:
        base = dataclasses.replace(base, train=dataclasses.replace(base.train, **train))  # [study] settings
    space = tuple((n, parse_dimension(n, v, base)) for n, v in raw.get("space", {}).items())
    if len({path_of(n) for n, _ in space}) != len(space):
        raise SpecError(f"two dimensions set the same setting: {', '.join(n for n, _ in space)}")
    if not searched(space):
        raise SpecError("[space]: nothing to search (no dimension with a list of two or more choices or a range), "
                        "so every trial would be identical")

    sampler = _strategy("sampler", raw.get("sampler", {"kind": "tpe"}), SAMPLERS)
    pruner = _strategy("pruner", raw.get("pruner", {"kind": "median"}), PRUNERS)
    if len(objectives) > 1 and not isinstance(pruner, NoPruning):
        raise SpecError("pruning needs a single objective: set [pruner] kind = \"none\" for a multi-objective study")
    heartbeat = from_dict(Heartbeat, raw.get("heartbeat", {}), where="[heartbeat]")
    if heartbeat.interval < 1 or heartbeat.grace_period <= heartbeat.interval or heartbeat.max_retry < 0:
        raise SpecError("[heartbeat]: need interval >= 1, grace_period > interval (whole seconds), max_retry >= 0")
    same = {k: study[k] for k in ("trials", "workers", "max_failures", "gpus_per_trial", "folds", "group_by") if k in study}
    spec = StudySpec(name=name, experiment=study.get("experiment", f"tune-{name}"), objectives=objectives, space=space,
                     base=base, sampler=sampler, pruner=pruner, heartbeat=heartbeat, source=source, path=path, **same)
    if spec.trials < 1 or spec.workers < 1 or spec.max_failures < 1:
        raise SpecError("[study]: trials, workers and max_failures must be at least 1")
    if spec.gpus_per_trial < 1:
        raise SpecError(f"[study] gpus_per_trial = {spec.gpus_per_trial}: give at least 1 (the devices a trial trains on)")
    _check_folds(spec)
    _check_builds(spec)
    return spec


def _check_folds(spec: StudySpec) -> None:
    """A cross-validated study optimises cross-validated objectives, a study on the split the split's."""
    cv = [o for o in spec.objectives if o in CV_OBJECTIVES]
    if spec.folds == 0 and cv:
        raise SpecError(f"objective {cv[0]!r} needs a cross-validated study: set [study] folds = K (at least 2)")
    if spec.folds == 0:
        return
    if spec.folds < 2:
        raise SpecError(f"[study] folds = {spec.folds}: give at least 2, or leave it out to train on the official split")
    if other := [o for o in spec.objectives if o not in CV_OBJECTIVES]:
        raise SpecError(f"[study] folds = {spec.folds}: objective {other[0]!r} is measured on the official split; "
                        f"choose from {', '.join(CV_OBJECTIVES)}")
    if spec.group_by not in ("auto", "none", "method") and not Path(spec.group_by).is_file():
        raise SpecError(f"[study] group_by = {spec.group_by!r}: not auto, none, method or an existing video_name,group file")
    if spec.group_by != "method" and (unseen := [o for o in cv if o in UNSEEN_OBJECTIVES]):
        raise SpecError(f"objective {unseen[0]!r} needs folds that leave methods out: set [study] group_by = \"method\"")
    if spec.gpus_per_trial > 1:
        raise SpecError("[study] folds with gpus_per_trial > 1 is not supported yet: each fold trains in one process")


def _strategy(where: str, table: dict[str, Any], kinds: dict[str, type]) -> Any:
    if (kind := table.get("kind")) not in kinds:
        raise SpecError(f"[{where}] kind = {kind!r}; choose from {', '.join(kinds)}")
    return from_dict(kinds[kind], {k: v for k, v in table.items() if k != "kind"}, where=f"[{where}] ({kind})")


def _check_builds(spec: StudySpec) -> None:
    """Build the sampler and the pruner (so Optuna's own range checks run at load time) and the RunConfig of
    every edge value of every dimension (whose checks name the key) once."""
    builds = {"[sampler]": spec.sampler.build, "[pruner]": lambda: spec.pruner.build(max_epochs=spec.max_epochs())}
    for where, build in builds.items():
        try:
            build()
        except (TypeError, ValueError) as e:
            raise SpecError(f"{where}: {e}") from None
    for name, value in ((n, v) for n, d in spec.space for v in values_of(d)):
        try:
            spec.config_for({name: value})
        except (ConfigError, KeyError) as e:
            raise SpecError(f"[space] {name} = {value!r}: {e}") from None


def check_backbones(spec: StudySpec) -> list[str]:
    """The rule problems of every model the study can build: each backbone a `name.tag` with an ImageNet-1k-only
    tag, each modality x backbone x input size under the parameter cap, with a forward pass that works."""
    from harness.modalities import check_run
    from harness.models import ModelRuleError, pretrained_tag_problem, resolve_name

    backbones, video_backbones, losses = (spec.values(k, getattr(spec.base.train, k))
                                          for k in ("backbone", "video_backbone", "loss"))
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
        for backbone, video_backbone, features, video in itertools.product(
                backbones, video_backbones if faces else [None],
                spec.feature_configs() if modality in ("audio", "fusion") else [spec.base.audio],
                spec.video_configs() if faces else [spec.base.video]):
            if backbone not in usable or (video_backbone and video_backbone not in usable):
                continue
            train = dataclasses.replace(spec.base.train, backbone=backbone, video_backbone=video_backbone, loss=loss)
            cfg = dataclasses.replace(spec.base, modality=modality, audio=features, video=video, train=train)
            report = check_run(cfg)
            shape = "x".join(map(str, cfg.features_for("video").shape if modality in ("video", "image") else features.shape))
            problems.extend(f"{report.name} ({modality}) at {shape}: {p}" for p in report.problems)
    return list(dict.fromkeys(problems))


def check_dataset(spec: StudySpec, track: str, *, where: object = "") -> None:
    """`harness.config.check_track` applied to every modality the study can pick. Raises SpecError."""
    for modality in spec.modalities():
        try:
            check_track(track, modality, where=where)
        except ConfigError as e:
            hint = ' (set modality = "image" in [base] and in no [space])' if track == "image" else ""
            raise SpecError(f"study {spec.name}: {e}{hint}") from None


def replay_pruning(spec: StudySpec, curves: Sequence[Sequence[float]]) -> tuple[int, float | None]:
    """Recorded per-epoch curves of the first objective (a trial each) fed through `spec.pruner` as if the
    trials ran again: (epochs it would train, best value it keeps)."""
    direction = sign(spec.objectives[0])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=spec.directions[0], pruner=spec.pruner.build(max_epochs=spec.max_epochs()))
    epochs, kept = 0, []
    for curve in curves:
        trial, best, stop = study.ask(), None, len(curve)
        for step, value in enumerate(curve, 1):
            if math.isfinite(value):
                best = value if best is None or direction * value > direction * best else best
                trial.report(best, step)
            if trial.should_prune():
                stop = step
                break
        epochs += stop
        if best is not None:
            kept.append(best)
        pruned = stop < len(curve) or best is None
        study.tell(trial, None if pruned else best, state=TrialState.PRUNED if pruned else None)
    return epochs, (max(kept, key=lambda v: direction * v) if kept else None)
