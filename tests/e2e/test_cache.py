"""The read cache through the real server, with AWS calls counted by a proxy in front of moto."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from service.app.server import Gateway
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory, wait_until
from tests.support.aws_proxy import CountingProxy
from tests.support.helpers import (
    ACCOUNT,
    KEY,
    OTHER_ACCOUNT,
    OTHER_KEY,
    POLICY,
    config_dict,
    metadata,
    rich_error,
)

DESCRIBE = "ecr:DescribeRegistry"
GET_POLICY = "ecr:GetRegistryPolicy"


def cached_config(proxy: CountingProxy, **cache: Any) -> dict[str, Any]:
    raw = config_dict(proxy.url)
    raw["cache"] = {"ttl_seconds": 30, "negative_ttl_seconds": 30, **cache}
    return raw


async def read(
    gateway: Gateway, rpc: str = "DescribeRegistry", md: Any = None
) -> tuple[grpc.StatusCode, str | None, Any]:
    """(status, x-cache trailer, response) of one read."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        call = getattr(stub, rpc)(getattr(pb, f"{rpc}Request")(), metadata=md or metadata())
        try:
            response = await call
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError:
            response, code = None, await call.code()
        trailers = dict(await call.trailing_metadata() or ())
    return code, trailers.get("x-cache"), response


async def test_cold_storm_makes_one_aws_call(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    raw = cached_config(proxy)
    # 500 calls of one tenant at once on one connection: past the defaults of streams per
    # connection and calls in flight per tenant (100 each, tests/adversarial/
    # test_grpc_streams.py), which this test of single flight is not about.
    raw["server"] = {**raw.get("server", {}), "max_streams_per_connection": 1000}
    raw["server"]["max_calls_in_flight_per_tenant"] = 1000
    gateway = await gateway_factory(raw)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        calls = [
            stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata(), timeout=30)
            for _ in range(500)
        ]
        responses = await asyncio.gather(*calls)
        outcomes = [dict(await c.trailing_metadata())["x-cache"] for c in calls]
    assert {r.registry_id for r in responses} == {ACCOUNT}
    assert proxy.count(DESCRIBE) == 1
    # The coalesced callers waited for the one load: all misses, none a separate call.
    assert set(outcomes) <= {"miss", "hit"} and outcomes.count("miss") >= 1


async def test_hit_after_miss(gateway_factory: GatewayFactory, proxy: CountingProxy) -> None:
    gateway = await gateway_factory(cached_config(proxy))  # a 30 s TTL: the hit is certain
    assert (await read(gateway))[1] == "miss"
    assert (await read(gateway))[1] == "hit"
    assert proxy.count(DESCRIBE) == 1


async def test_miss_after_ttl_expiry(gateway_factory: GatewayFactory, proxy: CountingProxy) -> None:
    ttl = 0.5
    gateway = await gateway_factory(cached_config(proxy, ttl_seconds=ttl))
    loaded = time.time()  # the entry is loaded after this (the cache's clock is time.time)
    assert (await read(gateway))[1] == "miss"

    async def expired() -> bool:
        # Every read before the TTL has passed is a hit, answered without AWS.
        outcome = (await read(gateway))[1]
        assert outcome in ("hit", "miss")
        return outcome == "miss"

    await wait_until(expired, timeout=ttl + 20, what="the entry to expire")
    # Not before the TTL (jitter takes off at most 10%): a lower bound, safe on a slow machine.
    assert time.time() - loaded >= 0.9 * ttl
    assert proxy.count(DESCRIBE) == 2


