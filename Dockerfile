# syntax=docker/dockerfile:1
# NormGate image. GPU (default): CUDA runtime base, torch's CUDA wheels.
#   docker build -t normgate:0.1.0 .
# CPU-only (smaller, no NVIDIA runtime needed):
#   docker build --build-arg DEVICE=cpu -t normgate:0.1.0-cpu .
# Two stages on the same OS layer: "builder" creates the virtual environment with pip, the final stage
# copies only that environment, the code and the default checkpoint (no pip, compilers or apt lists).

ARG DEVICE=gpu
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
ARG CPU_IMAGE=ubuntu:24.04

# ---- OS layer: Ubuntu 24.04 + Python 3.12 (the same in builder and final image, so the venv moves over)
FROM ${CUDA_IMAGE} AS os-gpu
FROM ${CPU_IMAGE} AS os-cpu
# os-${DEVICE} is one of the two stages above, whose images are tagged; hadolint cannot see that.
# hadolint ignore=DL3006
FROM os-${DEVICE} AS os
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3=3.12.* python3-venv=3.12.* \
 && rm -rf /var/lib/apt/lists/*

# ---- builder: every dependency pinned (pyproject.toml pins exact versions, torch first)
FROM os AS builder
ARG DEVICE
# PyPI's torch 2.14.1 wheels are CUDA builds; the CPU image takes the CPU-only wheel of the same version.
ARG TORCH_INDEX_URL_GPU=https://pypi.org/simple
ARG TORCH_INDEX_URL_CPU=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
WORKDIR /src
RUN if [ "$DEVICE" = "cpu" ]; then index="$TORCH_INDEX_URL_CPU"; else index="$TORCH_INDEX_URL_GPU"; fi \
 && /opt/venv/bin/pip install --no-cache-dir --index-url "$index" torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY models/ models/
COPY service/ service/
# Install the project to get its pinned runtime dependencies (no [dev] extras), then remove the project
# itself (the final image runs the code from /app, like `make run` from the repository root) and pip:
# the final image installs nothing.
RUN /opt/venv/bin/pip install --no-cache-dir . \
 && /opt/venv/bin/pip uninstall -y normgate pip

# ---- final image
FROM os AS runtime
ARG DEVICE
LABEL org.opencontainers.image.title="NormGate" \
      org.opencontainers.image.description="Explainable chest X-ray quality gate" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.normgate.device="${DEVICE}"
RUN groupadd --system --gid 10001 normgate \
 && useradd --system --uid 10001 --gid normgate --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin normgate \
 && mkdir -p /data /state \
 && chown normgate:normgate /data /state
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# The code, and with models/ the shipped default checkpoint models/checkpoints/default/ (model.safetensors +
# model.json, docs/formats.md); .dockerignore keeps every other checkpoint folder out of the image.
COPY models/ /app/models/
COPY service/ /app/service/
# Caches of matplotlib / torch go to /tmp, the one writable place when the root filesystem is read-only.
ENV PATH=/opt/venv/bin:$PATH \
    NORMGATE_HOST=0.0.0.0 \
    NORMGATE_PORT=8000 \
    NORMGATE_DEVICE=auto \
    NORMGATE_MODELS_DIR=/app/models/checkpoints \
    NORMGATE_DATA_DIR=/data \
    NORMGATE_STATE_DIR=/state \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/torch
USER 10001:10001
EXPOSE 8000
# Healthy = ready: every model loaded and warmed up (/readyz), not merely a live process (/healthz).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('NORMGATE_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "service"]
