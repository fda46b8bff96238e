"""The typed Python client (`registry_gateway_client`) against live gateways on real moto.

The async client runs in the test's event loop beside the in-process gateway; the sync twin
blocks, so it runs in a worker thread (`asyncio.to_thread`) while the loop keeps serving.
Retries are provoked for real: the tenant's write rate limit (RESOURCE_EXHAUSTED with a
short RetryInfo) and moto answering ThrottlingException (UNAVAILABLE, RetryInfo 1 s).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from moto.core.exceptions import JsonRESTError
from moto.ecr.models import ECRBackend
from registry_gateway_client import (
    DOMAIN,
    CallInfo,
    EtagMismatch,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RegistryConfigClient,
    RegistryGatewayError,
    ResourceExhausted,
    RetryPolicy,
    SyncRegistryConfigClient,
    Tls,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
    from_status,
    retryable,
)
from registry_gateway_client._retry import Attempts
from registry_gateway_client.v1 import registry_pb2 as pb

from service.app.server import Gateway
from tests.conftest import GatewayFactory
from tests.support.certs import client_cert, make_pki
from tests.support.helpers import ACCOUNT, KEY, OTHER_ACCOUNT, OTHER_KEY, PARTNER_ACCOUNT, POLICY
from tests.support.helpers import config_dict as base_config

ROOT = Path(__file__).resolve().parents[2]
EU = pb.ReplicationDestination(registry_id=ACCOUNT, region="eu-west-1")
PARTNER = pb.ReplicationDestination(registry_id=PARTNER_ACCOUNT, region="us-west-2")
# The body of `aws ecr put-replication-configuration --cli-input-json`, as a dict.
AWS_REPLICATION: dict[str, Any] = {
    "rules": [
        {
            "destinations": [{"region": "eu-west-1", "registryId": ACCOUNT}],
            "repositoryFilters": [{"filter": "prod", "filterType": "PREFIX_MATCH"}],
        }
    ]
}


def target(gateway: Gateway) -> str:
    return f"127.0.0.1:{gateway.port}"


def stored_destinations() -> set[tuple[str, str]]:
    """What moto (AWS) holds now: every (registry id, region) replicated to."""
    from moto.ecr.models import ecr_backends

    config: dict[str, Any] = ecr_backends[ACCOUNT]["us-east-1"].replication_config
    return {
        (d["registryId"], d["region"]) for rule in config["rules"] for d in rule["destinations"]
    }


def add(destination: pb.ReplicationDestination) -> Any:
    """A change for update_replication_configuration: add one destination to rule 0."""

    def change(config: pb.ReplicationConfiguration) -> None:
        if not config.rules:
            config.rules.add()
        if destination not in config.rules[0].destinations:
            config.rules[0].destinations.append(destination)

    return change


class MotoCalls:
    """Counts calls of a patched moto backend method; `throttling` says whether it fails."""

    def __init__(self) -> None:
        self.count = 0
        self.throttling = True


@pytest.fixture
def throttled_policy_writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoCalls]:
    """moto answers every PutRegistryPolicy with ThrottlingException, as a busy ECR does."""
    calls = MotoCalls()

    def throttle(self: ECRBackend, *args: Any, **kwargs: Any) -> Any:
        calls.count += 1
        raise JsonRESTError("ThrottlingException", "Rate exceeded")

    monkeypatch.setattr(ECRBackend, "put_registry_policy", throttle)
    yield calls


@pytest.fixture
def describe_throttled(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoCalls]:
    """moto throttles DescribeRegistry until the test sets `throttling` to False.

    A flag rather than "the first N calls": the gateway's botocore may itself retry within
    one gRPC call, and these tests are about the client's attempts, not the gateway's.
    """
    calls = MotoCalls()
    original = ECRBackend.describe_registry

    def flaky(self: ECRBackend) -> Any:
        calls.count += 1
        if calls.throttling:
            raise JsonRESTError("ThrottlingException", "Rate exceeded")
        return original(self)

    monkeypatch.setattr(ECRBackend, "describe_registry", flaky)
    yield calls


def recovers_on_second_attempt(calls: MotoCalls) -> Any:
    """A token provider (asked before each attempt) that ends the throttling on the second."""
    asked: list[int] = []

    def provider() -> str:
        asked.append(1)
        calls.throttling = len(asked) < 2
        return KEY

    return provider


# --- the five operations -------------------------------------------------------------------


async def test_the_five_operations_with_keyword_arguments(gateway: Gateway) -> None:
    async with RegistryConfigClient(target(gateway), api_key=KEY) as client:
        put = await client.put_replication_configuration(replication_configuration=AWS_REPLICATION)
        described = await client.describe_registry()
        assert described.registry_id == ACCOUNT
        assert described.replication_configuration == put.replication_configuration
        assert described.replication_configuration.rules[0].destinations == [EU]
        assert described.etag == put.etag != ""

        policy = await client.put_registry_policy(policy_text=json.loads(POLICY), etag="absent")
        assert json.loads(policy.policy_text) == json.loads(POLICY)
        got = await client.get_registry_policy()
        assert got.policy_text == policy.policy_text and got.etag == policy.etag

        deleted = await client.delete_registry_policy(etag=got.etag)
        assert deleted.etag == "absent"
        with pytest.raises(NotFound) as caught:
            await client.get_registry_policy()
    assert caught.value.reason == "REGISTRY_POLICY_NOT_FOUND"
    assert caught.value.request_id


async def test_generated_request_messages_are_taken_as_they_are(gateway: Gateway) -> None:
    request = pb.PutRegistryPolicyRequest(policy_text=POLICY, validate_only=True)
    async with RegistryConfigClient(target(gateway), api_key=KEY, region="us-east-1") as client:
        planned = await client.put_registry_policy(request)
        # validate_only wrote nothing: there is still no policy.
        with pytest.raises(NotFound):
            await client.get_registry_policy(pb.GetRegistryPolicyRequest(registry_id=ACCOUNT))
    assert planned.changes and planned.changes[0].action == "add"
    assert request.registry_id == ""  # the caller's message is not modified


async def test_call_info_has_the_cache_outcome_and_request_id(gateway: Gateway) -> None:
    async with RegistryConfigClient(target(gateway), api_key=KEY) as client:
        first, second, fresh = CallInfo(), CallInfo(), CallInfo()
        await client.describe_registry(info=first)
        await client.describe_registry(info=second)
        await client.describe_registry(no_cache=True, info=fresh)
    assert (first.cache, second.cache, fresh.cache) == ("miss", "hit", "miss")
    assert first.request_id and first.request_id != second.request_id
    assert first.attempts == 1


async def test_default_registry_and_region_go_on_every_request(gateway: Gateway) -> None:
    # The readonly tenant may read us-east-1 only: a eu-west-1 default is refused.
    async with RegistryConfigClient(
        target(gateway), api_key=OTHER_KEY, registry_id=ACCOUNT, region="eu-west-1"
    ) as client:
        with pytest.raises(PermissionDenied) as caught:
            await client.describe_registry()
        assert (await client.describe_registry(region="us-east-1")).registry_id == ACCOUNT
    assert caught.value.metadata["region"] == "eu-west-1"
    assert caught.value.metadata["registryId"] == ACCOUNT


# --- typed errors --------------------------------------------------------------------------


async def test_permission_denied_keeps_reason_metadata_and_request_id(gateway: Gateway) -> None:
    async with RegistryConfigClient(target(gateway), api_key=KEY) as client:
        with pytest.raises(PermissionDenied) as caught:
            await client.describe_registry(registry_id=OTHER_ACCOUNT)
    error = caught.value
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.reason == "TARGET_NOT_ALLOWED"
    assert error.domain == "registry-gateway"
    assert error.metadata["tenant"] == "payments"
    assert error.metadata["rpc"] == "DescribeRegistry"
    assert error.request_id == error.metadata["requestId"] != ""
    assert error.request_id in str(error)


async def test_invalid_argument_lists_field_violations(gateway: Gateway) -> None:
    async with RegistryConfigClient(target(gateway), api_key=KEY) as client:
        with pytest.raises(InvalidArgument) as caught:
            await client.put_registry_policy(policy_text="this is not JSON")
    fields = [v.field for v in caught.value.field_violations]
    assert "policy_text" in fields, caught.value.field_violations
    assert all(v.description for v in caught.value.field_violations)


async def test_etag_mismatch_carries_the_current_etag(gateway: Gateway) -> None:
    async with RegistryConfigClient(target(gateway), api_key=KEY) as client:
        written = await client.put_registry_policy(policy_text=POLICY)
        with pytest.raises(EtagMismatch) as caught:
            await client.delete_registry_policy(etag="an-old-etag")
        assert (await client.get_registry_policy()).policy_text == written.policy_text
    assert caught.value.code == grpc.StatusCode.ABORTED
    assert caught.value.current_etag == written.etag


async def test_unknown_key_is_unauthenticated(gateway: Gateway) -> None:
    async with RegistryConfigClient(target(gateway), api_key="nobody-has-this") as client:
        with pytest.raises(Unauthenticated) as caught:
            await client.describe_registry()
    assert caught.value.reason == "INVALID_CREDENTIALS"
    assert "nobody-has-this" not in str(caught.value)


# --- credentials ---------------------------------------------------------------------------


async def test_token_provider_is_asked_before_every_attempt(
    gateway: Gateway, describe_throttled: MotoCalls
) -> None:
    asked: list[int] = []

    async def provider() -> str:  # a JWT source would mint or refresh a token here
        asked.append(1)
        describe_throttled.throttling = len(asked) < 2  # the first attempt fails
        return KEY

    info = CallInfo()
    async with RegistryConfigClient(target(gateway), token_provider=provider) as client:
        await client.describe_registry(info=info)
    assert info.attempts == 2
    assert len(asked) == 2


def test_sync_token_provider_and_api_key_are_exclusive() -> None:
    with pytest.raises(ValueError, match="not both"):
        SyncRegistryConfigClient("127.0.0.1:1", api_key=KEY, token_provider=lambda: KEY)


async def test_mtls_client_certificate_is_the_credential(
    gateway_factory: GatewayFactory, aws: str, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    spiffe_id = "spiffe://corp.example/ns/payments/sa/deployer"
    raw = base_config(aws)
    raw["tenants"][0]["spiffe_ids"] = [spiffe_id]
    raw["tls"] = {
        "cert_file": str(pki.server_cert),
        "key_file": str(pki.server_key),
        "client_ca_file": str(pki.ca_cert),
        "client_auth": "require",
    }
    gateway = await gateway_factory(raw)
    cert, key = client_cert(pki, "deployer", spiffe_id)
    tls = Tls(ca_file=pki.ca_cert, cert_file=cert, key_file=key, server_name="localhost")
    async with RegistryConfigClient(target(gateway), tls=tls) as client:
        assert (await client.describe_registry()).registry_id == ACCOUNT
    # Without a client certificate the handshake itself fails: no status from the gateway.
    async with RegistryConfigClient(
        target(gateway), tls=Tls(ca_file=pki.ca_cert, server_name="localhost"), api_key=KEY
    ) as bare:
        with pytest.raises(Unavailable):
            await bare.describe_registry(retry=RetryPolicy(max_attempts=1), timeout=5)


# --- retries -------------------------------------------------------------------------------


async def write_limited(factory: GatewayFactory, aws: str, writes_per_second: float) -> Gateway:
    """A gateway allowing a burst of one write, then one every 1/writes_per_second s.

    A read first, so that the gateway's one-time account check is done: the first write is
    then quick, and a second one comes well before the bucket has refilled.
    """
    raw = base_config(aws)
    raw["rate_limit"] = {"reads_per_second": 100, "writes_per_second": writes_per_second}
    raw["rate_limit"]["burst"] = 1
    gateway = await factory(raw)
    async with RegistryConfigClient(target(gateway), api_key=KEY) as client:
        await client.describe_registry()
    return gateway


@pytest.fixture
async def rate_limited(gateway_factory: GatewayFactory, aws: str) -> Gateway:
    """One write every 4 s: the second write of a test is refused even on a loaded machine
    (it has 4 s to come), and a retry after the RetryInfo delay fits the 10 s deadline."""
    return await write_limited(gateway_factory, aws, 0.25)


@pytest.fixture
async def slowly_refilled(gateway_factory: GatewayFactory, aws: str) -> Gateway:
    """One write every 10 s: for tests that must be refused, with a wide margin."""
    return await write_limited(gateway_factory, aws, 0.1)


async def test_write_without_etag_is_not_retried(slowly_refilled: Gateway) -> None:
    async with RegistryConfigClient(target(slowly_refilled), api_key=KEY) as client:
        await client.put_registry_policy(policy_text=POLICY)
        info = CallInfo()
        with pytest.raises(ResourceExhausted) as caught:
            await client.put_registry_policy(policy_text=POLICY, info=info)
    assert info.attempts == 1
    assert caught.value.reason == "RATE_LIMITED"
    assert caught.value.retry_delay is not None and caught.value.retry_delay > 0
    assert caught.value.quota_violations


async def test_write_with_etag_is_retried_after_the_retry_info_delay(
    rate_limited: Gateway,
) -> None:
    async with RegistryConfigClient(target(rate_limited), api_key=KEY) as client:
        first = await client.put_registry_policy(policy_text=POLICY)
        info = CallInfo()
        deleted = await client.delete_registry_policy(etag=first.etag, info=info)
    assert deleted.etag == "absent"
    assert info.attempts == 2


async def test_write_without_etag_is_retried_when_the_caller_opts_in(
    rate_limited: Gateway,
) -> None:
    opt_in = RetryPolicy(retry_writes_without_etag=True)
    async with RegistryConfigClient(target(rate_limited), api_key=KEY, retry=opt_in) as client:
        await client.put_registry_policy(policy_text=POLICY)
        info = CallInfo()
        await client.delete_registry_policy(info=info)
    assert info.attempts == 2


async def test_unavailable_read_is_retried_honouring_retry_info(
    gateway: Gateway, describe_throttled: MotoCalls
) -> None:
    info = CallInfo()
    provider = recovers_on_second_attempt(describe_throttled)
    async with RegistryConfigClient(target(gateway), token_provider=provider) as client:
        started = time.monotonic()
        described = await client.describe_registry(info=info)
        elapsed = time.monotonic() - started
    assert described.registry_id == ACCOUNT
    assert info.attempts == 2
    # The gateway's RetryInfo says 1 s; the client's own first backoff is at most 0.1 s.
    assert elapsed >= 1.0


async def test_unavailable_write_with_etag_stops_after_max_attempts(
    gateway: Gateway, throttled_policy_writes: MotoCalls
) -> None:
    info, unconditional = CallInfo(), CallInfo()
    async with RegistryConfigClient(target(gateway), api_key=KEY) as client:
        with pytest.raises(Unavailable) as caught:
            await client.put_registry_policy(
                policy_text=POLICY, etag="absent", retry=RetryPolicy(max_attempts=2), info=info
            )
        with pytest.raises(Unavailable):
            await client.put_registry_policy(policy_text=POLICY, info=unconditional)
    assert info.attempts == 2
    assert unconditional.attempts == 1
    assert throttled_policy_writes.count > 0
    assert caught.value.metadata["awsErrorCode"] == "ThrottlingException"


@pytest.fixture
async def one_filter_share(gateway_factory: GatewayFactory, aws: str) -> Gateway:
    """Tenant payments' share of the registry: one repository filter (`max_filters`)."""
    raw = base_config(aws)
    raw["tenants"][0]["registries"][0]["max_filters"] = 1
    return await gateway_factory(raw)


