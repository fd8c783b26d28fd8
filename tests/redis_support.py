"""Locate the Redis server for tests (``IDHUB_TEST_REDIS_URL``) or skip with the reason."""

from __future__ import annotations

import os

import pytest

REDIS_ENV = "IDHUB_TEST_REDIS_URL"


def redis_url_or_skip() -> str:
    """Return a reachable Redis URL or skip the test."""
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"Redis tests need {REDIS_ENV} (e.g. redis://127.0.0.1:6379/0)")
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        pytest.skip(f"Redis at {REDIS_ENV} is unreachable: {type(exc).__name__}: {exc}")
    finally:
        client.close()
    return url
