"""Hostile tenants against shared failure domains: one tenant's impatient, slow or fresh
calls, or a stranger's failed logins, must not open the breaker, take the upstream slots,
spend AWS's throttling budget or lock out valid callers — for anyone else."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest

from service.app.server import Gateway
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.aws_proxy import CountingProxy, Fault
from tests.support.helpers import KEY, OTHER_KEY, metadata, rich_error
from tests.support.moto_writes import behave_like_ecr
from tests.support.slices_support import BILLING_KEY, EU, rule, shared_config

DESCRIBE = frozenset({"ecr:DescribeRegistry"})
SLOW_READS = frozenset({"ecr:DescribeRegistry", "ecr:GetRegistryPolicy"})
BREAKER_OPEN = 2.0  # registry_gateway_breaker_state: 0 closed, 1 half-open, 2 open


def config(proxy: CountingProxy, **aws: Any) -> dict[str, Any]:
    raw = shared_config(proxy.url)
    raw["aws"].update({"breaker_threshold": 3, "breaker_open_seconds": 30, **aws})
    return raw


async def call(
    gateway: Gateway, rpc: str, request: Any, key: str = KEY, timeout: float = 10, **extra: Any
) -> tuple[grpc.StatusCode, str | None]:
    """(status, ErrorInfo reason) of one call."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        try:
            await getattr(stub, rpc)(
                request, metadata=(*metadata(key), *extra.get("headers", ())), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            reason = rich_error(exc).info.reason if exc.trailing_metadata() else None
            return exc.code(), reason
    return grpc.StatusCode.OK, None


def breaker_state(gateway: Gateway) -> float:
    value = gateway.metrics.registry.get_sample_value(
        "registry_gateway_breaker_state", {"circuit": "123456789012:us-east-1"}
    )
    return 0.0 if value is None else value


@pytest.fixture(autouse=True)
def like_ecr(monkeypatch: pytest.MonkeyPatch) -> None:
    behave_like_ecr(monkeypatch)


async def test_a_tenant_s_short_deadlines_do_not_open_everyone_s_breaker(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    gateway = await gateway_factory(config(proxy, max_concurrent_calls=4))
    rules = pb.PutReplicationRulesRequest(rules=[rule("payments/api")], validate_only=True)
    assert (await call(gateway, "PutReplicationRules", rules))[0] == grpc.StatusCode.OK
    proxy.fault = Fault(DESCRIBE, delay_seconds=5)  # AWS answers, but slowly
    try:
        # The finding: six validate_only writes with a tight deadline, then ten at once.
        for _ in range(6):
            code, _ = await call(gateway, "PutReplicationRules", rules, timeout=0.2)
            assert code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        burst = await asyncio.gather(
            *(call(gateway, "PutReplicationRules", rules, timeout=0.3) for _ in range(10))
        )
        assert {code for code, _ in burst} <= {
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.UNAVAILABLE,
        }
        assert "BREAKER_OPEN" not in {reason for _, reason in burst}
    finally:
        proxy.fault = None
        proxy.released.set()
    assert breaker_state(gateway) != BREAKER_OPEN
    # Another tenant's write to the same (account, region) goes through.
    billing = pb.PutReplicationRulesRequest(rules=[rule("billing/api", to=EU)])
    assert await call(gateway, "PutReplicationRules", billing, key=BILLING_KEY) == (
        grpc.StatusCode.OK,
        None,
    )


async def test_aws_failures_still_open_the_breaker(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    # The other half of the rule: what AWS itself does is counted.
    gateway = await gateway_factory(config(proxy))
    proxy.fault = Fault(DESCRIBE, status=503)
    fresh = (("cache-control", "no-cache"),)
    for _ in range(3):
        code, reason = await call(
            gateway, "DescribeRegistry", pb.DescribeRegistryRequest(), headers=fresh
        )
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
    assert breaker_state(gateway) == BREAKER_OPEN
    code, reason = await call(gateway, "DescribeRegistry", pb.DescribeRegistryRequest())
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "BREAKER_OPEN")


async def test_a_shared_cache_load_never_stalls_or_names_another_tenant(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    # One slot per tenant. payments' slow write holds its slot; a cache load it starts
    # belongs to nobody, so billing, waiting on the same load, is not refused for payments'
    # full share, and hears nothing of payments.
    gateway = await gateway_factory(config(proxy, max_concurrent_calls=4, max_tenant_share=0.25))
    proxy.fault = Fault(frozenset({"ecr:GetRegistryPolicy"}), delay_seconds=20)
    try:
        write = asyncio.ensure_future(
            call(
                gateway,
                "PutPolicyStatements",
                pb.PutPolicyStatementsRequest(statements_json="[]"),
                timeout=30,
            )
        )
        while proxy.count("ecr:GetRegistryPolicy") < 1:
            await asyncio.sleep(0.01)
        # payments starts a cache load of the replication configuration (fast on AWS) and
        # leaves; billing reads through the same key.
        await call(gateway, "DescribeRegistry", pb.DescribeRegistryRequest(), timeout=0.05)
        code, reason = await call(
            gateway,
            "GetReplicationRules",
            pb.GetReplicationRulesRequest(),
            key=BILLING_KEY,
            timeout=10,
        )
        assert (code, reason) == (grpc.StatusCode.OK, None)
    finally:
        proxy.released.set()
    assert (await write)[0] == grpc.StatusCode.OK


async def test_fresh_reads_draw_from_a_per_tenant_budget_on_by_default(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    raw = config(proxy)
    assert "rate_limit" not in raw  # the budget needs no rate_limit section
    raw["aws"].update(tenant_upstream_per_second=0.01, tenant_upstream_burst=3)
    gateway = await gateway_factory(raw)
    fresh = (("cache-control", "no-cache"),)
    request = pb.DescribeRegistryRequest()
    results = [await call(gateway, "DescribeRegistry", request, headers=fresh) for _ in range(6)]
    assert results[:3] == [(grpc.StatusCode.OK, None)] * 3
    assert results[3:] == [(grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_BUDGET_EXHAUSTED")] * 3
    assert proxy.count("ecr:DescribeRegistry") == 3  # the refused ones never reached AWS
    # Reads through the cache go on, and another tenant's budget is its own.
    assert await call(gateway, "DescribeRegistry", request) == (grpc.StatusCode.OK, None)
    assert await call(gateway, "DescribeRegistry", request, key=OTHER_KEY, headers=fresh) == (
        grpc.StatusCode.OK,
        None,
    )


async def test_failed_logins_are_limited_per_address_but_never_lock_out_a_valid_key(
    gateway_factory: GatewayFactory, proxy: CountingProxy, caplog: pytest.LogCaptureFixture
) -> None:
    raw = config(proxy)
    raw["auth"] = {"failures_per_second": 0.01, "failures_burst": 3}
    gateway = await gateway_factory(raw)
    request = pb.DescribeRegistryRequest()
    with caplog.at_level(logging.INFO, logger="registry_gateway"):
        results = [await call(gateway, "DescribeRegistry", request, key="guess") for _ in range(8)]
    assert results[:3] == [(grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")] * 3
    assert results[3:] == [(grpc.StatusCode.RESOURCE_EXHAUSTED, "AUTH_FAILURES_RATE_LIMITED")] * 5
    # Every failure counted; only those within the budget logged.
    counted = gateway.metrics.registry.get_sample_value(
        "registry_gateway_auth_failures_total", {"reason": "INVALID_CREDENTIALS"}
    )
    assert counted == 8
    failed_lines = [r for r in caplog.records if getattr(r, "tenant", "x") is None]
    assert len(failed_lines) == 3
    # The same address (every caller behind one proxy) with a valid key is served.
    assert await call(gateway, "DescribeRegistry", request) == (grpc.StatusCode.OK, None)
    assert await call(
        gateway, "GetReplicationRules", pb.GetReplicationRulesRequest(), key=BILLING_KEY
    ) == (grpc.StatusCode.OK, None)
    assert "guess" not in repr(results)


async def test_history_reads_draw_from_the_upstream_budget_and_spare_others(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    # The history is read whole from the store on every call (no cache): a tenant polling it
    # spends its own budget of calls past the cache, and another tenant's is untouched.
    raw = config(proxy)
    raw["aws"].update(tenant_upstream_per_second=0.01, tenant_upstream_burst=3)
    gateway = await gateway_factory(raw)
    history = pb.GetConfigurationHistoryRequest(resource=pb.HISTORY_RESOURCE_REPLICATION)
    results = [await call(gateway, "GetConfigurationHistory", history) for _ in range(5)]
    assert results[:3] == [(grpc.StatusCode.OK, None)] * 3
    assert results[3:] == [(grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_BUDGET_EXHAUSTED")] * 2
    # Cached reads are not past the cache: they stay free, for the poller and for others.
    assert await call(gateway, "DescribeRegistry", pb.DescribeRegistryRequest()) == (
        grpc.StatusCode.OK,
        None,
    )
    billing = await call(gateway, "GetConfigurationHistory", history, key=BILLING_KEY)
    assert billing[1] != "UPSTREAM_BUDGET_EXHAUSTED"


async def test_writes_draw_from_the_upstream_budget_too(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    # Every write reads AWS fresh under the lock (validate_only and a stale etag included)
    # before it can refuse: they spend the same per-tenant budget as no-cache reads.
    raw = config(proxy)
    raw["aws"].update(tenant_upstream_per_second=0.01, tenant_upstream_burst=4)
    gateway = await gateway_factory(raw)
    dry_run = pb.PutReplicationRulesRequest(rules=[rule("payments/api")], validate_only=True)
    stale = pb.PutPolicyStatementsRequest(statements_json="[]", etag="stale")
    described = proxy.count("ecr:DescribeRegistry")
    results = [
        await call(gateway, rpc, request)
        for rpc, request in [("PutReplicationRules", dry_run), ("PutPolicyStatements", stale)] * 5
    ]
    assert (
        results[:4]
        == [
            (grpc.StatusCode.OK, None),
            (grpc.StatusCode.ABORTED, "ETAG_MISMATCH"),
        ]
        * 2
    )
    assert set(results[4:]) == {(grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_BUDGET_EXHAUSTED")}
    assert proxy.count("ecr:DescribeRegistry") - described == 2  # the two dry runs, no more
    # billing's budget is its own.
    billing = pb.PutReplicationRulesRequest(rules=[rule("billing/api")], validate_only=True)
    assert await call(gateway, "PutReplicationRules", billing, key=BILLING_KEY) == (
        grpc.StatusCode.OK,
        None,
    )


async def test_one_tenant_s_queue_of_writes_cannot_push_another_past_its_deadline(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    raw = config(proxy)
    raw["server"]["max_writes_in_flight_per_tenant"] = 2
    gateway = await gateway_factory(raw)
    dry_run = pb.PutReplicationRulesRequest(rules=[rule("payments/api")], validate_only=True)
    proxy.fault = Fault(DESCRIBE, delay_seconds=0.3)  # each write's fresh read takes 0.3 s
    try:
        flood = [
            asyncio.ensure_future(call(gateway, "PutReplicationRules", dry_run, timeout=60))
            for _ in range(30)
        ]
        while proxy.count("ecr:DescribeRegistry") < 1:
            await asyncio.sleep(0.01)
        billing = pb.PutReplicationRulesRequest(rules=[rule("billing/api", to=EU)])
        # Behind at most payments' two writes (~0.6 s), not thirty (~9 s).
        assert await call(gateway, "PutReplicationRules", billing, key=BILLING_KEY, timeout=5) == (
            grpc.StatusCode.OK,
            None,
        )
        results = await asyncio.gather(*flood)
    finally:
        proxy.fault = None
    refused = [r for r in results if r != (grpc.StatusCode.OK, None)]
    assert set(refused) == {(grpc.StatusCode.RESOURCE_EXHAUSTED, "WRITES_IN_FLIGHT")}
    assert len(refused) == 28