def started(gateway: Gateway, rpc: str) -> float:
    """Calls of `rpc` the gateway saw begin (its own count, not the client's)."""
    labels = {
        "grpc_type": "unary",
        "grpc_service": "ecr.registry.v1.RegistryConfigService",
        "grpc_method": rpc,
    }
    return gateway.metrics.registry.get_sample_value("grpc_server_started_total", labels) or 0


async def test_a_share_refusal_is_not_retried(one_filter_share: Gateway) -> None:
    # Retry-safe (an etag), patient (8 attempts, 20 s): still one call, for the refusal has
    # no RetryInfo and no repeat can change it. Hostile side: a tenant's client cannot turn
    # one refused request into a stream of them against the registry's lock and budget.
    rule = {
        "destinations": [{"region": "eu-west-1", "registryId": ACCOUNT}],
        "repositoryFilters": [
            {"filter": "payments/a", "filterType": "PREFIX_MATCH"},
            {"filter": "payments/b", "filterType": "PREFIX_MATCH"},
        ],
    }
    patient = RetryPolicy(max_attempts=8, initial_backoff=0.01)
    info = CallInfo()
    async with RegistryConfigClient(target(one_filter_share), api_key=KEY) as client:
        empty = await client.get_replication_rules()
        with pytest.raises(ResourceExhausted) as caught:
            await client.put_replication_rules(
                rules=[rule], etag=empty.etag, retry=patient, timeout=20, info=info
            )
    assert caught.value.reason == "REPLICATION_QUOTA_EXCEEDED"
    assert caught.value.retry_delay is None
    assert caught.value.quota_violations  # still typed, with its QuotaFailure
    assert info.attempts == 1
    assert started(one_filter_share, "PutReplicationRules") == 1


