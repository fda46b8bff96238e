"""Write locks in Redis: one holder at a time across replicas; a lost lock writes nothing."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.errors import Unavailable
from service.state.locks import RedisRegistryLocks, RegistryLocks, wait_budget
from tests.conftest import wait_until
from tests.support.pausable_redis import PausableRedis, pausable_redis


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


async def test_waiting_longer_than_the_deadline_is_busy_with_retry_info(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    """Issue 26 #3: a waiter answers UNAVAILABLE with RetryInfo before its deadline, never
    DEADLINE_EXCEEDED (which grpc answers without RetryInfo)."""
    holder = RedisRegistryLocks(redis_client, redis_prefix, 10, lambda: 5.0)
    impatient = RedisRegistryLocks(redis_client, redis_prefix, 10, lambda: 0.5)
    async with holder.hold("123456789012", "us-east-1"):
        with pytest.raises(Unavailable) as caught:
            async with impatient.hold("123456789012", "us-east-1"):
                pass
    assert caught.value.reason == "WRITE_LOCK_BUSY"
    assert caught.value.retry_after_seconds
    assert caught.value.metadata == {"registryId": "123456789012", "region": "us-east-1"}


async def test_a_local_waiter_past_its_deadline_is_busy_too() -> None:
    locks = RegistryLocks(lambda: 0.5)
    async with locks.hold("123456789012", "us-east-1"):
        with pytest.raises(Unavailable) as caught:
            async with locks.hold("123456789012", "us-east-1"):
                pass
    assert caught.value.reason == "WRITE_LOCK_BUSY"
    assert caught.value.retry_after_seconds
    async with locks.hold("123456789012", "us-east-1"):
        pass  # the refused waiter left the queue


def test_a_waiter_stops_waiting_before_its_deadline() -> None:
    assert wait_budget(5.0, 60.0) == 4.0  # 1 s before
    assert wait_budget(0.5, 60.0) == pytest.approx(0.4)  # a fifth of a short deadline
    assert wait_budget(math.inf, 60.0) == 59.0  # outside a call: the longest deadline
    assert wait_budget(-1.0, 60.0) == 0.0


async def test_a_held_lock_is_renewed_past_its_ttl(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    """Issue 26 #2: a short TTL, renewed while held, so that a live writer keeps its lock as
    long as it needs and a dead one's frees within the TTL."""
    # A TTL short enough for a test, long enough that a loaded machine's stalls never
    # let it run out between two renewals (every 0.5 s).
    one = RedisRegistryLocks(redis_client, redis_prefix, 1.5, lambda: 5.0)
    two = RedisRegistryLocks(redis_client, redis_prefix, 1.5, lambda: 0.3)
    key = f"{redis_prefix}lock:123456789012:us-east-1"
    async with one.hold("123456789012", "us-east-1") as held, held.writing("policy"):
        await asyncio.sleep(3.5)  # over two TTLs
        assert await held.owned()
        assert 0 < held.remaining() <= 1.5
        assert 0 < await redis_client.pttl(key) <= 1500
        # The marker of the write in flight lives as long as the lock.
        assert await two.writing("123456789012", "us-east-1", "policy")
        with pytest.raises(Unavailable) as caught:
            async with two.hold("123456789012", "us-east-1"):
                pass
        assert caught.value.reason == "WRITE_LOCK_BUSY"
    assert not await redis_client.exists(key)


