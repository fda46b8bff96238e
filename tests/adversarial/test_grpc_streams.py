"""Strangers and hostile tenants against the gRPC listener's call slots (issue 21, finding 4).

A gRPC call exists from its headers: grpc.aio counted it against `maximum_concurrent_rpcs`
then, while the gateway authenticated only once the request message had arrived. Streams
that send headers and never their message, opened by someone without credentials, held
every slot: tenants' reads and health on the main port answered RESOURCE_EXHAUSTED. Here
each such attack is made through real channels against a real gateway, and whoever makes
it is refused alone while everyone else is served.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.app.server import SERVICE_NAME, Gateway
from service.gen.v1 import registry_pb2 as pb
from tests.conftest import GatewayFactory, wait_until
from tests.support.helpers import KEY, OTHER_KEY, describe_status, metadata, rich_error

DESCRIBE = f"/{SERVICE_NAME}/DescribeRegistry"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
SERVING = health_pb2.HealthCheckResponse.SERVING


async def _never() -> AsyncIterator[bytes]:
    """A request stream that sends nothing: the call's headers go out, its message never."""
    await asyncio.Event().wait()
    yield b""  # pragma: no cover - never reached


async def _late(request: bytes, seconds: float) -> AsyncIterator[bytes]:
    """A request message that comes `seconds` after the headers."""
    await asyncio.sleep(seconds)
    yield request


def header_only(
    channel: grpc.aio.Channel,
    method: str,
    headers: Sequence[tuple[str, str]] = (),
    timeout: float = 60,
    requests: AsyncIterator[bytes] | None = None,
) -> Any:
    """A call on a unary method's path that sends its headers and then nothing (raw bytes,
    no serializer: the server cannot tell it from a unary client still sending). Any: the
    stubs' call types are generic in the request type, and this one sends none."""
    call: Any = channel.stream_unary(method)
    return call(requests or _never(), metadata=tuple(headers), timeout=timeout)


async def answered(calls: list[Any], timeout: float) -> list[Answer] | None:
    """What each call was answered within `timeout` seconds; None if some were not (those
    still open are cancelled)."""
    answers = [asyncio.ensure_future(outcome(call)) for call in calls]
    _, pending = await asyncio.wait(answers, timeout=timeout)
    for call in calls:
        call.cancel()
    await asyncio.wait(answers)
    return None if pending else [answer.result() for answer in answers]


Answer = tuple[grpc.StatusCode, str | None, dict[str, str]]


async def outcome(call: Any) -> Answer:
    """(code, ErrorInfo reason, ErrorInfo metadata) a finished call was answered with."""
    try:
        if isinstance(call, grpc.aio.StreamStreamCall):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        if exc.trailing_metadata() and dict(exc.trailing_metadata()).get("grpc-status-details-bin"):
            info = rich_error(exc).info
            return exc.code(), info.reason, dict(info.metadata)
        return exc.code(), None, {}
    return grpc.StatusCode.OK, None, {}


async def health_answer(gateway: Gateway) -> Answer:
    """How the main port answered one whole health check."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub: Any = health_pb2_grpc.HealthStub(ch)
        return await outcome(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10))


async def health_serving(gateway: Gateway) -> bool:
    return await health_status(gateway) == SERVING


async def health_status(gateway: Gateway) -> int | None:
    """The main port's health answer for the whole server, None when refused."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub: Any = health_pb2_grpc.HealthStub(ch)
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        except grpc.aio.AioRpcError:
            return None
    return int(response.status)


async def served(gateway: Gateway, key: str = KEY) -> bool:
    """Whether a tenant's read is answered OK now."""
    return await describe_status(gateway.port, key) == grpc.StatusCode.OK