async def test_a_rate_limited_read_is_retried(gateway_factory: GatewayFactory, aws: str) -> None:
    raw = base_config(aws)
    # A burst of one read, then one every 0.5 s: the second read waits out the RetryInfo.
    raw["rate_limit"] = {"reads_per_second": 2, "writes_per_second": 100, "burst": 1}
    gateway = await gateway_factory(raw)
    info = CallInfo()
    async with RegistryConfigClient(target(gateway), api_key=KEY) as client:
        await client.describe_registry()
        described = await client.describe_registry(timeout=10, info=info)
    assert described.registry_id == ACCOUNT
    assert info.attempts == 2
    assert started(gateway, "DescribeRegistry") == 3


async def test_no_retry_when_the_wait_would_pass_the_deadline(slowly_refilled: Gateway) -> None:
    info = CallInfo()
    async with RegistryConfigClient(target(slowly_refilled), api_key=KEY) as client:
        first = await client.put_registry_policy(policy_text=POLICY)
        with pytest.raises(ResourceExhausted) as caught:
            # Safe to retry (an etag), but the gateway asks for more time than is left.
            await client.delete_registry_policy(etag=first.etag, timeout=0.5, info=info)
    assert info.attempts == 1
    assert caught.value.retry_delay is not None and caught.value.retry_delay > 0.5


