"""A write AWS applied but answered after botocore's read timeout (issue 26, finding 4),
through a real gateway, moto and a fault proxy that forwards the write and holds its answer.

Once sent, a write's outcome is unknown until read back: one AWS holds is the caller's write
(answered OK, recorded under its author, never reported as drift); one AWS does not hold
was not applied (WRITE_NOT_APPLIED, safe to retry); one whose read-back fails too is
WRITE_OUTCOME_UNKNOWN. Only a connection that never carried the request is "unreachable".
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from botocore.config import Config
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
from moto.ecr.models import ecr_backends

from service.app.embedded import session_factory
from service.app.server import Gateway
from service.aws.errors import from_botocore_error, watch_attempts
from service.ecr import etags
from service.errors import UpstreamFailure, UpstreamNoAnswer
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from service.state.cache import CacheKey
from tests.conftest import GatewayFactory, wait_until
from tests.support.aws_proxy import CountingProxy, Fault, ecr_error
from tests.support.helpers import ACCOUNT, POLICY, config_dict, metadata, rich_error, settled_text

REGION = "us-east-1"
PUT_POLICY = frozenset({"ecr:PutRegistryPolicy"})
PUT_REPLICATION = frozenset({"ecr:PutReplicationConfiguration"})
GET_POLICY = frozenset({"ecr:GetRegistryPolicy"})
POLICY_KEY = CacheKey(ACCOUNT, REGION, "policy")
REPLICATION_KEY = CacheKey(ACCOUNT, REGION, "registry")
# The gateway's read timeout, and how long the proxy holds AWS's answer at most: released
# by the test (`proxy.released`) once the caller has its answer.
READ_TIMEOUT_SECONDS = 1.0
HELD_SECONDS = 60.0
EU = pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT)


def late_config(proxy: CountingProxy, audit: Path, **aws: Any) -> dict[str, Any]:
    raw = config_dict(proxy.url)
    raw["aws"].update({"read_timeout_seconds": READ_TIMEOUT_SECONDS, **aws})
    raw["audit"] = {"path": str(audit)}
    return raw


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in settled_text(path).splitlines()]


def drift_events(path: Path) -> list[dict[str, Any]]:
    return [line for line in audit_lines(path) if "event" in line]


def write_lines(path: Path, rpc: str) -> list[dict[str, Any]]:
    return [line for line in audit_lines(path) if line.get("rpc") == rpc and "event" not in line]


async def call(gateway: Gateway, rpc: str, request: Any, timeout: float = 30) -> Any:
    """(code, reason, response or rich error) of one call."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        try:
            response = await getattr(stub, rpc)(request, metadata=metadata(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            error = rich_error(exc)
            return exc.code(), error.info.reason, error
        return grpc.StatusCode.OK, None, response


async def fresh_policy(gateway: Gateway) -> Any:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        return await stub.GetRegistryPolicy(
            pb.GetRegistryPolicyRequest(),
            metadata=(*metadata(), ("cache-control", "no-cache")),
            timeout=30,
        )


async def started(gateway_factory: GatewayFactory, proxy: CountingProxy, audit: Path) -> Gateway:
    gateway = await gateway_factory(late_config(proxy, audit))
    await fresh_policy_absent(gateway)  # clients made, STS asked; the history's first version
    return gateway


async def fresh_policy_absent(gateway: Gateway) -> None:
    code, reason, _ = await call(gateway, "GetRegistryPolicy", pb.GetRegistryPolicyRequest())
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "REGISTRY_POLICY_NOT_FOUND")


async def test_a_put_applied_but_answered_late_is_the_callers_write(
    gateway_factory: GatewayFactory, proxy: CountingProxy, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    gateway = await started(gateway_factory, proxy, audit)
    proxy.fault = Fault(PUT_POLICY, late_seconds=HELD_SECONDS)
    try:
        code, reason, response = await call(
            gateway,
            "PutRegistryPolicy",
            pb.PutRegistryPolicyRequest(policy_text=POLICY, etag="absent"),
        )
    finally:
        proxy.fault = None
        proxy.released.set()
    # AWS applied it, and its read-back says so: the caller's write, answered as such.
    assert ecr_backends[ACCOUNT][REGION].registry_policy == POLICY
    assert proxy.count("ecr:PutRegistryPolicy") == 1  # sent once (max_attempts 1)
    assert (code, reason) == (grpc.StatusCode.OK, None), response
    assert response.etag == etags.of_policy(POLICY)
    # Recorded under its author, not as a change made around the gateway.
    head = await gateway.history.head(POLICY_KEY)
    assert head is not None
    assert (head.origin, head.tenant, head.rpc, head.etag) == (
        "gateway",
        "payments",
        "PutRegistryPolicy",
        etags.of_policy(POLICY),
    )
    assert head.identity is not None and head.identity.startswith("api_key:")
    # Every later read agrees with the history: no drift alert on the gateway's own write.
    assert (await fresh_policy(gateway)).etag == etags.of_policy(POLICY)
    assert drift_events(audit) == []
    [line] = write_lines(audit, "PutRegistryPolicy")
    assert (line["outcome"], line["etag_after"]) == ("OK", etags.of_policy(POLICY))


async def test_a_replication_write_applied_but_answered_late_is_the_callers_write(
    gateway_factory: GatewayFactory, proxy: CountingProxy, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    gateway = await started(gateway_factory, proxy, audit)
    configuration = pb.ReplicationConfiguration(rules=[pb.ReplicationRule(destinations=[EU])])
    proxy.fault = Fault(PUT_REPLICATION, late_seconds=HELD_SECONDS)
    try:
        code, reason, response = await call(
            gateway,
            "PutReplicationConfiguration",
            pb.PutReplicationConfigurationRequest(replication_configuration=configuration),
        )
    finally:
        proxy.fault = None
        proxy.released.set()
    assert ecr_backends[ACCOUNT][REGION].replication_config is not None
    assert (code, reason) == (grpc.StatusCode.OK, None), response
    head = await gateway.history.head(REPLICATION_KEY)
    assert head is not None
    assert (head.origin, head.tenant, head.etag) == ("gateway", "payments", response.etag)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        described = await pb_grpc.RegistryConfigServiceStub(ch).DescribeRegistry(
            pb.DescribeRegistryRequest(),
            metadata=(*metadata(), ("cache-control", "no-cache")),
            timeout=30,
        )
    assert described.etag == response.etag
    assert drift_events(audit) == []


async def test_a_put_sent_but_not_applied_is_told_so_and_can_be_retried(
    gateway_factory: GatewayFactory, proxy: CountingProxy, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    gateway = await started(gateway_factory, proxy, audit)
    # The proxy takes the write and never passes it on (nor answers): sent, not applied.
    proxy.fault = Fault(PUT_POLICY, delay_seconds=HELD_SECONDS, reset=True)
    try:
        code, reason, error = await call(
            gateway,
            "PutRegistryPolicy",
            pb.PutRegistryPolicyRequest(policy_text=POLICY, etag="absent"),
        )
    finally:
        proxy.fault = None
        proxy.released.set()
    assert ecr_backends[ACCOUNT][REGION].registry_policy is None
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "WRITE_NOT_APPLIED")
    assert error.retry_info is not None  # retry, with the same etag: it still holds
    assert error.info.metadata["currentEtag"] == "absent"
    head = await gateway.history.head(POLICY_KEY)
    assert head is None or head.etag == "absent"  # nothing recorded for a write not applied
    [line] = write_lines(audit, "PutRegistryPolicy")
    assert (line["outcome"], line["reason"]) == ("UNAVAILABLE", "WRITE_NOT_APPLIED")
    # The retry the answer asks for goes through.
    code, reason, _ = await call(
        gateway, "PutRegistryPolicy", pb.PutRegistryPolicyRequest(policy_text=POLICY, etag="absent")
    )
    assert (code, reason) == (grpc.StatusCode.OK, None)
    assert ecr_backends[ACCOUNT][REGION].registry_policy == POLICY
    assert drift_events(audit) == []


async def test_a_put_without_answer_nor_read_back_is_outcome_unknown(
    gateway_factory: GatewayFactory, proxy: CountingProxy, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    gateway = await started(gateway_factory, proxy, audit)
    proxy.fault = Fault(PUT_POLICY, late_seconds=HELD_SECONDS)
    try:
        pending = asyncio.ensure_future(
            call(gateway, "PutRegistryPolicy", pb.PutRegistryPolicyRequest(policy_text=POLICY))
        )
        await wait_until(
            lambda: ecr_backends[ACCOUNT][REGION].registry_policy is not None,
            what="the put to reach AWS",
        )
        # AWS fails every read from now on (the held put keeps the fault it met).
        proxy.fault = Fault(GET_POLICY, status=500, body=ecr_error("ServerException"))
        code, reason, error = await pending
    finally:
        proxy.fault = None
        proxy.released.set()
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "WRITE_OUTCOME_UNKNOWN")
    assert error.retry_info is not None
    assert "read again" in error.message
    [line] = write_lines(audit, "PutRegistryPolicy")
    assert (line["outcome"], line["reason"]) == ("UNAVAILABLE", "WRITE_OUTCOME_UNKNOWN")


# --- sent or not: botocore's errors, across its own retries (real aiobotocore, real sockets)


class _Silent:
    """A TCP server that takes connections and answers nothing (a request sent, no answer),
    then stops listening (the next connection is refused: nothing sent)."""

    def __init__(self) -> None:
        self.accepted: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted.append(writer)
            if self.server is not None:
                self.server.close()  # no second connection: refused from now on

        self.server = await asyncio.start_server(held, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


async def test_a_retry_that_cannot_connect_after_an_attempt_was_sent_is_not_not_sent() -> None:
    silent = _Silent()
    port = await silent.start()
    config = Config(
        retries={"mode": "standard", "total_max_attempts": 2},
        connect_timeout=1,
        read_timeout=READ_TIMEOUT_SECONDS,
    )
    async with session_factory().client(
        "ecr",
        region_name=REGION,
        endpoint_url=f"http://127.0.0.1:{port}",
        config=config,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ) as client:
        watch_attempts(client)
        with pytest.raises(EndpointConnectionError) as caught:
            await client.put_registry_policy(policyText=POLICY)
    for writer in silent.accepted:
        writer.close()
    assert len(silent.accepted) == 1  # the first attempt was sent; the retry was refused
    mapped = from_botocore_error(caught.value, "put_registry_policy")
    assert isinstance(mapped, UpstreamNoAnswer)


def test_only_a_connection_never_made_is_not_sent() -> None:
    refused = EndpointConnectionError(
        endpoint_url="http://127.0.0.1:9",
        error=aiohttp.ClientConnectorError(
            aiohttp.client_reqrep.ConnectionKey("127.0.0.1", 9, False, True, None, None, None),
            ConnectionRefusedError(111, "refused"),
        ),
    )
    unresolved = EndpointConnectionError(endpoint_url="http://x", error=socket.gaierror())
    reset_while_reading = EndpointConnectionError(
        endpoint_url="http://127.0.0.1:9", error=aiohttp.ClientOSError(104, "reset by peer")
    )
    for exc in (refused, unresolved, ConnectTimeoutError(endpoint_url="http://127.0.0.1:9")):
        mapped = from_botocore_error(exc, "put_registry_policy")
        assert isinstance(mapped, UpstreamFailure) and not isinstance(mapped, UpstreamNoAnswer)
        assert mapped.reason == "UPSTREAM_UNREACHABLE"
    for exc in (reset_while_reading, ReadTimeoutError(endpoint_url="http://127.0.0.1:9")):
        mapped = from_botocore_error(exc, "put_registry_policy")
        assert isinstance(mapped, UpstreamNoAnswer)
        assert mapped.reason == "UPSTREAM_UNREACHABLE"  # a read is retried as before
