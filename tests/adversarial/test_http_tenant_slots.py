"""A tenant's HTTP requests count against its own calls in flight, as its gRPC calls do.

The HTTP listener counts requests in flight against `server.max_concurrent_rpcs`; a request
is in flight from its head until its answer, so an authenticated tenant sending heads whose
bodies never finish held one slot each (for up to `http_body_timeout_seconds`, re-opened at
will) and every other tenant's HTTP call answered 503 (hostile review of issue 21). Each call
now also takes one of its tenant's slots (service/pipeline/slots.py), shared with gRPC: the
flooding tenant is refused alone, naming its own limit.
"""

from __future__ import annotations

import asyncio
import socket

import httpx

from tests.conftest import GatewayFactory
from tests.http.conftest import http_config
from tests.http.support import SERVICE
from tests.support.helpers import KEY, OTHER_KEY


def _trickling_request(port: int) -> socket.socket:
    """An authenticated head promising 100 bytes of body, and only the first sent."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        (
            f"POST /{SERVICE}/DescribeRegistry HTTP/1.1\r\nhost: g\r\n"
            f"authorization: Bearer {KEY}\r\ncontent-type: application/json\r\n"
            "content-length: 100\r\n\r\n{"
        ).encode()
    )
    return sock


async def test_a_tenant_with_unfinished_bodies_holds_only_its_own_slots(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    raw = http_config(aws, max_concurrent_rpcs=10, max_calls_in_flight_per_tenant=3)
    gateway = await gateway_factory(raw)
    assert gateway.http_port
    socks = [_trickling_request(gateway.http_port) for _ in range(10)]
    try:
        # The heads are read and the slots taken (or refused) as soon as they arrive.
        await asyncio.sleep(1.0)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{gateway.http_port}", timeout=10
        ) as client:
            bystander = await client.post(
                f"/{SERVICE}/DescribeRegistry",
                content=b"{}",
                headers={
                    "authorization": f"Bearer {OTHER_KEY}",
                    "content-type": "application/json",
                },
            )
            assert bystander.status_code == 200, bystander.text
            # The flooder itself is refused, naming its own limit.
            own = await client.post(
                f"/{SERVICE}/DescribeRegistry",
                content=b"{}",
                headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
            )
        assert own.status_code == 429, own.text
        body = own.json()
        assert body["code"] == "resource_exhausted"
        assert "TENANT_CALLS_IN_FLIGHT" in own.text and "payments" in body["message"]
    finally:
        for sock in socks:
            sock.close()