# --- update_replication_configuration ------------------------------------------------------


async def test_update_keeps_a_concurrent_writers_destination(gateway: Gateway) -> None:
    seen: list[int] = []
    async with (
        RegistryConfigClient(target(gateway), api_key=KEY) as client,
        RegistryConfigClient(target(gateway), api_key=KEY) as colleague,
    ):

        async def add_eu_racing_a_colleague(config: pb.ReplicationConfiguration) -> None:
            seen.append(len(config.rules))
            if len(seen) == 1:
                # Between our read and our write, a colleague writes (the race made certain).
                await colleague.update_replication_configuration(add(PARTNER))
            add(EU)(config)

        answer = await client.update_replication_configuration(add_eu_racing_a_colleague)
    assert seen == [0, 1]  # called again, on the configuration that had the colleague's rule
    assert list(answer.replication_configuration.rules[0].destinations) == [PARTNER, EU]
    assert stored_destinations() == {(ACCOUNT, "eu-west-1"), (PARTNER_ACCOUNT, "us-west-2")}


async def test_concurrent_updates_lose_nothing(gateway: Gateway) -> None:
    async with RegistryConfigClient(target(gateway), api_key=KEY) as client:
        await asyncio.gather(
            client.update_replication_configuration(add(EU)),
            client.update_replication_configuration(add(PARTNER)),
        )
    assert stored_destinations() == {(ACCOUNT, "eu-west-1"), (PARTNER_ACCOUNT, "us-west-2")}


