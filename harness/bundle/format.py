"""The bundle format: every file name in a promoted bundle and the layout of its config.json, in one place.

Written by `harness.bundle.build` and read by `harness.predict.Predictor.from_bundle` (which the
bundle's own api.py calls). This module is a leaf: it imports only config, errors and fileio, so
that predict, which sits upstream of the bundle in the flow, may read it.

config.json (format 1; the keys bundles have always had, so older bundles still load):

    format        1
    run_id, run_name
    run_config    the run's RunConfig as a dict (harness.config.to_dict)
    model         backbone, modality, num_classes, input_size, inputs {name: {shape, mean, std}},
                  weights (path inside the bundle), sha256 (of the weights), params, thop_params, macs
    scoring       output, tta, tta_shifts, fallback_score, score_decimals
    metrics       the run's best_* and val_auc_ci_* metrics
    data          fingerprint, path
    code          git_commit, git_dirty, source, python, versions

Reading refuses, with one line naming config.json and the key, anything that would make the model
load from somewhere else or from other bytes than the bundle was made with: weights outside the
bundle (absolute, `..`, or a link that leads out), weights whose sha256 differs from the recorded
one, and weights that are not safetensors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from harness.config import RunConfig, from_dict
from harness.errors import BadInput
from harness.fileio import sha256

FORMAT = 1

# ---- the files of a bundle folder
CONFIG = "config.json"
WEIGHTS = "weights/model.safetensors"
MANIFEST = "manifest.json"
MODEL_CARD = "MODEL_CARD.md"
API = "api.py"
DOCKERFILE = "Dockerfile"
DOCKERIGNORE = ".dockerignore"
ENTRYPOINT = "entrypoint.sh"
TRAIN_SH = "train.sh"
TRAIN_PY = "train.py"
REQUIREMENTS = "requirements.txt"
SOURCE_PACKAGE = "harness"  # the harness source at the run's commit, beside pyproject.toml

# ---- beside the bundle in a submission folder
FOLDER = "bundle"  # also the top folder inside the archive
ARCHIVE = "bundle.tar.gz"


class BundleError(BadInput):
    """A bundle that cannot be read or trusted; one line naming the file and the key."""


class NotABundle(BundleError, FileNotFoundError):
    """A folder without config.json."""


@dataclass(frozen=True)
class BundleConfig:
    """What a reader needs from config.json, checked: the weights are inside the bundle and intact."""

    folder: Path
    run_id: str
    run_config: RunConfig
    weights: Path
    stats: dict[str, tuple[list[float], list[float]]]  # input name -> (mean, std)
    tta: int
    fallback: float


def make_config(
    *,
    run_id: str,
    run_name: str,
    run_config: dict[str, Any],
    model: dict[str, Any],
    weights_sha256: str,
    scoring: dict[str, Any],
    metrics: dict[str, float],
    data: dict[str, Any],
    code: dict[str, Any],
) -> dict[str, Any]:
    """The config.json of a bundle, in the layout above. `model` holds every model key but the
    weights' path and digest, which this function adds (the path is always `WEIGHTS`)."""
    return {
        "format": FORMAT,
        "run_id": run_id,
        "run_name": run_name,
        "run_config": run_config,
        "model": {**model, "weights": WEIGHTS, "sha256": weights_sha256},
        "scoring": scoring,
        "metrics": metrics,
        "data": data,
        "code": code,
    }


def read_config(folder: Path | str) -> BundleConfig:
    """Read and check a bundle's config.json and weights; nothing is loaded into a model yet.

    Args:
        folder: the bundle folder (holding config.json).

    Returns:
        The checked `BundleConfig`.

    Raises:
        NotABundle: no config.json in `folder`.
        BundleError: unreadable JSON, another format, a missing key, weights outside the bundle,
            missing, not safetensors, or not matching the recorded sha256.
    """
    folder = Path(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise NotABundle(f"{folder}: not a bundle (no {CONFIG})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise BundleError(f"{path}: bundle format {found!r}, this code reads {FORMAT}")
    model, scoring = _section(config, "model", path), _section(config, "scoring", path)
    try:
        cfg = from_dict(RunConfig, _section(config, "run_config", path))
    except (TypeError, ValueError) as e:
        raise BundleError(f"{path}: run_config: {e}") from None
    weights = weights_path(folder, model.get("weights"), where=path)
    recorded = model.get("sha256")
    if not isinstance(recorded, str) or not recorded:
        raise BundleError(f"{path}: model.sha256 is missing; the weights cannot be checked")
    check_safetensors(weights)
    if (found := sha256(weights)) != recorded:
        raise BundleError(f"{weights}: sha256 {found[:16]}... differs from the {recorded[:16]}... that {path} records")
    # Bundles written before face models record one input's statistics as model.mean/std.
    inputs = model.get("inputs") or {"audio": {"mean": model.get("mean"), "std": model.get("std")}}
    try:
        stats = {name: (list(v["mean"]), list(v["std"])) for name, v in inputs.items()}
        tta, fallback = int(scoring["tta"]), float(scoring["fallback_score"])
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{path}: model.inputs or scoring is malformed ({type(e).__name__}: {e})") from None
    return BundleConfig(folder=folder, run_id=str(config.get("run_id", "")), run_config=cfg, weights=weights,
                        stats=stats, tta=tta, fallback=fallback)


def weights_path(folder: Path, value: object, *, where: Path) -> Path:
    """The weights file that config.json's `model.weights` names, refused unless it is a relative
    path that stays inside `folder` once links are followed, and exists."""
    if not isinstance(value, str) or not value:
        raise BundleError(f"{where}: model.weights must name a file inside the bundle, found {value!r}")
    relative = PurePosixPath(value)
    if relative.is_absolute() or Path(value).is_absolute() or ".." in relative.parts:
        raise BundleError(f"{where}: model.weights {value!r} points outside the bundle")
    path = folder / relative
    if not path.resolve().is_relative_to(folder.resolve()):
        raise BundleError(f"{where}: model.weights {value!r} leads outside the bundle (through a link)")
    if not path.is_file():
        raise BundleError(f"{where}: model.weights {value!r}: no such file in the bundle")
    return path


def check_safetensors(path: Path) -> None:
    """Refuse a file that is not a safetensors file holding at least one tensor (reads its header only)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            if not list(f.keys()):
                raise BundleError(f"{path}: the weights hold no tensors")
    except SafetensorError as e:
        raise BundleError(f"{path}: not a safetensors file ({e})") from None


def _section(config: dict[str, Any], key: str, where: Path) -> dict[str, Any]:
    value = config.get(key)
    if not isinstance(value, dict):
        raise BundleError(f"{where}: {key} is missing or not an object")
    return value
