"""The gateway's own writes racing what observes them, through the real gateway on moto: a
write whose caller left, a read made while a write is in flight (on one replica and across
two on Redis), and a read-back that lags the write are never reported as drift nor answered
WRITE_OVERWRITTEN.

These run with the default `drift.clock_skew_seconds` (1 s), as a deployment would, and wait
past it after the baseline, so the skew allowance hides none of them."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from moto.ecr.models import ECRBackend

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory, wait_until
from tests.e2e.test_drift import NO_CACHE, REPLICATION, aws_put_policy, counted, events, lines
from tests.support.helpers import KEY, metadata
from tests.support.moto_writes import behave_like_ecr
from tests.support.slices_support import (
    ADMIN_KEY,
    BILLING_KEY,
    PARTNER,
    aws_rule,
    filters_in,
    rule,
    seed_policy,
    seed_rules,
    shared_config,
    statement,
    stored_rules,
)

PAST_SKEW = 1.2  # seconds: past the default drift.clock_skew_seconds


@pytest.fixture(autouse=True)
def like_ecr(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto takes ECR's 10 rules and every ECR action (tests/support/moto_writes.py)."""
    behave_like_ecr(monkeypatch)


def config(aws: str, tmp_path: Path, name: str = "audit.jsonl", **cache: Any) -> Any:
    raw = shared_config(aws)
    raw["audit"] = {"path": str(tmp_path / name)}
    raw["drift"] = {"check_seconds": 0}  # the defaults otherwise (clock_skew_seconds: 1)
    if cache:
        raw["cache"] = cache
    return raw


