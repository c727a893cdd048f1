"""Text files of a promoted bundle as `str.format` templates (literal braces doubled), filled by `build`."""
from __future__ import annotations

# Python comes from uv (python-build-standalone), so the CUDA base needs no apt packages: every pinned
# wheel (torch with CUDA, PyAV with FFmpeg, soxr, soundfile, opencv headless) carries its native libraries.
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
# Reproduces run {run_id}'s training ({trains}) on a dataset in the challenge
# layout with this bundle's harness and the run's settings; MLflow records under $HARNESS_HOME (default
# ./harness-home). WEIGHTS=FILE: the backbone's initial weights; DEVICE=cuda|cpu|auto; PYTHON (python3).
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
\"\"\"Reproduce run {run_id}'s training: python train.py DATASET_DIR [EXPERIMENT] (train.sh sets the paths).
A pack's bundle trains every member with its own settings, then packs them with the same weights into ./pack.\"\"\"
import json
import os
import sys
from pathlib import Path

from harness.config import RunConfig, from_dict, replace
from harness.console import EpochTable
from harness.paths import cache_dir
from harness.preflight import preflight
from harness.run import train_run

HERE = Path(__file__).resolve().parent


def main(data: Path, experiment: str) -> None:
    bundle = json.loads((HERE / "config.json").read_text())
    pack = bundle["model"].get("pack")
    rows = json.loads((HERE / pack).read_text())["members"] if pack else [{{"config": bundle["run_config"], "weight": 1}}]
    overrides = {{"weights": os.environ.get("WEIGHTS"), "device": os.environ.get("DEVICE")}}
    runs = []
    for i, row in enumerate(rows, start=1):
        cfg = from_dict(RunConfig, row["config"])
        cfg = replace(cfg, train=replace(cfg.train, **overrides))  # unset ones (None) are left as the run had them
        run = train_run(preflight(data, cfg, cache_root=cache_dir()), experiment=experiment,
                        run_name="reproduce-" + bundle["run_id"][:8] + (f"-member{{i}}" if pack else ""),
                        callbacks=[EpochTable(title=cfg.train.backbone)], tags={{"reproduces": bundle["run_id"]}})
        got = run.fit.best_metrics.get("val_auc") if run.fit else float("nan")
        print(f"run id: {{run.run_id}} ({{run.status}}); best val AUC {{got:.4f}}")
        runs.append((run.run_id, row["weight"], cfg))
    if pack:
        from harness import tracking
        from harness.pack import MemberSpec, PackedModel

        client = tracking.setup()
        specs = [MemberSpec(run_id, weight, cfg) for run_id, weight, cfg in runs]
        PackedModel.build(specs, [tracking.resolve_run(client, s.run_id).weights for s in specs]).save(Path("pack"))
        print(f"pack of {{len(specs)}} members saved in ./pack (pack.json, pack.safetensors)")
    print(f"the promoted run recorded val AUC {{bundle['metrics'].get('best_val_auc', float('nan')):.4f}}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "reproduce")
"""

README = """\
# Promoted bundle of run {run_id}

A deepfake detector (`{backbone}`, best val AUC {val_auc:.4f}) made by `harness submit` on {created}:
the model, the code that trained it (`harness/`, at the run's commit), and what it takes to score clips
and train it again. MODEL_CARD.md says what it reads, how well it did and how that was judged.

## What to hand in

- **The score file**: `prediction.csv` beside this folder (`video_name,score`, one row per test clip in
  the template's order, the probability of fake): what the leaderboard takes.
- **Finalists**: this folder, or `bundle.tar.gz` beside it (the same files; `manifest.json` lists each
  with its sha256): the Docker recipe, the API below, the training script and the weights.

## Build and run the image

```sh
docker build -t {image} .
docker run --rm --gpus all -v /path/to/clips:/data:ro {image} predict /data        # path,score rows
docker run --rm --gpus all -v /path/to/dataset:/data:ro -v "$PWD/work:/work" {image} train /data
```

The image pins Python {python} and every dependency to the run's versions (requirements.txt), runs as a
non-root user and scores on the GPU if any (`HARNESS_DEVICE=auto`; GPU and CPU agree to a few 1e-6).

## The API

```python
import api                                 # in this folder, in a fresh Python process
api.predict("clip.mp4")                    # -> float in [0, 1], the probability that the clip is fake
api.predict_batch(["a.mp4", "b.mp4"])      # -> list[float], same order, batched through the model
```

`python api.py PATH...` prints `path,score` rows (folders are searched). An undecodable clip scores the
fallback 0.5 (uninformative for AUC) with a warning; a missing path is an error (exit 2). `HARNESS_DEVICE`:
cpu (default), cuda or auto. Without Docker: `pip install -r requirements.txt` first. Nothing unpickles:
the weights are safetensors, checked against config.json's sha256.

## Train it again

```sh
./train.sh DATASET_DIR [EXPERIMENT]
```

trains a new run with this folder's harness and the run's settings (config.json `run_config`) on a
dataset in the challenge layout (trainset/, valset/, label files), records it under `$HARNESS_HOME`
(default `./harness-home`) and prints its best val AUC beside this run's {val_auc:.4f}. `WEIGHTS=FILE`
gives a local backbone start, `DEVICE=cuda|cpu|auto` the device, `PYTHON` the interpreter.
"""
