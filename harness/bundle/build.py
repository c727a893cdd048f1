"""Build a promoted bundle folder and its archive.

The bundle holds: Dockerfile (CUDA runtime base, Python and dependencies pinned to the run's, a
non-root user, entry points `predict` and `train`), entrypoint.sh, the harness source at the run's
commit (with pyproject.toml, so `pip install .` works), weights/model.safetensors, config.json
(everything that rebuilds the model and the features), api.py (`predict(path) -> float` and
`predict_batch`), train.sh (with train.py), requirements.txt, MODEL_CARD.md and manifest.json
(sha256 of every file). File names and the config layout come from `harness.bundle.format`.
Nothing in it unpickles: the weights are safetensors and the code loads them with safetensors alone.

The folder is built under a hidden temporary name and swapped in whole (`harness.fileio.atomic_dir`);
before the swap the staged bundle is loaded the way the organisers will load it (`import api;
api.load()` in a fresh interpreter), so a bundle that cannot load its own model is never written.
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

from harness.bundle import format as F
from harness.bundle import templates
from harness.bundle.card import model_card, now
from harness.bundle.requirements import pinned_requirements
from harness.bundle.source import copy_source
from harness.config import RunConfig, to_dict
from harness.fileio import atomic_dir, atomic_write, sha256
from harness.predict import SCORE_DECIMALS, Predictor
from harness.tracking import tags as T
from harness.tracking.metric_names import summary as summary_metrics

UV_VERSION = "0.13.9"  # the uv image the bundle's Dockerfile copies uv from
DEFAULT_CUDA_IMAGE = "nvidia/cuda:13.0.0-runtime-ubuntu24.04"
LOAD_TIMEOUT_S = 600  # `import api; api.load()` in a fresh interpreter: torch + timm + the model


def build_bundle(
    dest: Path, *, run: Any, cfg: RunConfig, weights: Path, predictor: Predictor, compliance: Any,
    fallbacks: int = 0, test_rows: int = 0, gate: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write the bundle of `run` at `dest`, replacing what is there as one folder.

    Args:
        dest: the bundle folder to write (replaced whole).
        run: the MLflow run (tags, metrics, ids).
        cfg, weights: the run's settings and checkpoint.
        predictor: the loaded model (its input statistics, TTA and fallback go into config.json).
        compliance: the run's `ComplianceReport` (resolved backbone, sizes, parameter counts).
        fallbacks, test_rows: this submission's fallback count, for the model card.
        gate: the promotion gate's report (`harness.submit.gate.GateReport.to_dict`), for the model card.

    Returns:
        (dest, the manifest written as manifest.json).

    Raises:
        BundleError: the checkpoint is not safetensors, or the bundle cannot load its own model.
    """
    dest = Path(dest)
    tags, run_id = run.data.tags, run.info.run_id
    with atomic_dir(dest) as stage:
        source_note = copy_source(stage, tags.get(T.GIT_COMMIT, "unknown"), tags.get(T.GIT_DIRTY, "unknown"))
        (stage / F.WEIGHTS).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights, stage / F.WEIGHTS)
        F.check_safetensors(stage / F.WEIGHTS)
        requirements, requirement_notes = pinned_requirements(tags, cfg)
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        config = _config(run, cfg, predictor, compliance, weights_sha256=sha256(stage / F.WEIGHTS),
                         source_note=source_note, python=python)
        _write(stage / F.CONFIG, json.dumps(config, indent=2) + "\n")
        shutil.copyfile(Path(__file__).with_name(F.API), stage / F.API)
        if (problem := _load_problem(stage)) is not None:
            # The run's commit predates something the bundle needs (config.json and api.py are written
            # by this version): bundle this version's code instead, and say so in the card.
            shutil.rmtree(stage / F.SOURCE_PACKAGE)
            config["code"]["source"] = (copy_source(stage, "unknown", "unknown")
                                        + f" (the run's own commit could not load this bundle: {problem})")
            _write(stage / F.CONFIG, json.dumps(config, indent=2) + "\n")
            if (problem := _load_problem(stage)) is not None:
                raise F.BundleError(f"the bundle cannot load its own model: {problem}")
        image = f"harness-{run_id[:8]}"
        fill = {"run_id": run_id, "backbone": compliance.resolved, "image": image, "python": python,
                "uv_version": UV_VERSION, "cuda_image": _cuda_image()}
        _write(stage / F.DOCKERFILE, templates.DOCKERFILE.format(**fill))
        _write(stage / F.DOCKERIGNORE, templates.DOCKERIGNORE)
        _write(stage / F.ENTRYPOINT, templates.ENTRYPOINT.format(**fill), executable=True)
        _write(stage / F.TRAIN_SH, templates.TRAIN_SH.format(**fill), executable=True)
        _write(stage / F.TRAIN_PY, templates.TRAIN_PY.format(**fill))
        _write(stage / F.REQUIREMENTS, requirements)
        _write(stage / F.MODEL_CARD, model_card(config, requirement_notes, image=image, fallbacks=fallbacks,
                                                test_rows=test_rows, gate=gate))
        manifest = {
            "run_id": run_id, "created": now(),
            "files": [{"path": p.relative_to(stage).as_posix(), "bytes": p.stat().st_size, "sha256": sha256(p)}
                      for p in sorted(stage.rglob("*")) if p.is_file()],
        }
        _write(stage / F.MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return dest, manifest


def _config(
    run: Any, cfg: RunConfig, predictor: Predictor, compliance: Any, *, weights_sha256: str, source_note: str,
    python: str,
) -> dict[str, Any]:
    from harness.modalities import head_outputs

    tags, metrics = run.data.tags, run.data.metrics
    return F.make_config(
        run_id=run.info.run_id,
        run_name=run.info.run_name,
        run_config=to_dict(cfg),
        model={
            "backbone": compliance.resolved, "modality": cfg.modality, "num_classes": head_outputs(cfg.train.loss),
            "input_size": list(compliance.input_size),
            "inputs": {name: {"shape": list(predictor.input_shape(name)), "mean": list(mean), "std": list(std)}
                       for name, (mean, std) in predictor.stats.items()},
            "params": compliance.params, "thop_params": compliance.thop_params, "macs": compliance.macs,
            "best_weights": tags.get(T.BEST_WEIGHTS, "raw"),  # "ema" when the EMA of the weights scored better
        },
        weights_sha256=weights_sha256,
        scoring={
            "output": "probability that the clip is fake", "tta": predictor.tta, "tta_shifts": predictor.shifts,
            "fallback_score": predictor.fallback, "score_decimals": SCORE_DECIMALS,
        },
        metrics=summary_metrics(metrics),  # flat names (best_val_auc, ...) from a run of either naming
        data={"fingerprint": tags.get(T.DATA_FINGERPRINT), "path": tags.get(T.DATA_PATH)},
        code={"git_commit": tags.get(T.GIT_COMMIT, "unknown"), "git_dirty": tags.get(T.GIT_DIRTY, "unknown"),
              "source": source_note, "python": python,
              "versions": {k.removeprefix(T.VERSION_PREFIX): v for k, v in sorted(tags.items())
                           if k.startswith(T.VERSION_PREFIX)}},
    )


def _load_problem(stage: Path) -> str | None:
    """Load the staged bundle's model the way the organisers will (`import api; api.load()`, in a
    fresh interpreter, on the CPU); None when it loads, else the error's last line."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HARNESS_DEVICE")}
    done = subprocess.run([sys.executable, "-c", "import api; api.load()"], cwd=stage, env=env,
                          capture_output=True, text=True, timeout=LOAD_TIMEOUT_S)
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"


def _cuda_image() -> str:
    """A CUDA runtime base matching the CUDA version torch was built with (the wheels carry their own
    CUDA libraries; the base supplies the container runtime's settings and a matching userland)."""
    import torch

    cuda = torch.version.cuda
    return f"nvidia/cuda:{cuda}.0-runtime-ubuntu24.04" if cuda else DEFAULT_CUDA_IMAGE


def write_archive(folder: Path, dest: Path) -> Path:
    """`folder` as a gzipped tar with top folder `bundle/`; same files, same bytes (fixed times, owners,
    and no file name in the gzip header, which would carry the temporary's pid). Written under a
    temporary name and renamed onto `dest`."""
    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with atomic_write(dest, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=f"{F.FOLDER}/{path.relative_to(folder).as_posix()}", recursive=False,
                    filter=normalise)
    return dest


def _write(path: Path, text: str, *, executable: bool = False) -> None:
    # Plain writes: the whole folder is staged under a hidden name and swapped in at the end.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if executable:
        path.chmod(0o755)
