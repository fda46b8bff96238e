"""The server's own behaviour: health, reflection, graceful shutdown on SIGTERM, binding."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.app.server import BindError, Gateway
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import Gate, GatewayFactory
from tests.support.helpers import metadata

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Long enough for the round trips the test makes during the drain, however loaded the
# machine; the test then waits for stop() to begin (an event), not for a time.
DRAIN_SECONDS = 4.0


async def entered(gate: Gate) -> None:
    """Wait (in a thread: moto's handler sets it from its own) until the gate holds a call."""
    held = await asyncio.get_running_loop().run_in_executor(None, gate.entered.wait, 30)
    assert held, "the call never reached moto"


async def test_health_answers_serving_without_credentials(channel: grpc.aio.Channel) -> None:
    health: Any = health_pb2_grpc.HealthStub(channel)  # typeshed types it for sync channels
    for service in ("", "ecr.registry.v1.RegistryConfigService"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == SERVING


async def list_services(channel: grpc.aio.Channel) -> list[str]:
    reflection: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
    call = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    async for response in call:
        return [s.name for s in response.list_services_response.service]
    raise AssertionError("no reflection response")


async def test_reflection_lists_the_service(channel: grpc.aio.Channel) -> None:
    assert "ecr.registry.v1.RegistryConfigService" in await list_services(channel)


async def test_reflection_can_be_switched_off(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory(reflection=False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        reflection: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
        # No request message, only the half-close: the server's UNIMPLEMENTED comes back as
        # it is. With a message, the server may end the stream before the client's send of
        # it completes, and the client then reports its own failed send ("Internal error from
        # Core", INTERNAL), as seen once in CI.
        call = reflection.ServerReflectionInfo(iter([]))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_taken_port_is_refused(gateway: Gateway) -> None:
    second = Gateway(gateway.config)
    with pytest.raises(BindError, match="in use"):
        await second.start(f"127.0.0.1:{gateway.port}")
    await second.stop_now()


async def test_sigterm_drains_then_lets_calls_in_flight_finish(
    gateway_factory: GatewayFactory, slow_describe: Gate
) -> None:
    gateway = await gateway_factory(drain_seconds=DRAIN_SECONDS, grace_seconds=30)
    stop_began = asyncio.Event()
    real_stop = gateway.server.stop

    async def observed_stop(grace: float | None) -> None:
        stop_began.set()
        await real_stop(grace)

    gateway.server.stop = observed_stop  # type: ignore[method-assign]
    running = asyncio.ensure_future(gateway.run_until_signal())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        health: Any = health_pb2_grpc.HealthStub(channel)  # typeshed types it for sync channels
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == SERVING

        # A call in flight: moto holds it until the gate opens.
        in_flight = asyncio.ensure_future(
            stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata(), timeout=45)
        )
        await entered(slow_describe)

        os.kill(os.getpid(), signal.SIGTERM)
        assert (await watch.read()).status == NOT_SERVING
        watch.cancel()

        # Still serving during the drain: health answers NOT_SERVING, new calls reach AWS.
        check = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert check.status == NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetRegistryPolicy(pb.GetRegistryPolicyRequest(), metadata=metadata())
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # answered by AWS, not refused
        assert not stop_began.is_set()

        # Once stop(grace) has begun, the call in flight still completes.
        await asyncio.wait_for(stop_began.wait(), timeout=DRAIN_SECONDS + 30)
        slow_describe.opened.set()
        response = await in_flight
        assert response.registry_id
    await asyncio.wait_for(running, timeout=30)
    assert running.exception() is None


async def test_calls_over_max_concurrent_rpcs_are_resource_exhausted(
    gateway_factory: GatewayFactory, slow_describe: Gate
) -> None:
    gateway = await gateway_factory(max_concurrent_rpcs=1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        held = asyncio.ensure_future(
            stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata(), timeout=20)
        )
        await entered(slow_describe)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetRegistryPolicy(pb.GetRegistryPolicyRequest(), metadata=metadata())
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        slow_describe.opened.set()
        assert (await held).registry_id


async def test_health_only_listener_for_probes(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory(health_listen="127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.health_port}") as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        response = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert response.status == SERVING
        # Only health: the API is not reachable through the probe port.
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
