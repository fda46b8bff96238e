"""Hostile bodies and protocol headers on the HTTP listener (issue 21, findings 2, 7, 10).

- A JSON body holding far more than the largest valid request of its RPC is refused
  before anything is parsed (REQUEST_TOO_LARGE), so one tenant's 2 MB of `{},` no longer
  holds the event loop every tenant shares for seconds.
- A malformed gRPC-Web request is the caller's error (INVALID_ARGUMENT), never INTERNAL:
  it does not page the operators (grpc_server_handled_total{grpc_code="Internal"}) nor log
  "unexpected error".
- A bad Connect or gRPC-Web protocol header is refused by the pipeline, after
  authentication: its value echoed bounded and escaped, with a request id, an access log
  line and the metrics of any refused call.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import struct
import time
import types
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from service.app.server import Gateway
from service.errors import InvalidArgument
from service.gen.v1 import registry_pb2 as pb
from service.http import codec
from service.rpc.request_limits import max_request_bytes
from tests.conftest import GatewayFactory, wait_until
from tests.http.conftest import http_config
from tests.http.support import SERVICE, connect_answer
from tests.support.helpers import ACCOUNT, KEY, OTHER_KEY
from tests.support.moto_writes import MotoWrites, behave_like_ecr, count_writes

AUTH = {"authorization": f"Bearer {KEY}"}
JSON = {"content-type": "application/json"}
GRPC_WEB = {"content-type": "application/grpc-web+proto"}
# The finding: 680,000 empty rules in 2.04 MB, within the JSON byte limit of the RPC.
RULES = 680_000
FLOOD = b'{"rules":[' + b",".join([b"{}"] * RULES) + b'],"validateOnly":true}'
# The finding's header: 12,048 characters with control characters.
HOSTILE_HEADER = b"\x1b[31m" + b"9" * 12_000 + b"\x01\x7f" + b"\x1b" * 41
HANDLED = "grpc_server_handled_total"


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> MotoWrites:
    behave_like_ecr(monkeypatch)
    return count_writes(monkeypatch)


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory, aws: str, writes: MotoWrites) -> Gateway:
    return await gateway_factory(http_config(aws))


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gateway.http_port}", timeout=60
    ) as client:
        yield client


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What of the Python JSON work ran, in order: json.loads, the codec's walk, ParseDict."""
    seen: list[str] = []
    loads, walk, parse_dict = json.loads, codec._Walk.message, json_format.ParseDict

    def counted_loads(*args: Any, **kwargs: Any) -> Any:
        seen.append("json.loads")
        return loads(*args, **kwargs)

    def counted_walk(self: Any, *args: Any) -> Any:
        if not seen or seen[-1] != "walk":
            seen.append("walk")
        return walk(self, *args)

    def counted_parse_dict(*args: Any, **kwargs: Any) -> Any:
        seen.append("ParseDict")
        return parse_dict(*args, **kwargs)

    # The codec's own json module only: the listener and the test read JSON too.
    own_json = types.SimpleNamespace(loads=counted_loads, JSONDecodeError=json.JSONDecodeError)
    monkeypatch.setattr(codec, "json", own_json)
    monkeypatch.setattr(codec._Walk, "message", counted_walk)
    monkeypatch.setattr(json_format, "ParseDict", counted_parse_dict)
    return seen


def metric(gateway: Gateway, rpc: str, code: str) -> float:
    labels = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": rpc, "grpc_code": code}
    value = gateway.metrics.registry.get_sample_value(HANDLED, labels)
    return value or 0.0


def call_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "registry_gateway.calls"]


# --- Finding 2: the work of a JSON body ---------------------------------------------------


def json_limit(rpc: str) -> int:
    return codec.request_limit(rpc, "json", 4 * 1024 * 1024)


