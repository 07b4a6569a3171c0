# fwdprune: API server and GPU worker in one image (the command picks the role).
FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04

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
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && useradd --create-home --uid 10001 fwdprune \
    && mkdir -p /data /models \
    && chown fwdprune:fwdprune /data /models

ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# dependencies first, so code changes do not reinstall torch
COPY pyproject.toml README.md ./
COPY pruning ./pruning
COPY service ./service
# hadolint ignore=DL3013
RUN pip install --upgrade pip \
    && pip install "torch==2.13.0" \
    && pip install ".[postgres]"

USER 10001
EXPOSE 8000
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "curl -fsS http://127.0.0.1:${FWDPRUNE_PORT}/healthz || exit 1"]

ENTRYPOINT ["fwdprune"]
CMD ["serve"]