@pytest.fixture
def slow_put(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """moto applies a replication write at once, then answers it `delay` seconds later (a slow
    AWS response: the write has reached AWS); `applied` is set once it is applied."""
    settings: dict[str, Any] = {"delay": 0.0, "applied": threading.Event()}
    original = ECRBackend.put_replication_configuration

    def put(self: ECRBackend, replication_config: dict[str, Any]) -> Any:
        taken = original(self, replication_config)
        settings["applied"].set()
        time.sleep(settings["delay"])
        return taken

    monkeypatch.setattr(ECRBackend, "put_replication_configuration", put)
    return settings


async def describe(stub: Any, key: str = KEY) -> pb.DescribeRegistryResponse:
    response: pb.DescribeRegistryResponse = await stub.DescribeRegistry(
        pb.DescribeRegistryRequest(), metadata=(*metadata(key), NO_CACHE)
    )
    return response


def outcomes(path: Path) -> list[str]:
    return [line["outcome"] for line in lines(path) if "outcome" in line]


async def test_a_write_whose_caller_left_is_recorded_as_the_gateways_and_never_drift(
    gateway_factory: GatewayFactory, aws: str, tmp_path: Path, slow_put: dict[str, Any]
) -> None:
    gateway = await gateway_factory(config(aws, tmp_path))
    seed_rules(aws_rule("billing/api"))
    path = tmp_path / "audit.jsonl"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        await describe(stub)  # the baseline
        await asyncio.sleep(PAST_SKEW)
        slow_put["delay"] = 1.5  # AWS answers the write after the caller's deadline
        with pytest.raises(grpc.aio.AioRpcError) as left:
            await stub.PutReplicationRules(
                pb.PutReplicationRulesRequest(rules=[rule("payments/a")]),
                metadata=metadata(KEY),
                timeout=0.5,
            )
        assert left.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        slow_put["delay"] = 0.0
        # The write is not abandoned once sent: it finishes (and is recorded) under the lock.
        await wait_until(lambda: outcomes(path), what="the write's audit line")
        await asyncio.sleep(PAST_SKEW)
        after = await describe(stub, ADMIN_KEY)  # any later read from AWS
    assert "payments/a" in filters_in(after.replication_configuration.rules)
    assert events(path) == []
    assert counted(gateway, "drift", "replication") == 0
    [head, baseline] = await gateway.history.page(REPLICATION, before_seq=None, limit=5)
    assert (head.origin, head.tenant, head.rpc, head.etag) == (
        "gateway",
        "payments",
        "PutReplicationRules",
        after.etag,
    )
    assert baseline.origin == "baseline"


async def test_a_fresh_read_while_a_write_is_in_flight_is_not_drift(
    gateway_factory: GatewayFactory, aws: str, tmp_path: Path, slow_put: dict[str, Any]
) -> None:
    gateway = await gateway_factory(config(aws, tmp_path))
    seed_rules(aws_rule("billing/api"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        await describe(stub)  # the baseline
        await asyncio.sleep(PAST_SKEW)
        slow_put["delay"] = 1.0
        write = asyncio.ensure_future(
            stub.PutReplicationRules(
                pb.PutReplicationRulesRequest(rules=[rule("payments/a")]), metadata=metadata(KEY)
            )
        )
        await asyncio.to_thread(slow_put["applied"].wait, 5)
        # billing, another tenant, reads fresh (a cache load) while payments' write, already
        # in AWS, waits for its answer: the load sees the new state before it is recorded.
        mine = await stub.GetReplicationRules(
            pb.GetReplicationRulesRequest(), metadata=(*metadata(BILLING_KEY), NO_CACHE)
        )
        assert list(mine.rules) == [rule("billing/api")]
        await write  # OK: the write holds
        await asyncio.sleep(PAST_SKEW)
        await describe(stub)
    path = tmp_path / "audit.jsonl"
    assert events(path) == []
    assert counted(gateway, "drift", "replication") == 0
    [head, *_] = await gateway.history.page(REPLICATION, before_seq=None, limit=5)
    assert (head.origin, head.tenant) == ("gateway", "payments")


async def test_a_fresh_read_on_another_replica_while_a_write_is_in_flight_is_not_drift(
    gateway_factory: GatewayFactory,
    aws: str,
    tmp_path: Path,
    slow_put: dict[str, Any],
    redis_url: str,
    redis_prefix: str,
) -> None:
    cache = {"backend": "redis", "redis_url": redis_url, "key_prefix": redis_prefix}
    replicas = [
        await gateway_factory(config(aws, tmp_path, f"audit-{i}.jsonl", **cache)) for i in range(2)
    ]
    seed_rules(aws_rule("billing/api"))
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{replicas[0].port}") as one,
        grpc.aio.insecure_channel(f"127.0.0.1:{replicas[1].port}") as two,
    ):
        writer, reader = (
            pb_grpc.RegistryConfigServiceStub(one),
            pb_grpc.RegistryConfigServiceStub(two),
        )
        await describe(reader)  # the baseline
        await asyncio.sleep(PAST_SKEW)
        slow_put["delay"] = 1.0
        write = asyncio.ensure_future(
            writer.PutReplicationRules(
                pb.PutReplicationRulesRequest(rules=[rule("payments/a")]), metadata=metadata(KEY)
            )
        )
        await asyncio.to_thread(slow_put["applied"].wait, 5)
        # The other replica holds no local lock: only the lock in Redis says a write is on.
        seen = await describe(reader, ADMIN_KEY)
        assert "payments/a" in filters_in(seen.replication_configuration.rules)
        await write
        await asyncio.sleep(PAST_SKEW)
        await describe(reader)
    found = [e for i in range(2) for e in events(tmp_path / f"audit-{i}.jsonl")]
    assert found == []
    assert sum(counted(r, "drift", "replication") for r in replicas) == 0


async def test_concurrent_writes_and_cached_reads_across_replicas_report_nothing(
    gateway_factory: GatewayFactory, aws: str, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    cache = {
        "backend": "redis",
        "redis_url": redis_url,
        "key_prefix": redis_prefix,
        "ttl_seconds": 0.2,
    }
    replicas = [
        await gateway_factory(config(aws, tmp_path, f"audit-{i}.jsonl", **cache)) for i in range(2)
    ]
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{replicas[0].port}") as one,
        grpc.aio.insecure_channel(f"127.0.0.1:{replicas[1].port}") as two,
    ):
        stubs = [pb_grpc.RegistryConfigServiceStub(one), pb_grpc.RegistryConfigServiceStub(two)]

        async def writes(stub: Any, key: str, prefix: str) -> None:
            for i in range(15):
                await stub.PutReplicationRules(
                    pb.PutReplicationRulesRequest(rules=[rule(f"{prefix}/v{i}")]),
                    metadata=metadata(key),
                )

        async def reads(stub: Any) -> None:
            for _ in range(60):
                await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata(KEY))
                await asyncio.sleep(0.03)

        await asyncio.gather(
            writes(stubs[0], KEY, "payments"),
            writes(stubs[1], BILLING_KEY, "billing"),
            reads(stubs[0]),
            reads(stubs[1]),
        )
    found = [e for i in range(2) for e in events(tmp_path / f"audit-{i}.jsonl")]
    assert found == [], [(e["event"], e.get("tenants")) for e in found]


@pytest.fixture
def lagging_read(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The first `times` DescribeRegistry after a write answer the state before it (reads
    lagging the write); `lagged` counts the lagging answers given."""
    lag = {"times": 1, "lagged": 0}
    state: dict[str, Any] = {}
    put = ECRBackend.put_replication_configuration
    describe_registry = ECRBackend.describe_registry

    def put_lagging(self: ECRBackend, replication_config: dict[str, Any]) -> Any:
        state["previous"] = copy.deepcopy(self.replication_config)
        state["left"] = lag["times"]
        return put(self, replication_config)

    def describe_lagging(self: ECRBackend) -> Any:
        if state.get("left"):
            state["left"] -= 1
            lag["lagged"] += 1
            return {"registryId": self.account_id, "replicationConfiguration": state["previous"]}
        return describe_registry(self)

    monkeypatch.setattr(ECRBackend, "put_replication_configuration", put_lagging)
    monkeypatch.setattr(ECRBackend, "describe_registry", describe_lagging)
    return lag


@pytest.mark.parametrize("times", [1, 2])
async def test_a_read_back_lagging_the_write_is_read_again_and_the_write_holds(
    gateway_factory: GatewayFactory,
    aws: str,
    tmp_path: Path,
    lagging_read: dict[str, int],
    times: int,
) -> None:
    gateway = await gateway_factory(config(aws, tmp_path))
    seed_rules(aws_rule("billing/api"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        await describe(stub)  # the baseline
        await asyncio.sleep(PAST_SKEW)
        lagging_read["times"] = times
        answer = await stub.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=[rule("payments/a")]), metadata=metadata(KEY)
        )
        assert lagging_read["lagged"] == times  # the read-backs that lagged were read again
        assert list(answer.rules) == [rule("payments/a")]
        assert "payments/a" in filters_in(stored_rules())
        await asyncio.sleep(PAST_SKEW)
        await describe(stub)
    path = tmp_path / "audit.jsonl"
    assert outcomes(path) == ["OK"]
    assert events(path) == []
    assert counted(gateway, "overwritten_writes", "replication") == 0
    assert counted(gateway, "drift", "replication") == 0


async def test_a_tenants_replication_writes_never_hide_a_policy_change_made_around_the_gateway(
    gateway_factory: GatewayFactory,
    aws: str,
    tmp_path: Path,
    redis_url: str,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Writes of one resource skip unlocked reads of that resource only (a write in flight,
    `locks.writing`), not of the registry's other one: a tenant keeping its 4 replication
    writes in flight (the lock held nearly all the time) does not hide a policy changed
    around the gateway meanwhile (review 2)."""
    original = ECRBackend.put_replication_configuration

    def put(self: ECRBackend, replication_config: dict[str, Any]) -> Any:
        time.sleep(0.2)  # an AWS write's ordinary latency
        return original(self, replication_config)

    monkeypatch.setattr(ECRBackend, "put_replication_configuration", put)
    raw = config(aws, tmp_path, backend="redis", redis_url=redis_url, key_prefix=redis_prefix)
    raw["server"]["max_writes_in_flight_per_tenant"] = 4  # the default
    seed_policy(statement("Payments"))
    gateway = await gateway_factory(raw)
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        await stub.GetRegistryPolicy(
            pb.GetRegistryPolicyRequest(), metadata=(*metadata(ADMIN_KEY), NO_CACHE)
        )  # the policy's baseline
        await asyncio.sleep(PAST_SKEW)

        async def writer(i: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.PutReplicationRules(
                        pb.PutReplicationRulesRequest(rules=[rule(f"payments/w{i}-{n % 2}")]),
                        metadata=metadata(KEY),
                    )

        writers = [asyncio.ensure_future(writer(i)) for i in range(4)]
        try:
            await asyncio.sleep(0.5)
            await aws_put_policy(
                {"Version": "2012-10-17", "Statement": [statement("Payments"), statement("Rogue")]},
                aws,
            )  # a change made around the gateway
            for _ in range(20):  # fresh policy reads, as a drift check would make, over ~6 s
                await asyncio.sleep(0.3)
                await stub.GetRegistryPolicy(
                    pb.GetRegistryPolicyRequest(), metadata=(*metadata(ADMIN_KEY), NO_CACHE)
                )
        finally:
            stop.set()
            await asyncio.gather(*writers)
    found = events(tmp_path / "audit.jsonl", "out_of_band_change")
    assert [e["resource"] for e in found] == ["policy"]  # reported once; the writes are not


def overrun_config(aws: str, tmp_path: Path, name: str, redis_url: str, prefix: str) -> Any:
    raw = config(aws, tmp_path, name, backend="redis", redis_url=redis_url, key_prefix=prefix)
    # The lock expires max_deadline_seconds + 5 s after it is taken: 6 s here.
    raw["server"].update(max_deadline_seconds=1, default_deadline_seconds=1)
    raw["aws"]["read_timeout_seconds"] = 10  # the default in production
    return raw


async def test_a_settlement_never_outlives_its_lock_nor_records_a_stale_read_back(
    gateway_factory: GatewayFactory,
    aws: str,
    tmp_path: Path,
    redis_url: str,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replica A's write, whose caller left, gets a read-back AWS answers slowly (7.5 s, under
    botocore's 10 s): its settlement ends before A's Redis lock (6 s) expires, writing
    nothing through and recording nothing, so replica B's write after the expiry is recorded
    as the head and stays cached. A's write, unrecorded, is reported once as a change made
    around the gateway (B's fresh read sees it); B's own write never is (review 2)."""
    state: dict[str, Any] = {"armed": False, "slow": 0}
    lock = threading.Lock()
    put_original = ECRBackend.put_replication_configuration
    describe_original = ECRBackend.describe_registry

    def put(self: ECRBackend, replication_config: dict[str, Any]) -> Any:
        taken = put_original(self, replication_config)
        with lock:
            if state["slow"] == 0:
                state["armed"] = True  # only the first (replica A's) write
        return taken

    def describe(self: ECRBackend) -> Any:
        answer = copy.deepcopy(describe_original(self))
        with lock:
            slow = state["armed"] and state["slow"] < 2
            if slow:
                state["slow"] += 1
                if state["slow"] == 2:
                    state["armed"] = False
        if slow:
            time.sleep(7.5)  # AWS answers slowly (< read_timeout 10 s): a stale snapshot
        return answer

    monkeypatch.setattr(ECRBackend, "put_replication_configuration", put)
    monkeypatch.setattr(ECRBackend, "describe_registry", describe)
    seed_rules(aws_rule("billing/api"))
    a = await gateway_factory(overrun_config(aws, tmp_path, "a.jsonl", redis_url, redis_prefix))
    b = await gateway_factory(overrun_config(aws, tmp_path, "b.jsonl", redis_url, redis_prefix))
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as one,
        grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as two,
    ):
        sa, sb = pb_grpc.RegistryConfigServiceStub(one), pb_grpc.RegistryConfigServiceStub(two)
        await describe_registry(sb)  # the baseline
        await asyncio.sleep(PAST_SKEW)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as left:
            # To PARTNER: a destination set of its own, so its rule is payments' alone once
            # packed (the drift report names the tenants holding a filter of a changed rule).
            await sa.PutReplicationRules(
                pb.PutReplicationRulesRequest(rules=[rule("payments/a", to=PARTNER)]),
                metadata=metadata(KEY),
                timeout=1,
            )
        assert left.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.sleep(max(0.0, 6.5 - (time.monotonic() - started)))
        # A's settlement has ended (its audit line is written) before its lock expired.
        assert outcomes(tmp_path / "a.jsonl") == ["CANCELLED"]
        # Replica B: billing's write, after A's lock expired.
        await sb.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=[rule("billing/api"), rule("billing/new")]),
            metadata=metadata(BILLING_KEY),
            timeout=1,
        )
        await asyncio.sleep(2)  # past the slow read-back A no longer waits for
        cached = await sb.GetReplicationRules(
            pb.GetReplicationRulesRequest(), metadata=metadata(BILLING_KEY)
        )
        await asyncio.sleep(PAST_SKEW)
        await describe_registry(sb)
        await asyncio.sleep(10.5)  # past drift.STALE_READ_SECONDS
        await describe_registry(sb)
        versions = await b.history.page(REPLICATION, before_seq=None, limit=5)
    assert "billing/new" in filters_in(cached.rules)  # B's write-through stands
    assert (versions[0].origin, versions[0].tenant) == ("gateway", "billing")
    assert not [v for v in versions if v.tenant == "payments"]  # A recorded nothing
    drift = [e for name in ("a.jsonl", "b.jsonl") for e in events(tmp_path / name)]
    assert [(e["event"], e["tenants"]) for e in drift] == [("out_of_band_change", ["payments"])]


async def describe_registry(stub: Any) -> None:
    await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=(*metadata(KEY), NO_CACHE))