@pytest.mark.parametrize(
    "body",
    [
        FLOOD,
        # Arrays cost json.loads most of all (~200 ms for 2 MB), and no hook sees them.
        b'{"rules":[],"x":[' + b",".join([b"[]"] * RULES) + b"]}",
        b'{"rules":[' + b",".join([b'""'] * RULES) + b"]}",
        b'{"rules":[' + b",".join([b"0"] * RULES) + b"]}",
        b'{"rules":[{"destinations":[' + b",".join([b"{}"] * 100_000) + b"]}]}",
    ],
    ids=["objects", "arrays-in-an-unknown-field", "strings", "numbers", "nested"],
)
def test_json_past_the_rpc_s_maxima_is_refused_before_any_of_it_is_parsed(
    parsed: list[str], body: bytes
) -> None:
    limit = json_limit("PutReplicationRules")
    assert len(body) <= limit  # within the byte limit: only the count refuses it
    with pytest.raises(InvalidArgument) as caught:
        codec.decode_json(body, pb.PutReplicationRulesRequest, limit)
    error = caught.value
    assert error.reason == "REQUEST_TOO_LARGE", error
    tokens = int(error.metadata["limitJsonTokens"])
    # Tokens: strings and `{ [ : ,`; at most four a value of the largest valid request
    # (10 rules of 100 destinations and 100 filters: ~6,000 values), far below the flood.
    assert 24_000 < tokens < 30_000
    assert error.metadata == {"rpc": "PutReplicationRules", "limitJsonTokens": str(tokens)}
    assert [(v.field, v.description) for v in error.field_violations] == [
        ("", f"more than {tokens} JSON tokens; at most {tokens}")
    ]
    assert parsed == []  # neither json.loads, nor the walk, nor ParseDict ran


def largest_rules_request() -> pb.PutReplicationRulesRequest:
    """The largest valid PutReplicationRules request under ECR's model maxima, its strings
    full of what JSON escapes and what looks like structure."""
    tricky = '"\\{[:,]}\u2028é'
    rule = pb.ReplicationRule(
        destinations=[
            pb.ReplicationDestination(registry_id=ACCOUNT, region="ap-southeast-1")
            for _ in range(100)
        ],
        repository_filters=[
            pb.RepositoryFilter(filter=(tricky * 32)[:256], filter_type="PREFIX_MATCH")
            for _ in range(100)
        ],
    )
    return pb.PutReplicationRulesRequest(
        registry_id=ACCOUNT,
        region="us-east-1",
        etag="e" * 32,
        validate_only=True,
        rules=[rule] * 10,
    )


@pytest.mark.parametrize("indent", [None, 2])
def test_the_largest_valid_json_request_is_still_read_whole(
    parsed: list[str], indent: int | None
) -> None:
    request = largest_rules_request()
    body = json_format.MessageToJson(request, indent=indent).encode()
    assert len(body) <= json_limit("PutReplicationRules")
    decoded = codec.decode_json(
        body, pb.PutReplicationRulesRequest, json_limit("PutReplicationRules")
    )
    assert decoded == request
    assert parsed == ["json.loads", "walk", "ParseDict"]


def test_a_policy_full_of_braces_and_escapes_is_still_read_whole() -> None:
    # The structure inside a string is not counted: a 10,240-character policy of braces,
    # colons, commas and escaped quotes holds one string token.
    policy = ('{"a":[{"b":"\\"c\\",d"}],' * 500)[:10_240]
    body = json.dumps({"policyText": policy, "validateOnly": True}).encode()
    limit = json_limit("PutRegistryPolicy")
    assert body.count(b"{") > 500  # far more than the few values of the request
    decoded = codec.decode_json(body, pb.PutRegistryPolicyRequest, limit)
    assert decoded.policy_text == policy and decoded.validate_only


async def test_a_flood_of_json_elements_is_refused_over_http(
    http: httpx.AsyncClient, writes: MotoWrites, parsed: list[str]
) -> None:
    reply = await http.post(
        f"/{SERVICE}/PutReplicationRules", content=FLOOD, headers={**AUTH, **JSON}
    )
    answer = connect_answer("PutReplicationRules", reply)
    assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, answer.message
    assert answer.info.reason == "REQUEST_TOO_LARGE"
    assert int(answer.info.metadata["limitJsonTokens"]) < RULES
    assert answer.fields == [""]
    assert parsed == [] and writes.total == 0


async def test_a_bystander_s_read_is_not_starved_by_json_floods(gateway: Gateway) -> None:
    """While a tenant sends JSON floods without pause, another tenant's cached read is served
    at once: on the original code each flood held the shared event loop for seconds."""
    port = gateway.http_port
    answered = 0
    stop = asyncio.Event()

    async def flood() -> None:
        nonlocal answered
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as own:
            while not stop.is_set():
                # Whatever the answer (on the original code, floods at once run past their
                # deadline): only the bystander's wait is judged.
                await own.post(
                    f"/{SERVICE}/PutReplicationRules", content=FLOOD, headers={**AUTH, **JSON}
                )
                answered += 1

    read_headers = {"authorization": f"Bearer {OTHER_KEY}", **JSON}

    async def read() -> float:
        # A connection of its own each time: an idle keep-alive one may be closed meanwhile.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as own:
            started = time.perf_counter()
            try:
                reply = await own.post(
                    f"/{SERVICE}/DescribeRegistry", content=b"{}", headers=read_headers
                )
            except httpx.TransportError:
                return math.inf  # not served at all (seen on the original code)
            waited = time.perf_counter() - started
        assert reply.status_code == 200, reply.text
        return waited

    await read()  # now in the cache
    floods = [asyncio.create_task(flood()) for _ in range(3)]
    try:
        await wait_until(lambda: answered >= 3, timeout=120)  # under attack
        waits = [await read() for _ in range(5)]
        still = answered
    finally:
        stop.set()
        await asyncio.gather(*floods)
    # A cached read takes a few milliseconds; on the original code it waited for a whole
    # flood to be parsed (seconds). Generous: a loaded machine, three floods at once.
    assert max(waits) < 1.0, waits
    assert still >= 3


