# One image per role, from one file: build a role with `--target ROLE`.
#
#   tap, client            no torch: the channel tap (cem-tap) and the REST client / demo report
#                          (cem-audit-client, cem-demo-report); one flattened layer on a trimmed OS
#   edge, cloud, auditor,  torch (CPU wheels by default) and the project, layers shared by the four, plus the role's
#   trainer                extra of pyproject.toml (cem-split[edge], [cloud], [audit], [train])
#
#   docker build --target tap -t cem-split/tap .
#   # the cloud on a GPU host (docker-compose.gpu.yml sets these for the compose stack):
#   docker build --target cloud --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#                --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 -t cem-split/cloud:cuda .
#
# Every image runs as the unprivileged user cem (uid 10001) and has no compiler (no stage installs one: every
# dependency comes as a wheel). Sizes per role: docs/deployment.md.
ARG BASE_IMAGE=python:3.11-slim

# A Python with venv, from whatever base was given (CUDA bases have none).
FROM ${BASE_IMAGE} AS python
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# The project as a wheel, built once for every role.
FROM python AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cem ./cem
COPY protos ./protos
COPY training ./training
COPY edge_client ./edge_client
COPY cloud_server ./cloud_server
COPY attacker ./attacker
COPY demo ./demo
RUN python3 -m venv /opt/build && /opt/build/bin/pip wheel --no-deps --wheel-dir /wheels .

# ---- the torch-free roles: a venv per role on a trimmed copy of the base, flattened to one layer ----
# Each venv is made at /opt/venv (its scripts name that path) and moved aside; its image copies it back.
FROM python AS light-venvs
COPY --from=wheel /wheels /wheels
RUN for role in tap client; do \
        python3 -m venv /opt/venv \
        && /opt/venv/bin/pip install "$(echo /wheels/*.whl)[${role}]" \
        && /opt/venv/bin/pip uninstall -y pip \
        && find /opt/venv -depth -type d -path "*/site-packages/*" \( -name tests -o -name __pycache__ \) \
             -exec rm -rf {} + \
        && mkdir -p /opt/roles && mv /opt/venv /opt/roles/${role} || exit 1; \
    done

# The base without what only installing needs: apt's caches and lists, pip and setuptools of the OS Python,
# documentation and translations.
FROM python AS light-os
RUN rm -rf /var/cache/apt/* /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/locale/* \
        /usr/share/info/* /usr/lib/python3/dist-packages/pip* /usr/lib/python3/dist-packages/setuptools* \
        /usr/lib/python3/dist-packages/wheel* /usr/lib/python3/dist-packages/pkg_resources /usr/bin/pip /usr/bin/pip3* \
    && (python3 -m pip uninstall -y pip setuptools wheel >/dev/null 2>&1 || true) \
    && (id cem >/dev/null 2>&1 || useradd --create-home --uid 10001 cem) \
    && mkdir -p /captures /demo-out && chown cem /captures /demo-out

FROM scratch AS light
COPY --from=light-os / /
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /home/cem
USER cem

FROM light AS tap
COPY --from=light-venvs /opt/roles/tap /opt/venv
# CEM_HEALTH_PORT: the --listen port, where it is not the compose stack's 50052.
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=24 \
    CMD python -m cem.grpc_health_probe "localhost:${CEM_HEALTH_PORT:-50052}"
CMD ["cem-tap", "--help"]

FROM light AS client
COPY --from=light-venvs /opt/roles/client /opt/venv
CMD ["cem-audit-client", "--help"]

# ---- the model-running roles: torch and the project in layers shared by all four, then each role's extra ----
FROM python AS torch
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv \
    && pip install --index-url ${TORCH_INDEX_URL} torch torchvision \
    && (id cem >/dev/null 2>&1 || useradd --create-home --uid 10001 cem) \
    && mkdir -p /bundles /captures /state /results && chown cem /bundles /captures /state /results
# The project with the model stack every role shares (cem-split[models]), once for all four; each role adds its
# extra below (only the auditor's brings more: the web server).
COPY --from=wheel /wheels /wheels
RUN pip install "$(echo /wheels/*.whl)[models]"
WORKDIR /home/cem

FROM torch AS edge
RUN pip install "$(echo /wheels/*.whl)[edge]" && pip uninstall -y pip
USER cem
CMD ["cem-edge", "--help"]

FROM torch AS cloud
RUN pip install "$(echo /wheels/*.whl)[cloud]" && pip uninstall -y pip
USER cem
# CEM_HEALTH_PORT: the --port, where it is not the compose stack's 50051.
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=24 \
    CMD python -m cem.grpc_health_probe "localhost:${CEM_HEALTH_PORT:-50051}"
CMD ["cem-cloud", "--help"]

FROM torch AS auditor
RUN pip install "$(echo /wheels/*.whl)[audit]" && pip uninstall -y pip
USER cem
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=24 \
    CMD python -c "import sys, httpx; sys.exit(httpx.get('http://localhost:${CEM_HEALTH_PORT:-8000}/healthz', timeout=3).status_code != 200)"
CMD ["cem-audit", "--help"]

FROM torch AS trainer
RUN pip install "$(echo /wheels/*.whl)[train]" && pip uninstall -y pip
USER cem
CMD ["cem-train", "--help"]
