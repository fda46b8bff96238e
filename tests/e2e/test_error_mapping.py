"""How failures reach the caller: credentials, undecodable bytes, a sick or absent AWS."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from moto.core.exceptions import JsonRESTError
from moto.ecr.models import ECRBackend

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import Gate, GatewayFactory
from tests.support.helpers import KEY, config_dict, metadata, rich_error

DESCRIBE = "/ecr.registry.v1.RegistryConfigService/DescribeRegistry"


@pytest.mark.parametrize(
    ("md", "reason"),
    [
        ((), "MISSING_CREDENTIALS"),
        ((("authorization", f"Basic {KEY}"),), "MALFORMED_CREDENTIALS"),
        ((("authorization", "Bearer not-a-key-we-know"),), "INVALID_CREDENTIALS"),
    ],
    ids=["none", "wrong-scheme", "unknown-key"],
)
async def test_bad_credentials_are_unauthenticated(
    stub: pb_grpc.RegistryConfigServiceAsyncStub, md: tuple[tuple[str, str], ...], reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=md)
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    assert err.info.reason == reason
    assert "not-a-key-we-know" not in err.message and KEY not in err.message


async def test_undecodable_bytes_are_invalid_argument(channel: grpc.aio.Channel) -> None:
    raw: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        DESCRIBE, request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(b"\xff\xff\xff\xff", metadata=metadata())
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.info.reason == "UNDECODABLE_REQUEST"


async def test_unreachable_aws_is_unavailable_with_retry_info(
    gateway_factory: GatewayFactory,
) -> None:
    # Port 9 (discard) on loopback: nothing listens, so the connection is refused at once.
    gateway = await gateway_factory(config_dict("http://127.0.0.1:9"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.DescribeRegistry(
                pb.DescribeRegistryRequest(), metadata=metadata(), timeout=5
            )
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert err.retry_info is not None and err.retry_info.retry_delay.ToNanoseconds() > 0
    assert "127.0.0.1:9" not in err.message


@pytest.fixture
def throttled(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto answers ThrottlingException (HTTP 400) to DescribeRegistry, as a busy ECR does."""

    def throttle(self: ECRBackend) -> Any:
        raise JsonRESTError("ThrottlingException", "Rate exceeded")

    monkeypatch.setattr(ECRBackend, "describe_registry", throttle)
    yield


async def test_throttling_is_unavailable(
    stub: pb_grpc.RegistryConfigServiceAsyncStub, throttled: None
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert err.info.metadata["awsErrorCode"] == "ThrottlingException"
    assert err.retry_info is not None


async def test_default_deadline_applies_when_the_caller_sends_none(
    gateway_factory: GatewayFactory, slow_describe: Gate
) -> None:
    gateway = await gateway_factory(default_deadline_seconds=0.3)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
    assert slow_describe.entered.is_set()
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_caller_deadline_is_capped(
    gateway_factory: GatewayFactory, slow_describe: Gate
) -> None:
    gateway = await gateway_factory(default_deadline_seconds=0.2, max_deadline_seconds=0.3)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.DescribeRegistry(
                pb.DescribeRegistryRequest(), metadata=metadata(), timeout=30
            )
    # Answered by the gateway's cap (with its details), long before the caller's 30 s.
    assert rich_error(caught.value).code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_message_over_the_limit_is_refused(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory(max_message_bytes=4096)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PutRegistryPolicy(
                pb.PutRegistryPolicyRequest(policy_text="x" * 10_000), metadata=metadata()
            )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_logs_hold_no_token_and_no_traceback(
    stub: pb_grpc.RegistryConfigServiceAsyncStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="registry_gateway")
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.DescribeRegistry(
            pb.DescribeRegistryRequest(), metadata=(("authorization", "Bearer leaked-token-1"),)
        )
    await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
    records = [r for r in caplog.records if r.name.startswith("registry_gateway")]
    assert any(getattr(r, "reason", None) == "INVALID_CREDENTIALS" for r in records)
    for record in records:
        text = record.getMessage() + repr(record.__dict__)
        assert "leaked-token-1" not in text and KEY not in text
        assert record.exc_info is None
