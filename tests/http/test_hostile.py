"""Hostile callers over HTTP get what they get over gRPC (tests/adversarial/): garbage
bodies, huge and deeply nested JSON, wrong content types, header tricks. Each is a clear
Connect error (never a 500), nothing is parsed before authentication, and AWS is left
exactly as it was."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.app.server import Gateway
from service.http import codec
from service.http.codec import JSON_EXPANSION, transport_limit
from service.rpc.request_limits import max_request_bytes
from tests.conftest import GatewayFactory
from tests.http.conftest import http_config
from tests.http.support import SERVICE, connect_answer
from tests.support.helpers import KEY, POLICY
from tests.support.moto_writes import MotoWrites, behave_like_ecr, count_writes

AUTH = {"authorization": f"Bearer {KEY}"}
JSON = {"content-type": "application/json"}


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> MotoWrites:
    behave_like_ecr(monkeypatch)
    return count_writes(monkeypatch)


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the bodies the JSON and binary codecs were asked to parse."""
    seen: list[int] = []
    for name in ("decode_json", "decode_binary"):
        original = getattr(codec, name)

        def counted(data: bytes, cls: Any, limit: int, _original: Any = original) -> Any:
            seen.append(len(data))
            return _original(data, cls, limit)

        monkeypatch.setattr(codec, name, counted)
    return seen


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory, aws: str, writes: MotoWrites) -> Gateway:
    return await gateway_factory(http_config(aws))


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gateway.http_port}", timeout=30
    ) as client:
        yield client


def error(reply: httpx.Response) -> dict[str, Any]:
    """The Connect error JSON of a reply, checked to carry the gateway's ErrorInfo with the
    request id of the `x-request-id` header, and the HTTP status of its code."""
    answer = connect_answer("DescribeRegistry", reply)
    assert answer.info.metadata["requestId"] == reply.headers["x-request-id"]
    body: dict[str, Any] = json.loads(reply.text)
    body["reason"] = answer.info.reason
    return body


