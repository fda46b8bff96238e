"""The history store, in memory and on a real Redis: compare-and-append, bounds, paging, and
what a Redis that is down does (drift detection pauses; the history read says so)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio as redis
from pydantic import ValidationError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.config import HistoryConfig
from service.errors import Unavailable
from service.state.cache import CacheKey
from service.state.history import HistoryStore, MemoryHistory, Origin, RedisHistory, Version

KEY = CacheKey("123456789012", "us-east-1", "policy")
OTHER = CacheKey("123456789012", "eu-west-1", "policy")

Factory = Callable[[int, int], HistoryStore]


def version(etag: str, document: bytes = b"{}", origin: Origin = "gateway") -> Version:
    return Version(
        0, 1000.0, origin, etag, document, tenant="payments", identity="api_key:x", rpc="Put"
    )


@pytest.fixture(params=["memory", "redis"])
def stores(request: pytest.FixtureRequest) -> Factory:
    """Builds stores of one kind; on Redis, every store built shares one history."""
    if request.param == "memory":
        return lambda versions, size: MemoryHistory(versions, size)
    client: redis.Redis = request.getfixturevalue("redis_client")
    prefix: str = request.getfixturevalue("redis_prefix")
    return lambda versions, size: RedisHistory(client, prefix, versions, size)


async def test_append_on_the_head_etag_only(stores: Factory) -> None:
    store = stores(50, 1 << 20)
    assert await store.head(KEY) is None
    first = await store.append(KEY, version("a"), if_head_etag=None)
    assert first is not None and first.seq == 1 and first.etag == "a"
    assert await store.append(KEY, version("b"), if_head_etag=None) is None  # not empty
    assert await store.append(KEY, version("b"), if_head_etag="zzz") is None  # not the head
    second = await store.append(KEY, version("b"), if_head_etag="a")
    assert second is not None and second.seq == 2
    head = await store.head(KEY)
    assert head == second
    assert (head.tenant, head.identity, head.rpc, head.document) == (
        "payments",
        "api_key:x",
        "Put",
        b"{}",
    )
    assert await store.head(OTHER) is None  # keys are apart


async def test_paging_newest_first(stores: Factory) -> None:
    store = stores(50, 1 << 20)
    etag = None
    for i in range(7):
        stored = await store.append(KEY, version(f"v{i}"), if_head_etag=etag)
        assert stored is not None
        etag = stored.etag
    first = await store.page(KEY, before_seq=None, limit=3)
    assert [v.etag for v in first] == ["v6", "v5", "v4"]
    second = await store.page(KEY, before_seq=first[-1].seq, limit=3)
    assert [v.etag for v in second] == ["v3", "v2", "v1"]
    last = await store.page(KEY, before_seq=second[-1].seq, limit=3)
    assert [v.etag for v in last] == ["v0"]
    assert await store.page(KEY, before_seq=last[-1].seq, limit=3) == []
    assert await store.page(OTHER, before_seq=None, limit=3) == []


async def test_trimmed_to_max_versions(stores: Factory) -> None:
    store = stores(3, 1 << 20)
    etag = None
    for i in range(5):
        stored = await store.append(KEY, version(f"v{i}"), if_head_etag=etag)
        assert stored is not None
        etag = stored.etag
    kept = await store.page(KEY, before_seq=None, limit=10)
    assert [(v.seq, v.etag) for v in kept] == [(5, "v4"), (4, "v3"), (3, "v2")]
    # Seqs are never reused, even once the old versions are gone.
    sixth = await store.append(KEY, version("v5"), if_head_etag="v4")
    assert sixth is not None and sixth.seq == 6


async def test_trimmed_to_max_bytes_oldest_first(stores: Factory) -> None:
    store = stores(50, 4096)
    etag = None
    for i in range(6):
        document = str(i).encode() * 1000
        stored = await store.append(KEY, version(f"v{i}", document), if_head_etag=etag)
        assert stored is not None
        etag = stored.etag
    kept = await store.page(KEY, before_seq=None, limit=10)
    # Each document is 1 KB: two fit in 4 KiB with the six versions' headers. The oldest
    # give up their documents first (each still says what and who); the newest stay whole.
    assert [v.etag for v in kept] == ["v5", "v4", "v3", "v2", "v1", "v0"]
    assert [v.document_omitted for v in kept] == [False, False, True, True, True, True]
    assert [v.document for v in kept[:2]] == [b"5" * 1000, b"4" * 1000]
    assert all(v.document == b"" for v in kept[2:])


async def test_a_version_larger_than_the_bound_is_kept_without_its_document(
    stores: Factory,
) -> None:
    store = stores(50, 4096)
    small = await store.append(KEY, version("small"), if_head_etag=None)
    assert small is not None
    big = await store.append(KEY, version("big", b"y" * 10_000), if_head_etag="small")
    assert big is not None and big.document_omitted and big.document == b""
    head = await store.head(KEY)
    assert head is not None and head.etag == "big" and head.document_omitted
    # Its etag still compares: the next append is on it.
    assert await store.append(KEY, version("next"), if_head_etag="big") is not None


async def test_concurrent_compare_and_append_lets_one_win(stores: Factory) -> None:
    """Several stores (replicas on one Redis) append on the same head at once: one wins."""
    replicas = [stores(50, 1 << 20) for _ in range(2)]
    await replicas[0].append(KEY, version("base"), if_head_etag=None)
    for round_ in range(20):
        head = await replicas[0].head(KEY)
        assert head is not None
        results = await asyncio.gather(
            *(
                r.append(KEY, version(f"r{round_}-{i}"), if_head_etag=head.etag)
                for i, r in enumerate(replicas)
            )
        )
        assert sum(r is not None for r in results) == 1, results


async def test_two_redis_replicas_see_one_history(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    one = RedisHistory(redis_client, redis_prefix, 50, 1 << 20)
    two = RedisHistory(redis_client, redis_prefix, 50, 1 << 20)
    await one.append(KEY, version("a"), if_head_etag=None)
    head = await two.head(KEY)
    assert head is not None and head.etag == "a"


async def test_redis_down_pauses_drift_and_the_history_read_says_unavailable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    store = RedisHistory(client, "nowhere:", 50, 1 << 20)
    with caplog.at_level("WARNING", logger="registry_gateway.history"):
        # Drift detection's calls: silent (it pauses).
        assert await store.head(KEY) is None
        assert await store.append(KEY, version("a"), if_head_etag=None) is None
        # The history read: not an empty page, which would read as "no history".
        with pytest.raises(Unavailable) as caught:
            await store.page(KEY, before_seq=None, limit=5)
    assert caught.value.reason == "HISTORY_UNAVAILABLE"
    assert caught.value.retry_after_seconds is not None and caught.value.retry_after_seconds > 0
    assert "Errno" not in caught.value.message and "127.0.0.1" not in caught.value.message
    # Once per outage, not once per call.
    assert [r.message for r in caplog.records].count(
        "Redis history unavailable; drift detection paused until it answers"
    ) == 1
    await client.aclose()


async def test_a_stored_value_that_is_not_a_version_is_skipped(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    store = RedisHistory(redis_client, redis_prefix, 50, 1 << 20)
    await store.append(KEY, version("a"), if_head_etag=None)
    await redis_client.lpush(f"{redis_prefix}history:{KEY}:versions", b"\x00" * 8 + b"{" * 5000)
    assert await store.head(KEY) is None  # unparseable: bounded, skipped, never raised


@pytest.mark.parametrize("size", [2048, (1 << 20) - 1, (8 << 20) + 1, 64 << 20])
def test_max_bytes_is_refused_outside_1_to_8_mib(size: int) -> None:
    """Below 1 MiB, ordinary configurations would be kept without their documents; above
    8 MiB, one append's script (it reads the whole list) would block the locks' Redis."""
    with pytest.raises(ValidationError, match="max_bytes"):
        HistoryConfig(max_bytes=size)


def test_max_bytes_bounds_that_pass() -> None:
    assert HistoryConfig().max_bytes == 1 << 20
    assert HistoryConfig(max_bytes=8 << 20).max_bytes == 8 << 20
