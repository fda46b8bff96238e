"""Per-tenant rate limits: one token bucket for reads and one for writes.

Each bucket holds at most `burst` tokens and refills at `reads_per_second` (reads) or
`writes_per_second` (writes). A call takes one token or is refused with RESOURCE_EXHAUSTED,
RetryInfo (the time until one token is back) and a QuotaFailure naming the tenant.

Two implementations of one `RateLimiter` protocol:
- `LocalRateLimiter`: in-process; each process (worker) enforces the rate on its own.
- `RedisRateLimiter`: one budget shared by every process and replica, taken atomically by a
  Lua script that uses Redis's own clock.

Why hand-written rather than a library (PyPI checked): `aiolimiter` is one leaky bucket that
*waits* for capacity and cannot say how long a refused call should wait; `limits` offers
fixed/moving windows, not token buckets; the Redis token-bucket packages
(`redis-rate-limiters` and its forks, `asyncio-redis-rate-limit`) sleep until a token is free,
or count fixed windows, and none refills by the Redis server's clock. A gateway must refuse at
once with a retry delay, so the bucket is the ~20 lines below plus one Lua script.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import redis.asyncio
import redis.exceptions

from service.config import RateLimitConfig
from service.errors import QuotaViolation, ResourceExhausted
from service.state.redis_keys import RedisClient, RedisKeys

# Which bucket a call draws from.
RateKind = Literal["read", "write"]

log = logging.getLogger("registry_gateway.ratelimit")

DEFAULT_KEY_PREFIX = "registry-gateway:ratelimit:"


class RateLimiter(Protocol):
    """Takes one token from a tenant's read or write bucket, or refuses the call."""

    async def acquire(self, tenant: str, kind: RateKind) -> None:
        """Take one token; raise `ResourceExhausted` (RATE_LIMITED) when there is none."""
        ...


def _rate(config: RateLimitConfig, kind: RateKind) -> float:
    return config.reads_per_second if kind == "read" else config.writes_per_second


def rate_limited(
    config: RateLimitConfig, tenant: str, kind: RateKind, retry_after_seconds: float
) -> ResourceExhausted:
    """The error of a refused call: RetryInfo, one QuotaViolation, metadata tenant and kind."""
    rate = _rate(config, kind)
    limit = f"{rate:g} {kind}s per second, burst {config.burst}"
    return ResourceExhausted(
        f"tenant {tenant!r} is over its {kind} rate limit ({limit}); "
        f"retry in {retry_after_seconds:.3f}s",
        reason="RATE_LIMITED",
        metadata={"tenant": tenant, "kind": kind},
        retry_after_seconds=retry_after_seconds,
        quota_violations=(
            QuotaViolation(subject=f"tenant:{tenant}", description=f"{kind} rate limit: {limit}"),
        ),
    )


# Float rounding (0.05 + 0.05 of elapsed time is not quite 0.1) must not turn a full token
# into a refusal with a retry delay of 1e-15 s.
_EPSILON = 1e-9


@dataclass
class _Bucket:
    tokens: float
    updated: float


