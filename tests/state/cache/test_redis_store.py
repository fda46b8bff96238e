"""RedisStore against a real Redis: shared values, versioned copies, read-your-writes."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.config import CacheConfig
from service.gen.v1 import registry_pb2 as pb
from service.state.cache import CacheKey, Entry, ReadCache, RedisStore

KEY = CacheKey("123456789012", "us-east-1", "policy")


def entry(etag: str, ttl: float = 30) -> Entry:
    import time

    now = time.time()
    return Entry(
        pb.GetRegistryPolicyResponse(policy_text="{}", etag=etag), now + ttl, now + ttl + 60
    )


async def test_a_value_is_shared_between_replicas(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    one = RedisStore(redis_client, redis_prefix, 10)
    two = RedisStore(redis_client, redis_prefix, 10)
    await one.get(KEY)
    await one.put(KEY, entry("a"))
    got = await two.get(KEY)
    assert got is not None and isinstance(got.value, pb.GetRegistryPolicyResponse)
    assert got.value.etag == "a"


async def test_a_write_replaces_every_replicas_copy(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    one = RedisStore(redis_client, redis_prefix, 10)
    two = RedisStore(redis_client, redis_prefix, 10)
    await one.get(KEY)
    await one.put(KEY, entry("old"))
    assert (await two.get(KEY)) is not None  # two now holds an in-process copy of "old"
    await one.put_written(KEY, entry("new"))
    got = await two.get(KEY)
    assert got is not None and isinstance(got.value, pb.GetRegistryPolicyResponse)
    assert got.value.etag == "new"


async def test_a_slow_load_cannot_put_back_a_value_older_than_a_write(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    loader = RedisStore(redis_client, redis_prefix, 10)
    writer = RedisStore(redis_client, redis_prefix, 10)
    assert await loader.get(KEY) is None  # the load begins (sees version 0)
    await writer.put_written(KEY, entry("written"))
    await loader.put(KEY, entry("loaded-before-the-write"))  # finishes late
    got = await RedisStore(redis_client, redis_prefix, 10).get(KEY)
    assert got is not None and isinstance(got.value, pb.GetRegistryPolicyResponse)
    assert got.value.etag == "written"


async def test_negative_entries_and_invalidate(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    import time

    store = RedisStore(redis_client, redis_prefix, 10)
    now = time.time()
    await store.put_written(KEY, Entry(None, now + 10, now + 70))
    got = await RedisStore(redis_client, redis_prefix, 10).get(KEY)
    assert got is not None and got.value is None
    await store.invalidate(KEY)
    assert await RedisStore(redis_client, redis_prefix, 10).get(KEY) is None


async def test_redis_away_falls_back_to_the_local_copy(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    store = RedisStore(redis_client, redis_prefix, 10)
    await store.get(KEY)
    await store.put(KEY, entry("kept"))
    seen: list[bool] = []
    away = RedisStore(
        # As the gateway builds its client: no retries, so "away" is known at once.
        redis.Redis(host="127.0.0.1", port=9, retry=Retry(NoBackoff(), 0)),
        redis_prefix,
        10,
        on_availability=seen.append,
    )
    assert await away.get(KEY) is None  # nothing local yet, and no error raised
    await away.put(KEY, entry("local-only"))
    got = await away.get(KEY)
    assert got is not None and isinstance(got.value, pb.GetRegistryPolicyResponse)
    assert got.value.etag == "local-only"
    assert seen == [False]  # reported once, not per call


# --- Redis losing keys (issue 26: a restart without persistence, FLUSHALL, an eviction) -----


async def lose(redis_client: redis.Redis, redis_prefix: str, *suffixes: str) -> None:
    """This test's cache keys in Redis are lost (all of them, or those ending in `suffixes`):
    what a wipe does to them, without wiping a Redis other tests share."""
    keys = [k async for k in redis_client.scan_iter(match=f"{redis_prefix}cache:*")]
    lost = [k for k in keys if not suffixes or k.decode().endswith(suffixes)]
    assert lost
    await redis_client.delete(*lost)


@pytest.mark.parametrize("suffixes", [(), (":version",)], ids=["wiped", "version-evicted"])
async def test_a_write_after_redis_lost_the_key_replaces_every_replicas_copy(
    redis_client: redis.Redis, redis_prefix: str, suffixes: tuple[str, ...]
) -> None:
    writer = RedisStore(redis_client, redis_prefix, 10)
    reader = RedisStore(redis_client, redis_prefix, 10)
    await writer.put_written(KEY, entry("before"))
    held = await reader.get(KEY)  # the reader now holds an in-process copy of "before"
    assert held is not None and isinstance(held.value, pb.GetRegistryPolicyResponse)
    assert held.value.etag == "before"
    await lose(redis_client, redis_prefix, *suffixes)
    await writer.put_written(KEY, entry("after"))
    for _ in range(3):
        got = await reader.get(KEY)
        assert got is not None and isinstance(got.value, pb.GetRegistryPolicyResponse)
        assert got.value.etag == "after"


async def test_a_load_begun_before_a_write_and_a_wipe_is_not_stored_as_current(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    loader = RedisStore(redis_client, redis_prefix, 10)
    writer = RedisStore(redis_client, redis_prefix, 10)
    assert await loader.get(KEY) is None  # the load begins
    await writer.put_written(KEY, entry("written"))
    await lose(redis_client, redis_prefix)
    await loader.put(KEY, entry("loaded-before-the-write"))  # finishes late
    got = await RedisStore(redis_client, redis_prefix, 10).get(KEY)
    assert got is None  # not in Redis: the next read loads it from AWS


async def test_entry_times_mean_the_same_on_replicas_whose_clocks_differ(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    """Redis holds an entry's times on its own clock: a replica 30 s ahead neither stretches
    another's TTL by 30 s nor finds every entry the others store already expired."""
    skew = 30.0
    ahead = RedisStore(redis_client, redis_prefix, 10, clock=lambda: time.time() + skew)
    here = RedisStore(redis_client, redis_prefix, 10)
    other = CacheKey("123456789012", "eu-west-1", "policy")

    def fresh_for(got: Entry | None, now: float) -> float:
        assert got is not None
        return got.fresh_until - now

    # A write through the replica ahead, read here.
    now = time.time() + skew
    await ahead.put_written(KEY, Entry(pb.GetRegistryPolicyResponse(etag="a"), now + 30, now + 90))
    # Generous bounds: the error under test is the whole skew (30 s), the slack a slow machine.
    assert 20 < fresh_for(await here.get(KEY), time.time()) <= 30
    # A load stored here, read by the replica ahead.
    assert await here.get(other) is None
    now = time.time()
    await here.put(other, Entry(pb.GetRegistryPolicyResponse(etag="b"), now + 30, now + 90))
    assert 20 < fresh_for(await ahead.get(other), time.time() + skew) <= 30


async def test_a_fresh_load_is_stored_for_every_replica(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    """A read that skips the cache (no-cache, the drift check) still stores what it loaded."""

    async def load() -> pb.GetRegistryPolicyResponse:
        return pb.GetRegistryPolicyResponse(policy_text="{}", etag="loaded")

    one = ReadCache(CacheConfig(), RedisStore(redis_client, redis_prefix, 10))
    await one.get_or_load(KEY, load, fresh=True)
    got = await RedisStore(redis_client, redis_prefix, 10).get(KEY)
    assert got is not None and isinstance(got.value, pb.GetRegistryPolicyResponse)
    assert got.value.etag == "loaded"