async def post(
    http: httpx.AsyncClient, rpc: str, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await http.post(f"/{SERVICE}/{rpc}", content=body, headers={**JSON, **(headers or {})})


@pytest.mark.parametrize("content_type", ["application/json", "application/proto"])
async def test_garbage_bodies_are_invalid_argument(
    http: httpx.AsyncClient, writes: MotoWrites, aws_state: Any, content_type: str
) -> None:
    before = aws_state()
    for size in (1, 100, 10_000):
        reply = await post(
            http,
            "PutRegistryPolicy",
            os.urandom(size) + b"\xff",
            {**AUTH, "content-type": content_type},
        )
        assert reply.status_code == 400, reply.text
        found = error(reply)
        assert found["code"] == "invalid_argument"
        assert found["reason"] in ("UNDECODABLE_REQUEST", "REQUEST_TOO_LARGE")
    assert writes.total == 0 and aws_state() == before


async def test_a_stranger_s_body_is_never_parsed(
    http: httpx.AsyncClient, decoded: list[int], aws_state: Any
) -> None:
    before = aws_state()
    body = b"[" * 1_000_000
    for headers in ({}, {"authorization": "Bearer not-a-key"}):
        reply = await post(http, "PutReplicationConfiguration", body, headers)
        assert reply.status_code == 401 and error(reply)["code"] == "unauthenticated"
    assert decoded == []  # refused before connectrpc read the body
    assert aws_state() == before


@pytest.mark.parametrize("rpc", ["DescribeRegistry", "PutRegistryPolicy", "GetReplicationRules"])
async def test_a_tenant_s_oversized_json_is_refused_unread(
    http: httpx.AsyncClient, writes: MotoWrites, rpc: str
) -> None:
    limit = max_request_bytes(rpc) * JSON_EXPANSION
    body = b'{"etag": "' + b"a" * limit + b'"}'
    reply = await post(http, rpc, body, AUTH)
    assert reply.status_code == 400, reply.text
    found = error(reply)
    assert found["code"] == "invalid_argument"
    assert f"the largest valid {rpc} request is {limit} bytes" in found["message"]
    assert writes.total == 0


async def test_megabytes_past_the_transport_limit_are_not_read(
    http: httpx.AsyncClient, gateway: Gateway, decoded: list[int], writes: MotoWrites
) -> None:
    limit = transport_limit(gateway.config.server.max_message_bytes)
    reply = await post(http, "PutReplicationConfiguration", b" " * (limit + 1), AUTH)
    assert reply.status_code == 400
    found = error(reply)
    assert found["reason"] == "REQUEST_TOO_LARGE" and str(limit) in found["message"]
    assert decoded == [] and writes.total == 0


@pytest.mark.parametrize(
    "body",
    [
        b'{"replicationConfiguration": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
        b'{"replicationConfiguration": ' + b'{"rules": ' * 50_000 + b"{}" + b"}" * 50_000 + b"}",
        b'{"replicationConfiguration": {"rules": [{"destinations": [{"region": '
        + b'{"a": ' * 30_000
        + b"1"
        + b"}" * 30_000
        + b"}]}]}}",
    ],
    ids=["arrays", "objects", "inside-a-field"],
)
async def test_deep_nesting_is_invalid_argument(
    http: httpx.AsyncClient, writes: MotoWrites, body: bytes
) -> None:
    reply = await post(http, "PutReplicationConfiguration", body, AUTH)
    assert reply.status_code == 400, reply.text[:500]
    assert error(reply)["code"] == "invalid_argument"
    assert writes.total == 0


async def test_unknown_fields_wrong_types_and_repeated_keys_are_named(
    http: httpx.AsyncClient, writes: MotoWrites
) -> None:
    body = {
        "policyText": POLICY,
        "validateOnly": "yes",
        "extra": 1,
    }
    reply = await post(http, "PutRegistryPolicy", json.dumps(body).encode(), AUTH)
    assert reply.status_code == 400
    assert error(reply)["code"] == "invalid_argument"
    assert connect_answer("PutRegistryPolicy", reply).fields == ["validate_only", "extra"]
    twice = b'{"etag": "a", "etag": "b"}'
    reply = await post(http, "DeleteRegistryPolicy", twice, AUTH)
    assert reply.status_code == 400 and "appears twice" in error(reply)["message"]
    both = b'{"registryId": "123456789012", "registry_id": "123456789012"}'
    reply = await post(http, "DescribeRegistry", both, AUTH)
    assert reply.status_code == 400 and "sent twice" in error(reply)["message"]
    assert writes.total == 0


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("POST", "DescribeRegistry", {"content-type": "text/plain"}, 415),
        ("POST", "DescribeRegistry", {"content-type": "application/xml"}, 415),
        ("POST", "DescribeRegistry", {"content-type": "application/grpc"}, 415),
        ("POST", "DescribeRegistry", {"content-type": "application/grpc+proto"}, 415),
        ("GET", "PutRegistryPolicy", {}, 405),
        ("PUT", "DescribeRegistry", JSON, 405),
        ("POST", "NoSuchMethod", JSON, 404),
        ("POST", "DescribeRegistry", {**JSON, "connect-protocol-version": "2"}, 400),
        ("POST", "DescribeRegistry", {**JSON, "connect-timeout-ms": "soon"}, 400),
        ("POST", "DescribeRegistry", {**JSON, "content-encoding": "br"}, 501),
    ],
)
async def test_the_wrong_kind_of_request_is_a_clear_refusal(
    http: httpx.AsyncClient,
    writes: MotoWrites,
    method: str,
    path: str,
    headers: dict[str, str],
    status: int,
) -> None:
    reply = await http.request(
        method, f"/{SERVICE}/{path}", content=b"{}", headers={**AUTH, **headers}
    )
    assert reply.status_code == status, reply.text
    assert writes.total == 0


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send bytes as they are (no client library cleans them up); the server's answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), timeout=10)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def request_bytes(*headers: bytes, body: bytes = b"{}") -> bytes:
    head = [
        f"POST /{SERVICE}/DescribeRegistry HTTP/1.1".encode(),
        b"host: gateway",
        b"content-type: application/json",
        f"content-length: {len(body)}".encode(),
        *headers,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def test_header_tricks_are_refused_or_neutralized(gateway: Gateway) -> None:
    port = gateway.http_port
    # Bytes that are not UTF-8 in a credential: unauthenticated, not a server error.
    answer = await raw_exchange(port, request_bytes(b"authorization: Bearer \xff\xfe\xfd"))
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    # A request id that is not safe to repeat (control characters, an injected header):
    # replaced by the gateway's own, never echoed into a response header.
    answer = await raw_exchange(
        port,
        request_bytes(
            f"authorization: Bearer {KEY}".encode(), b"x-request-id: a\x01b%0d%0aset-cookie: x"
        ),
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert b"set-cookie" not in answer.lower() and b"a\x01b" not in answer
    # A bare carriage return inside a header value: refused by the HTTP parser or taken
    # as one header, never split into two, never a server error.
    answer = await raw_exchange(port, request_bytes(b"x-request-id: a\rset-cookie: x"))
    assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 401 ")), answer[:200]
    assert b"\r\nset-cookie" not in answer.lower()
    # A request head past the bound (16 KiB still incomplete): refused by the HTTP layer,
    # nothing reaches the app, the connection is not held open buffering it.
    answer = await raw_exchange(port, request_bytes(b"x-padding: " + b"a" * 2_000_000))
    assert answer.startswith(b"HTTP/1.1 400 ") or answer == b"", answer[:200]
    # The X-Forwarded-For of a caller does not choose the address it is known by.
    answer = await raw_exchange(port, request_bytes(b"x-forwarded-for: 10.9.8.7"))
    assert answer.startswith(b"HTTP/1.1 401 ")


async def test_a_hostile_tenant_leaves_the_others_served(
    http: httpx.AsyncClient, writes: MotoWrites
) -> None:
    garbage = [post(http, "PutReplicationConfiguration", b"[" * 500_000, AUTH) for _ in range(5)]
    normal = http.post(f"/{SERVICE}/DescribeRegistry", content=b"{}", headers={**JSON, **AUTH})
    *refused, served = await asyncio.gather(*garbage, normal)
    assert all(r.status_code == 400 for r in refused)
    assert served.status_code == 200, served.text
    assert writes.total == 0
