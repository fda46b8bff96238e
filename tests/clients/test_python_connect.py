"""The Python client over both transports, against a live gateway with its HTTP listener on.

Issue 28: `RegistryConfigServiceClientSync("http://...")` (the generated Connect client)
failed on its first call (it sends gzip; the gateway accepts no compressed request), and its
errors were raw `ConnectError`s without retries. Now `RegistryConfigClient` and its blocking
twin take an `http://` URL and speak Connect, configured for the gateway (identity), with
the same typed errors, retries, CallInfo, per-call metadata and interceptors as over gRPC.
Most tests here run once per transport (the `target` fixture).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from moto.core.exceptions import JsonRESTError
from moto.ecr.models import ECRBackend
from registry_gateway_client import (
    AsyncProceed,
    Attempt,
    CallInfo,
    DeadlineExceeded,
    EtagMismatch,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RegistryConfigClient,
    RegistryGatewayError,
    Reply,
    ResourceExhausted,
    RetryEvent,
    RetryPolicy,
    SyncRegistryConfigClient,
    Tls,
    Unauthenticated,
    Unavailable,
)
from registry_gateway_client.v1 import registry_pb2 as pb
from registry_gateway_client.v1.registry_connect import RegistryConfigServiceClientSync

from service.app.server import Gateway
from tests.clients.test_python_client import MotoCalls, recovers_on_second_attempt
from tests.conftest import Gate, GatewayFactory
from tests.http.conftest import http_config
from tests.support.certs import make_pki
from tests.support.helpers import ACCOUNT, KEY, OTHER_ACCOUNT, POLICY

TRANSPORTS = ["grpc", "connect"]


@pytest.fixture
async def http_gateway(gateway_factory: GatewayFactory, aws: str) -> Gateway:
    """The default test gateway (tenants `payments` and `readonly`) with HTTP on."""
    return await gateway_factory(http_config(aws))


def address(gateway: Gateway, transport: str) -> str:
    """The client's target for a transport: `host:port` (gRPC) or the HTTP listener's URL."""
    if transport == "grpc":
        return f"127.0.0.1:{gateway.port}"
    return f"http://127.0.0.1:{gateway.http_port}"


@pytest.fixture(params=TRANSPORTS)
def target(request: pytest.FixtureRequest, http_gateway: Gateway) -> str:
    """Each transport in turn, to the same gateway."""
    return address(http_gateway, request.param)


@pytest.fixture
def describe_throttled(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoCalls]:
    """moto throttles DescribeRegistry (UNAVAILABLE, RetryInfo 1 s) while `throttling`."""
    calls = MotoCalls()
    original = ECRBackend.describe_registry

    def flaky(self: ECRBackend) -> Any:
        calls.count += 1
        if calls.throttling:
            raise JsonRESTError("ThrottlingException", "Rate exceeded")
        return original(self)

    monkeypatch.setattr(ECRBackend, "describe_registry", flaky)
    yield calls


# --- the first call ----------------------------------------------------------------


def first_sync_call(port: int) -> tuple[str, str, str]:
    """What the issue did, with the typed blocking client: a URL and defaults."""
    info = CallInfo()
    with SyncRegistryConfigClient(f"http://127.0.0.1:{port}", api_key=KEY) as client:
        described = client.describe_registry(info=info)
    return described.registry_id, info.cache, info.request_id


async def test_the_sync_client_speaks_connect_to_an_http_url_with_defaults(
    http_gateway: Gateway,
) -> None:
    registry_id, cache, request_id = await asyncio.to_thread(
        first_sync_call, http_gateway.http_port
    )
    assert registry_id == ACCOUNT
    assert cache == "miss" and request_id  # response headers, handed on as over gRPC


def generated_client_calls(port: int) -> tuple[ConnectError, str]:
    """The generated Connect client: with its defaults (gzip) the gateway refuses the call;
    with `send_compression=None` (what the README says) it is answered."""
    headers = {"authorization": f"Bearer {KEY}"}
    with RegistryConfigServiceClientSync(f"http://127.0.0.1:{port}") as gzip_by_default:
        try:
            gzip_by_default.describe_registry(pb.DescribeRegistryRequest(), headers=headers)
        except ConnectError as exc:
            refused = exc
        else:
            raise AssertionError("the gateway accepted a gzip request")
    with RegistryConfigServiceClientSync(
        f"http://127.0.0.1:{port}", send_compression=None
    ) as identity:
        answered = identity.describe_registry(pb.DescribeRegistryRequest(), headers=headers)
    return refused, answered.registry_id


async def test_the_generated_connect_client_needs_send_compression_none(
    http_gateway: Gateway,
) -> None:
    refused, registry_id = await asyncio.to_thread(generated_client_calls, http_gateway.http_port)
    assert refused.code == Code.UNIMPLEMENTED
    assert "uncompressed" in refused.message
    assert registry_id == ACCOUNT


# --- the same client on both transports ----------------------------------------------------


async def test_reads_writes_and_call_info(target: str) -> None:
    async with RegistryConfigClient(target, api_key=KEY) as client:
        first, second, fresh = CallInfo(), CallInfo(), CallInfo()
        described = await client.describe_registry(info=first)
        await client.describe_registry(info=second)
        await client.describe_registry(no_cache=True, info=fresh)
        put = await client.put_registry_policy(policy_text=json.loads(POLICY), etag="absent")
        got = await client.get_registry_policy()
        deleted = await client.delete_registry_policy(etag=got.etag)
    assert described.registry_id == ACCOUNT
    assert (first.cache, second.cache, fresh.cache) == ("miss", "hit", "miss")
    assert first.request_id and first.request_id != second.request_id
    assert got.etag == put.etag and deleted.etag == "absent"


async def test_rich_errors_are_the_same_typed_errors(target: str) -> None:
    async with RegistryConfigClient(target, api_key=KEY) as client:
        with pytest.raises(PermissionDenied) as denied:
            await client.describe_registry(registry_id=OTHER_ACCOUNT)
        with pytest.raises(InvalidArgument) as invalid:
            await client.put_registry_policy(policy_text="this is not JSON")
        written = await client.put_registry_policy(policy_text=POLICY)
        with pytest.raises(EtagMismatch) as stale:
            await client.delete_registry_policy(etag="an-old-etag")
        await client.delete_registry_policy(etag=written.etag)
        with pytest.raises(NotFound) as missing:
            await client.get_registry_policy()
    async with RegistryConfigClient(target, api_key="nobody-has-this") as stranger:
        with pytest.raises(Unauthenticated) as unknown:
            await stranger.describe_registry()
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert denied.value.reason == "TARGET_NOT_ALLOWED"
    assert denied.value.metadata["registryId"] == OTHER_ACCOUNT
    assert denied.value.request_id == denied.value.metadata["requestId"] != ""
    assert "policy_text" in [v.field for v in invalid.value.field_violations]
    assert stale.value.current_etag == written.etag
    assert missing.value.reason == "REGISTRY_POLICY_NOT_FOUND"
    assert unknown.value.reason == "INVALID_CREDENTIALS"
    assert "nobody-has-this" not in str(unknown.value)


async def test_unavailable_is_retried_honouring_retry_info(
    target: str, describe_throttled: MotoCalls
) -> None:
    events: list[RetryEvent] = []
    policy = RetryPolicy(on_retry=events.append)
    info = CallInfo()
    provider = recovers_on_second_attempt(describe_throttled)
    async with RegistryConfigClient(target, token_provider=provider, retry=policy) as client:
        described = await client.describe_registry(info=info)
    assert described.registry_id == ACCOUNT
    assert info.attempts == 2
    (event,) = events
    assert (event.rpc, event.attempt) == ("DescribeRegistry", 1)
    assert isinstance(event.error, Unavailable)
    assert event.error.metadata["awsErrorCode"] == "ThrottlingException"
    assert event.delay >= 1.0  # the gateway's RetryInfo (1 s), never sooner


async def test_a_write_without_etag_is_not_retried(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = MotoCalls()

    def throttle(self: ECRBackend, *args: Any, **kwargs: Any) -> Any:
        writes.count += 1
        raise JsonRESTError("ThrottlingException", "Rate exceeded")

    monkeypatch.setattr(ECRBackend, "put_registry_policy", throttle)
    blind, safe = CallInfo(), CallInfo()
    async with RegistryConfigClient(target, api_key=KEY) as client:
        with pytest.raises(Unavailable):
            await client.put_registry_policy(policy_text=POLICY, info=blind)
        reached = writes.count
        with pytest.raises(Unavailable):
            await client.put_registry_policy(
                policy_text=POLICY, etag="absent", retry=RetryPolicy(max_attempts=2), info=safe
            )
    assert (blind.attempts, safe.attempts) == (1, 2)
    assert reached >= 1 and writes.count >= reached + 2  # each attempt reached AWS (moto)


async def test_the_retry_log_line_says_what_why_and_how_long(
    target: str, describe_throttled: MotoCalls, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="registry_gateway_client")
    provider = recovers_on_second_attempt(describe_throttled)
    async with RegistryConfigClient(target, token_provider=provider) as client:
        await client.describe_registry()
    (record,) = [r for r in caplog.records if r.name == "registry_gateway_client"]
    line = record.getMessage()
    assert line.startswith("DescribeRegistry attempt 1 of 4 failed after ")
    assert "UNAVAILABLE reason=UPSTREAM_" in line and "request_id=" in line
    assert "retrying in 1." in line  # the RetryInfo delay, with its jitter
    assert KEY not in line
    fields = record.__dict__
    assert (fields["rpc"], fields["attempt"], fields["code"]) == (
        "DescribeRegistry",
        1,
        "UNAVAILABLE",
    )


async def test_a_predicate_chooses_what_is_retried(
    target: str, describe_throttled: MotoCalls
) -> None:
    seen: list[grpc.StatusCode] = []

    def only_resource_exhausted(error: RegistryGatewayError) -> bool:
        seen.append(error.code)
        return isinstance(error, ResourceExhausted)

    info = CallInfo()
    async with RegistryConfigClient(
        target, api_key=KEY, retry=RetryPolicy(predicate=only_resource_exhausted)
    ) as client:
        with pytest.raises(Unavailable):
            await client.describe_registry(info=info)
    assert info.attempts == 1
    assert seen == [grpc.StatusCode.UNAVAILABLE]


async def test_per_call_metadata_reaches_the_gateway(target: str) -> None:
    # The gateway repeats a caller's x-request-id (safe characters) and reads cache-control.
    first, again = CallInfo(), CallInfo()
    async with RegistryConfigClient(target, api_key=KEY) as client:
        await client.describe_registry()  # now cached
        await client.describe_registry(metadata={"X-Request-Id": "trace-28-a"}, info=first)
        await client.describe_registry(
            metadata=[("x-request-id", "trace-28-b"), ("cache-control", "no-cache")], info=again
        )
        with pytest.raises(ValueError, match="authorization"):
            await client.describe_registry(metadata={"authorization": "Bearer someone-else"})
    assert (first.request_id, first.cache) == ("trace-28-a", "hit")
    assert (again.request_id, again.cache) == ("trace-28-b", "miss")


class Recorder:
    """An interceptor: records each attempt and adds a header to it."""

    def __init__(self, name: str, order: list[str]) -> None:
        self.name = name
        self.order = order
        self.attempts: list[Attempt] = []

    async def intercept(self, attempt: Attempt, proceed: AsyncProceed) -> Reply:
        self.order.append(self.name)
        self.attempts.append(attempt)
        tagged = dataclasses.replace(
            attempt, metadata=(*attempt.metadata, ("x-request-id", f"{self.name}-{attempt.number}"))
        )
        return await proceed(tagged)


async def test_interceptors_see_every_attempt_in_order(
    target: str, describe_throttled: MotoCalls
) -> None:
    order: list[str] = []
    outer, inner = Recorder("outer", order), Recorder("inner", order)
    info = CallInfo()
    provider = recovers_on_second_attempt(describe_throttled)
    async with RegistryConfigClient(
        target, token_provider=provider, interceptors=[outer, inner]
    ) as client:
        await client.describe_registry(info=info)
    assert order == ["outer", "inner", "outer", "inner"]
    assert [a.number for a in inner.attempts] == [1, 2]
    assert {a.rpc for a in inner.attempts} == {"DescribeRegistry"}
    # Both headers were sent; the gateway took the first x-request-id it read: the outer's.
    assert info.request_id == "outer-2"
    assert inner.attempts[0].timeout > inner.attempts[1].timeout  # one deadline, shrinking


async def test_the_clients_deadline_is_deadline_exceeded(target: str, slow_describe: Gate) -> None:
    info = CallInfo()
    async with RegistryConfigClient(target, api_key=KEY) as client:
        with pytest.raises(DeadlineExceeded):
            await client.describe_registry(timeout=0.5, info=info)
    slow_describe.opened.set()
    assert info.attempts == 1


async def test_a_cancelled_call_is_cancelled_not_an_error(target: str, slow_describe: Gate) -> None:
    """connectrpc turns a cancelled task into ConnectError(CANCELED): the client re-raises
    the cancellation, so asyncio.timeout / TaskGroup see what they expect."""
    async with RegistryConfigClient(target, api_key=KEY) as client:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await client.describe_registry(timeout=30)
    slow_describe.opened.set()


async def test_nobody_listening_is_unavailable_and_retried() -> None:
    """A transport failure that never reached a gateway: typed, and retried (a read)."""
    transports = {"127.0.0.1:9": grpc.aio.AioRpcError, "http://127.0.0.1:9": ConnectError}
    for target, raised in transports.items():  # the discard port: refused
        info = CallInfo()
        policy = RetryPolicy(max_attempts=2, initial_backoff=0.01)
        async with RegistryConfigClient(target, api_key=KEY, retry=policy) as client:
            with pytest.raises(Unavailable) as caught:
                await client.describe_registry(timeout=10, info=info)
        assert info.attempts == 2, target
        assert caught.value.request_id == "" and caught.value.reason == ""
        assert isinstance(caught.value.__cause__, raised), target  # what the transport said


def sync_over_connect(port: int) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    with SyncRegistryConfigClient(f"http://127.0.0.1:{port}", api_key=KEY) as client:
        seen["put"] = client.put_registry_policy(policy_text=POLICY)
        try:
            client.delete_registry_policy(etag="stale")
        except EtagMismatch as exc:
            seen["current_etag"] = exc.current_etag
        try:
            client.describe_registry(registry_id=OTHER_ACCOUNT)
        except PermissionDenied as exc:
            seen["denied"] = exc.reason
    return seen


async def test_the_sync_client_over_connect_raises_typed_errors(http_gateway: Gateway) -> None:
    seen = await asyncio.to_thread(sync_over_connect, http_gateway.http_port)
    assert seen["current_etag"] == seen["put"].etag
    assert seen["denied"] == "TARGET_NOT_ALLOWED"


def test_grpc_options_are_refused_for_an_http_target() -> None:
    with pytest.raises(ValueError, match="grpc channel options"):
        SyncRegistryConfigClient("http://127.0.0.1:1", options={"grpc.enable_retries": 0})


async def test_https_with_the_gateways_ca(
    gateway_factory: GatewayFactory, aws: str, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    raw = http_config(aws)
    raw["http"]["tls"] = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    gateway = await gateway_factory(raw)
    url = f"https://127.0.0.1:{gateway.http_port}"
    async with RegistryConfigClient(url, api_key=KEY, tls=Tls(ca_file=pki.ca_cert)) as client:
        assert (await client.describe_registry()).registry_id == ACCOUNT
    # Without `tls`, the system's roots, which do not know the test CA: the handshake
    # fails, typed (and says why: a certificate, not "TLS not configured").
    async with RegistryConfigClient(url, api_key=KEY, retry=RetryPolicy(max_attempts=1)) as bare:
        with pytest.raises(Unavailable) as caught:
            await bare.describe_registry(timeout=10)
    assert isinstance(caught.value.__cause__, ConnectError)
    assert "certificate" in caught.value.message.lower(), caught.value.message
