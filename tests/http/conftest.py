"""Fixtures of the HTTP listener's tests: gateways with `http.listen`, and one parametrized
fixture that gives a test each transport in turn (gRPC, then Connect over HTTP/JSON)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import httpx
import pytest

from service.app.server import Gateway
from tests.conftest import GatewayFactory
from tests.http.support import ConnectTransport, GrpcTransport, Transport
from tests.support.helpers import config_dict

Connect = Callable[[Gateway], Awaitable[Transport]]


def with_http(raw: dict[str, Any]) -> dict[str, Any]:
    """A config with the HTTP listener on a free port."""
    return {**raw, "http": {**raw.get("http", {}), "listen": "127.0.0.1:0"}}


def http_config(aws: str, **server: Any) -> dict[str, Any]:
    """tests.support.helpers.config_dict with the HTTP listener on a free port."""
    return with_http(config_dict(aws, **server))


@pytest.fixture(params=["grpc", "connect"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Connect]:
    """A transport to a gateway (started with `http.listen`): gRPC, then Connect."""
    closers: list[Callable[[], Awaitable[None]]] = []

    async def to(gateway: Gateway) -> Transport:
        if request.param == "grpc":
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
            closers.append(channel.close)
            return GrpcTransport(channel)
        assert gateway.http_port, "the gateway has no HTTP listener"
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}", timeout=30)
        closers.append(client.aclose)
        return ConnectTransport(client)

    yield to
    for close in closers:
        await close()


@pytest.fixture
async def http_gateway(gateway_factory: GatewayFactory, aws: str) -> Gateway:
    """The default test gateway (tenants `payments` and `readonly`) with HTTP on."""
    return await gateway_factory(http_config(aws))


@pytest.fixture
async def transport(connect: Connect, http_gateway: Gateway) -> Transport:
    """Each transport in turn, to the default test gateway."""
    return await connect(http_gateway)


@pytest.fixture
async def http(http_gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the default gateway's HTTP listener."""
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{http_gateway.http_port}", timeout=30
    ) as client:
        yield client
