"""Redis's clock as an offset from a replica's own: what drift detection compares times on."""

from __future__ import annotations

import time

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.state.clock import RedisClock


async def test_the_offset_undoes_a_replicas_skew(redis_client: redis.Redis) -> None:
    clock = RedisClock(redis_client)
    server = await redis_client.time()
    redis_now = server[0] + server[1] / 1_000_000
    for skew in (30.0, -30.0):

        def skewed(skew: float = skew) -> float:
            return time.time() + skew

        offset = await clock.offset(skewed)
        # Redis's clock less the skewed one: the skew undone, whatever this machine's clock.
        assert abs(offset + skew - (redis_now - time.time())) < 5


async def test_redis_away_keeps_the_last_offset_and_is_not_asked_again_at_once() -> None:
    asked: list[float] = []

    class Monotonic:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    monotonic = Monotonic()
    away = redis.Redis(host="127.0.0.1", port=9, retry=Retry(NoBackoff(), 0))
    clock = RedisClock(away, monotonic=monotonic)

    def local() -> float:
        asked.append(monotonic.now)
        return 0.0

    assert await clock.offset(local) == 0.0  # never measured: this replica's own clock
    assert asked == [0.0]
    monotonic.now = 0.5
    assert await clock.offset(local) == 0.0
    assert asked == [0.0]  # left alone for a second: no wait added to each read
    monotonic.now = 1.5
    await clock.offset(local)
    assert asked == [0.0, 1.5]  # asked again
    await away.aclose()
