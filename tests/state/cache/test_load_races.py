"""A cache load that began before a write and ends after it: what it read may be older than the
write, so it must not replace the write's value, on either store (memory, or Redis shared by
replicas), however reads meanwhile interleave. Otherwise the replica (and, on Redis, every
replica) serves the state before the write as fresh until the TTL: read-your-writes broken."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as redis

from service.config import CacheConfig
from service.gen.v1 import registry_pb2 as pb
from service.state.cache import CacheKey, MemoryStore, ReadCache, RedisStore, Store

KEY = CacheKey("123456789012", "us-east-1", "policy")


def answer(etag: str) -> pb.GetRegistryPolicyResponse:
    return pb.GetRegistryPolicyResponse(policy_text="{}", etag=etag)


async def never() -> pb.GetRegistryPolicyResponse:
    raise AssertionError("not a load: the write's value is cached")


@pytest.mark.parametrize("backend", ["memory", "redis"])
@pytest.mark.parametrize("fresh", [False, True], ids=["read", "no-cache-read"])
async def test_a_load_begun_before_a_write_does_not_put_back_what_it_read(
    redis_client: redis.Redis, redis_prefix: str, backend: str, fresh: bool
) -> None:
    def store() -> Store:
        if backend == "memory":
            return MemoryStore(10)
        return RedisStore(redis_client, redis_prefix, 10)

    cache = ReadCache(CacheConfig(), store())
    began, answered = asyncio.Event(), asyncio.Event()

    async def slow() -> pb.GetRegistryPolicyResponse:
        began.set()
        await answered.wait()  # AWS answered before the write; the answer arrives late
        return answer("read-before-the-write")

    load = asyncio.ensure_future(cache.get_or_load(KEY, slow, fresh=fresh))
    await asyncio.wait_for(began.wait(), 10)
    await cache.put(KEY, answer("written"))  # the write's read-back, written through
    # A read meanwhile is served the write.
    written = await cache.get_or_load(KEY, never)
    assert isinstance(written, pb.GetRegistryPolicyResponse) and written.etag == "written"
    answered.set()
    await load  # its caller is answered what it read
    readers = [cache]
    if backend == "redis":
        readers.append(ReadCache(CacheConfig(), store()))  # another replica
    for reader in readers:
        got = await reader.get_or_load(KEY, never)
        assert isinstance(got, pb.GetRegistryPolicyResponse)
        assert got.etag == "written"
