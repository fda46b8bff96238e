"""Per-tenant rate limits: the local buckets on a stand-in clock, the Redis ones on real Redis."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis.asyncio
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.config import RateLimitConfig
from service.errors import ResourceExhausted, to_status
from service.state.ratelimit import (
    LocalRateLimiter,
    RedisRateLimiter,
    build_rate_limiter,
)
from tests.support.redis_server import URL_ENV

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "with_redis.sh"


class Clock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Records(logging.Handler):
    """Collects the records of one logger (attached directly: the gateway's logger may not
    propagate to the root once `configure_logging` has run in the same process)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def ratelimit_log() -> Iterator[Records]:
    """The warnings the rate limiter logs during the test."""
    logger = logging.getLogger("registry_gateway.ratelimit")
    handler = Records()
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)


def config(reads: float = 10.0, writes: float = 2.0, burst: int = 3) -> RateLimitConfig:
    return RateLimitConfig(reads_per_second=reads, writes_per_second=writes, burst=burst)


async def take_all(limiter: LocalRateLimiter | RedisRateLimiter, tenant: str, n: int) -> None:
    for _ in range(n):
        await limiter.acquire(tenant, "read")


# --- LocalRateLimiter -------------------------------------------------------------------


async def test_local_allows_the_burst_then_refuses_with_a_retry_delay() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(config(reads=10.0, burst=3), clock=clock)
    await take_all(limiter, "payments", 3)
    with pytest.raises(ResourceExhausted) as refused:
        await limiter.acquire("payments", "read")
    error = refused.value
    assert error.reason == "RATE_LIMITED"
    assert error.retry_after_seconds == pytest.approx(0.1)
    assert error.metadata == {"tenant": "payments", "kind": "read"}
    assert "payments" in error.message and "read" in error.message
    assert len(error.quota_violations) == 1
    assert error.quota_violations[0].subject == "tenant:payments"
    assert "read" in error.quota_violations[0].description


async def test_local_refusal_becomes_resource_exhausted_with_retry_info_and_quota_failure() -> None:
    limiter = LocalRateLimiter(config(writes=4.0, burst=1), clock=Clock())
    await limiter.acquire("payments", "write")
    with pytest.raises(ResourceExhausted) as refused:
        await limiter.acquire("payments", "write")
    rich = to_status(refused.value, request_id="r-1")
    raw = dict(rich.trailing_metadata)["grpc-status-details-bin"]
    assert isinstance(raw, bytes)
    status = status_pb2.Status.FromString(raw)
    retry = _unpack(status.details, error_details_pb2.RetryInfo)
    quota = _unpack(status.details, error_details_pb2.QuotaFailure)
    info = _unpack(status.details, error_details_pb2.ErrorInfo)
    assert retry.retry_delay.ToMilliseconds() == 250
    assert [v.subject for v in quota.violations] == ["tenant:payments"]
    assert info.reason == "RATE_LIMITED"
    assert rpc_status.to_status(status).code.name == "RESOURCE_EXHAUSTED"


Detail = TypeVar(
    "Detail",
    error_details_pb2.RetryInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.ErrorInfo,
)


def _unpack(details: Iterable[any_pb2.Any], kind: type[Detail]) -> Detail:
    found = [d for d in details if d.Is(kind.DESCRIPTOR)]
    assert len(found) == 1, f"expected one {kind.__name__}, got {len(found)}"
    message = kind()
    found[0].Unpack(message)
    return message


async def test_local_recovers_as_the_clock_advances() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(config(reads=10.0, burst=2), clock=clock)
    await take_all(limiter, "payments", 2)
    with pytest.raises(ResourceExhausted):
        await limiter.acquire("payments", "read")
    clock.now += 0.05  # half a token: still refused, and the wait shrinks to the other half
    with pytest.raises(ResourceExhausted) as refused:
        await limiter.acquire("payments", "read")
    assert refused.value.retry_after_seconds == pytest.approx(0.05)
    clock.now += 0.05
    await limiter.acquire("payments", "read")
    # A long idle refills only up to the burst, never beyond.
    clock.now += 3600
    await take_all(limiter, "payments", 2)
    with pytest.raises(ResourceExhausted):
        await limiter.acquire("payments", "read")


async def test_local_reads_and_writes_have_separate_buckets() -> None:
    limiter = LocalRateLimiter(config(reads=10.0, writes=1.0, burst=2), clock=Clock())
    await limiter.acquire("payments", "write")
    await limiter.acquire("payments", "write")
    with pytest.raises(ResourceExhausted) as refused:
        await limiter.acquire("payments", "write")
    assert refused.value.metadata["kind"] == "write"
    assert refused.value.retry_after_seconds == pytest.approx(1.0)
    await take_all(limiter, "payments", 2)