def channels(gateway: Gateway, count: int) -> list[grpc.aio.Channel]:
    """`count` channels, each its own TCP connection (a local subchannel pool: channels with
    the same target and arguments otherwise share one)."""
    return [
        grpc.aio.insecure_channel(
            f"127.0.0.1:{gateway.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(count)
    ]


async def close(open_channels: list[grpc.aio.Channel]) -> None:
    await asyncio.gather(*(ch.close() for ch in open_channels))


async def test_strangers_streams_without_a_message_hold_no_slot(
    gateway_factory: GatewayFactory,
) -> None:
    """The finding, scaled down: 3 channels x 10 header-only calls without credentials
    against a server of 10 slots. Each is refused at its headers (it holds nothing), and
    while a stranger keeps opening more, a tenant's read and health are served."""
    gateway = await gateway_factory(max_concurrent_rpcs=10)
    attackers = channels(gateway, 3)
    try:
        wave = [header_only(ch, DESCRIBE) for ch in attackers for _ in range(10)]
        answers = await answered(wave, timeout=30)
        assert answers is not None, "strangers' calls still held after 30 s"
        for code, reason, _ in answers:
            # Refused at once; past the address's budget of failed logins, as that.
            assert (code, reason) in {
                (grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS"),
                (grpc.StatusCode.RESOURCE_EXHAUSTED, "AUTH_FAILURES_RATE_LIMITED"),
            }, (code, reason)

        # A stranger that keeps opening them meanwhile.
        stop = asyncio.Event()

        async def attack() -> None:
            while not stop.is_set():
                await answered(
                    [header_only(ch, DESCRIBE) for ch in attackers for _ in range(10)], 30
                )

        attacking = asyncio.ensure_future(attack())
        try:
            for _ in range(5):
                assert await describe_status(gateway.port) == grpc.StatusCode.OK
                assert await describe_status(gateway.port, OTHER_KEY) == grpc.StatusCode.OK
            assert await health_status(gateway) == SERVING
        finally:
            stop.set()
            await asyncio.wait_for(attacking, timeout=60)
    finally:
        await close(attackers)


async def test_a_tenant_s_message_that_does_not_arrive_in_time_is_cancelled(
    gateway_factory: GatewayFactory,
) -> None:
    """An authenticated caller that sends headers and no message, or its message late, is
    answered CANCELLED (REQUEST_MESSAGE_TIMEOUT: not DEADLINE_EXCEEDED, which pages) at the
    time-to-message limit, long before its own deadline, and its slot is given back."""
    gateway = await gateway_factory(message_timeout_seconds=1, max_calls_in_flight_per_tenant=2)
    request = pb.DescribeRegistryRequest().SerializeToString()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        silent = header_only(ch, DESCRIBE, metadata(), timeout=20)
        late = header_only(ch, DESCRIBE, metadata(), timeout=20, requests=_late(request, 8))
        for call in (silent, late):
            code, reason, info = await asyncio.wait_for(outcome(call), timeout=15)
            assert (code, reason) == (grpc.StatusCode.CANCELLED, "REQUEST_MESSAGE_TIMEOUT")
            assert info["limitSeconds"] == "1"
        # Both slots of the tenant's two are free again.
        on_time = header_only(ch, DESCRIBE, metadata(), timeout=20, requests=_late(request, 0))
        assert (await outcome(on_time))[0] == grpc.StatusCode.OK
        assert await describe_status(gateway.port) == grpc.StatusCode.OK
    assert gateway.call_slots.in_flight == 0


async def test_a_tenant_flooding_its_calls_is_refused_alone(
    gateway_factory: GatewayFactory,
) -> None:
    """A tenant holding many calls open (valid key, no message) fills only its own share:
    its further calls are refused naming its limit, another tenant is served; the server's
    cap on authenticated work is never reached by one tenant."""
    gateway = await gateway_factory(
        max_concurrent_rpcs=8, max_calls_in_flight_per_tenant=4, message_timeout_seconds=60
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        flood = [header_only(ch, DESCRIBE, metadata()) for _ in range(8)]
        try:
            refused = await wait_until(
                lambda: [c for c in flood if c.done()] if sum(c.done() for c in flood) >= 4 else [],
                timeout=30,
                what="the tenant's calls past its share to be refused",
            )
            assert len(refused) == 4
            for call in refused:
                code, reason, info = await outcome(call)
                assert (code, reason) == (
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "TENANT_CALLS_IN_FLIGHT",
                )
                assert info["tenant"] == "payments"
                assert info["limit"] == "4"
            # Another tenant is served while payments holds its four.
            for _ in range(3):
                assert await describe_status(gateway.port, OTHER_KEY) == grpc.StatusCode.OK
            # payments itself is refused, by its own limit.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as other:
                own = header_only(other, DESCRIBE, metadata(), requests=_late(b"", 0))
                assert (await outcome(own))[:2] == (
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "TENANT_CALLS_IN_FLIGHT",
                )
        finally:
            for call in flood:
                call.cancel()
    # Its calls cancelled, payments is served again (the server saw them end).
    await wait_until(
        lambda: served(gateway),
        timeout=30,
        what="payments to be served once its calls ended",
    )


async def test_strangers_health_and_reflection_streams_are_capped_per_address(
    gateway_factory: GatewayFactory,
) -> None:
    """Health and reflection need no credentials: a stranger's silent calls to them hold
    at most its address's share (refused past it, naming that limit), never the tenants'
    slots, and are cancelled at the time-to-message limit; then health answers again."""
    gateway = await gateway_factory(
        max_concurrent_rpcs=5,
        max_unauthenticated_calls_per_address=5,
        message_timeout_seconds=3,
    )
    attackers = channels(gateway, 2)
    try:
        open_reflection: Any = attackers[0].stream_stream(REFLECTION)
        reflection = open_reflection(_never())
        held = [header_only(attackers[i % 2], HEALTH_CHECK) for i in range(4)]
        # Once the five are held, a whole health check from the same address is refused,
        # naming the address's limit (before that it is answered, and its slot given back).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        answer = await health_answer(gateway)
        while answer[1] != "ADDRESS_CALLS_IN_FLIGHT" and loop.time() < deadline:
            await asyncio.sleep(0.05)
            answer = await health_answer(gateway)
        code, reason, info = answer
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "ADDRESS_CALLS_IN_FLIGHT")
        assert info["limit"] == "5"
        # The tenants' slots are not the stranger's: five tenant calls at once are served.
        statuses = await asyncio.gather(*(describe_status(gateway.port) for _ in range(5)))
        assert set(statuses) == {grpc.StatusCode.OK}
        # The silent calls end at the time-to-message limit, whatever deadline they sent.
        for call in (*held, reflection):
            code, reason, _ = await asyncio.wait_for(outcome(call), timeout=30)
            assert (code, reason) == (grpc.StatusCode.CANCELLED, "REQUEST_MESSAGE_TIMEOUT")
        # Their slots given back, health answers the same address again.
        await wait_until(
            lambda: health_serving(gateway), timeout=30, what="health to answer SERVING"
        )
    finally:
        await close(attackers)


async def test_one_connection_opens_at_most_its_streams(gateway_factory: GatewayFactory) -> None:
    """grpc.max_concurrent_streams: one connection's further calls wait in the client, so
    one connection cannot open more calls than that however many it asks for, and holds
    no more of the server's slots."""
    gateway = await gateway_factory(
        max_concurrent_rpcs=5, max_streams_per_connection=4, message_timeout_seconds=60
    )
    started = {
        "grpc_type": "unary",
        "grpc_service": SERVICE_NAME,
        "grpc_method": "DescribeRegistry",
    }

    def arrived() -> float:
        return gateway.metrics.registry.get_sample_value("grpc_server_started_total", started) or 0

    # Its own connection, not the one describe_status's channel would share.
    (ch,) = channels(gateway, 1)
    try:
        flood = [header_only(ch, DESCRIBE, metadata()) for _ in range(10)]
        try:
            # Given time to arrive (a wait that can only let a wrong server pass on a slow
            # machine, never fail a right one), ten streams would take the five slots.
            await asyncio.sleep(1)
            assert await describe_status(gateway.port, OTHER_KEY) == grpc.StatusCode.OK
            await wait_until(
                lambda: arrived() >= 5, timeout=30, what="four streams and one read to arrive"
            )
            await asyncio.sleep(1)
            assert arrived() == 5
            assert sum(call.done() for call in flood) == 0
        finally:
            for call in flood:
                call.cancel()
    finally:
        await ch.close()
