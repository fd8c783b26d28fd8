# syntax=docker/dockerfile:1
# idhub: multi-stage build. The builder turns idhub and every dependency into wheels (compilers stay
# there), at the versions pinned in constraints.txt; the runtime installs only those wheels and runs as
# an unprivileged user.
#
# A production image (the default) runs with IDHUB_ENVIRONMENT=production: it refuses to start, with one
# line naming the setting, without a master key (IDHUB_MASTER_KEY, or IDHUB_MASTER_KEY_FILE for a
# container secret) or without an https IDHUB_PUBLIC_URL. It never generates a key of its own.
#   docker build -t idhub .
#   docker run -p 8000:8000 -e IDHUB_MASTER_KEY_FILE=/run/secrets/idhub_master_key \
#     -v "$PWD/master_key:/run/secrets/idhub_master_key:ro" -e IDHUB_PUBLIC_URL=https://id.example \
#     -e IDHUB_DATABASE_URL=postgresql+asyncpg://... idhub
# A development image (to try idhub out: SQLite in /data, a master key generated into /data, http allowed):
#   docker build --build-arg IDHUB_ENVIRONMENT=development -t idhub:dev .
#   docker run -p 8000:8000 -v idhub-data:/data -e IDHUB_PUBLIC_URL=http://127.0.0.1:8000 idhub:dev
# Either way IDHUB_ENVIRONMENT can still be set at `docker run`. deploy/compose.yaml and the Helm chart in
# deploy/helm/idhub run several replicas of the production image on PostgreSQL and Redis.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG IDHUB_ENVIRONMENT=production

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY idhub ./idhub
COPY migrations ./migrations
# uvicorn[standard] (a core dependency) brings uvloop and httptools; the extras bring asyncpg and redis.
# constraints.txt pins every one of them, transitive ones included: the image has the tested versions.
RUN pip wheel --wheel-dir /wheels --constraint constraints.txt '.[postgres,redis]'

FROM ${PYTHON_IMAGE} AS runtime
ARG IDHUB_ENVIRONMENT
RUN case "${IDHUB_ENVIRONMENT}" in production|development|test) ;; \
      *) echo "IDHUB_ENVIRONMENT must be production, development or test" >&2; exit 1 ;; esac
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    IDHUB_ENVIRONMENT=${IDHUB_ENVIRONMENT} \
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
# SQLite database and (development image without IDHUB_MASTER_KEY only) the generated master key live here.
VOLUME ["/data"]
EXPOSE 8000

# Readiness via the standard library (the slim image has no curl): healthy while the database answers
# with the schema this code needs. With IDHUB_MANAGEMENT_PORT set, /readyz is asked there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('IDHUB_MANAGEMENT_PORT') or '8000'; sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=4).status != 200)"]

ENTRYPOINT ["idhub"]
# uvicorn picks uvloop and httptools automatically when installed (they are).
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
