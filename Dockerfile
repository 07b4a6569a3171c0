# fwdprune: two images from one file.
#   docker build --target api .     the HTTP API on a slim Python base: no torch, no CUDA
#   docker build --target worker .  the GPU worker (CUDA base, the engine)
# The worker is the last stage, so a plain `docker build .` gives the image that can do everything
# (`serve` runs the API with an embedded worker, as a single container).

FROM python:3.11.13-slim-bookworm AS api

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FWDPRUNE_HOST=0.0.0.0 \
    FWDPRUNE_PORT=8000 \
    FWDPRUNE_DATA_DIR=/data \
    FWDPRUNE_MODELS_DIR=/models \
    FWDPRUNE_EMBEDDED_WORKER=false \
    HF_HOME=/models/hf

RUN useradd --create-home --uid 10001 fwdprune \
    && mkdir -p /data /models \
    && chown fwdprune:fwdprune /data /models

WORKDIR /app
COPY pyproject.toml README.md ./
COPY pruning ./pruning
COPY service ./service
# the core (API, client, CLI) is torch-free; pruning/spec.py validates requests without the engine.
# The project installs from its own tree; its dependencies' versions are pyproject.toml's to bound.
# hadolint ignore=DL3013
RUN pip install ".[postgres]"

USER 10001
EXPOSE 8000
VOLUME ["/data"]
# liveness of the API process only: /readyz also wants a live worker, which is another container's
# business here (docker/compose.yaml, where a worker is expected, probes /readyz instead)
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", \
         "import os,urllib.request as u;u.urlopen('http://127.0.0.1:%s/healthz'%os.environ['FWDPRUNE_PORT'])"]

ENTRYPOINT ["fwdprune"]
# no embedded worker here (no engine): jobs run in the worker image
CMD ["serve"]


FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04 AS worker

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    FWDPRUNE_HOST=0.0.0.0 \
    FWDPRUNE_PORT=8000 \
    FWDPRUNE_DATA_DIR=/data \
    FWDPRUNE_MODELS_DIR=/models \
    HF_HOME=/models/hf

# apt packages follow the base image's release; pinning versions would break on its security updates
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && useradd --create-home --uid 10001 fwdprune \
    && mkdir -p /data /models \
    && chown fwdprune:fwdprune /data /models

ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

COPY pyproject.toml README.md requirements-torch.txt ./
COPY pruning ./pruning
COPY service ./service
# torch first and pinned (requirements-torch.txt): the CUDA build that matches the base image, not
# whatever the resolver picks
# hadolint ignore=DL3013
RUN pip install --upgrade pip \
    && pip install -r requirements-torch.txt \
    && pip install ".[worker,postgres]"

USER 10001
EXPOSE 8000
VOLUME ["/data"]
# a worker has no HTTP port to probe; its liveness is its heartbeat in the store (/readyz, /metrics)
HEALTHCHECK NONE

ENTRYPOINT ["fwdprune"]
CMD ["worker"]