# --- Finding 7: malformed gRPC-Web ----------------------------------------------------------


def frame(message: bytes, flags: int = 0) -> bytes:
    """One gRPC-Web frame: flags, length, message."""
    return struct.pack(">BI", flags, len(message)) + message


def grpc_web_status(reply: httpx.Response) -> dict[str, str]:
    """A gRPC-Web answer's status: in its headers (trailers-only) or in its trailer frame."""
    found = {k: v for k, v in reply.headers.items() if k.startswith("grpc-")}
    body = reply.content
    while len(body) >= 5:
        flags, size = struct.unpack(">BI", body[:5])
        payload, body = body[5 : 5 + size], body[5 + size :]
        if flags & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    found[key.strip()] = value.strip()
    return found


def error_info(status: dict[str, str]) -> error_details_pb2.ErrorInfo:
    raw = status["grpc-status-details-bin"]
    details = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    infos = []
    for packed in details.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            infos.append(info)
    assert len(infos) == 1, details
    return infos[0]


@pytest.mark.parametrize(
    "body",
    [
        frame(b"", flags=0x01),  # flagged compressed, and no compression was agreed
        frame(b"\x0a\x0c" + ACCOUNT.encode(), flags=0x01),
        frame(b"") + frame(b""),  # a unary call of two messages
        b"",  # of none
        frame(b"") + b"\x00\x00",  # truncated
        struct.pack(">BI", 0, 100) + b"ab",
        frame(b"", flags=0x40),  # flags that mean nothing
    ],
    ids=["compressed", "compressed-message", "two", "none", "truncated", "short", "flags"],
)
async def test_malformed_grpc_web_is_the_caller_s_error_not_the_server_s(
    http: httpx.AsyncClient,
    gateway: Gateway,
    caplog: pytest.LogCaptureFixture,
    writes: MotoWrites,
    body: bytes,
) -> None:
    caplog.set_level(logging.INFO, logger="registry_gateway")
    reply = await http.post(
        f"/{SERVICE}/DescribeRegistry", content=body, headers={**AUTH, **GRPC_WEB}
    )
    status = grpc_web_status(reply)
    assert status["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0]), status
    assert error_info(status).reason == "UNDECODABLE_REQUEST"
    request_id = reply.headers["x-request-id"]
    assert error_info(status).metadata["requestId"] == request_id
    # Counted as the caller's error, never as the server's: the paging alert sums Internal.
    assert metric(gateway, "DescribeRegistry", "InvalidArgument") == 1
    assert metric(gateway, "DescribeRegistry", "Internal") == 0
    lines = call_lines(caplog)
    assert [r.getMessage() for r in lines] == ["call failed"]
    assert getattr(lines[0], "request_id", None) == request_id
    assert getattr(lines[0], "code", None) == "INVALID_ARGUMENT"
    assert writes.total == 0


async def test_an_unknown_compression_is_unimplemented_and_not_repeated(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    reply = await http.post(
        f"/{SERVICE}/DescribeRegistry",
        content=frame(b""),
        headers={**AUTH, **GRPC_WEB, "grpc-encoding": "x" * 8000},
    )
    status = grpc_web_status(reply)
    assert status["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0]), status
    assert error_info(status).reason == "COMPRESSION_NOT_SUPPORTED"
    assert "xxx" not in reply.text and "xxx" not in json.dumps(status)
    assert metric(gateway, "DescribeRegistry", "Unimplemented") == 1


# --- Finding 10: protocol headers ----------------------------------------------------------


async def exchange(port: int, request: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Send raw bytes (no client cleans the header up); the answer's status line, headers
    and (unchunked) body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}
    body = b""
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body, rest = body + rest[:size], rest[size + 2 :]
    else:
        body = rest
    return status, headers, body


def raw_request(rpc: str, content_type: bytes, body: bytes, *headers: bytes) -> bytes:
    head = [
        f"POST /{SERVICE}/{rpc} HTTP/1.1".encode(),
        b"host: gateway",
        b"content-type: " + content_type,
        f"content-length: {len(body)}".encode(),
        b"connection: close",
        *headers,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def printable(text: str) -> bool:
    return all(c.isprintable() for c in text)


@pytest.mark.parametrize("header", [b"connect-protocol-version", b"connect-timeout-ms"])
async def test_a_bad_connect_header_is_refused_bounded_and_traced(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, header: bytes
) -> None:
    caplog.set_level(logging.INFO, logger="registry_gateway")
    status, headers, body = await exchange(
        gateway.http_port,
        raw_request(
            "DescribeRegistry",
            b"application/json",
            b"{}",
            f"authorization: Bearer {KEY}".encode(),
            header + b": " + HOSTILE_HEADER,
        ),
    )
    assert status.startswith(b"HTTP/1.1 400 "), status
    assert len(body) < 4096, len(body)
    error = json.loads(body)
    assert error["code"] == "invalid_argument"
    message: str = error["message"]
    assert header.decode() in message and printable(message) and len(message) < 400, message
    assert "\\x1b[31m999" in message  # escaped, not raw
    info = next(d["debug"] for d in error["details"] if d["type"] == "google.rpc.ErrorInfo")
    assert info["reason"] == "INVALID_HEADER" and info["metadata"]["header"] == header.decode()
    # Traced like any other refused call.
    request_id = headers[b"x-request-id"].decode()
    assert info["metadata"]["requestId"] == request_id
    assert metric(gateway, "DescribeRegistry", "InvalidArgument") == 1
    lines = call_lines(caplog)
    assert [(getattr(r, "request_id", None), getattr(r, "reason", None)) for r in lines] == [
        (request_id, "INVALID_HEADER")
    ]


async def test_a_bad_grpc_web_timeout_is_refused_bounded_and_traced(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="registry_gateway")
    status, headers, body = await exchange(
        gateway.http_port,
        raw_request(
            "DescribeRegistry",
            b"application/grpc-web+proto",
            frame(b""),
            f"authorization: Bearer {KEY}".encode(),
            b"grpc-timeout: " + HOSTILE_HEADER + b"S",
        ),
    )
    assert status.startswith(b"HTTP/1.1 200 "), status
    reply = httpx.Response(200, headers=[(k, v) for k, v in headers.items()], content=body)
    found = grpc_web_status(reply)
    assert found["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0]), found
    assert len(found["grpc-message"]) < 1200 and "999" in found["grpc-message"]
    assert error_info(found).reason == "INVALID_HEADER"
    request_id = headers[b"x-request-id"].decode()
    assert error_info(found).metadata["requestId"] == request_id
    assert metric(gateway, "DescribeRegistry", "InvalidArgument") == 1
    assert [getattr(r, "request_id", None) for r in call_lines(caplog)] == [request_id]


async def test_a_stranger_s_bad_header_is_not_echoed(gateway: Gateway) -> None:
    for header in (b"connect-protocol-version", b"connect-timeout-ms"):
        status, headers, body = await exchange(
            gateway.http_port,
            raw_request(
                "DescribeRegistry", b"application/json", b"{}", header + b": " + HOSTILE_HEADER
            ),
        )
        assert status.startswith(b"HTTP/1.1 401 "), status
        assert b"999" not in body and b"x-request-id" in headers


async def test_good_protocol_headers_still_pass(http: httpx.AsyncClient) -> None:
    for extra in (
        {"connect-protocol-version": "1", "connect-timeout-ms": "5000"},
        {"connect-timeout-ms": ""},
    ):
        reply = await http.post(
            f"/{SERVICE}/DescribeRegistry", content=b"{}", headers={**AUTH, **JSON, **extra}
        )
        assert reply.status_code == 200, reply.text
    reply = await http.post(
        f"/{SERVICE}/DescribeRegistry",
        content=frame(b""),
        headers={**AUTH, **GRPC_WEB, "grpc-timeout": "5S"},
    )
    assert grpc_web_status(reply)["grpc-status"] == "0"


def test_the_json_limit_stays_tied_to_the_binary_one() -> None:
    for rpc in ("PutReplicationRules", "PutRegistryPolicy", "DescribeRegistry"):
        assert json_limit(rpc) == max_request_bytes(rpc) * codec.JSON_EXPANSION
