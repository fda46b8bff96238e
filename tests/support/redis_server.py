"""Pytest plugin: a real Redis for the tests, found (never faked, never skipped).

The URL comes from env `REGISTRY_GATEWAY_TEST_REDIS_URL`, else the default below.
`scripts/with_redis.sh` sets that variable after finding or starting a Redis, so
`scripts/with_redis.sh .venv/bin/python -m pytest` works on a machine without one running.
The machine's Redis may be shared: tests write only under their own key prefix and delete
only those keys (no FLUSHDB).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio

URL_ENV = "REGISTRY_GATEWAY_TEST_REDIS_URL"
DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _no_redis_message(url: str, exc: BaseException) -> str:
    return (
        f"No Redis answers PING at {url} ({type(exc).__name__}: {exc}).\n"
        "The Redis tests need a real Redis. Either:\n"
        "  - run the tests through scripts/with_redis.sh, which finds one or starts a "
        "throw-away redis-server:\n"
        "      scripts/with_redis.sh .venv/bin/python -m pytest -q\n"
        f"  - or point {URL_ENV} at a Redis you have (redis://HOST:PORT/DB),\n"
        "  - or install and start one (Debian/Ubuntu: apt-get install -y redis-server)."
    )


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis URL, checked once by PING; fails the Redis tests loudly if none answers."""
    url = os.environ.get(URL_ENV) or DEFAULT_URL
    probe = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    failure: BaseException | None = None
    try:
        probe.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        failure = exc
    finally:
        probe.close()
    if failure is not None:
        # A failure, not a skip: a skipped test would let a missing Redis pass CI silently.
        # Raised outside `except` so the report shows the advice, not a chain of tracebacks.
        pytest.fail(_no_redis_message(url, failure), pytrace=False)
    return url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """An asyncio Redis client on the test Redis, closed after the test."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def redis_prefix(redis_client: redis.asyncio.Redis) -> AsyncIterator[str]:
    """A key prefix of this test's own; every key under it is deleted after the test."""
    prefix = f"registry-gateway-test:{uuid.uuid4().hex}:"
    yield prefix
    # SCAN + DEL on the prefix only: the Redis may be shared, so never FLUSHDB.
    keys = [key async for key in redis_client.scan_iter(match=f"{prefix}*", count=500)]
    if keys:
        await redis_client.delete(*keys)
