"""Write locks in Redis: one holder at a time across replicas; a lost lock writes nothing."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as redis

from service.errors import DeadlineExceeded, Unavailable
from service.state.locks import RedisRegistryLocks, RegistryLocks


async def test_local_lock_serializes_writers() -> None:
    locks = RegistryLocks()
    order: list[str] = []

    async def writer(name: str) -> None:
        async with locks.hold("123456789012", "us-east-1") as held:
            await held.ensure_owned()
            order.append(f"{name}-in")
            await asyncio.sleep(0)
            order.append(f"{name}-out")

    await asyncio.gather(writer("a"), writer("b"))
    assert order in (["a-in", "a-out", "b-in", "b-out"], ["b-in", "b-out", "a-in", "a-out"])


async def test_two_replicas_take_turns(redis_client: redis.Redis, redis_prefix: str) -> None:
    one = RedisRegistryLocks(redis_client, redis_prefix, 10, lambda: 5.0)
    two = RedisRegistryLocks(redis_client, redis_prefix, 10, lambda: 5.0)
    inside = 0
    most = 0

    async def writer(locks: RedisRegistryLocks) -> None:
        nonlocal inside, most
        async with locks.hold("123456789012", "us-east-1"):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.02)
            inside -= 1

    await asyncio.gather(*(writer(locks) for locks in (one, two, one, two)))
    assert most == 1


async def test_waiting_longer_than_the_deadline_is_deadline_exceeded(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    holder = RedisRegistryLocks(redis_client, redis_prefix, 10, lambda: 5.0)
    impatient = RedisRegistryLocks(redis_client, redis_prefix, 10, lambda: 0.1)
    async with holder.hold("123456789012", "us-east-1"):
        with pytest.raises(DeadlineExceeded):
            async with impatient.hold("123456789012", "us-east-1"):
                pass


async def test_a_lost_lock_is_noticed_before_writing(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    locks = RedisRegistryLocks(redis_client, redis_prefix, 10, lambda: 5.0)
    async with locks.hold("123456789012", "us-east-1") as held:
        await held.ensure_owned()
        # As if it expired and another replica took it: the key now holds another token.
        await redis_client.set(f"{redis_prefix}lock:123456789012:us-east-1", "someone-else")
        with pytest.raises(Unavailable) as caught:
            await held.ensure_owned()
    assert caught.value.reason == "WRITE_LOCK_LOST"
    # The other owner's lock was left alone on release.
    assert await redis_client.get(f"{redis_prefix}lock:123456789012:us-east-1") == b"someone-else"


async def test_redis_away_refuses_the_write(redis_prefix: str) -> None:
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    away = redis.Redis(host="127.0.0.1", port=9, retry=Retry(NoBackoff(), 0))
    locks = RedisRegistryLocks(away, redis_prefix, 10, lambda: 5.0)
    with pytest.raises(Unavailable) as caught:
        async with locks.hold("123456789012", "us-east-1"):
            pass
    assert caught.value.reason == "WRITE_LOCK_UNAVAILABLE"
    assert caught.value.retry_after_seconds


async def test_a_local_lock_says_whether_it_is_held() -> None:
    locks = RegistryLocks()
    assert not await locks.held("123456789012", "us-east-1")
    async with locks.hold("123456789012", "us-east-1"):
        assert await locks.held("123456789012", "us-east-1")
        assert not await locks.held("123456789012", "eu-west-1")
    assert not await locks.held("123456789012", "us-east-1")


async def test_every_replica_sees_a_lock_held_in_redis(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    one = RedisRegistryLocks(redis_client, redis_prefix, 10, lambda: 5.0)
    two = RedisRegistryLocks(redis_client, redis_prefix, 10, lambda: 5.0)
    assert not await two.held("123456789012", "us-east-1")
    async with one.hold("123456789012", "us-east-1"):
        # The other replica has no local lock: only Redis can tell it.
        assert await two.held("123456789012", "us-east-1")
        assert not await two.held("123456789012", "eu-west-1")
    assert not await two.held("123456789012", "us-east-1")


async def test_redis_away_counts_as_held(redis_prefix: str) -> None:
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    away = redis.Redis(host="127.0.0.1", port=9, retry=Retry(NoBackoff(), 0))
    locks = RedisRegistryLocks(away, redis_prefix, 10, lambda: 5.0)
    # Whoever asks would rather skip than act on a write it cannot see.
    assert await locks.held("123456789012", "us-east-1")


async def test_a_write_in_flight_is_marked_per_resource_on_every_replica(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    one = RedisRegistryLocks(redis_client, redis_prefix, 10, lambda: 5.0)
    two = RedisRegistryLocks(redis_client, redis_prefix, 10, lambda: 5.0)
    async with one.hold("123456789012", "us-east-1") as held:
        assert 9 < held.remaining() <= 10
        assert await held.owned()
        assert not await two.writing("123456789012", "us-east-1", "registry")
        async with held.writing("registry"):
            assert await two.writing("123456789012", "us-east-1", "registry")
            assert not await two.writing("123456789012", "us-east-1", "policy")
        assert not await two.writing("123456789012", "us-east-1", "registry")


async def test_a_local_write_in_flight_is_marked_per_resource() -> None:
    locks = RegistryLocks()
    async with locks.hold("123456789012", "us-east-1") as held:
        async with held.writing("policy"):
            assert await locks.writing("123456789012", "us-east-1", "policy")
            assert not await locks.writing("123456789012", "us-east-1", "registry")
        assert not await locks.writing("123456789012", "us-east-1", "policy")
