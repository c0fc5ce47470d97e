# syntax=docker/dockerfile:1
# vapi-proxy container image (docs/deployment.md). Build from the repository root:
#   docker build -t vapi-proxy:0.1.0 .
# Stage 1 builds the project's wheel and a wheel for every dependency; stage 2 installs them
# into a clean image that has no compiler, no source tree and no build cache.
# Base images: the minor version and Debian release are pinned here; release builds should also
# pin the digest (python:3.11-slim-bookworm@sha256:...) so a rebuild gets the same bytes.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
# Every runtime dependency ships manylinux wheels (asyncpg, orjson, uvloop, cryptography, ...),
# so this stage needs no compiler either.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="vapi-proxy" \
      org.opencontainers.image.description="Backend proxy for the Vapi voice-AI platform" \
      org.opencontainers.image.licenses="MIT"
# PYTHONDONTWRITEBYTECODE: pip compiles the package at install time, and the root filesystem is
# read-only in the Kubernetes manifests, so nothing should try to write .pyc files at run time.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it and volumes can be chowned.
RUN groupadd --system --gid 10001 vapi \
 && useradd --system --uid 10001 --gid vapi --home-dir /var/lib/vapi-proxy --no-create-home \
        --shell /usr/sbin/nologin vapi \
 && mkdir -p /etc/vapi-proxy /var/lib/vapi-proxy \
 && chown vapi:vapi /var/lib/vapi-proxy
# The wheels are bind-mounted from the build stage, so they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/vapi_proxy-*.whl
# The working directory is the only place the process writes (a relative SQLite ledger path
# lands here); mount a volume on it for the embedded SQLite mode.
WORKDIR /var/lib/vapi-proxy
USER 10001:10001
EXPOSE 8080
# No curl in the image: the standard library probes the liveness route. /healthz never touches
# the databases or Vapi; readiness (/readyz) is for the orchestrator's load balancing.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]
# The Vapi key is never baked in: pass VAPI_API_KEY_FILE (a mounted secret) or VAPI_API_KEY.
# Exec form, so vapi-proxy is PID 1 and gets SIGTERM directly (it drains and exits 0).
ENTRYPOINT ["vapi-proxy"]
CMD ["serve", "--config", "/etc/vapi-proxy/proxy.yaml", "--host", "0.0.0.0", "--port", "8080"]