async def test_update_that_changes_nothing_writes_nothing(gateway: Gateway) -> None:
    async with RegistryConfigClient(target(gateway), api_key=KEY) as client:
        first = await client.update_replication_configuration(add(EU))
        again = await client.update_replication_configuration(add(EU))
    assert again.etag == first.etag
    assert not again.changes


async def test_update_gives_up_after_max_attempts(gateway: Gateway) -> None:
    async with (
        RegistryConfigClient(target(gateway), api_key=KEY) as client,
        RegistryConfigClient(target(gateway), api_key=KEY) as colleague,
    ):
        calls: list[int] = []

        async def always_raced(config: pb.ReplicationConfiguration) -> None:
            calls.append(1)
            # Someone else changes the configuration every time before we write.
            other = EU if len(calls) % 2 else PARTNER
            await colleague.put_replication_configuration(
                replication_configuration=pb.ReplicationConfiguration(
                    rules=[pb.ReplicationRule(destinations=[other])]
                )
            )
            config.rules.add().destinations.append(other)
            config.rules[0].repository_filters.add(filter="mine", filter_type="PREFIX_MATCH")

        with pytest.raises(EtagMismatch):
            await client.update_replication_configuration(always_raced, max_attempts=2)
    assert len(calls) == 2


# --- the synchronous twin ------------------------------------------------------------------