async def test_local_tenants_have_separate_buckets() -> None:
    limiter = LocalRateLimiter(config(burst=2), clock=Clock())
    await take_all(limiter, "payments", 2)
    with pytest.raises(ResourceExhausted):
        await limiter.acquire("payments", "read")
    await take_all(limiter, "search", 2)
    with pytest.raises(ResourceExhausted) as refused:
        await limiter.acquire("search", "read")
    assert refused.value.metadata["tenant"] == "search"


async def test_local_clock_stepping_back_does_not_drain_the_bucket() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(config(burst=2), clock=clock)
    await limiter.acquire("payments", "read")
    clock.now -= 10
    await limiter.acquire("payments", "read")


# --- RedisRateLimiter -------------------------------------------------------------------


async def test_redis_allows_the_burst_then_refuses(
    redis_client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    limiter = RedisRateLimiter(config(reads=1.0, burst=3), redis_client, key_prefix=redis_prefix)
    await take_all(limiter, "payments", 3)
    with pytest.raises(ResourceExhausted) as refused:
        await limiter.acquire("payments", "read")
    error = refused.value
    assert error.reason == "RATE_LIMITED"
    assert error.metadata == {"tenant": "payments", "kind": "read"}
    assert error.quota_violations[0].subject == "tenant:payments"
    # One token at 1/s: about a second away (less the time the three calls took).
    assert error.retry_after_seconds is not None
    assert 0.8 < error.retry_after_seconds <= 1.0
    # Writes and other tenants are not charged.
    await limiter.acquire("payments", "write")
    await limiter.acquire("search", "read")


async def test_redis_bucket_key_expires_once_it_would_be_full(
    redis_client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    limiter = RedisRateLimiter(config(reads=2.0, burst=4), redis_client, key_prefix=redis_prefix)
    await limiter.acquire("payments", "read")
    key = limiter.key("payments", "read")
    assert key.startswith(redis_prefix)
    ttl_ms = await redis_client.pttl(key)
    # Full again after burst / rate = 2 s; the key lives that long plus a second's margin.
    assert 2000 < ttl_ms <= 3000


async def test_two_replicas_share_one_budget(
    redis_url: str, redis_client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    other_client = redis.asyncio.Redis.from_url(redis_url)
    try:
        cfg = config(reads=0.01, burst=4)
        replica_a = RedisRateLimiter(cfg, redis_client, key_prefix=redis_prefix)
        replica_b = RedisRateLimiter(cfg, other_client, key_prefix=redis_prefix)
        await replica_a.acquire("payments", "read")
        await replica_b.acquire("payments", "read")
        await replica_a.acquire("payments", "read")
        await replica_b.acquire("payments", "read")
        with pytest.raises(ResourceExhausted):
            await replica_a.acquire("payments", "read")
        with pytest.raises(ResourceExhausted):
            await replica_b.acquire("payments", "read")
    finally:
        await other_client.aclose()


async def test_redis_recovers_after_the_refill_interval(
    redis_client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    limiter = RedisRateLimiter(config(reads=20.0, burst=2), redis_client, key_prefix=redis_prefix)
    await take_all(limiter, "payments", 2)
    with pytest.raises(ResourceExhausted) as refused:
        await limiter.acquire("payments", "read")
    wait = refused.value.retry_after_seconds
    assert wait is not None
    assert 0 < wait <= 0.05
    # Letting time pass is the behaviour under test: ~50 ms plus a little, bounded.
    await asyncio.sleep(wait + 0.02)
    await limiter.acquire("payments", "read")


async def test_concurrent_acquires_grant_exactly_the_burst(
    redis_client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    # Fifty calls at once open fifty connections: on a loaded machine (the suite runs in two
    # processes) that may take longer than the served 0.25 s, and a call past it fails open.
    # The bucket's atomicity is under test here; the timeout is, below.
    limiter = RedisRateLimiter(
        config(reads=0.01, burst=10), redis_client, key_prefix=redis_prefix, timeout_seconds=10
    )
    outcomes = await asyncio.gather(
        *(limiter.acquire("payments", "read") for _ in range(50)), return_exceptions=True
    )
    granted = [o for o in outcomes if o is None]
    refused = [o for o in outcomes if isinstance(o, ResourceExhausted)]
    assert len(granted) == 10
    assert len(refused) == 40


def unreachable_client() -> redis.asyncio.Redis:
    """A client of a port nobody listens on, without redis-py's retries: refused at once."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
    # Closed again: the port was just free, so connecting is refused.
    return redis.asyncio.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )


async def test_redis_unreachable_fails_open_and_warns_once(ratelimit_log: Records) -> None:
    client = unreachable_client()
    clock = Clock()
    try:
        limiter = RedisRateLimiter(config(burst=1), client, clock=clock)
        for _ in range(20):
            clock.now += 1.5  # past the pause after a failure: Redis is tried every time
            await limiter.acquire("payments", "write")
    finally:
        await client.aclose()
    warnings = [r for r in ratelimit_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "ConnectionError" in warnings[0].getMessage()


async def test_failing_open_warns_again_after_the_interval_with_a_count(
    ratelimit_log: Records,
) -> None:
    clock = Clock()
    client = unreachable_client()
    try:
        limiter = RedisRateLimiter(config(), client, warn_interval_seconds=30.0, clock=clock)
        await limiter.acquire("payments", "read")
        for _ in range(4):
            clock.now += 5
            await limiter.acquire("payments", "read")
        clock.now += 11  # 31 s after the first warning
        await limiter.acquire("payments", "read")
    finally:
        await client.aclose()
    warnings = [r.getMessage() for r in ratelimit_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "allowed 1 call(s)" in warnings[0]
    assert "allowed 5 call(s)" in warnings[1]


class SilentServer:
    """A TCP server that accepts connections and never answers: a hung Redis."""

    def __init__(self) -> None:
        self.connections: list[asyncio.StreamWriter] = []
        self.port = 0

    async def accept(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(writer)


@pytest.fixture
async def silent_server() -> AsyncIterator[SilentServer]:
    """A hung Redis on a free port; its connections are closed after the test."""
    silent = SilentServer()
    server = await asyncio.start_server(silent.accept, "127.0.0.1", 0)
    silent.port = server.sockets[0].getsockname()[1]
    yield silent
    for writer in silent.connections:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_redis_that_never_answers_fails_open_within_the_timeout(
    silent_server: SilentServer, ratelimit_log: Records
) -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=silent_server.port)
    try:
        limiter = RedisRateLimiter(config(), client, timeout_seconds=0.1)
        async with asyncio.timeout(2):
            await limiter.acquire("payments", "read")
    finally:
        await client.aclose()
    assert any("TimeoutError" in r.getMessage() for r in ratelimit_log.records)


async def test_after_a_failure_redis_is_left_alone_for_a_while(
    silent_server: SilentServer, ratelimit_log: Records
) -> None:
    clock = Clock()
    client = redis.asyncio.Redis(host="127.0.0.1", port=silent_server.port)
    try:
        limiter = RedisRateLimiter(
            config(), client, timeout_seconds=0.1, retry_redis_after_seconds=1.0, clock=clock
        )
        await limiter.acquire("payments", "read")
        assert len(silent_server.connections) == 1
        for _ in range(10):
            await limiter.acquire("payments", "read")  # at once, without asking Redis
        assert len(silent_server.connections) == 1
        clock.now += 1.0
        await limiter.acquire("payments", "read")
        assert len(silent_server.connections) == 2
    finally:
        await client.aclose()


async def test_build_rate_limiter_picks_the_backend(redis_client: redis.asyncio.Redis) -> None:
    assert build_rate_limiter(None, redis_client) is None
    assert build_rate_limiter(None, None) is None
    assert isinstance(build_rate_limiter(config(), None), LocalRateLimiter)
    assert isinstance(build_rate_limiter(config(), redis_client), RedisRateLimiter)


# --- scripts/with_redis.sh --------------------------------------------------------------

_PING = (
    "import os, redis; url = os.environ['REGISTRY_GATEWAY_TEST_REDIS_URL']; "
    "assert redis.Redis.from_url(url, socket_timeout=5).ping(); print(url)"
)


def _run_script(*cmd: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != URL_ENV}
    return subprocess.run(
        ["bash", str(SCRIPT), *cmd],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_with_redis_starts_its_own_server_and_stops_it() -> None:
    done = _run_script(sys.executable, "-c", _PING, WITH_REDIS_DEFAULT_URL="redis://127.0.0.1:1/0")
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip()
    assert url.startswith("redis://127.0.0.1:") and url != "redis://127.0.0.1:1/0"
    assert "started redis-server" in done.stderr
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


def test_with_redis_exits_with_the_commands_status() -> None:
    done = _run_script(
        sys.executable, "-c", "raise SystemExit(7)", WITH_REDIS_DEFAULT_URL="redis://127.0.0.1:1/0"
    )
    assert done.returncode == 7, done.stderr


def test_with_redis_uses_the_url_it_is_given(redis_url: str) -> None:
    done = _run_script(sys.executable, "-c", _PING, **{URL_ENV: redis_url})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == redis_url
