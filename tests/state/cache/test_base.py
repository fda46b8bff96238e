"""ReadCache over the real MemoryStore, with a clock the test moves."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf.message import Message

from service.config import CacheConfig
from service.errors import NotFound, Unavailable
from service.gen.v1 import registry_pb2 as pb
from service.state.cache import CacheKey, MemoryStore, Outcome, ReadCache

KEY = CacheKey("123456789012", "us-east-1", "registry")
CONFIG = CacheConfig(ttl_seconds=10, negative_ttl_seconds=5, max_stale_seconds=60)


class Clock:
    """Wall-clock time the test sets."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Loader:
    """Counts loads; answers a value, raises, or waits for the test to release it."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: Exception | None = None
        self.release: asyncio.Event | None = None

    async def __call__(self) -> Message:
        self.calls += 1
        if self.release is not None:
            await self.release.wait()
        if self.error is not None:
            raise self.error
        return pb.DescribeRegistryResponse(registry_id="123456789012", etag=f"e{self.calls}")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> ReadCache:
    return ReadCache(CONFIG, MemoryStore(100), clock=clock, jitter=lambda: 1.0)


async def get(cache: ReadCache, loader: Loader, fresh: bool = False) -> tuple[Message, Outcome]:
    outcomes: list[Outcome] = []
    value = await cache.get_or_load(KEY, loader, fresh=fresh, on_outcome=outcomes.append)
    return value, outcomes[0]


async def test_miss_then_hit_then_expiry(cache: ReadCache, loader: Loader, clock: Clock) -> None:
    assert (await get(cache, loader))[1] == "miss"
    assert (await get(cache, loader))[1] == "hit"
    clock.now += 10.01
    value, outcome = await get(cache, loader)
    assert outcome == "miss" and loader.calls == 2
    assert isinstance(value, pb.DescribeRegistryResponse) and value.etag == "e2"


async def test_concurrent_misses_share_one_load(cache: ReadCache, loader: Loader) -> None:
    loader.release = asyncio.Event()
    waiters = [asyncio.ensure_future(get(cache, loader)) for _ in range(50)]
    await asyncio.sleep(0)
    loader.release.set()
    results = await asyncio.gather(*waiters)
    assert loader.calls == 1
    assert {r[0].SerializeToString() for r in results} == {results[0][0].SerializeToString()}


async def test_a_caller_leaving_does_not_cancel_the_shared_load(
    cache: ReadCache, loader: Loader
) -> None:
    loader.release = asyncio.Event()
    leaving = asyncio.ensure_future(get(cache, loader))
    staying = asyncio.ensure_future(get(cache, loader))
    await asyncio.sleep(0)
    leaving.cancel()
    loader.release.set()
    assert (await staying)[1] == "miss"
    assert loader.calls == 1
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_errors_reach_every_waiter_and_are_not_cached(
    cache: ReadCache, loader: Loader
) -> None:
    loader.error = Unavailable("down")
    with pytest.raises(Unavailable):
        await get(cache, loader)
    loader.error = None
    assert (await get(cache, loader))[1] == "miss"


async def test_not_found_is_cached_for_the_negative_ttl(
    cache: ReadCache, loader: Loader, clock: Clock
) -> None:
    loader.error = NotFound("none", metadata={"awsRequestId": "r-1"})
    with pytest.raises(NotFound) as first:
        await get(cache, loader)
    assert first.value.metadata["awsRequestId"] == "r-1"  # a miss answers AWS's own error
    outcomes: list[Outcome] = []
    with pytest.raises(NotFound):
        await cache.get_or_load(KEY, loader, on_outcome=outcomes.append)
    assert outcomes == ["hit"] and loader.calls == 1
    clock.now += 5.01
    loader.error = None
    assert (await get(cache, loader))[1] == "miss"


async def test_stale_if_error_within_max_stale_only(
    cache: ReadCache, loader: Loader, clock: Clock
) -> None:
    await get(cache, loader)
    loader.error = Unavailable("throttled")
    clock.now += 30
    value, outcome = await get(cache, loader)
    assert outcome == "stale" and isinstance(value, pb.DescribeRegistryResponse)
    clock.now += 41  # past ttl + max_stale
    with pytest.raises(Unavailable):
        await get(cache, loader)


async def test_fresh_skips_the_cache_but_still_serves_stale_on_error(
    cache: ReadCache, loader: Loader
) -> None:
    await get(cache, loader)
    assert (await get(cache, loader, fresh=True))[1] == "miss"
    loader.error = Unavailable("down")
    assert (await get(cache, loader, fresh=True))[1] == "stale"


async def test_write_through_and_invalidate(cache: ReadCache, loader: Loader) -> None:
    await get(cache, loader)
    await cache.put(KEY, pb.DescribeRegistryResponse(registry_id="123456789012", etag="w"))
    value, outcome = await get(cache, loader)
    assert outcome == "hit" and isinstance(value, pb.DescribeRegistryResponse)
    assert value.etag == "w"
    await cache.invalidate(KEY)
    assert (await get(cache, loader))[1] == "miss"


async def test_memory_store_is_bounded() -> None:
    store = MemoryStore(2)
    cache = ReadCache(CONFIG, store)
    for region in ("a1", "b1", "c1"):
        await cache.put(CacheKey("1", region, "registry"), pb.DescribeRegistryResponse())
    assert await store.get(CacheKey("1", "a1", "registry")) is None
    assert await store.get(CacheKey("1", "c1", "registry")) is not None


@pytest.fixture
def loader() -> Loader:
    return Loader()