async def test_no_cache_forces_a_fresh_read(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    gateway = await gateway_factory(cached_config(proxy))
    await read(gateway)
    _, outcome, _ = await read(gateway, md=(*metadata(), ("cache-control", "no-cache")))
    assert outcome == "miss"
    assert proxy.count(DESCRIBE) == 2


async def test_no_policy_is_cached_as_not_found(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    gateway = await gateway_factory(cached_config(proxy))
    first = await read(gateway, "GetRegistryPolicy")
    second = await read(gateway, "GetRegistryPolicy")
    assert (first[0], first[1]) == (grpc.StatusCode.NOT_FOUND, "miss")
    assert (second[0], second[1]) == (grpc.StatusCode.NOT_FOUND, "hit")
    assert proxy.count(GET_POLICY) == 1


async def test_read_after_write_is_served_from_the_write(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    gateway = await gateway_factory(cached_config(proxy))
    assert (await read(gateway, "GetRegistryPolicy"))[0] == grpc.StatusCode.NOT_FOUND
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        put = await stub.PutRegistryPolicy(
            pb.PutRegistryPolicyRequest(policy_text=POLICY), metadata=metadata()
        )
    reads_before = proxy.count(GET_POLICY)
    code, outcome, response = await read(gateway, "GetRegistryPolicy")
    assert (code, outcome) == (grpc.StatusCode.OK, "hit")
    assert response.policy_text == POLICY and response.etag == put.etag
    assert proxy.count(GET_POLICY) == reads_before  # no AWS call for the read


async def test_stale_if_error_then_unavailable_then_recovery(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    max_stale = 4.0  # the stale reads below have this long, however slow the machine
    raw = cached_config(proxy, ttl_seconds=0.1, max_stale_seconds=max_stale)
    # The polls below fail against AWS many times: the breaker must not open meanwhile (it
    # would still be open, for its 30 s, when AWS comes back).
    raw["aws"]["breaker_threshold"] = 1000
    gateway = await gateway_factory(raw)
    assert (await read(gateway))[1] == "miss"
    proxy.stop()  # AWS unreachable from here on
    try:

        async def past_the_ttl() -> Any:
            answer = await read(gateway)
            return None if answer[1] == "hit" else answer

        code, outcome, response = await wait_until(past_the_ttl, what="the TTL to pass")
        assert (code, outcome) == (grpc.StatusCode.OK, "stale")
        assert response.registry_id == ACCOUNT
        # Writes fail cleanly while AWS is away.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
            stub = pb_grpc.RegistryConfigServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.PutRegistryPolicy(
                    pb.PutRegistryPolicyRequest(policy_text=POLICY), metadata=metadata()
                )
        assert rich_error(caught.value).code == grpc.StatusCode.UNAVAILABLE

        async def past_max_stale() -> bool:
            code, outcome, _ = await read(gateway)
            assert (code, outcome) in {
                (grpc.StatusCode.OK, "stale"),
                (grpc.StatusCode.UNAVAILABLE, None),
            }
            return code == grpc.StatusCode.UNAVAILABLE

        await wait_until(
            past_max_stale, timeout=max_stale + 20, interval=0.1, what="max-stale to pass"
        )
    finally:
        proxy.start()  # AWS is back, on the same address
    code, outcome, _ = await read(gateway)
    assert (code, outcome) == (grpc.StatusCode.OK, "miss")
    assert (await read(gateway, "GetRegistryPolicy"))[0] == grpc.StatusCode.NOT_FOUND


async def test_refused_reads_make_no_aws_call(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    gateway = await gateway_factory(cached_config(proxy))
    before = sum(proxy.counts.values())  # what starting the gateway asked (STS)

    async def refused(key: str, **target: str) -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
            stub = pb_grpc.RegistryConfigServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.DescribeRegistry(
                    pb.DescribeRegistryRequest(**target), metadata=metadata(key)
                )
        return caught.value.code()

    # Cold cache: had any of these passed authorization, it would have gone to AWS.
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert await refused("not-a-key") == grpc.StatusCode.UNAUTHENTICATED
    assert await refused(OTHER_KEY, region="eu-west-1") == denied  # readonly: us-east-1 only
    assert await refused(OTHER_KEY, registry_id=OTHER_ACCOUNT) == denied
    assert await refused(KEY, registry_id=OTHER_ACCOUNT) == denied  # not a payments registry
    assert sum(proxy.counts.values()) == before, proxy.counts
    # The proxy is in the path: an allowed read does reach AWS through it.
    assert (await read(gateway))[0] == grpc.StatusCode.OK
    assert proxy.count(DESCRIBE) == 1


async def test_authorization_runs_before_the_cache(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    gateway = await gateway_factory(cached_config(proxy))
    assert (await read(gateway))[0] == grpc.StatusCode.OK
    code, outcome, _ = await read(gateway, md=(("authorization", "Bearer nobody"),))
    assert code == grpc.StatusCode.UNAUTHENTICATED and outcome is None