async def test_a_lock_is_renewed_no_longer_than_a_write_may_take(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    """A writer stuck alive keeps its lock only as long as a write may last (the server's
    longest deadline + 5 s): then it expires, and its holder knows it has lost it."""
    one = RedisRegistryLocks(redis_client, redis_prefix, 1.5, lambda: 5.0, max_hold_seconds=2.0)
    two = RedisRegistryLocks(redis_client, redis_prefix, 1.5, lambda: 5.0)
    async with one.hold("123456789012", "us-east-1") as held:
        assert held.remaining() <= 1.5
        await wait_until(lambda: held.remaining() <= 0, timeout=10, what="the hold to run out")
        assert not await held.owned()
        async with two.hold("123456789012", "us-east-1") as other:  # the key expired
            assert await other.owned()


async def test_a_wiped_lock_key_is_noticed_by_its_holder(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    """Wiping only the lock key (DEL) while a write holds it: the renewal finds it gone, the
    holder knows it lost the lock without asking (nothing more may be written or recorded
    under it: WRITE_LOCK_LOST), and the renewal does not bring the key back."""
    one = RedisRegistryLocks(redis_client, redis_prefix, 0.6, lambda: 5.0)
    two = RedisRegistryLocks(redis_client, redis_prefix, 0.6, lambda: 5.0)
    key = f"{redis_prefix}lock:123456789012:us-east-1"
    async with one.hold("123456789012", "us-east-1") as held:
        await redis_client.delete(key)
        await wait_until(lambda: held.remaining() == 0, what="the holder to notice")
        assert not await held.owned()
        with pytest.raises(Unavailable) as caught:
            await held.ensure_owned()
        assert caught.value.reason == "WRITE_LOCK_LOST"
        assert not await redis_client.exists(key)
        # Another replica may take it now; the old holder leaves its lock alone.
        async with two.hold("123456789012", "us-east-1") as other:
            await asyncio.sleep(0.5)  # past the old holder's renewal period
            assert await other.owned()
    assert not await redis_client.exists(key)


async def test_a_release_redis_did_not_answer_is_retried_until_it_does(
    redis_prefix: str, tmp_path: Path
) -> None:
    """Issue 26 #2: the holder's release failed during a Redis pause and was never retried:
    the lock blocked every writer until its expiry (65 s by default) after Redis was back."""
    with pausable_redis(tmp_path) as server:
        client = paused_client(server)
        probe = redis.Redis.from_url(server.url)
        key = f"{redis_prefix}lock:123456789012:us-east-1"
        try:
            locks = RedisRegistryLocks(client, redis_prefix, 30, lambda: 5.0)
            async with locks.hold("123456789012", "us-east-1"):
                server.pause()  # the release below waits out its timeout
            server.resume()
            # Long before its 30 s expiry: released once Redis answered.
            await wait_until(
                lambda: probe_absent(probe, key), timeout=10, what="the lock to be released"
            )
        finally:
            await client.aclose()
            await probe.aclose()


async def test_an_acquisition_redis_did_not_answer_is_forgotten(
    redis_prefix: str, tmp_path: Path
) -> None:
    """A writer whose SET NX timed out during a pause was answered WRITE_LOCK_UNAVAILABLE,
    but the paused Redis applied the SET when it woke: a lock nobody held blocked every
    writer until its expiry."""
    with pausable_redis(tmp_path) as server:
        client = paused_client(server)
        probe = redis.Redis.from_url(server.url)
        key = f"{redis_prefix}lock:123456789012:us-east-1"
        try:
            await client.ping()  # a connection made before the pause, as a server's are
            locks = RedisRegistryLocks(client, redis_prefix, 30, lambda: 5.0)
            server.pause()
            with pytest.raises(Unavailable) as caught:
                async with locks.hold("123456789012", "us-east-1"):
                    pass
            assert caught.value.reason == "WRITE_LOCK_UNAVAILABLE"
            server.resume()
            await wait_until(
                lambda: probe_absent(probe, key), timeout=10, what="the stale lock to go"
            )
            async with locks.hold("123456789012", "us-east-1"):
                pass
        finally:
            await client.aclose()
            await probe.aclose()


def paused_client(server: PausableRedis) -> redis.Redis:
    """A client as the server builds it: 1 s timeouts, no retries."""
    return redis.Redis.from_url(
        server.url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )


async def probe_absent(probe: redis.Redis, key: str) -> bool:
    return not await probe.exists(key)


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
