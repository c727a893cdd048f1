"""Text files of a promoted bundle, as `str.format` templates (literal braces doubled).

Nothing here is run by the harness itself: `harness.bundle.build` fills these in and writes them out.
"""
from __future__ import annotations

# Python comes from uv (a python-build-standalone build of the run's minor version), so the CUDA
# base needs no apt packages; every wheel the requirements pin (torch with its CUDA libraries, PyAV
# with FFmpeg, soxr, soundfile with libsndfile, opencv headless) carries its own native libraries.
DOCKERFILE = """\
# syntax=docker/dockerfile:1
# Promoted bundle of run {run_id} ({backbone}): the challenge's test API and the run's training.
#   docker build -t {image} .
#   docker run --rm --gpus all -v /path/to/clips:/data:ro {image} predict /data       # path,score rows
#   docker run --rm --gpus all -v /path/to/dataset:/data:ro -v "$PWD/work:/work" {image} train /data
ARG CUDA_IMAGE={cuda_image}
FROM ghcr.io/astral-sh/uv:{uv_version} AS uv

FROM ${{CUDA_IMAGE}}
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \\
    UV_PYTHON_PREFERENCE=only-managed \\
    UV_COMPILE_BYTECODE=1 \\
    UV_LINK_MODE=copy \\
    UV_NO_CACHE=1 \\
    VIRTUAL_ENV=/opt/venv \\
    PATH=/opt/venv/bin:$PATH \\
    PYTHONUNBUFFERED=1 \\
    HARNESS_HOME=/work \\
    HARNESS_DEVICE=auto
WORKDIR /opt/bundle
# Dependencies first, in a layer of their own, pinned to the versions the run used.
COPY requirements.txt ./
RUN uv venv --python {python} /opt/venv \\
 && uv pip install --requirement requirements.txt
COPY . .
RUN uv pip install --no-deps . \\
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin harness \\
 && mkdir -p /work \\
 && chown harness /work
USER 10001
WORKDIR /work
ENTRYPOINT ["/opt/bundle/entrypoint.sh"]
CMD ["--help"]
"""

DOCKERIGNORE = """\
**/__pycache__
**/*.pyc
bundle.tar.gz
"""

ENTRYPOINT = """\
#!/bin/sh
# The image's commands: predict PATH... | train DATASET_DIR [EXPERIMENT] | any other command as given.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
case "${{1:-}}" in
  predict) shift; exec python "$here/api.py" "$@" ;;
  train) shift; exec "$here/train.sh" "$@" ;;
  ""|-h|--help)
    echo "usage: predict PATH...                 print path,score (probability of fake) for clips or folders"
    echo "       train DATASET_DIR [EXPERIMENT]  reproduce run {run_id}'s training (MLflow store under \\$HARNESS_HOME)"
    exit 0 ;;
  *) exec "$@" ;;
esac
"""

TRAIN_SH = """\
#!/usr/bin/env bash
# Reproduces the training of run {run_id} on a dataset folder in the challenge layout
# (trainset/, valset/, train_label.txt, val_label.txt), with this bundle's harness copy and the
# run's exact settings (config.json "run_config"). MLflow records the new run under $HARNESS_HOME
# (default ./harness-home). WEIGHTS=FILE overrides the backbone's initial weights file, when the run
# started from a local one; DEVICE=cuda|cpu|auto the run's device. PYTHON picks the interpreter
# (default python3).
#   ./train.sh DATASET_DIR [EXPERIMENT]
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 DATASET_DIR [EXPERIMENT]" >&2
  exit 2
fi
here="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
export PYTHONPATH="$here${{PYTHONPATH:+:$PYTHONPATH}}"
export HARNESS_HOME="${{HARNESS_HOME:-$PWD/harness-home}}"
exec "${{PYTHON:-python3}}" "$here/train.py" "$1" "${{2:-reproduce}}"
"""

# A file, not a heredoc: feature extraction spawns worker processes, which re-import the main module.
TRAIN_PY = """\
\"\"\"Reproduce run {run_id}'s training: python train.py DATASET_DIR [EXPERIMENT] (train.sh sets the paths).\"\"\"
import json
import os
import sys
from pathlib import Path

from harness.config import RunConfig, from_dict, replace
from harness.console import EpochTable
from harness.paths import cache_dir
from harness.run import train_run


def main(data: Path, experiment: str) -> None:
    bundle = json.loads((Path(__file__).resolve().parent / "config.json").read_text())
    cfg = from_dict(RunConfig, bundle["run_config"])
    overrides = {{"weights": os.environ.get("WEIGHTS"), "device": os.environ.get("DEVICE")}}
    cfg = replace(cfg, train=replace(cfg.train, **overrides))  # unset ones (None) are left as the run had them
    run = train_run(cfg, data_dir=data, experiment=experiment, cache_root=cache_dir(),
                    run_name="reproduce-" + bundle["run_id"][:8], callbacks=[EpochTable(title=cfg.train.backbone)],
                    tags={{"reproduces": bundle["run_id"]}})
    got = run.fit.best_metrics.get("val_auc") if run.fit else None
    print(f"run id: {{run.run_id}} ({{run.status}}); best val AUC {{got}}, "
          f"the promoted run recorded {{bundle['metrics'].get('best_val_auc')}}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "reproduce")
"""

README = """\
# harness (bundled copy)

The training and scoring code of a promoted run, bundled by `harness submit`; see MODEL_CARD.md.
"""
