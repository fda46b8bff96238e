"""Shared state on a real three-node Redis Cluster (issue 23): every script and transaction
keeps its keys in one hash slot, replicas on a cluster share values, versions, histories,
locks, budgets and claims as on one Redis, nothing assumes one node, a cluster that does
not answer is "Redis away" (never an error of another kind), and a lock's WAIT is sent to
the node owning its slot.

The cross-replica tests of each store run here as they are, against the cluster: imported
below, they use this module's `redis_client` and `redis_prefix` (the cluster's), which
override the single Redis's."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from service.config import RateLimitConfig
from service.config.state import CacheConfig
from service.errors import ResourceExhausted, Unavailable
from service.gen.v1 import registry_pb2 as pb
from service.state.cache import CacheKey, Entry, RedisStore
from service.state.claims import RedisClaims
from service.state.clock import RedisClock
from service.state.history import HistoryStore, RedisHistory, Version
from service.state.locks import LockReplication, RedisRegistryLocks
from service.state.ratelimit import RedisRateLimiter
from service.state.redis_connect import redis_client as gateway_redis_client
from service.state.redis_keys import RedisClient, RedisKeys

# The cross-replica tests, run here against the cluster (pytest collects what a module
# imports). Those that address keys by their single-Redis names are left out.
from tests.state.cache.test_load_races import (  # noqa: F401
    test_a_load_begun_before_a_write_does_not_put_back_what_it_read,
)
from tests.state.cache.test_redis_store import (  # noqa: F401
    test_a_fresh_load_is_stored_for_every_replica,
    test_a_load_begun_before_a_write_and_a_wipe_is_not_stored_as_current,
    test_a_slow_load_cannot_put_back_a_value_older_than_a_write,
    test_a_value_is_shared_between_replicas,
    test_a_write_after_redis_lost_the_key_replaces_every_replicas_copy,
    test_a_write_replaces_every_replicas_copy,
    test_entry_times_mean_the_same_on_replicas_whose_clocks_differ,
    test_negative_entries_and_invalidate,
)
from tests.state.test_claims import (  # noqa: F401
    test_of_two_replicas_racing_on_redis_exactly_one_gets_the_claim,
)
from tests.state.test_clock import test_the_offset_undoes_a_replicas_skew  # noqa: F401
from tests.state.test_history import (  # noqa: F401
    test_append_on_the_head_etag_only,
    test_concurrent_compare_and_append_lets_one_win,
    test_paging_newest_first,
    test_trimmed_to_max_bytes_oldest_first,
    test_two_redis_replicas_see_one_history,
)
from tests.state.test_history_retention import (  # noqa: F401
    test_documents_come_back_byte_for_byte,
    test_each_author_keeps_its_newest_versions,
)
from tests.state.test_locks import (  # noqa: F401
    test_a_write_in_flight_is_marked_per_resource_on_every_replica,
    test_every_replica_sees_a_lock_held_in_redis,
    test_two_replicas_take_turns,
    test_waiting_longer_than_the_deadline_is_busy_with_retry_info,
)
from tests.state.test_ratelimit import (  # noqa: F401
    test_concurrent_acquires_grant_exactly_the_burst,
    test_redis_allows_the_burst_then_refuses,
)
from tests.support.redis_cluster import (  # noqa: F401
    RedisClusterSet,
    cluster_of_three,
    redis_cluster,
)

REGISTRY, REGION = "123456789012", "us-east-1"
KEY = CacheKey(REGISTRY, REGION, "policy")


def cluster_cache(nodes: list[str], **extra: Any) -> CacheConfig:
    return CacheConfig(backend="redis", redis_cluster_nodes=tuple(nodes), **extra)


@pytest.fixture(scope="module")
def replicated_primary(redis_cluster: RedisClusterSet) -> int:  # noqa: F811
    """The port of the first primary, given a replica (the others have none)."""
    redis_cluster.add_replica(redis_cluster.ports[0])
    return redis_cluster.ports[0]


@pytest.fixture
async def redis_client(
    redis_cluster: RedisClusterSet,  # noqa: F811
    replicated_primary: int,
) -> AsyncIterator[RedisClient]:
    """The gateway's own cluster client (service/state/redis_connect.py), as it builds it,
    the cluster mapped (as the gateway's start-up PING does)."""
    client = gateway_redis_client(cluster_cache(redis_cluster.nodes), None, {})
    await client.ping()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def redis_prefix() -> str:
    """A prefix of the test's own (the cluster is this module's: nothing to clean up)."""
    return f"registry-gateway-test:{uuid.uuid4().hex}:"


@pytest.fixture
def stores(redis_client: RedisClient, redis_prefix: str) -> Any:
    """The history tests' stores: every one shares one history, on the cluster."""
    return lambda versions, size: RedisHistory(redis_client, redis_prefix, versions, size)


def keys_on_nodes(cluster: RedisClusterSet, prefix: str) -> dict[str, int]:
    """Every key under `prefix`, with the port of the node holding it."""
    found: dict[str, int] = {}
    for port in cluster.ports:
        node = cluster.client(port)
        if node.info("replication").get("role") != "master":
            continue
        for key in node.scan_iter(match=f"{prefix}*", count=1000):
            found[key.decode()] = port
    return found


async def test_a_registry_and_regions_keys_share_one_slot_and_registries_spread(
    redis_client: RedisClient,
    redis_prefix: str,
    redis_cluster: RedisClusterSet,  # noqa: F811
) -> None:
    registries = [f"{n:012d}" for n in range(24)]
    for registry in registries:
        key = CacheKey(registry, REGION, "policy")
        store = RedisStore(redis_client, redis_prefix, 10)
        assert await store.get(key) is None
        await store.put_written(key, Entry(pb.GetRegistryPolicyResponse(etag="e"), 1e12, 1e12))
        history = RedisHistory(redis_client, redis_prefix, 50, 1 << 20)
        appended = Version(0, time.time(), "baseline", "e", b'{"Statement": [{"Sid": "A"}]}')
        assert await history.append(key, appended, if_head_etag=None) is not None
        locks = RedisRegistryLocks(redis_client, redis_prefix, 10, lambda: 5.0)
        async with locks.hold(registry, REGION) as held, held.writing("policy"):
            where = keys_on_nodes(redis_cluster, redis_prefix)
            mine = {k: p for k, p in where.items() if f"{{{registry}:{REGION}}}" in k}
            # cache version + value, history's five keys, the lock and its marker
            assert len(mine) == 2 + 5 + 2, sorted(mine)
            assert len(set(mine.values())) == 1, mine
    ports = {
        port
        for key, port in keys_on_nodes(redis_cluster, redis_prefix).items()
        if key.startswith(f"{redis_prefix}cache:")
    }
    assert len(ports) == len(redis_cluster.ports)  # 24 registries over three nodes


def test_keys_on_one_redis_are_named_as_before() -> None:
    """A rolling deploy mixes versions: on one Redis (URL, Sentinel) every key keeps the
    name it had before clusters, so history and locks survive an upgrade."""
    single = RedisKeys("registry-gateway:lock:", cluster=False)
    assert single.key(f"{REGISTRY}:{REGION}") == f"registry-gateway:lock:{REGISTRY}:{REGION}"
    cache = RedisKeys("p:cache:", cluster=False)
    assert cache.key(f"{REGISTRY}:{REGION}", "policy", "version") == f"p:cache:{KEY}:version"
    tagged = RedisKeys("p:cache:", cluster=True)
    assert tagged.key(f"{REGISTRY}:{REGION}", "policy", "version") == (
        f"p:cache:{{{REGISTRY}:{REGION}}}:policy:version"
    )


async def test_two_gateway_clients_share_one_budget_across_nodes(
    redis_cluster: RedisClusterSet,  # noqa: F811
    replicated_primary: int,
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two replicas, each with a cluster client of its own: one bucket per tenant."""
    clients = [gateway_redis_client(cluster_cache(redis_cluster.nodes), None, {}) for _ in "ab"]
    try:
        config = RateLimitConfig(reads_per_second=0.01, writes_per_second=0.01, burst=4)
        limiters = [RedisRateLimiter(config, client, redis_prefix) for client in clients]
        # The gateway's client answers within 1 s or lets the call through (rate limiting
        # fails open, logged): on a loaded machine one call of a round may time out, which
        # says nothing of the shared bucket. A round is judged only when every call was
        # answered by Redis; three rounds (each a tenant of its own) give it room.
        for round_ in range(3):
            tenant = f"payments{round_}"
            caplog.clear()
            for i in range(4):
                await limiters[i % 2].acquire(tenant, "read")
            refused = 0
            for limiter in limiters:
                try:
                    await limiter.acquire(tenant, "read")
                except ResourceExhausted:
                    refused += 1
            if "rate limiting is off" not in caplog.text:
                break
        assert refused == 2, caplog.text
        await limiters[0].acquire("billing", "read")  # another tenant: its own bucket
    finally:
        for client in clients:
            await client.aclose()


async def test_replicas_read_one_clock_on_a_cluster(
    redis_client: RedisClient,
    redis_prefix: str,
    redis_cluster: RedisClusterSet,  # noqa: F811
) -> None:
    """Not TIME from "the" server (a cluster client sends it to any node): the node of one
    agreed key's slot, the same for every replica."""
    clock = RedisClock(redis_client, key_prefix=redis_prefix)
    port = redis_cluster.port_of_key(RedisKeys(redis_prefix, cluster=True).key("clock"))
    before = redis_cluster.client(port).info("commandstats").get("cmdstat_evalsha", {})
    assert abs(await clock.offset(time.time)) < 5
    after = redis_cluster.client(port).info("commandstats").get("cmdstat_evalsha", {})
    assert after.get("calls", 0) > before.get("calls", 0)


def wait_calls(cluster: RedisClusterSet, port: int) -> int:
    stats = cluster.client(port).info("commandstats").get("cmdstat_wait", {})
    return int(stats.get("calls", 0))


async def test_a_lock_is_acknowledged_by_the_replica_of_its_own_shard(
    redis_client: RedisClient,
    redis_prefix: str,
    redis_cluster: RedisClusterSet,  # noqa: F811
    replicated_primary: int,
) -> None:
    """WAIT goes to the node owning the lock's slot, on the connection that set the lock; a
    shard without a replica is not waited for (nothing would answer)."""
    names = RedisKeys(f"{redis_prefix}lock:", cluster=True)
    regions = [f"r-{n}" for n in range(40)]
    with_replica = next(
        r
        for r in regions
        if redis_cluster.port_of_key(names.key(f"{REGISTRY}:{r}")) == replicated_primary
    )
    without = next(
        r
        for r in regions
        if redis_cluster.port_of_key(names.key(f"{REGISTRY}:{r}")) != replicated_primary
    )
    replication = LockReplication(timeout_ms=5000)
    locks = RedisRegistryLocks(redis_client, redis_prefix, 10, lambda: 5.0, replication=replication)
    before = {port: wait_calls(redis_cluster, port) for port in redis_cluster.ports}
    async with locks.hold(REGISTRY, with_replica) as held:
        assert await held.owned()
    async with locks.hold(REGISTRY, without) as held:
        assert await held.owned()
    after = {port: wait_calls(redis_cluster, port) for port in redis_cluster.ports}
    assert replication.unreplicated == 0
    assert {p: after[p] - before[p] for p in after} == {
        p: int(p == replicated_primary) for p in after
    }
    # Released: both keys are gone, and another replica takes the lock at once.
    other = RedisRegistryLocks(redis_client, redis_prefix, 10, lambda: 5.0)
    async with other.hold(REGISTRY, with_replica):
        pass


async def test_a_cluster_that_does_not_answer_is_redis_away() -> None:
    """No node answers: redis-py says so with an exception that is not a RedisError; each
    user of Redis must still take it as "Redis away" (a read goes to AWS, a write is
    UNAVAILABLE with RetryInfo, a budget fails open), never as an error of its own."""
    client = gateway_redis_client(cluster_cache(["127.0.0.1:9", "127.0.0.1:10"]), None, {})
    try:
        store = RedisStore(client, "nowhere:", 10)
        assert await store.get(KEY) is None
        await store.put_written(KEY, Entry(pb.GetRegistryPolicyResponse(etag="e"), 1e12, 1e12))
        locks = RedisRegistryLocks(client, "nowhere:", 10, lambda: 5.0)
        with pytest.raises(Unavailable) as refused:
            async with locks.hold(REGISTRY, REGION):
                pass
        assert refused.value.reason == "WRITE_LOCK_UNAVAILABLE"
        assert await locks.held(REGISTRY, REGION)  # would rather skip than guess
        history: HistoryStore = RedisHistory(client, "nowhere:", 50, 1 << 20)
        assert await history.head(KEY) is None
        with pytest.raises(Unavailable) as unread:
            await history.page(KEY, before_seq=None, limit=5)
        assert unread.value.reason == "HISTORY_UNAVAILABLE"
        assert "127.0.0.1" not in unread.value.message
        limiter = RedisRateLimiter(
            RateLimitConfig(reads_per_second=1, writes_per_second=1, burst=1), client
        )
        for _ in range(3):
            await limiter.acquire("payments", "read")  # fails open
        assert not await RedisClaims(client, "nowhere:").claim("drift", 5)
        assert await RedisClock(client).offset(time.time) == 0.0
    finally:
        await client.aclose()


async def test_a_hostile_tenant_name_cannot_reach_another_tenants_bucket(
    redis_client: RedisClient, redis_prefix: str
) -> None:
    """A tenant named with braces (config allows what YAML allows) moves its own key's hash
    tag at most: the key is still its own, and never another tenant's bucket."""
    config = RateLimitConfig(reads_per_second=0.01, writes_per_second=0.01, burst=1)
    limiter = RedisRateLimiter(config, redis_client, redis_prefix)
    assert limiter.key("payments", "read") != limiter.key("}payments", "read")
    await limiter.acquire("}payments{", "read")
    await limiter.acquire("payments}", "read")
    await limiter.acquire("payments", "read")  # untouched by the others
    with pytest.raises(ResourceExhausted):
        await limiter.acquire("payments", "read")


async def test_a_write_storm_through_two_clients_keeps_one_history(
    redis_cluster: RedisClusterSet,  # noqa: F811
    replicated_primary: int,
    redis_prefix: str,
) -> None:
    """Two replicas (two cluster clients) appending on one head at once: one wins each time."""
    clients = [gateway_redis_client(cluster_cache(redis_cluster.nodes), None, {}) for _ in "ab"]
    try:
        stores = [RedisHistory(c, redis_prefix, 50, 1 << 20) for c in clients]
        head = ""
        for round_ in range(10):
            results = await asyncio.gather(
                *(
                    s.append(
                        KEY,
                        Version(0, time.time(), "gateway", f"{round_}-{i}", b"{}", tenant="t"),
                        if_head_etag=head or None,
                    )
                    for i, s in enumerate(stores)
                )
            )
            won = [r for r in results if r is not None]
            assert len(won) == 1, results
            head = won[0].etag
        versions = await stores[1].page(KEY, before_seq=None, limit=50)
        assert len(versions) == 10 and versions[0].etag == head
    finally:
        for client in clients:
            await client.aclose()


async def test_a_dead_node_stops_only_the_registries_whose_slots_it_holds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing assumes one node: with a node SIGKILLed (and before the cluster gives up on
    it), a registry whose slot it held has its writes refused at once (UNAVAILABLE with
    RetryInfo) and its reads served without the cache, while a registry on another node is
    locked, written and read through the cluster as before."""
    with cluster_of_three(tmp_path) as cluster:
        client = gateway_redis_client(cluster_cache(cluster.nodes), None, {})
        try:
            await client.ping()
            names = RedisKeys("p:lock:", cluster=True)
            dead = cluster.ports[2]
            regions = [f"r-{n}" for n in range(40)]
            gone = next(
                r for r in regions if cluster.port_of_key(names.key(f"{REGISTRY}:{r}")) == dead
            )
            alive = next(
                r for r in regions if cluster.port_of_key(names.key(f"{REGISTRY}:{r}")) != dead
            )
            cluster.kill(dead)
            locks = RedisRegistryLocks(client, "p:", 10, lambda: 5.0)
            began = time.monotonic()
            with pytest.raises(Unavailable) as refused:
                async with locks.hold(REGISTRY, gone):
                    pass
            assert refused.value.reason == "WRITE_LOCK_UNAVAILABLE"
            assert refused.value.retry_after_seconds
            assert time.monotonic() - began < 3  # refused, not waited for
            seen: list[bool] = []
            store = RedisStore(client, "p:", 10, on_availability=seen.append)
            for _ in range(3):  # reads of both kinds of registries, alternating
                assert await store.get(CacheKey(REGISTRY, gone, "policy")) is None
                assert await store.get(CacheKey(REGISTRY, alive, "registry")) is None
            assert seen == [False]  # the cache is reported away once, not once per read
            history = RedisHistory(client, "p:", 50, 1 << 20)
            with caplog.at_level("WARNING", logger="registry_gateway.history"):
                for _ in range(3):
                    assert await history.head(CacheKey(REGISTRY, gone, "policy")) is None
                    assert await history.head(CacheKey(REGISTRY, alive, "policy")) is None
            said = [r.message for r in caplog.records if r.name == "registry_gateway.history"]
            assert said == ["Redis history unavailable; drift detection paused until it answers"]
            # Rate limits: only the tenant whose bucket was on the dead node goes unlimited.
            buckets = RedisKeys("p:ratelimit:", cluster=True)
            tenants = [f"tenant-{n}" for n in range(40)]
            lost = next(t for t in tenants if cluster.port_of_key(buckets.key(t, "read")) == dead)
            kept = next(t for t in tenants if cluster.port_of_key(buckets.key(t, "read")) != dead)
            limiter = RedisRateLimiter(
                RateLimitConfig(reads_per_second=0.01, writes_per_second=0.01, burst=1),
                client,
                "p:ratelimit:",
            )
            for _ in range(2):
                await limiter.acquire(lost, "read")  # fails open
            await limiter.acquire(kept, "read")
            with pytest.raises(ResourceExhausted):
                await limiter.acquire(kept, "read")
            async with locks.hold(REGISTRY, alive) as held:
                assert await held.owned()
            key = CacheKey(REGISTRY, alive, "policy")
            await RedisStore(client, "p:", 10).put_written(
                key, Entry(pb.GetRegistryPolicyResponse(etag="kept"), 1e12, 1e12)
            )
            got = await RedisStore(client, "p:", 10).get(key)
            assert got is not None and isinstance(got.value, pb.GetRegistryPolicyResponse)
            assert got.value.etag == "kept"
        finally:
            await client.aclose()
