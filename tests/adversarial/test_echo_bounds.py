"""Bounded echoes, through a live gateway: a caller's hostile text comes back (and goes into
logs and the audit trail) cut to size and escaped, so the caller gets its own error and no
reader is fooled by a forged field, a control sequence or a line break."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service import config as config_mod
from service.app.server import Gateway
from service.auth.targets import TargetAuthorizer
from service.config import AuditConfig, LogsConfig
from service.echo import echo
from service.errors import PermissionDenied, RichStatus, to_status
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from service.observability.audit import AuditLog, WriteRecord
from service.observability.logs import configure_logging
from tests.conftest import GatewayFactory, wait_until
from tests.support.helpers import ACCOUNT, POLICY, config_dict, metadata, rich_error

HUGE_ID = "1" * 20_000
# Within every request byte limit (12 bytes of registry_id, 25 of region), so they reach
# authorization rather than being refused unread.
HOSTILE_ID = "\x1b[2J\n1234567"
HOSTILE_REGION = "us-east-1\x00\x1b[31m\r\n\u2028"
FORGED = "x tenant=admin rpc=DeleteRegistryPolicy code=OK"
CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
DETAILS_KEY = "grpc-status-details-bin"
# A key=value field of the text log format: a bare token, or a JSON string.
FIELD = re.compile(r'(?:^| )([a-z_]+)=("(?:[^"\\]|\\.)*"|[^\s"]+)')


def details_size(error: grpc.aio.AioRpcError) -> int:
    raw = dict(error.trailing_metadata() or ()).get(DETAILS_KEY)
    assert isinstance(raw, bytes), error
    return len(raw)


async def describe(
    stub: pb_grpc.RegistryConfigServiceAsyncStub,
    extra: tuple[tuple[str, str], ...] = (),
    **fields: str,
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DescribeRegistry(
            pb.DescribeRegistryRequest(**fields), metadata=(*metadata(), *extra)
        )
    return caught.value


# --- Answers -------------------------------------------------------------------------


@pytest.mark.parametrize("length", [900, 20_000])
async def test_a_huge_registry_id_gets_its_own_error_not_resource_exhausted(
    stub: pb_grpc.RegistryConfigServiceAsyncStub, length: int
) -> None:
    registry_id = "1" * length
    error = await describe(stub, registry_id=registry_id)
    # PERMISSION_DENIED from authorization; INVALID_ARGUMENT (REQUEST_TOO_LARGE) where the
    # request byte limits refuse it unread first. Never the transport's RESOURCE_EXHAUSTED.
    assert error.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)
    rich = rich_error(error)
    assert details_size(error) < 4096
    assert len(rich.message) <= 1024
    assert all(len(v) <= 128 for v in rich.info.metadata.values())
    assert registry_id[:129] not in rich.message
    if error.code() == grpc.StatusCode.PERMISSION_DENIED:
        assert rich.info.reason == "TARGET_NOT_ALLOWED"
        assert rich.info.metadata["registryId"] == "1" * 127 + "…"
        assert f"registry {'1' * 127}… in us-east-1" in rich.message


async def test_control_characters_in_region_come_back_escaped(
    stub: pb_grpc.RegistryConfigServiceAsyncStub,
) -> None:
    error = await describe(stub, registry_id=ACCOUNT, region=HOSTILE_REGION)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    rich = rich_error(error)
    assert rich.info.reason == "TARGET_NOT_ALLOWED"
    assert rich.info.metadata["region"] == "us-east-1\\x00\\x1b[31m\\x0d\\x0a\\u2028"
    assert "us-east-1\\x00\\x1b[31m" in rich.message
    for text in (rich.message, *rich.info.metadata.values()):
        assert not CONTROL.search(text), text


async def test_a_hostile_registry_id_within_the_byte_limit_comes_back_escaped(
    stub: pb_grpc.RegistryConfigServiceAsyncStub,
) -> None:
    error = await describe(stub, registry_id=HOSTILE_ID)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    rich = rich_error(error)
    assert rich.info.metadata["registryId"] == "\\x1b[2J\\x0a1234567"
    assert not CONTROL.search(rich.message)


# The authorizer's own error for a 20,000-character id, answered by a real grpc.aio server:
# the request byte limits keep such an id away from a live gateway's authorizer, but the
# bound must hold wherever it comes from.
Answer = Callable[[], RichStatus]


@pytest.fixture
async def answering() -> AsyncIterator[Callable[[Answer], Awaitable[grpc.aio.AioRpcError]]]:
    server = grpc.aio.server()
    answers: list[Answer] = []

    async def handle(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        status = answers[-1]()
        await context.abort(status.code, status.message, status.trailing_metadata)
        raise AssertionError("abort returned")

    def identity(data: bytes) -> bytes:
        return data

    handler = grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=identity, response_serializer=identity
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("t.T", {"Call": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def call(answer: Answer) -> grpc.aio.AioRpcError:
        answers.append(answer)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            method = channel.unary_unary(
                "/t.T/Call", request_serializer=identity, response_deserializer=identity
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await method(b"")
            return caught.value

    yield call
    await server.stop(None)


async def test_the_authorizers_denial_of_a_huge_id_reaches_the_caller(
    answering: Callable[[Answer], Awaitable[grpc.aio.AioRpcError]], aws: str
) -> None:
    cfg = config_mod.from_mapping(config_dict(aws))
    authorizer = TargetAuthorizer(cfg)
    with pytest.raises(PermissionDenied) as caught:
        authorizer.authorize(cfg.tenants[0], "DescribeRegistry", HUGE_ID, HOSTILE_REGION)
    denial = caught.value

    error = await answering(lambda: to_status(denial, "req-1"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    rich = rich_error(error)
    assert rich.info.reason == "TARGET_NOT_ALLOWED"
    assert details_size(error) < 4096
    assert rich.info.metadata["registryId"] == "1" * 127 + "…"
    assert rich.info.metadata["region"] == echo(HOSTILE_REGION)
    assert all(len(v) <= 128 for v in rich.info.metadata.values())
    assert not CONTROL.search(rich.message)

    # The harness can tell: the same denial echoing the id whole does not arrive as itself.
    def unbounded() -> RichStatus:
        info = error_details_pb2.ErrorInfo(reason="TARGET_NOT_ALLOWED", metadata={"id": HUGE_ID})
        status = status_pb2.Status(code=grpc.StatusCode.PERMISSION_DENIED.value[0], message="no")
        status.details.add().Pack(info)
        trailers = rpc_status.to_status(status).trailing_metadata
        return RichStatus(grpc.StatusCode.PERMISSION_DENIED, "no", tuple(trailers))

    assert (await answering(unbounded)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- Logs ----------------------------------------------------------------------------


@pytest.fixture
def text_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(LogsConfig(format="text", hit_sample_rate=1.0), stream)
    yield stream
    logging.getLogger("registry_gateway").handlers.clear()
    logging.getLogger("registry_gateway").propagate = True


def call_lines(stream: io.StringIO) -> list[list[tuple[str, str]]]:
    """The key=value fields of each call line, values decoded."""
    out = []
    for line in stream.getvalue().splitlines():
        fields = [(k, json.loads(v) if v.startswith('"') else v) for k, v in FIELD.findall(line)]
        if any(k == "rpc" for k, _ in fields):
            out.append(fields)
    return out


async def test_a_forged_request_id_cannot_forge_log_fields(
    gateway: Gateway, text_log: io.StringIO
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        await stub.DescribeRegistry(
            pb.DescribeRegistryRequest(), metadata=(*metadata(), ("x-request-id", FORGED))
        )
        await describe(stub, (("x-request-id", FORGED),), region=HOSTILE_REGION)
    lines = call_lines(text_log)
    assert len(lines) == 2
    for fields in lines:
        keys = [k for k, _ in fields]
        assert len(keys) == len(set(keys)), fields  # no field twice
        assert dict(fields)["tenant"] == "payments"
        assert dict(fields)["rpc"] == "DescribeRegistry"
    assert [dict(f)["code"] for f in lines] == ["OK", "PERMISSION_DENIED"]
    assert "tenant=admin" not in text_log.getvalue().replace(json.dumps(FORGED), "")
    assert not CONTROL.search(text_log.getvalue().replace("\n", ""))


# PENDING the middleware change (service/rpc/interceptor.py `_request_id` through
# `safe_request_id`, another engineer's work): an unsafe x-request-id is replaced, not
# repeated. Expected to fail until that change is in the tree.
async def test_an_unsafe_request_id_is_replaced_not_repeated(
    stub: pb_grpc.RegistryConfigServiceAsyncStub,
) -> None:
    call = stub.DescribeRegistry(
        pb.DescribeRegistryRequest(), metadata=(*metadata(), ("x-request-id", FORGED))
    )
    await call
    answered = dict(await call.trailing_metadata() or ())["x-request-id"]
    assert answered != FORGED
    assert re.fullmatch(r"[0-9a-f]{32}", str(answered))

    error = await describe(stub, (("x-request-id", "ok;" + "x" * 300),), region="nowhere")
    trailer = dict(error.trailing_metadata() or ())["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", str(trailer))
    assert rich_error(error).info.metadata["requestId"] == trailer

    safe = "req-42.a_b~c:d+e/f=g"
    call = stub.DescribeRegistry(
        pb.DescribeRegistryRequest(), metadata=(*metadata(), ("x-request-id", safe))
    )
    await call
    assert dict(await call.trailing_metadata() or ())["x-request-id"] == safe


# --- Audit ---------------------------------------------------------------------------


@pytest.fixture
async def audited(
    gateway_factory: GatewayFactory, aws: str, tmp_path: Path
) -> tuple[Gateway, Path]:
    raw = config_dict(aws)
    raw["audit"] = {"path": str(tmp_path / "audit.jsonl")}
    return await gateway_factory(raw), tmp_path / "audit.jsonl"


async def test_a_refused_writes_audit_line_names_the_request_escaped(
    audited: tuple[Gateway, Path],
) -> None:
    gateway, path = audited
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PutRegistryPolicy(
                pb.PutRegistryPolicyRequest(
                    registry_id=HOSTILE_ID, region=HOSTILE_REGION, policy_text=POLICY
                ),
                metadata=metadata(),
            )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The line is written once the status is sent (the reporters run after the answer).
    text = await wait_until(lambda: path.read_text(encoding="utf-8"), what="the audit line")
    [raw_line] = text.splitlines()  # one line: nothing in it broke the line
    assert not CONTROL.search(raw_line)
    line = json.loads(raw_line)
    assert line["outcome"] == "PERMISSION_DENIED"
    assert line["registry_id"] == echo(HOSTILE_ID) == "\\x1b[2J\\x0a1234567"
    assert line["region"] == echo(HOSTILE_REGION)


def test_every_audit_text_field_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(AuditConfig(path=str(path)))
    hostile = "\n\u2028\ud800" + "9" * 20_000
    try:
        audit.write(
            request_id=hostile,
            tenant=hostile,
            identity="jwt:" + hostile,
            rpc=hostile,
            outcome=hostile,
            reason=hostile,
            record=WriteRecord(
                registry_id=hostile,
                region=hostile,
                validate_only=True,
                etag_before=hostile,
                etag_after=None,
                policy_sha256=hostile,
            ),
        )
    finally:
        audit.close()
    [raw_line] = path.read_text(encoding="utf-8").splitlines()
    assert not CONTROL.search(raw_line)
    line: dict[str, Any] = json.loads(raw_line)
    texts = {k: v for k, v in line.items() if isinstance(v, str) and k != "time"}
    assert len(texts) == 10
    assert all(len(v) <= 128 and v.endswith("…") for v in texts.values())
    assert line["registry_id"].startswith("\\x0a\\u2028\\ud800999")
    assert line["validate_only"] is True and line["etag_after"] is None
    assert len(raw_line) < 2_000