class LocalRateLimiter:
    """Token buckets in this process, keyed by (tenant, kind).

    No lock: `acquire` never awaits, so the event loop runs each one whole. The dict holds
    one bucket per configured tenant and kind (tenants are authenticated before this runs),
    so it stays as small as the tenant list.
    """

    def __init__(
        self, config: RateLimitConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._clock = clock
        self._buckets: dict[tuple[str, RateKind], _Bucket] = {}

    async def acquire(self, tenant: str, kind: RateKind) -> None:
        """Take one token from the tenant's `kind` bucket, or raise `ResourceExhausted`."""
        now = self._clock()
        capacity = float(self._config.burst)
        rate = _rate(self._config, kind)
        bucket = self._buckets.get((tenant, kind))
        if bucket is None:
            bucket = self._buckets[(tenant, kind)] = _Bucket(tokens=capacity, updated=now)
        # max(0, ...): a clock that steps back must not drain the bucket.
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(capacity, bucket.tokens + elapsed * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0 - _EPSILON:
            bucket.tokens -= 1.0
            return
        raise rate_limited(self._config, tenant, kind, (1.0 - bucket.tokens) / rate)


# KEYS[1] the bucket (a hash: tokens, ts in microseconds of Redis's clock);
# ARGV[1] capacity (burst), ARGV[2] refill rate in tokens per second.
# Returns {1, 0} when a token was taken, else {0, microseconds until one token is back}.
# TIME is Redis's clock, so replicas whose own clocks disagree still share one bucket; since
# Redis 5 scripts replicate their effects, not the script, so calling TIME before a write is
# allowed. An absent key means a full bucket, so the key expires once it would have refilled.
_BUCKET_SCRIPT = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
local elapsed = math.max(0, now - ts)
tokens = math.min(capacity, tokens + elapsed * rate / 1000000)
local granted = 0
local wait_us = 0
if tokens >= 1 - 1e-9 then  -- float rounding, as in LocalRateLimiter
  tokens = tokens - 1
  granted = 1
else
  wait_us = math.ceil((1 - tokens) * 1000000 / rate)
end
redis.call('HSET', KEYS[1],
  'tokens', string.format('%.17g', tokens), 'ts', string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity * 1000 / rate) + 1000)
return {granted, wait_us}
"""


class RedisRateLimiter:
    """Token buckets in Redis, shared by every process and replica that uses the same keys.

    Redis unreachable, slow or failing: the call is let through (fail open). Why open: reads
    are what most callers do and their availability matters more than exact fairness; AWS
    throttles the account itself; and failing closed would turn one broken dependency into
    an outage for every tenant. Two things keep an outage cheap:
    - after a failure, Redis is left alone for `retry_redis_after_seconds` and calls pass at
      once (redis-py retries a refused connection ten times with backoff by default, and a
      silent Redis would hold each call for `timeout_seconds`); on a Redis Cluster only that
      tenant's bucket is left alone (its node may be the only one away);
    - the warning is logged at most once per `warn_interval_seconds`, with the number of
      calls let through since the last one: a line per call would flood the log.
    """

    def __init__(
        self,
        config: RateLimitConfig,
        client: RedisClient,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        *,
        timeout_seconds: float = 0.25,
        retry_redis_after_seconds: float = 1.0,
        warn_interval_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        # A tenant's bucket is one key, hash-tagged by tenant on a cluster (redis_keys.py).
        self._names = RedisKeys.of(client, key_prefix)
        self._script = client.register_script(_BUCKET_SCRIPT)
        # A Redis that accepts connections but never answers would otherwise hold every call
        # until its deadline: bound the round trip and fail open past it.
        self._timeout_seconds = timeout_seconds
        self._retry_redis_after_seconds = retry_redis_after_seconds
        self._warn_interval_seconds = warn_interval_seconds
        self._clock = clock
        # Per tenant on a cluster (its bucket's node may be the only one away), else one.
        self._skip_redis_until: dict[str, float] = {}
        self._last_warning: float | None = None
        self._failed_open_since_warning = 0
        self._last_error = ""

    def key(self, tenant: str, kind: RateKind) -> str:
        """The Redis key of a tenant's `kind` bucket."""
        return self._names.key(tenant, kind)

    async def acquire(self, tenant: str, kind: RateKind) -> None:
        """Take one token from the shared bucket, or raise `ResourceExhausted`.

        When Redis cannot answer, the call is allowed (see the class docstring).
        """
        group = tenant if self._names.cluster else ""
        skip_until = self._skip_redis_until.get(group)
        if skip_until is not None and self._clock() < skip_until:
            self._fail_open(None)
            return
        rate = _rate(self._config, kind)
        try:
            async with asyncio.timeout(self._timeout_seconds):
                result = await self._script(
                    keys=[self.key(tenant, kind)], args=[self._config.burst, repr(rate)]
                )
        except (redis.exceptions.RedisError, OSError) as exc:  # TimeoutError is an OSError
            self._skip_redis_until[group] = self._clock() + self._retry_redis_after_seconds
            self._fail_open(exc)
            return
        self._skip_redis_until.pop(group, None)
        granted, wait_us = (int(x) for x in result)
        if granted:
            return
        raise rate_limited(self._config, tenant, kind, wait_us / 1_000_000)

    def _fail_open(self, exc: BaseException | None) -> None:
        self._failed_open_since_warning += 1
        if exc is not None:
            self._last_error = type(exc).__name__
        now = self._clock()
        if (
            self._last_warning is not None
            and now - self._last_warning < self._warn_interval_seconds
        ):
            return
        log.warning(
            "rate limiting is off: Redis did not answer (%s); allowed %d call(s) unlimited "
            "since the last warning",
            self._last_error,
            self._failed_open_since_warning,
            extra={"error_type": self._last_error},
        )
        self._last_warning = now
        self._failed_open_since_warning = 0


def build_rate_limiter(
    config: RateLimitConfig | None,
    redis_client: RedisClient | None,
    key_prefix: str = "registry-gateway:",
) -> RateLimiter | None:
    """The limiter the config asks for: None when off, shared through Redis when given one."""
    if config is None:
        return None
    if redis_client is not None:
        return RedisRateLimiter(config, redis_client, f"{key_prefix}ratelimit:")
    return LocalRateLimiter(config)


class UpstreamBudget:
    """Per-tenant budget of the calls that go past the cache: reads with
    `cache-control: no-cache`, every write (each reads AWS fresh under the registry's lock,
    validate_only and a stale etag included, before it can refuse), and history reads (the
    whole history, from the store, each time).

    A call spends it when it actually goes past the cache (service/pipeline/gates.py
    `past_the_cache`), not when it arrives: one the gateway refuses first (authorization,
    validation, content rules, a slice's ownership or share) reached nothing and spends
    nothing, so a tenant's mistakes never eat its budget for the calls that do reach AWS.

    AWS throttling an account opens the breaker for every tenant of it, so no tenant may
    spend the account's AWS quota without bound. On by default, even where `rate_limit` is
    not configured; past it the caller gets RESOURCE_EXHAUSTED with RetryInfo (reason
    UPSTREAM_BUDGET_EXHAUSTED); reads through the cache are not affected. Same token buckets
    as the rate limits (in Redis when the cache is there, so replicas share one budget).
    """

    def __init__(self, per_second: float, burst: int, limiter: RateLimiter) -> None:
        self._per_second = per_second
        self._burst = burst
        self._limiter = limiter

    async def acquire(self, tenant: str) -> None:
        """Take one call from the tenant's budget, or raise ResourceExhausted."""
        try:
            await self._limiter.acquire(tenant, "read")
        except ResourceExhausted as exc:
            limit = f"{self._per_second:g} per second, burst {self._burst}"
            raise ResourceExhausted(
                f"tenant {tenant!r} is over its budget of calls past the cache (writes, "
                f"no-cache reads and history reads that got past the gateway's own checks, "
                f"{limit}); retry in {exc.retry_after_seconds or 0:.3f}s, or read without "
                "no-cache",
                reason="UPSTREAM_BUDGET_EXHAUSTED",
                metadata={"tenant": tenant},
                retry_after_seconds=exc.retry_after_seconds,
                quota_violations=(
                    QuotaViolation(
                        subject=f"tenant:{tenant}", description=f"calls past the cache: {limit}"
                    ),
                ),
            ) from None


def build_upstream_budget(
    per_second: float,
    burst: int,
    redis_client: RedisClient | None,
    key_prefix: str = "registry-gateway:",
) -> UpstreamBudget:
    """The per-tenant upstream budget: in Redis when the cache is, else in this process."""
    config = RateLimitConfig(reads_per_second=per_second, writes_per_second=per_second, burst=burst)
    limiter: RateLimiter
    if redis_client is not None:
        limiter = RedisRateLimiter(config, redis_client, f"{key_prefix}upstream-budget:")
    else:
        limiter = LocalRateLimiter(config)
    return UpstreamBudget(per_second, burst, limiter)
