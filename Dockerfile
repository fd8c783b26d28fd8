# syntax=docker/dockerfile:1
# idhub: multi-stage build. The builder turns idhub and every dependency into wheels (compilers stay
# there); the runtime installs only those wheels and runs as an unprivileged user.
#   docker build -t idhub .
#   docker run -p 8000:8000 -v idhub-data:/data -e IDHUB_MASTER_KEY=... -e IDHUB_PUBLIC_URL=https://id.example idhub

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY idhub ./idhub
COPY migrations ./migrations
# uvicorn[standard] (a core dependency) brings uvloop and httptools; the extras bring asyncpg and redis.
RUN pip wheel --wheel-dir /wheels '.[postgres,redis]'

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    IDHUB_DATA_DIR=/data
RUN groupadd --system --gid 10001 idhub \
 && useradd --system --uid 10001 --gid idhub --home-dir /data --no-create-home --shell /usr/sbin/nologin idhub \
 && mkdir -p /data \
 && chown idhub:idhub /data \
 && chmod 0700 /data
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels 'idhub[postgres,redis]'

USER idhub:idhub
WORKDIR /data
# SQLite database and (when IDHUB_MASTER_KEY is unset) the generated master key live here.
VOLUME ["/data"]
EXPOSE 8000

# Liveness via the standard library: the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["idhub"]
# uvicorn picks uvloop and httptools automatically when installed (they are).
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
