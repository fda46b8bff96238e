"""A sick AWS, injected by a proxy between the gateway and moto (real HTTP): each fault
gets a defined status, cached reads keep being served, nothing is written twice or half,
and the gateway recovers by itself."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from ecr.registry.v1 import registry_pb2 as pb
from ecr.registry.v1 import registry_pb2_grpc as pb_grpc
from moto.ecr.models import ecr_backends

from service.app.server import Gateway
from tests.aws_proxy import CountingProxy, Fault, ecr_error
from tests.conftest import GatewayFactory
from tests.helpers import ACCOUNT, POLICY, config_dict, metadata, rich_error

DESCRIBE = frozenset({"ecr:DescribeRegistry"})
PUT_POLICY = frozenset({"ecr:PutRegistryPolicy"})


def faulty_config(proxy: CountingProxy, **aws: Any) -> dict[str, Any]:
    raw = config_dict(proxy.url)
    raw["aws"].update({"breaker_threshold": 3, "breaker_open_seconds": 0.5, **aws})
    raw["cache"] = {"ttl_seconds": 0.05, "max_stale_seconds": 60}
    return raw


async def call(gateway: Gateway, rpc: str, request: Any, timeout: float = 10) -> Any:
    """(status, reason, x-cache) of one call."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        invocation = getattr(stub, rpc)(request, metadata=metadata(), timeout=timeout)
        try:
            await invocation
            reason = None
        except grpc.aio.AioRpcError as exc:
            reason = rich_error(exc).info.reason if exc.trailing_metadata() else None
        trailers = dict(await invocation.trailing_metadata() or ())
        return await invocation.code(), reason, trailers.get("x-cache")


def describe(gateway: Gateway) -> Any:
    return call(gateway, "DescribeRegistry", pb.DescribeRegistryRequest())


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault(DESCRIBE, status=500), "UPSTREAM_UNAVAILABLE"),
        (
            Fault(DESCRIBE, status=400, body=ecr_error("ThrottlingException")),
            "UPSTREAM_UNAVAILABLE",
        ),
        (Fault(DESCRIBE, status=500, body=ecr_error("ServerException")), "UPSTREAM_UNAVAILABLE"),
        (Fault(DESCRIBE, reset=True), "UPSTREAM_UNREACHABLE"),
    ],
    ids=["http-500", "throttling", "server-exception", "connection-reset"],
)
async def test_fault_is_unavailable_cold_and_stale_when_cached(
    gateway_factory: GatewayFactory, proxy: CountingProxy, fault: Fault, reason: str
) -> None:
    gateway = await gateway_factory(faulty_config(proxy))
    proxy.fault = fault
    code, got_reason, _ = await describe(gateway)
    assert (code, got_reason) == (grpc.StatusCode.UNAVAILABLE, reason)
    proxy.fault = None
    assert (await describe(gateway))[0] == grpc.StatusCode.OK  # recovered by itself
    await asyncio.sleep(0.06)  # past the 50 ms TTL
    proxy.fault = fault
    code, _, outcome = await describe(gateway)
    assert (code, outcome) == (grpc.StatusCode.OK, "stale")


async def test_breaker_opens_fails_fast_then_a_probe_closes_it(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    gateway = await gateway_factory(faulty_config(proxy))
    proxy.fault = Fault(DESCRIBE, status=500, body=ecr_error("ServerException"))
    for _ in range(3):
        assert (await describe(gateway))[1] == "UPSTREAM_UNAVAILABLE"
    sent = proxy.count("ecr:DescribeRegistry")
    code, reason, _ = await describe(gateway)
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "BREAKER_OPEN")
    assert proxy.count("ecr:DescribeRegistry") == sent  # failed fast: AWS was not called
    # Writes fail fast too, and write nothing.
    code, reason, _ = await call(
        gateway, "PutRegistryPolicy", pb.PutRegistryPolicyRequest(policy_text=POLICY)
    )
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "BREAKER_OPEN")
    assert ecr_backends[ACCOUNT]["us-east-1"].registry_policy is None
    proxy.fault = None
    await asyncio.sleep(0.55)  # the breaker's open period is the behaviour under test
    assert (await describe(gateway))[0] == grpc.StatusCode.OK  # the probe closed it
    assert (await describe(gateway))[0] == grpc.StatusCode.OK


async def test_bulkhead_full_is_unavailable(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    gateway = await gateway_factory(faulty_config(proxy, max_concurrent_calls=1))
    assert (await describe(gateway))[0] == grpc.StatusCode.OK  # the client exists now
    proxy.fault = Fault(DESCRIBE, delay_seconds=10)
    try:
        await asyncio.sleep(0.06)  # let the cached describe expire
        # A load that holds the only slot (cache loads belong to no caller, so it stays).
        slow = asyncio.ensure_future(
            call(gateway, "DescribeRegistry", pb.DescribeRegistryRequest(), 20)
        )
        while proxy.count("ecr:DescribeRegistry") < 2:
            await asyncio.sleep(0.01)
        # A write's own AWS calls wait for a slot until just before its deadline.
        code, reason, _ = await call(
            gateway, "PutRegistryPolicy", pb.PutRegistryPolicyRequest(policy_text=POLICY), 0.5
        )
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "BULKHEAD_FULL")
        assert proxy.count("ecr:PutRegistryPolicy") == 0
    finally:
        proxy.released.set()
    assert (await slow)[0] == grpc.StatusCode.OK


async def test_slow_write_past_the_deadline_is_written_once_and_not_half(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    gateway = await gateway_factory(faulty_config(proxy))
    assert (await describe(gateway))[0] == grpc.StatusCode.OK  # clients made, STS asked
    proxy.fault = Fault(PUT_POLICY, delay_seconds=2.0)
    code, reason, _ = await call(
        gateway, "PutRegistryPolicy", pb.PutRegistryPolicyRequest(policy_text=POLICY), timeout=1.0
    )
    # Answered by grpc's own deadline or the gateway's (whichever fires first).
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and reason in (None, "DEADLINE_EXCEEDED")
    # The write was sent once, finishes on its own, and is then visible in full.
    proxy.fault = None
    for _ in range(100):
        if ecr_backends[ACCOUNT]["us-east-1"].registry_policy is not None:
            break
        await asyncio.sleep(0.05)
    assert ecr_backends[ACCOUNT]["us-east-1"].registry_policy == POLICY
    assert proxy.count("ecr:PutRegistryPolicy") == 1
    code, _, outcome = await call(gateway, "GetRegistryPolicy", pb.GetRegistryPolicyRequest())
    assert code == grpc.StatusCode.OK and outcome == "miss"  # the key was invalidated


async def test_slow_read_past_the_deadline(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    gateway = await gateway_factory(faulty_config(proxy))
    proxy.fault = Fault(DESCRIBE, delay_seconds=5)
    try:
        code, _, _ = await call(gateway, "DescribeRegistry", pb.DescribeRegistryRequest(), 0.3)
    finally:
        proxy.released.set()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_not_ready_until_some_aws_account_answers(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    proxy.stop()  # AWS unreachable when the gateway starts
    gateway = await gateway_factory(faulty_config(proxy))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        health: Any = health_pb2_grpc.HealthStub(ch)
        live = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert live.status == health_pb2.HealthCheckResponse.SERVING  # alive, not ready
        watch = health.Watch(
            health_pb2.HealthCheckRequest(service="ecr.registry.v1.RegistryConfigService")
        )
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        proxy.start()  # AWS answers: ready without a restart
        update = await asyncio.wait_for(watch.read(), timeout=20)
        assert update.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
