"""Start-up diagnostics: when an AWS account does not answer (or cannot be used), the log
says why, per account, once, and again when the reason changes."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aioboto3
import grpc
import pytest
from aiobotocore.credentials import AioCredentialResolver
from aiobotocore.session import AioSession
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.app.server import SERVICE_NAME, Gateway, diagnose
from service.aws.upstream import Reachability
from service.config import LogsConfig, from_mapping
from service.errors import FailedPrecondition
from service.observability.logs import configure_logging
from tests.conftest import GatewayFactory, wait_until
from tests.support.aws_proxy import CountingProxy, Fault
from tests.support.helpers import ACCOUNT, OTHER_ACCOUNT, config_dict

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
STS_ACCESS_DENIED = (
    b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
    b"<Type>Sender</Type><Code>AccessDenied</Code><Message>User: "
    b"arn:aws:iam::123456789012:user/gateway is not authorized to perform: "
    b"sts:GetCallerIdentity</Message></Error><RequestId>r-1</RequestId></ErrorResponse>"
)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(LogsConfig(format="json"), stream)
    yield stream
    logging.getLogger("registry_gateway").handlers.clear()
    logging.getLogger("registry_gateway").propagate = True


def account_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [
        line
        for line in lines
        if line["logger"] == "registry_gateway.server"
        and str(line["message"]).startswith("AWS account ")
    ]


async def health_of(gateway: Gateway) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub: Any = health_pb2_grpc.HealthStub(ch)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    return int(response.status)


# --- the reasons, one by one -------------------------------------------------------------------


def client_error(code: str, operation: str = "GetCallerIdentity") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "said AWS"}}, operation)


@pytest.mark.parametrize(
    ("result", "reason", "said"),
    [
        (Reachability(False, TimeoutError()), "TIMEOUT", "did not answer within 6 s"),
        (
            Reachability(False, ConnectTimeoutError(endpoint_url="https://sts.example")),
            "TIMEOUT",
            "at https://sts.example",
        ),
        (
            Reachability(False, ReadTimeoutError(endpoint_url="https://sts.example")),
            "TIMEOUT",
            "did not answer",
        ),
        (Reachability(False, NoCredentialsError()), "NO_CREDENTIALS", "no usable AWS credentials"),
        (
            Reachability(False, EndpointConnectionError(endpoint_url="http://127.0.0.1:9/")),
            "ENDPOINT_REFUSED",
            "cannot connect to http://127.0.0.1:9/",
        ),
        (
            Reachability(True, client_error("AccessDenied", "AssumeRole")),
            "ACCESS_DENIED",
            "on AssumeRole: AccessDenied: said AWS",
        ),
        (
            Reachability(True, client_error("InvalidClientTokenId")),
            "ACCESS_DENIED",
            "InvalidClientTokenId",
        ),
        (Reachability(True, client_error("Throttling")), "AWS_ERROR", "with Throttling"),
        (
            Reachability(True, FailedPrecondition("reach account 2", reason="ACCOUNT_MISMATCH")),
            "ACCOUNT_MISMATCH",
            "reach account 2",
        ),
        (
            Reachability(True, FailedPrecondition("no creds", reason="NO_AWS_CREDENTIALS")),
            "NO_CREDENTIALS",
            "no creds",
        ),
    ],
)
def test_each_reason_is_named(result: Reachability, reason: str, said: str) -> None:
    found = diagnose(result, 6.0)
    assert found is not None
    assert found[0] == reason and said in found[1]


def test_an_account_that_answers_has_nothing_to_say() -> None:
    assert diagnose(Reachability(True), 6.0) is None


# --- a real gateway ----------------------------------------------------------------------------


async def test_refused_then_denied_then_fine_each_said_once(
    gateway_factory: GatewayFactory, proxy: CountingProxy, json_log: io.StringIO
) -> None:
    proxy.stop()  # AWS's endpoint refuses connections
    gateway = await gateway_factory(config_dict(proxy.url))
    assert await health_of(gateway) == NOT_SERVING
    lines = account_lines(json_log)
    assert [(x["level"], x["reason"], x["registry_id"], x["region"]) for x in lines] == [
        ("ERROR", "ENDPOINT_REFUSED", ACCOUNT, "us-east-1")
    ]
    assert proxy.url in lines[0]["message"] and "does not answer" in lines[0]["message"]
    summary = [x for x in json_log.getvalue().splitlines() if "no AWS account reachable" in x]
    assert len(summary) == 1

    # AWS answers, refusing the credentials: said once, with AWS's words; now SERVING (a
    # refusal is an answer), and the probes go on until the account can be used.
    proxy.fault = Fault(frozenset({"sts:GetCallerIdentity"}), status=403, body=STS_ACCESS_DENIED)
    proxy.start()
    denied = await wait_until(
        lambda: [x for x in account_lines(json_log) if x["reason"] == "ACCESS_DENIED"],
        what="the access-denied line",
    )
    assert "not authorized to perform: sts:GetCallerIdentity" in denied[0]["message"]
    assert await health_of(gateway) == SERVING

    proxy.fault = None
    answers = await wait_until(
        lambda: [x for x in account_lines(json_log) if "answers now" in x["message"]],
        what="the account answering",
        timeout=20,
    )
    assert answers[0]["registry_id"] == ACCOUNT
    # Each state said exactly once, however many probes saw it.
    assert [x.get("reason") for x in account_lines(json_log)] == [
        "ENDPOINT_REFUSED",
        "ACCESS_DENIED",
        None,
    ]


async def test_timeout_is_said(
    gateway_factory: GatewayFactory, proxy: CountingProxy, json_log: io.StringIO
) -> None:
    proxy.fault = Fault(frozenset({"sts:GetCallerIdentity"}), delay_seconds=20)
    raw = config_dict(proxy.url)
    raw["aws"]["connect_timeout_seconds"] = 0.2  # the probe waits 3x this
    try:
        gateway = await gateway_factory(raw)
        assert await health_of(gateway) == NOT_SERVING
    finally:
        proxy.released.set()
    [line] = account_lines(json_log)
    assert line["reason"] == "TIMEOUT" and "within 0.6 s" in line["message"]


async def test_account_mismatch_is_said_while_another_account_serves(
    gateway_factory: GatewayFactory, aws: str, json_log: io.StringIO
) -> None:
    raw = config_dict(aws)
    # The test credentials reach ACCOUNT, not OTHER_ACCOUNT.
    raw["tenants"][1]["registries"][0]["registry_id"] = OTHER_ACCOUNT
    gateway = await gateway_factory(raw)
    assert await health_of(gateway) == SERVING
    mismatch = [x for x in account_lines(json_log) if x.get("reason") == "ACCOUNT_MISMATCH"]
    assert len(mismatch) == 1
    assert mismatch[0]["registry_id"] == OTHER_ACCOUNT
    assert f"reach account {ACCOUNT}" in mismatch[0]["message"]
    assert "answers but cannot be used" in mismatch[0]["message"]


@pytest.fixture
async def no_credentials_gateway(aws: str) -> AsyncIterator[Gateway]:
    def session() -> aioboto3.Session:
        # A credential chain with nothing in it: what a pod without a role has.
        core = AioSession()
        core.register_component("credential_provider", AioCredentialResolver(providers=[]))
        return aioboto3.Session(botocore_session=core)

    gateway = Gateway(from_mapping(config_dict(aws), environ={}), session_factory=session)
    await gateway.start()
    yield gateway
    await gateway.stop_now()


async def test_no_credentials_is_said(
    json_log: io.StringIO, no_credentials_gateway: Gateway
) -> None:
    assert await health_of(no_credentials_gateway) == NOT_SERVING
    [line] = account_lines(json_log)
    assert line["reason"] == "NO_CREDENTIALS" and line["level"] == "ERROR"
    assert "no usable AWS credentials" in line["message"]
