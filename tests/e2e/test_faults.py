"""A sick AWS, injected by a proxy between the gateway and moto (real HTTP): each fault
gets a defined status, cached reads keep being served, nothing is written twice or half,
and the gateway recovers by itself."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from moto.ecr.models import ecr_backends

from service.app.server import Gateway
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory, wait_until
from tests.support.aws_proxy import CountingProxy, Fault, ecr_error
from tests.support.helpers import ACCOUNT, POLICY, config_dict, metadata, rich_error

DESCRIBE = frozenset({"ecr:DescribeRegistry"})
PUT_POLICY = frozenset({"ecr:PutRegistryPolicy"})
# Long enough for the calls a test makes while the breaker must stay open, however loaded
# the machine; the test then waits (polling) for it to let a probe through.
BREAKER_OPEN_SECONDS = 4.0
# A held AWS answer is let go by `proxy.released`, never by this (bounded so a failing test
# cannot hold a proxy thread for ever).
HELD_SECONDS = 60.0


def faulty_config(proxy: CountingProxy, **aws: Any) -> dict[str, Any]:
    raw = config_dict(proxy.url)
    # Tests that need the breaker to close again pass a shorter open period.
    raw["aws"].update({"breaker_threshold": 3, "breaker_open_seconds": 60, **aws})
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
    proxy.fault = fault

    async def past_the_ttl() -> tuple[Any, ...] | None:
        # Hits until the 50 ms TTL has passed; then the load meets the fault.
        answer = await describe(gateway)
        return None if answer[2] == "hit" else answer

    code, _, outcome = await wait_until(past_the_ttl, what="the cached describe to expire")
    assert (code, outcome) == (grpc.StatusCode.OK, "stale")


async def test_breaker_opens_fails_fast_then_a_probe_closes_it(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    gateway = await gateway_factory(faulty_config(proxy, breaker_open_seconds=BREAKER_OPEN_SECONDS))

    def breaker_state() -> float | None:
        return gateway.metrics.registry.get_sample_value(
            "registry_gateway_breaker_state", {"circuit": f"{ACCOUNT}:us-east-1"}
        )

    # Closed, and said so from the circuit's first call (a series of 0, not none). The
    # policy, not DescribeRegistry: a cached configuration would be served stale below.
    code, _, _ = await call(gateway, "GetRegistryPolicy", pb.GetRegistryPolicyRequest())
    assert code == grpc.StatusCode.NOT_FOUND
    assert breaker_state() == 0.0
    proxy.fault = Fault(DESCRIBE, status=500, body=ecr_error("ServerException"))
    opening = time.time()  # the breaker opens after this (purgatory's clock is time.time)
    for _ in range(3):
        assert (await describe(gateway))[1] == "UPSTREAM_UNAVAILABLE"
    assert breaker_state() == 2.0  # open
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
    assert breaker_state() == 2.0
    proxy.fault = None

    async def probed() -> bool:
        # Fails fast until the open period is over; then one probe goes to AWS.
        code, reason, _ = await describe(gateway)
        assert (code, reason) in {
            (grpc.StatusCode.OK, None),
            (grpc.StatusCode.UNAVAILABLE, "BREAKER_OPEN"),
        }
        return bool(code == grpc.StatusCode.OK)

    await wait_until(
        probed, timeout=BREAKER_OPEN_SECONDS + 30, interval=0.1, what="the breaker's probe"
    )
    assert time.time() - opening >= BREAKER_OPEN_SECONDS  # it stayed open its full period
    assert proxy.count("ecr:DescribeRegistry") == sent + 1  # the probe, and no other call
    assert breaker_state() == 0.0  # the probe closed it
    assert (await describe(gateway))[0] == grpc.StatusCode.OK


async def test_bulkhead_full_is_unavailable(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    # The write gives up waiting for a slot 4 s before its 6 s deadline: a wide margin
    # between the gateway's answer and the caller's own deadline. The read timeout is long so
    # that the held load keeps the slot however slowly the test runs.
    gateway = await gateway_factory(
        faulty_config(
            proxy, max_concurrent_calls=1, bulkhead_margin_seconds=4, read_timeout_seconds=60
        )
    )
    assert (await describe(gateway))[0] == grpc.StatusCode.OK  # the client exists now
    proxy.fault = Fault(DESCRIBE, delay_seconds=HELD_SECONDS)
    try:
        await asyncio.sleep(0.1)  # past the 50 ms TTL (a lower bound: later is as good)
        # A load that holds the only slot (cache loads belong to no caller, so it stays).
        slow = asyncio.ensure_future(
            call(gateway, "DescribeRegistry", pb.DescribeRegistryRequest(), 60)
        )
        await wait_until(
            lambda: proxy.count("ecr:DescribeRegistry") >= 2, what="the load to reach AWS"
        )
        # A write's own AWS calls wait for a slot until the margin before its deadline.
        code, reason, _ = await call(
            gateway, "PutRegistryPolicy", pb.PutRegistryPolicyRequest(policy_text=POLICY), 6
        )
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "BULKHEAD_FULL")
        assert proxy.count("ecr:PutRegistryPolicy") == 0
        assert not slow.done()  # the slot was held all along
    finally:
        proxy.released.set()
    assert (await slow)[0] == grpc.StatusCode.OK


async def test_slow_write_past_the_deadline_is_written_once_and_not_half(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    # A long read timeout: the AWS write is held (by the proxy) past the caller's deadline,
    # for as long as the test takes, and must not be cut off by botocore meanwhile.
    gateway = await gateway_factory(faulty_config(proxy, read_timeout_seconds=60))
    assert (await describe(gateway))[0] == grpc.StatusCode.OK  # clients made, STS asked
    proxy.fault = Fault(PUT_POLICY, delay_seconds=HELD_SECONDS)
    try:
        # The deadline leaves the steps before the AWS write (lock, fresh read) 4 s.
        code, reason, _ = await call(
            gateway, "PutRegistryPolicy", pb.PutRegistryPolicyRequest(policy_text=POLICY), 4.0
        )
        # Answered by grpc's own deadline or the gateway's (whichever fires first).
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and reason in (None, "DEADLINE_EXCEEDED")
        # Sent once before the deadline, and still held: nothing of it is applied yet.
        assert proxy.count("ecr:PutRegistryPolicy") == 1
        assert ecr_backends[ACCOUNT]["us-east-1"].registry_policy is None
    finally:
        proxy.fault = None
        proxy.released.set()  # AWS answers now
    # The write finishes on its own, and is then visible in full. Its end is the end of its
    # call (reported once its handler returns), not AWS holding the policy: the put's answer,
    # read-back, write-through and record come after moto applies it (settlement.py `_sent`),
    # and only then does the caller's leaving reach `_writing`, which forgets the key
    # (operations.py). A read before that is concurrent with the write and may be answered
    # the state the write read fresh and wrote through before its put (here a "no policy"
    # entry, fresh for the negative TTL): a write not finished may not have taken effect.
    await asyncio.wait_for(gateway.pipeline.idle(), timeout=30)
    assert ecr_backends[ACCOUNT]["us-east-1"].registry_policy == POLICY
    assert proxy.count("ecr:PutRegistryPolicy") == 1
    code, _, outcome = await call(gateway, "GetRegistryPolicy", pb.GetRegistryPolicyRequest())
    assert code == grpc.StatusCode.OK and outcome == "miss"  # the key was invalidated


async def test_slow_read_past_the_deadline(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    gateway = await gateway_factory(faulty_config(proxy))
    proxy.fault = Fault(DESCRIBE, delay_seconds=HELD_SECONDS)
    try:
        # AWS answers only once released: nothing but the deadline can end this call.
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
        # The gateway retries with backoff (1, 2, 4, 8, 16 s): bounded well past a few.
        update = await asyncio.wait_for(watch.read(), timeout=60)
        assert update.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
