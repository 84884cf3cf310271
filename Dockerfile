# syntax=docker/dockerfile:1.7
#
# Targets:
#   operator   slim Python, lorasweep[operator] (no torch), runs `lorasweep operator`
#   trainer    lorasweep[trainer] on a CUDA-capable torch base (TRAINER_BASE); runs the trial Jobs and the
#              sweep's report Job (`lorasweep report`)
#   torch-cpu  a CPU-only torch base; `--build-arg TRAINER_BASE=torch-cpu --target trainer` gives the
#              CPU trainer for local clusters (kind) without CUDA's 3 GB of libraries
#
#   docker build --target operator -t lorasweep-operator .
#   docker build --target trainer -t lorasweep-trainer .
#   docker build --target trainer --build-arg TRAINER_BASE=torch-cpu -t lorasweep-trainer:cpu .
#
# Every Python package comes from requirements.lock: each install resolves only the extra it needs
# (`-r pyproject.toml --extra X`) constrained to the lock's pins (`-c requirements.lock`), so an image
# never carries packages of another extra and never floats a version. Dependencies are installed
# before the source is copied, so a code change rebuilds one thin layer.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Its torch must be the version in requirements-pins.txt (the build checks); its CUDA libraries then
# match the lock's nvidia-* pins and nothing is downloaded twice.
ARG TRAINER_BASE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS torch-cpu
ARG TORCH_VERSION=2.9.1
ARG TORCHVISION_VERSION=0.24.1
ENV UV_LINK_MODE=copy
RUN --mount=from=uv,source=/uv,target=/usr/local/bin/uv \
    --mount=type=cache,target=/root/.cache/uv \
    uv pip install --system --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}+cpu" "torchvision==${TORCHVISION_VERSION}+cpu"

FROM ${PYTHON_IMAGE} AS operator
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_LINK_MODE=copy
# A numeric, non-root user: the kubelet can only verify runAsNonRoot against a numeric UID.
RUN useradd --uid 65532 --user-group --create-home --home-dir /home/lorasweep --shell /usr/sbin/nologin lorasweep
WORKDIR /opt/lorasweep
COPY pyproject.toml requirements.lock ./
RUN --mount=from=uv,source=/uv,target=/usr/local/bin/uv \
    --mount=type=cache,target=/root/.cache/uv \
    uv pip install --system -r pyproject.toml --extra operator -c requirements.lock
COPY README.md ./
COPY operator/ operator/
COPY trainer/ trainer/
RUN --mount=from=uv,source=/uv,target=/usr/local/bin/uv \
    uv pip install --system --no-cache --no-deps . \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
USER 65532:65532
# 8080: Prometheus metrics (/metrics); 8081: kopf's liveness endpoint (/healthz).
EXPOSE 8080 8081
ENTRYPOINT ["lorasweep", "operator"]
CMD ["--metrics-port=8080", "--health-port=8081", "--all-namespaces"]

FROM ${TRAINER_BASE} AS trainer
ARG TORCH_VERSION=2.9.1
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_LINK_MODE=copy \
    HF_HOME=/home/lorasweep/.cache/huggingface
RUN python -c "import sys, torch; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '${TORCH_VERSION}' else f'TRAINER_BASE has torch {v}; use a base with torch ${TORCH_VERSION} (requirements-pins.txt)')" \
    && useradd --uid 65532 --user-group --create-home --home-dir /home/lorasweep --shell /usr/sbin/nologin lorasweep
WORKDIR /opt/lorasweep
COPY pyproject.toml requirements.lock ./
RUN --mount=from=uv,source=/uv,target=/usr/local/bin/uv \
    --mount=type=cache,target=/root/.cache/uv \
    uv pip install --system -r pyproject.toml --extra trainer -c requirements.lock
COPY README.md ./
COPY operator/ operator/
COPY trainer/ trainer/
RUN --mount=from=uv,source=/uv,target=/usr/local/bin/uv \
    uv pip install --system --no-cache --no-deps .
USER 65532:65532
# 9400: the trainer's Prometheus metrics (TrialConfig.metrics_port).
EXPOSE 9400
ENTRYPOINT ["lorasweep-trainer"]
CMD ["train"]
