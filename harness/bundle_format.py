"""The bundle format: every file name in a promoted bundle and the layout of its config.json.

Written by `harness.bundle.build`, read by `harness.predict.Predictor.from_bundle` (and so the bundle's
api.py); a leaf below predict (imports config, errors, fileio) so predict never imports the writer.

config.json (format 1; older bundles still load):

    format        1
    run_id, run_name
    run_config    the run's RunConfig as a dict (harness.config.to_dict); a local weights file by name only
    model         backbone, modality, num_classes, input_size, inputs {name: {shape, mean, std}}, weights
                  (path inside the bundle) and their sha256, params, thop_params, macs; a pack: pack
                  (`PACK_TABLE`) and pack_sha256, run_config being its first member's settings
    scoring       output, tta, tta_shifts, fallback_score, score_decimals
    metrics       the run's best_* and val_auc_ci_* metrics
    data          name (the dataset folder's), fingerprint, demo (synthetic demo data); no path
    code          git_commit, git_dirty, source, python, versions

Reading refuses, in one line naming config.json and the key, weights outside the bundle (absolute,
`..`, or a link leading out), weights whose sha256 differs from the recorded one, and non-safetensors.
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

CONFIG = "config.json"
WEIGHTS = "weights/model.safetensors"
PACK_TABLE = "weights/pack.json"  # a pack's member table, beside its weights (`harness.pack.model`)
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
README = "README.md"  # pyproject.toml names it as the readme
FOLDER = "bundle"  # beside ARCHIVE in a submission folder; also the top folder inside the archive
ARCHIVE = "bundle.tar.gz"
# The registered MLflow model made of a bundle ("models from code": harness/bundle/pyfunc_model.py).
PYFUNC_CODE = Path(__file__).with_name("bundle") / "pyfunc_model.py"
PYFUNC_ARTIFACT = "bundle"  # the model's artifact: a folder with the bundle's config.json and weights
PYFUNC_FILES = (CONFIG, WEIGHTS)
PYFUNC_INPUT = "path"  # a string column: clip paths on the scoring machine
PYFUNC_OUTPUT = "score"  # a double column: the probability that the clip is fake


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
    demo: bool = False  # trained on the synthetic demo dataset
    pack: bool = False  # a pack: its member table `PACK_TABLE` lies beside `weights`


def make_config(*, run_id: str, run_name: str, run_config: dict[str, Any], model: dict[str, Any], weights_sha256: str,
                scoring: dict[str, Any], metrics: dict[str, float], data: dict[str, Any], code: dict[str, Any]) -> dict[str, Any]:
    """A bundle's config.json (layout above); adds the weights' path (always `WEIGHTS`) and digest to `model`."""
    return {"format": FORMAT, "run_id": run_id, "run_name": run_name, "run_config": run_config,
            "model": {**model, "weights": WEIGHTS, "sha256": weights_sha256},
            "scoring": scoring, "metrics": metrics, "data": data, "code": code}


def read_config(folder: Path | str) -> BundleConfig:
    """A bundle folder's config.json and weights checked (nothing loaded); NotABundle without config.json,
    BundleError for bad JSON, another format, a missing key, or weights that fail a check above."""
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
    data = config.get("data")
    demo = isinstance(data, dict) and data.get("demo") is True
    if pack := "pack" in model:
        if model["pack"] != PACK_TABLE or (folder / PACK_TABLE).resolve().parent != weights.resolve().parent:
            raise BundleError(f"{path}: model.pack must be {PACK_TABLE!r}, beside the weights, found {model['pack']!r}")
        if not (folder / PACK_TABLE).is_file() or sha256(folder / PACK_TABLE) != model.get("pack_sha256"):
            raise BundleError(f"{folder / PACK_TABLE}: missing, or not the sha256 that {path} records")
    return BundleConfig(folder=folder, run_id=str(config.get("run_id", "")), run_config=cfg, weights=weights,
                        stats=stats, tta=tta, fallback=fallback, demo=demo, pack=pack)


def weights_path(folder: Path, value: object, *, where: Path) -> Path:
    """The file `model.weights` names: refused unless relative, inside `folder` once links are followed, existing."""
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
