"""One error hierarchy every failure of the Python client lands in (issue 28).

google-api-core's `exceptions.from_grpc_error` is the model: one class per status code, so
no code falls through to the bare base class (UNIMPLEMENTED did, though the docstring said
`Internal` covered every other code); data the client cannot encode (a misspelt AWS-JSON
field raised protobuf's ParseError) is the client's own INVALID_ARGUMENT, raised before
anything is sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import registry_gateway_client
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from registry_gateway_client import (
    CLIENT_DOMAIN,
    AsyncProceed,
    Attempt,
    Internal,
    InvalidArgument,
    RegistryConfigClient,
    RegistryGatewayError,
    Reply,
    RetryPolicy,
    SyncRegistryConfigClient,
    Unimplemented,
    WriteOverwritten,
    error_class,
    from_rpc_error,
    from_status,
)
from registry_gateway_client._aio_connect import connect_error
from registry_gateway_client._errors import STATUS_DETAILS_KEY
from registry_gateway_client._retry import Attempts
from registry_gateway_client.v1 import registry_pb2 as pb
from registry_gateway_client.v1.registry_connect import RegistryConfigServiceClient

from service.app.server import Gateway
from tests.conftest import GatewayFactory
from tests.http.conftest import http_config
from tests.support.helpers import ACCOUNT, KEY

ERRORS_DOC = registry_gateway_client._errors.__doc__ or ""
CODES = [code for code in grpc.StatusCode if code != grpc.StatusCode.OK]


@pytest.mark.parametrize("code", CODES, ids=[c.name for c in CODES])
def test_every_code_has_its_documented_class(code: grpc.StatusCode) -> None:
    error = from_rpc_error(code, "x", ())
    cls = type(error)
    assert cls is not RegistryGatewayError  # never the bare base class
    assert error.code == code
    assert isinstance(error, RegistryGatewayError)
    if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS):
        assert cls is Internal  # the server faults, as documented
    else:
        assert cls.code == code
    # The docstring's table names the class beside the code.
    row = next(line for line in ERRORS_DOC.splitlines() if f" {cls.__name__} " in line)
    assert code.name in row, row
    assert cls.__name__ in registry_gateway_client.__all__


def status_trailer(code: grpc.StatusCode, reason: str) -> tuple[tuple[str, bytes], ...]:
    info = error_details_pb2.ErrorInfo(reason=reason, domain="registry-gateway")
    packed = any_pb2.Any()
    packed.Pack(info)
    status = status_pb2.Status(code=code.value[0], message="m", details=[packed])
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


def test_write_overwritten_is_never_retried_whatever_the_predicate() -> None:
    overwritten = from_rpc_error(
        grpc.StatusCode.ABORTED, "m", status_trailer(grpc.StatusCode.ABORTED, "WRITE_OVERWRITTEN")
    )
    aborted = from_rpc_error(grpc.StatusCode.ABORTED, "m", ())
    assert type(overwritten) is WriteOverwritten
    everything = RetryPolicy(predicate=lambda error: True)
    attempts = Attempts(everything, 10.0, retry_safe=True, clock=lambda: 0.0)
    attempts.start()
    assert attempts.delay_after(overwritten) is None
    assert attempts.delay_after(aborted) is not None  # the predicate is asked for the rest
    assert error_class(grpc.StatusCode.ABORTED, "ETAG_MISMATCH").__name__ == "EtagMismatch"


async def test_unimplemented_from_the_gateway_on_both_transports(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    """An RPC the gateway does not have (as an older gateway lacks a newer RPC)."""
    gateway: Gateway = await gateway_factory(http_config(aws))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        missing = channel.unary_unary(
            "/ecr.registry.v1.RegistryConfigService/NoSuchRpc",
            request_serializer=pb.DescribeRegistryRequest.SerializeToString,
            response_deserializer=pb.DescribeRegistryResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as over_grpc:
            await missing(
                pb.DescribeRegistryRequest(), metadata=(("authorization", f"Bearer {KEY}"),)
            )
    grpc_error = from_rpc_error(
        over_grpc.value.code(), over_grpc.value.details(), over_grpc.value.trailing_metadata()
    )
    method = MethodInfo(
        name="NoSuchRpc",
        service_name="ecr.registry.v1.RegistryConfigService",
        input=pb.DescribeRegistryRequest,
        output=pb.DescribeRegistryResponse,
        idempotency_level=IdempotencyLevel.NO_SIDE_EFFECTS,
        stream_type=StreamType.UNARY,
    )
    async with RegistryConfigServiceClient(
        f"http://127.0.0.1:{gateway.http_port}", send_compression=None
    ) as http:
        with pytest.raises(ConnectError) as over_connect:
            await http.execute_unary(
                request=pb.DescribeRegistryRequest(),
                method=method,
                headers={"authorization": f"Bearer {KEY}"},
            )
    connect = connect_error(over_connect.value, ())
    assert type(grpc_error) is Unimplemented and type(connect) is Unimplemented
    assert grpc_error.code == connect.code == grpc.StatusCode.UNIMPLEMENTED


class Sent:
    """An interceptor that records every attempt made."""

    def __init__(self) -> None:
        self.sent: list[Attempt] = []

    async def intercept(self, attempt: Attempt, proceed: AsyncProceed) -> Reply:
        self.sent.append(attempt)
        return await proceed(attempt)


CLIENT_SIDE: list[tuple[str, dict[str, Any], str]] = [
    (  # "destination" for "destinations": protobuf's ParseError before
        "put_replication_configuration",
        {"replication_configuration": {"rules": [{"destination": [{"region": "eu-west-1"}]}]}},
        "replication_configuration",
    ),
    (  # a number where a string goes
        "put_replication_rules",
        {"rules": [{"destinations": [{"region": 5, "registryId": ACCOUNT}]}]},
        "rules[0]",
    ),
    ("put_replication_rules", {"rules": {"destinations": []}}, "rules"),  # one rule, no list
    ("put_registry_policy", {"policy_text": {"Statement": [{1, 2}]}}, "policy_text"),  # a set
    ("put_policy_statements", {"statements": {"Sid": "PaymentsA"}}, "statements_json"),
    ("put_policy_statements", {"statements": ["Sid"]}, "statements_json[0]"),
]


@pytest.mark.parametrize(("method", "kwargs", "field"), CLIENT_SIDE)
async def test_undecodable_request_data_is_the_clients_invalid_argument(
    gateway: Gateway, method: str, kwargs: dict[str, Any], field: str
) -> None:
    nothing = Sent()
    async with RegistryConfigClient(
        f"127.0.0.1:{gateway.port}", api_key=KEY, interceptors=[nothing]
    ) as client:
        with pytest.raises(InvalidArgument) as caught:
            await getattr(client, method)(**kwargs)
    error = caught.value
    assert (error.code, error.reason, error.domain) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNDECODABLE_REQUEST",
        CLIENT_DOMAIN,
    )
    assert [v.field for v in error.field_violations] == [field]
    assert error.request_id == "" and nothing.sent == []  # nothing was sent


def sync_typo(port: int) -> RegistryGatewayError:
    with SyncRegistryConfigClient(f"127.0.0.1:{port}", api_key=KEY) as client:
        try:
            client.put_replication_configuration(replication_configuration={"rule": []})
        except RegistryGatewayError as exc:
            return exc
    raise AssertionError("no error")


async def test_the_sync_twin_raises_the_same(gateway: Gateway) -> None:
    error = await asyncio.to_thread(sync_typo, gateway.port)
    assert type(error) is InvalidArgument and error.domain == CLIENT_DOMAIN


def test_a_status_without_details_is_still_typed() -> None:
    error = from_status(grpc.StatusCode.UNAVAILABLE, None, None, [("x-request-id", "r1")])
    assert (error.message, error.request_id, error.retry_delay) == ("UNAVAILABLE", "r1", None)