def sync_session(port: int) -> dict[str, Any]:
    """Everything the sync client does in one worker thread; returns what it saw."""
    seen: dict[str, Any] = {}
    with SyncRegistryConfigClient(f"127.0.0.1:{port}", api_key=KEY) as client:
        info = CallInfo()
        seen["describe"] = client.describe_registry(info=info)
        seen["cache"] = info.cache
        seen["put"] = client.put_registry_policy(policy_text=POLICY)
        try:
            client.delete_registry_policy(etag="stale")
        except EtagMismatch as exc:
            seen["current_etag"] = exc.current_etag
        try:
            client.describe_registry(registry_id=OTHER_ACCOUNT)
        except PermissionDenied as exc:
            seen["denied"] = exc.reason
        seen["update"] = client.update_replication_configuration(add(EU))
    return seen


async def test_sync_client_in_a_thread(gateway: Gateway) -> None:
    seen = await asyncio.to_thread(sync_session, gateway.port)
    assert seen["describe"].registry_id == ACCOUNT
    assert seen["cache"] == "miss"
    assert seen["current_etag"] == seen["put"].etag
    assert seen["denied"] == "TARGET_NOT_ALLOWED"
    assert list(seen["update"].replication_configuration.rules[0].destinations) == [EU]
    assert stored_destinations() == {(ACCOUNT, "eu-west-1")}


def sync_write_twice(port: int) -> tuple[CallInfo, str]:
    with SyncRegistryConfigClient(f"127.0.0.1:{port}", api_key=KEY) as client:
        client.put_registry_policy(policy_text=POLICY)
        info = CallInfo()
        try:
            client.put_registry_policy(policy_text=POLICY, info=info)
        except ResourceExhausted as exc:
            return info, exc.reason
    return info, ""


async def test_sync_client_does_not_retry_a_write_without_etag(slowly_refilled: Gateway) -> None:
    info, reason = await asyncio.to_thread(sync_write_twice, slowly_refilled.port)
    assert reason == "RATE_LIMITED"
    assert info.attempts == 1


# --- the retry policy on its own -----------------------------------------------------------


def test_backoff_is_full_jitter_capped_and_never_sooner_than_retry_info() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0)
    assert policy.backoff(1, None, rand=lambda: 1.0) == pytest.approx(0.1)
    assert policy.backoff(3, None, rand=lambda: 1.0) == pytest.approx(0.4)
    assert policy.backoff(10, None, rand=lambda: 1.0) == pytest.approx(1.0)
    assert policy.backoff(10, None, rand=lambda: 0.0) == 0.0
    assert policy.backoff(1, 2.0, rand=lambda: 0.0) == pytest.approx(2.0)
    assert 2.0 <= policy.backoff(1, 2.0, rand=lambda: 1.0) <= 2.2


def rich(code: grpc.StatusCode, reason: str, retry_after: float | None) -> RegistryGatewayError:
    """The typed error of a status as the gateway builds it: ErrorInfo, and RetryInfo when
    `retry_after` is given."""
    status = status_pb2.Status(code=code.value[0], message="x")
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN))
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return from_status(code, "x", status)


