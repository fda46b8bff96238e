"""Redis loses its data (a restart without persistence, as deploy/k8s runs it, or FLUSHALL)
while replicas keep running: no replica serves a value from before the loss as fresh, a
write made after it is read by every replica, budgets refill, and the drift check runs again
at worst, never reports one change twice.

The Redis here is the test's own throw-away redis-server (FLUSHALL on the machine's shared
Redis would wipe every other test's keys); the replicas are real `registry-gateway serve`
processes where what is tested lives in a replica's memory (its in-process copies)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio
from moto.ecr.models import ecr_backends

from service.ecr import etags
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from service.state.cache import CacheKey
from tests.conftest import GatewayFactory
from tests.e2e.test_redis_down import OwnRedis
from tests.support.aws_proxy import CountingProxy
from tests.support.helpers import ACCOUNT, POLICY, config_dict, metadata, rich_error
from tests.support.processes import gateway_process

BEFORE = POLICY.replace("ReplicateFromPartner", "Before")
AFTER = POLICY.replace("ReplicateFromPartner", "After")
UNSEEN = POLICY.replace("ReplicateFromPartner", "Unseen")
NO_CACHE = ("cache-control", "no-cache")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    binary = shutil.which("redis-server")
    # A failure, not a skip (as tests/support/redis_server.py): a missing Redis must not pass CI.
    assert binary, "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)"
    server = OwnRedis(binary, tmp_path)
    server.start()
    yield server
    server.stop()


def on_redis(endpoint: str, server: OwnRedis, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    raw = config_dict(endpoint)
    raw["cache"] = {"backend": "redis", "redis_url": server.url, "key_prefix": "wipe-test:"}
    raw["audit"] = {"path": str(tmp_path / f"audit-{extra.pop('name', 'x')}.jsonl")}
    # One process's clock for every replica: no skew to allow for (the default 1 s would
    # take a read right after the baseline for one that may predate it).
    raw["drift"] = {"check_seconds": 0, "clock_skew_seconds": 0}
    for section, values in extra.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


async def flushall(server: OwnRedis) -> None:
    client = redis.asyncio.Redis.from_url(server.url)
    try:
        await client.flushall()
        assert await client.dbsize() == 0
    finally:
        await client.aclose()


async def put_policy(stub: Any, text: str) -> pb.PutRegistryPolicyResponse:
    answer: pb.PutRegistryPolicyResponse = await stub.PutRegistryPolicy(
        pb.PutRegistryPolicyRequest(policy_text=text), metadata=metadata(), timeout=30
    )
    return answer


async def get_policy(stub: Any, *extra: tuple[str, str]) -> tuple[str, str]:
    """(policy text, x-cache) of one GetRegistryPolicy."""
    call = stub.GetRegistryPolicy(
        pb.GetRegistryPolicyRequest(), metadata=(*metadata(), *extra), timeout=30
    )
    answer = await call
    return answer.policy_text, dict(await call.trailing_metadata())["x-cache"]


def stub_on(port: int) -> tuple[grpc.aio.Channel, Any]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return channel, pb_grpc.RegistryConfigServiceStub(channel)


async def lose_everything(server: OwnRedis, how: str) -> None:
    if how == "flushall":
        await flushall(server)
    else:  # a restart without persistence
        server.stop()
        server.start()


async def written_once_redis_answers(stub: Any, text: str) -> pb.PutRegistryPolicyResponse:
    """The write, retried as a caller following the README would: refused with
    WRITE_LOCK_UNAVAILABLE (and RetryInfo) until the replica's Redis connection is back."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        try:
            return await put_policy(stub, text)
        except grpc.aio.AioRpcError as exc:
            error = rich_error(exc)
            assert error.info.reason == "WRITE_LOCK_UNAVAILABLE", exc
            assert error.retry_info is not None
            if loop.time() > deadline:
                raise
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("how", ["flushall", "restart"])
async def test_a_write_after_a_wipe_is_read_by_every_replica(
    aws: str, own_redis: OwnRedis, tmp_path: Path, how: str
) -> None:
    """Issue 26 #1: A wrote `Before`, B read it; FLUSHALL; A wrote `After`; B answered
    `Before` as a cache hit (the per-key version restarted at the number B's copy carried).
    A restart of a Redis without persistence (deploy/k8s runs it so) loses the same."""
    async with (
        gateway_process(on_redis(aws, own_redis, tmp_path, name="a"), tmp_path / "a.yaml") as (
            port_a,
        ),
        gateway_process(on_redis(aws, own_redis, tmp_path, name="b"), tmp_path / "b.yaml") as (
            port_b,
        ),
    ):
        ch_a, a = stub_on(port_a)
        ch_b, b = stub_on(port_b)
        async with ch_a, ch_b:
            await put_policy(a, BEFORE)
            assert (await get_policy(b))[0] == BEFORE  # B now holds an in-process copy
            await lose_everything(own_redis, how)
            written = await written_once_redis_answers(a, AFTER)
            assert written.policy_text == AFTER
            answers = [await get_policy(b) for _ in range(3)]
    assert [text for text, _ in answers] == [AFTER] * 3, answers


