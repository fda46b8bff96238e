"""Period claims: one holder per name per period, in one process and across replicas."""

from __future__ import annotations

import asyncio

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.state.claims import MemoryClaims, RedisClaims


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_memory_claim_is_held_for_its_period_then_free_again() -> None:
    clock = Clock()
    claims = MemoryClaims(clock)
    assert await claims.claim("a", 10)
    assert not await claims.claim("a", 10)
    assert await claims.claim("b", 10)  # names are independent
    clock.now += 10.5
    assert await claims.claim("a", 10)


async def test_of_two_replicas_racing_on_redis_exactly_one_gets_the_claim(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    one, two = RedisClaims(redis_client, redis_prefix), RedisClaims(redis_client, redis_prefix)
    for round_ in range(5):
        got = await asyncio.gather(one.claim(f"k{round_}", 5), two.claim(f"k{round_}", 5))
        assert sorted(got) == [False, True]


async def test_a_redis_claim_expires_with_its_period(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    claims = RedisClaims(redis_client, redis_prefix)
    assert await claims.claim("short", 0.05)
    assert not await claims.claim("short", 0.05)
    await asyncio.sleep(0.1)
    assert await claims.claim("short", 0.05)


async def test_without_redis_nothing_is_claimed() -> None:
    # Port 1: refused at once. The guarded work waits for Redis rather than running on
    # every replica at once.
    client = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    try:
        assert not await RedisClaims(client, "x:").claim("a", 5)
    finally:
        await client.aclose()
