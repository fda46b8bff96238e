"""RedisStore against a real Redis: shared values, versioned copies, read-your-writes."""

from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.gen.v1 import registry_pb2 as pb
from service.state.cache import CacheKey, Entry, RedisStore

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
