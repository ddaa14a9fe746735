# syntax=docker/dockerfile:1
#
# workflow-canceller image: built with uv from pyproject.toml + uv.lock (frozen), run as a non-root
# user from a slim Python base that has no compiler, no uv and no package caches.
#
#   docker build -t workflow-canceller:dev .
#   docker run --rm -e CANCELLER_DIALNEXA_API_KEY=... -e CANCELLER_AMQP_URL=... workflow-canceller:dev
#
# The same image also carries the DialNexa simulator (console script `dialnexa-simulator`), which
# docker-compose.yml starts by overriding the entrypoint.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.8

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------------------------------------
# build: resolve nothing, install exactly what uv.lock says into /opt/venv
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

COPY --from=uv /uv /usr/local/bin/uv

# Compile bytecode at build time (the runtime root filesystem is read-only), copy files out of the
# uv cache instead of hard-linking them, never download a Python, and put the venv where the
# runtime stage expects it.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/opt/venv

WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when the lock file changes.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    uv sync --frozen --no-dev --no-install-project

# Then the project itself, installed as a regular (non-editable) wheel so that the runtime stage
# needs nothing from /src.
COPY pyproject.toml uv.lock README.md ./
COPY service ./service
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

# ---------------------------------------------------------------------------------------------
# runtime: the base image, one unprivileged user, the venv
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown

LABEL org.opencontainers.image.title="workflow-canceller" \
      org.opencontainers.image.description="Cancels DialNexa workflows named by CRM events from RabbitMQ and publishes workflow-cancelled events." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="python:3.11-slim-bookworm"

# Fixed numeric ids so that Kubernetes' runAsNonRoot can verify them and volumes can be chowned.
RUN groupadd --system --gid 10001 canceller \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin canceller

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CANCELLER_HTTP_PORT=8080

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080

# Liveness only (/healthz): /readyz is 503 whenever the broker is away or DialNexa rejects the key,
# and neither is fixed by restarting the container. The slim image has no curl, so use Python.
HEALTHCHECK --interval=30s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CANCELLER_HTTP_PORT', '8080') + '/healthz', timeout=2)"]

ENTRYPOINT ["workflow-canceller", "run"]