async def test_a_wipe_costs_one_aws_read_per_key_and_no_error(
    gateway_factory: GatewayFactory,
    proxy: CountingProxy,
    own_redis: OwnRedis,
    tmp_path: Path,
) -> None:
    """What a wipe costs a pair of replicas that only read: the next read of the key on
    either replica is answered (no error, nothing stale served as fresh), and the two together
    make one AWS read of it (the first loads and stores it again; the other reads that)."""
    a = await gateway_factory(on_redis(proxy.url, own_redis, tmp_path, name="a"))
    b = await gateway_factory(on_redis(proxy.url, own_redis, tmp_path, name="b"))
    ch_a, stub_a = stub_on(a.port)
    ch_b, stub_b = stub_on(b.port)
    async with ch_a, ch_b:
        await put_policy(stub_a, BEFORE)
        assert await get_policy(stub_b) == (BEFORE, "hit")
        assert await get_policy(stub_a) == (BEFORE, "hit")
        loads = proxy.count("ecr:GetRegistryPolicy")
        await flushall(own_redis)
        first = await get_policy(stub_b)
        second = await get_policy(stub_a)
        again = [await get_policy(stub) for stub in (stub_a, stub_b)]
    assert first == (BEFORE, "miss")
    assert second == (BEFORE, "hit")  # what B loaded and stored, from Redis
    assert again == [(BEFORE, "hit")] * 2
    assert proxy.count("ecr:GetRegistryPolicy") - loads == 1


async def test_a_wipe_refills_a_tenants_budget_and_never_blocks_it(
    gateway_factory: GatewayFactory, aws: str, own_redis: OwnRedis, tmp_path: Path
) -> None:
    """The upstream budget lives in Redis: a wipe gives the tenant a full bucket (at worst a
    burst more of AWS calls), never an empty one nor a refusal."""
    # A token every 100 s: no refill while the test drains the bucket, however slow the machine.
    budget = {"tenant_upstream_per_second": 0.01, "tenant_upstream_burst": 2}
    raw = on_redis(aws, own_redis, tmp_path, name="a", aws=budget)
    replicas = [await gateway_factory(raw), await gateway_factory(raw)]
    ch_a, a = stub_on(replicas[0].port)
    ch_b, b = stub_on(replicas[1].port)
    async with ch_a, ch_b:

        async def refused(stub: Any) -> str | None:
            try:
                await stub.DescribeRegistry(
                    pb.DescribeRegistryRequest(), metadata=(*metadata(), NO_CACHE), timeout=30
                )
            except grpc.aio.AioRpcError as exc:
                return str(rich_error(exc).info.reason)
            return None

        # The two replicas share one bucket of 2.
        assert [await refused(a), await refused(b), await refused(a)] == [
            None,
            None,
            "UPSTREAM_BUDGET_EXHAUSTED",
        ]
        await flushall(own_redis)
        assert [await refused(b), await refused(a), await refused(b)] == [
            None,
            None,
            "UPSTREAM_BUDGET_EXHAUSTED",
        ]


async def test_a_wipe_reruns_the_drift_check_and_never_reports_a_change_twice(
    gateway_factory: GatewayFactory, aws: str, own_redis: OwnRedis, tmp_path: Path
) -> None:
    """The drift check's claims live in Redis: after a wipe another replica claims the same
    period again and reads again (one more read); the change found before the wipe was
    reported once, and the wipe does not make it reported again. The history is lost too: it
    begins again at the next state read (a change made around the gateway after the last
    read and before the wipe is taken for that baseline, not reported)."""
    # A period far longer than the test: the background loop never runs, check_once does.
    raws = [
        on_redis(aws, own_redis, tmp_path, name=name, drift={"check_seconds": 3600})
        for name in ("a", "b")
    ]
    a, b = [await gateway_factory(raw) for raw in raws]
    ecr_backends[ACCOUNT]["us-east-1"].registry_policy = BEFORE
    # The config's registry in its two regions: both read, each claimed for the period.
    assert await a.drift_check.check_once() == 2  # the baselines
    assert await b.drift_check.check_once() == 0  # claimed by A
    ecr_backends[ACCOUNT]["us-east-1"].registry_policy = AFTER  # around the gateway
    # A's next read (a fresh one, as a caller's no-cache read) sees and reports the change.
    channel, stub = stub_on(a.port)
    async with channel:
        assert (await get_policy(stub, NO_CACHE))[0] == AFTER
    # Another change around the gateway that no replica reads before the wipe.
    ecr_backends[ACCOUNT]["us-east-1"].registry_policy = UNSEEN
    await flushall(own_redis)
    assert await b.drift_check.check_once() == 2  # the claims were lost: checked again
    assert await a.drift_check.check_once() == 0  # and claimed again by B
    reported = [
        line
        for name in ("a", "b")
        if (tmp_path / f"audit-{name}.jsonl").exists()
        for line in map(json.loads, (tmp_path / f"audit-{name}.jsonl").read_text().splitlines())
        if line.get("event") == "out_of_band_change"
    ]
    assert [(r["resource"], r["registry_id"]) for r in reported] == [("policy", ACCOUNT)]
    # The history was lost with the rest: it begins again at the state the check read.
    key = CacheKey(ACCOUNT, "us-east-1", "policy")
    [only] = await a.history.page(key, before_seq=None, limit=5)
    assert (only.origin, only.etag) == ("baseline", etags.of_policy(UNSEEN))
