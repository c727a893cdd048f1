"""Build a promoted bundle folder and its archive.

The files are listed in `harness.bundle_format`; manifest.json holds each one's sha256. Nothing unpickles
(safetensors only) and nothing names the training machine's folders.

Plain writes into the given folder (submit's staging folder, swapped in whole). Before returning, the
bundle is loaded as the organisers will (`import api; api.load()` in a fresh interpreter, the run's own
code): a bundle that cannot load its model raises and is never published.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from harness import bundle_format as F
from harness.bundle import templates
from harness.bundle.card import model_card, now
from harness.bundle.requirements import pinned_requirements
from harness.bundle.source import copy_source
from harness.checkpoint import PACK_TABLE
from harness.config import RunConfig, to_dict
from harness.fileio import sha256
from harness.predict import SCORE_DECIMALS, Predictor, is_demo_data
from harness.preflight import backbones
from harness.tracking import tags as T
from harness.tracking.metric_names import summary as summary_metrics

UV_VERSION = "0.13.9"  # the uv image the bundle's Dockerfile copies uv from
DEFAULT_CUDA_IMAGE = "nvidia/cuda:13.0.0-runtime-ubuntu24.04"
LOAD_TIMEOUT_S = 600  # `import api; api.load()` in a fresh interpreter: torch + timm + the model


def build_bundle(dest: Path, *, run: Any, cfg: RunConfig, weights: Path, predictor: Predictor, compliance: Any,
                 fallbacks: int = 0, test_rows: int = 0, gate: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Write the bundle of MLflow `run` into `dest`; return (dest, the manifest written as manifest.json).

    `predictor` and `compliance` fill config.json; `fallbacks`, `test_rows` and `gate` the model card. BundleError:
    the run's commit is unavailable or cannot load the bundle, or the checkpoint is not safetensors."""
    dest = Path(dest)
    run_id = run.info.run_id
    source_note = copy_source(dest, run)
    (dest / F.WEIGHTS).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, dest / F.WEIGHTS)
    F.check_safetensors(dest / F.WEIGHTS)
    if hasattr(predictor, "members"):  # a pack (`harness.predict.PackPredictor`): its member table beside the weights
        shutil.copyfile(predictor.weights.parent / PACK_TABLE, dest / F.PACK_TABLE)
    requirements, requirement_notes = pinned_requirements(run.data.tags, cfg)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    config = _config(run, cfg, predictor, compliance, weights_sha256=sha256(dest / F.WEIGHTS),
                     source_note=source_note, python=python, stage_table=dest / F.PACK_TABLE)
    _write(dest / F.CONFIG, json.dumps(config, indent=2) + "\n")
    shutil.copyfile(Path(__file__).with_name(F.API), dest / F.API)
    if (problem := _load_problem(dest)) is not None:
        raise F.BundleError(f"the code of run {run_id} (commit {config['code']['git_commit']}) cannot load this "
                            f"bundle ({problem}): train it again with the current code (`harness train --like "
                            f"{run_id}`) and submit that run")
    fill = {"run_id": run_id, "backbone": compliance.resolved, "image": f"harness-{run_id[:8]}", "python": python,
            "uv_version": UV_VERSION, "cuda_image": _cuda_image(), "created": now(),
            "val_auc": config["metrics"].get("best_val_auc", float("nan")),
            "trains": (f"a pack of {len(predictor.members)} members: each member, then the pack" if hasattr(predictor, "members")
                       else f"a single model, {compliance.resolved}")}  # what train.sh's header says it does
    for name, template in ((F.DOCKERFILE, templates.DOCKERFILE), (F.DOCKERIGNORE, templates.DOCKERIGNORE),
                           (F.ENTRYPOINT, templates.ENTRYPOINT), (F.TRAIN_SH, templates.TRAIN_SH),
                           (F.TRAIN_PY, templates.TRAIN_PY), (F.README, templates.README)):
        _write(dest / name, template.format(**fill), executable=name in (F.ENTRYPOINT, F.TRAIN_SH))
    _write(dest / F.REQUIREMENTS, requirements)
    _write(dest / F.MODEL_CARD, model_card(config, requirement_notes, fallbacks=fallbacks, test_rows=test_rows, gate=gate))
    manifest = {"run_id": run_id, "created": now(),
                "files": [{"path": p.relative_to(dest).as_posix(), "bytes": p.stat().st_size, "sha256": sha256(p)}
                          for p in sorted(dest.rglob("*")) if p.is_file()]}
    _write(dest / F.MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return dest, manifest


def _config(run: Any, cfg: RunConfig, predictor: Predictor, compliance: Any, *, weights_sha256: str, source_note: str,
            python: str, stage_table: Path) -> dict[str, Any]:
    from harness.modalities import head_outputs

    tags, metrics = run.data.tags, run.data.metrics
    members = getattr(predictor, "members", None) or [predictor]
    inputs = {(f"member{i + 1}.{name}" if hasattr(predictor, "members") else name):
              {"shape": list(m.input_shape(name)), "mean": list(mean), "std": list(std)}
              for i, m in enumerate(members) for name, (mean, std) in m.stats.items()}
    pack = {} if not hasattr(predictor, "members") else {
        "modality": "pack", "pack": F.PACK_TABLE, "pack_sha256": sha256(stage_table),
        "members": [{"run_id": s.run_id, "weight": s.weight, "modality": s.config.modality,
                     "backbone": "+".join(backbones(s.config))} for s in predictor.specs]}
    return F.make_config(
        run_id=run.info.run_id, run_name=run.info.run_name, run_config=_shipped(to_dict(cfg)),
        model={"backbone": compliance.resolved, "modality": cfg.modality, "num_classes": head_outputs(cfg.train.loss),
               "input_size": list(compliance.input_size), "inputs": inputs, "params": compliance.params,
               "thop_params": compliance.thop_params, "macs": compliance.macs,
               "best_weights": tags.get(T.BEST_WEIGHTS, "raw"),  # "ema" when the EMA of the weights scored better
               **pack},
        weights_sha256=weights_sha256,
        scoring={"output": "probability that the clip is fake", "tta": predictor.tta, "tta_shifts": predictor.shifts,
                 "fallback_score": predictor.fallback, "score_decimals": SCORE_DECIMALS},
        metrics=summary_metrics(metrics),  # the `summary/` values under flat names (best_val_auc, ...)
        data={"name": Path(tags.get(T.DATA_PATH) or "unknown").name, "fingerprint": tags.get(T.DATA_FINGERPRINT),
              "demo": is_demo_data(tags.get(T.DATA_PATH))},
        code={"git_commit": tags.get(T.GIT_COMMIT, "unknown"), "git_dirty": tags.get(T.GIT_DIRTY, "unknown"),
              "source": source_note, "python": python,
              "versions": {k.removeprefix(T.VERSION_PREFIX): v for k, v in sorted(tags.items())
                           if k.startswith(T.VERSION_PREFIX)}},
    )


def _shipped(run_config: dict[str, Any]) -> dict[str, Any]:
    """The run's settings as they ship: a local backbone weights file by name only (train.sh's WEIGHTS=FILE)."""
    train = run_config["train"]
    if train.get("weights"):
        return {**run_config, "train": {**train, "weights": Path(train["weights"]).name}}
    return run_config


def _load_problem(stage: Path) -> str | None:
    """None when `import api; api.load()` in a fresh interpreter on the CPU loads the model, else the error's last line."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HARNESS_DEVICE")}
    done = subprocess.run([sys.executable, "-c", "import api; api.load()"], cwd=stage, env=env,
                          capture_output=True, text=True, timeout=LOAD_TIMEOUT_S)
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"


def _cuda_image() -> str:
    """A CUDA runtime base matching torch's build (its wheels carry CUDA; the base gives a matching userland)."""
    import torch

    cuda = torch.version.cuda
    return f"nvidia/cuda:{cuda}.0-runtime-ubuntu24.04" if cuda else DEFAULT_CUDA_IMAGE


def write_archive(folder: Path, dest: Path) -> Path:
    """`folder` as a gzipped tar under `bundle/`, reproducible: fixed times and owners, no name in the gzip header."""
    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with open(dest, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=f"{F.FOLDER}/{path.relative_to(folder).as_posix()}", recursive=False,
                    filter=normalise)
    return dest


def _write(path: Path, text: str, *, executable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if executable:
        path.chmod(0o755)