@pytest.mark.parametrize(
    ("error", "safe", "retried"),
    [
        (from_rpc_error(grpc.StatusCode.UNAVAILABLE, "x", ()), True, True),
        (rich(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", 0.2), True, True),
        (rich(grpc.StatusCode.RESOURCE_EXHAUSTED, "TENANT_CALLS_IN_FLIGHT", 0.0), True, True),
        # A tenant's share (service/registry/model/slices.py): no RetryInfo, final.
        (rich(grpc.StatusCode.RESOURCE_EXHAUSTED, "REPLICATION_QUOTA_EXCEEDED", None), True, False),
        # grpc's own (a message over its size limit): no details at all.
        (from_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "x", ()), True, False),
        (rich(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", 0.2), False, False),
        (from_rpc_error(grpc.StatusCode.UNAVAILABLE, "x", ()), False, False),
        (from_rpc_error(grpc.StatusCode.ABORTED, "x", ()), True, False),
        (from_rpc_error(grpc.StatusCode.INTERNAL, "x", ()), True, False),
        (from_rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "x", ()), True, False),
    ],
)
def test_only_unavailable_and_resource_exhausted_with_retry_info_are_retried(
    error: RegistryGatewayError, safe: bool, retried: bool
) -> None:
    now = [0.0]
    attempts = Attempts(RetryPolicy(max_attempts=3), 10.0, retry_safe=safe, clock=lambda: now[0])
    assert attempts.start() == 10.0
    if safe:
        assert retryable(error) is retried
    assert (attempts.delay_after(error) is not None) is retried


def test_attempts_stop_at_max_attempts_and_at_the_deadline() -> None:
    now = [0.0]
    attempts = Attempts(RetryPolicy(max_attempts=2), 10.0, retry_safe=True, clock=lambda: now[0])
    unavailable = from_rpc_error(grpc.StatusCode.UNAVAILABLE, "x", ())
    attempts.start()
    assert attempts.delay_after(unavailable) is not None
    now[0] = 4.0
    assert attempts.start() == pytest.approx(6.0)  # what is left of the one deadline
    assert attempts.delay_after(unavailable) is None  # two attempts made
    late = Attempts(RetryPolicy(), 1.0, retry_safe=True, clock=lambda: now[0])
    late.start()
    slow = from_rpc_error(grpc.StatusCode.UNAVAILABLE, "x", ())
    slow.retry_delay = 5.0
    assert late.delay_after(slow) is None  # the wait would pass the deadline


def test_the_sync_twin_has_the_same_methods_and_arguments() -> None:
    def surface(cls: type) -> dict[str, list[tuple[str, Any, Any]]]:
        return {
            name: [
                (p.name, p.kind, p.default) for p in inspect.signature(member).parameters.values()
            ]
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_")
        }

    async_surface = surface(RegistryConfigClient)
    assert len(async_surface) >= 7
    assert surface(SyncRegistryConfigClient) == async_surface
    assert inspect.iscoroutinefunction(RegistryConfigClient.describe_registry)
    assert not inspect.iscoroutinefunction(SyncRegistryConfigClient.describe_registry)


def test_the_sync_twin_is_generated_from_the_async_client() -> None:
    """_sync.py is what `scripts/unasync.py` makes of _aio.py (no hand edits, not stale)."""
    checked = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "unasync.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_slices_of_a_shared_registry(gateway: Gateway) -> None:
    rule = {
        "destinations": [{"region": "eu-west-1", "registryId": ACCOUNT}],
        "repositoryFilters": [{"filter": "payments/api", "filterType": "PREFIX_MATCH"}],
    }
    # A slice statement acts only on the tenant's own repositories (payments/).
    statement = json.loads(POLICY)["Statement"][0] | {
        "Sid": "PaymentsPartnerPull",
        "Resource": f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/payments/*",
    }
    async with RegistryConfigClient(target(gateway), api_key=KEY) as client:
        empty = await client.get_replication_rules()
        assert list(empty.rules) == []
        written = await client.put_replication_rules(rules=[rule], etag=empty.etag)
        mine = await client.get_replication_rules()
        assert [r.repository_filters[0].filter for r in mine.rules] == ["payments/api"]
        assert mine.etag == written.etag != empty.etag
        assert mine.rules_used == 1

        await client.put_policy_statements(statements=[statement])
        got = await client.get_policy_statements()
        assert [s["Sid"] for s in json.loads(got.statements_json)] == ["PaymentsPartnerPull"]
        with pytest.raises(EtagMismatch):
            await client.put_policy_statements(statements=[], etag=empty.etag)
        await client.put_policy_statements(statements=[], etag=got.etag)
        with pytest.raises(NotFound):  # nobody's statement left: the policy was deleted
            await client.get_registry_policy()
