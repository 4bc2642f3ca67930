# One image for every service of the demo (trainer, cloud, tap, auditor, edge).
# CPU by default. For the cloud on a GPU host, build with a CUDA base and wheels:
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#                --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 -t cem-split:cuda .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH

RUN if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv \
    && pip install --upgrade pip \
    && pip install --index-url ${TORCH_INDEX_URL} torch torchvision

WORKDIR /app
COPY pyproject.toml README.md ./
COPY cem ./cem
COPY protos ./protos
COPY training ./training
COPY edge_client ./edge_client
COPY cloud_server ./cloud_server
COPY attacker ./attacker
COPY demo ./demo
RUN pip install ".[all]"

RUN useradd --create-home --uid 10001 cem \
    && mkdir -p /bundles /captures /state \
    && chown cem /bundles /captures /state
USER cem
