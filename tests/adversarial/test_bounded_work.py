"""Hostile callers against the gateway's work per request: before authentication nothing is
parsed, after it every request is bounded (bytes, fields walked, JSON depth), and AWS is
left exactly as it was."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor

from service.app.server import Gateway
from service.errors import FieldViolation
from service.gen.v1 import registry_pb2 as pb
from service.rpc import wire
from service.rpc.request_limits import largest_request_bytes, max_request_bytes
from tests.conftest import GatewayFactory, wait_until
from tests.support.helpers import KEY, OTHER_ACCOUNT, POLICY, config_dict, metadata, rich_error
from tests.support.moto_writes import MotoWrites, behave_like_ecr, count_writes

SERVICE = "/ecr.registry.v1.RegistryConfigService"
# The finding: 2 MB that upb refuses and pure Python then walked, for anyone.
GARBAGE = b"\x50\x00" * 1_000_000 + b"\x0a\x05ab"


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> MotoWrites:
    behave_like_ecr(monkeypatch)
    return count_writes(monkeypatch)


@pytest.fixture
def locations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the byte strings the gateway tried to diagnose (wire.locate calls)."""
    seen: list[int] = []
    original = wire.locate

    def counted(descriptor: Descriptor, data: bytes, max_fields: int = wire.MAX_FIELDS) -> Any:
        seen.append(len(data))
        return original(descriptor, data, max_fields)

    monkeypatch.setattr(wire, "locate", counted)
    return seen


@pytest.fixture
async def gateway(
    gateway_factory: GatewayFactory, aws: str, tmp_path: Path, writes: MotoWrites
) -> Gateway:
    raw = config_dict(aws)
    raw["audit"] = {"path": str(tmp_path / "audit.jsonl")}
    return await gateway_factory(raw)


@pytest.fixture
async def channel(gateway: Gateway) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        yield ch


RawCall = Callable[..., Any]


def raw_call(channel: grpc.aio.Channel, rpc: str) -> Any:
    """A call that sends bytes as they are (no serializer), as a hostile client can."""
    return channel.unary_unary(f"{SERVICE}/{rpc}")


async def refused(invocation: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await invocation
    return caught.value


async def test_megabytes_are_refused_by_the_transport_before_any_python_runs(
    channel: grpc.aio.Channel, locations: list[int], aws_state: Any
) -> None:
    before = aws_state()
    assert len(GARBAGE) > largest_request_bytes()
    for key in (None, KEY):
        extra = metadata(key) if key else None
        error = await refused(
            raw_call(channel, "PutReplicationConfiguration")(GARBAGE, metadata=extra, timeout=10)
        )
        if key is None:
            # A stranger is refused at its headers, before its message is read at all
            # (service/rpc/interceptor.py); grpc may have refused the size first.
            assert error.code() in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
            continue
        # grpc's own answer: no gateway code ran, so no rich status either.
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert locations == []
    assert aws_state() == before


async def test_a_stranger_s_undecodable_bytes_are_never_read(
    channel: grpc.aio.Channel, locations: list[int], aws_state: Any
) -> None:
    before = aws_state()
    garbage = GARBAGE[: largest_request_bytes() - 8] + b"\x0a\x05ab"
    for rpc in ("DescribeRegistry", "PutRegistryPolicy", "PutReplicationConfiguration"):
        error = await refused(raw_call(channel, rpc)(garbage, timeout=10))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        # With a wrong key too: the bytes wait for an identity that never comes.
        error = await refused(
            raw_call(channel, rpc)(garbage, metadata=metadata("not-a-key"), timeout=10)
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert locations == []  # nothing was parsed or diagnosed before authentication
    assert aws_state() == before


@pytest.mark.parametrize(
    "rpc", ["DescribeRegistry", "PutRegistryPolicy", "PutPolicyStatements", "GetReplicationRules"]
)
async def test_a_tenant_s_oversized_request_is_refused_unread(
    channel: grpc.aio.Channel, locations: list[int], writes: MotoWrites, rpc: str
) -> None:
    # Over the RPC's own bound, within the transport's (the largest RPC's).
    data = b"\x50\x00" * ((max_request_bytes(rpc) + 2) // 2)
    assert max_request_bytes(rpc) < len(data) <= largest_request_bytes()
    error = await refused(raw_call(channel, rpc)(data, metadata=metadata(KEY), timeout=10))
    err = rich_error(error)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.info.reason == "REQUEST_TOO_LARGE"
    assert err.info.metadata["limitBytes"] == str(max_request_bytes(rpc))
    assert locations == []
    assert writes.total == 0


async def test_undecodable_bytes_within_the_limit_are_diagnosed_within_a_budget(
    channel: grpc.aio.Channel, locations: list[int], writes: MotoWrites
) -> None:
    # As many valid empty varint fields as fit the policy's limit, then a broken tag: the
    # diagnosis stops at its budget instead of walking them all.
    limit = max_request_bytes("PutRegistryPolicy")
    data = b"\x50\x00" * ((limit - 8) // 2) + b"\x0a\x05ab"
    assert len(data) <= limit
    error = await refused(
        raw_call(channel, "PutRegistryPolicy")(data, metadata=metadata(KEY), timeout=10)
    )
    err = rich_error(error)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.info.reason == "UNDECODABLE_REQUEST"
    assert "not located further" in err.message
    assert locations == [len(data)]
    assert writes.total == 0


def test_locate_reads_at_most_its_budget_of_fields() -> None:
    descriptor = pb.PutRegistryPolicyRequest.DESCRIPTOR
    broken = b"\x50\x00" * 50 + b"\x0a\x05ab"  # the fault sits after 50 fields
    found = wire.locate(descriptor, broken, max_fields=100)
    assert found == FieldViolation("policy_text", "declares 5 bytes but only 2 remain")
    assert "not located further" in wire.locate(descriptor, broken, max_fields=40).description


async def test_an_unknown_field_flood_is_walked_only_up_to_its_cap(
    channel: grpc.aio.Channel, writes: MotoWrites
) -> None:
    # A valid validate_only write followed by as many unknown fields as fit the limit.
    valid = pb.PutRegistryPolicyRequest(policy_text=POLICY, validate_only=True).SerializeToString()
    limit = max_request_bytes("PutRegistryPolicy")
    flood = valid + b"\xf8\x07\x00" * ((limit - len(valid)) // 3)  # field 127, varint 0
    error = await refused(
        raw_call(channel, "PutRegistryPolicy")(flood, metadata=metadata(KEY), timeout=10)
    )
    err = rich_error(error)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.bad_request is not None and err.bad_request.field_violations[0].field == "127"
    # 13,000+ unknown fields were sent; only the first 100 were looked at (+1: "not all").
    assert int(err.info.metadata["violations"]) == 101
    assert writes.total == 0


async def test_the_largest_legitimate_requests_pass_the_byte_limit(
    channel: grpc.aio.Channel, writes: MotoWrites
) -> None:
    # A bound too tight would refuse what ECR accepts: build the largest requests ECR's
    # limits allow and check they are read (and refused only for what they hold).
    policy = "\U0001f600" * 10_240  # AWS counts characters; 4 bytes each in UTF-8
    request = pb.PutRegistryPolicyRequest(
        policy_text=policy, registry_id="1" * 12, region="x" * 25, etag="e" * 128
    )
    stub_call = channel.unary_unary(
        f"{SERVICE}/PutRegistryPolicy",
        request_serializer=pb.PutRegistryPolicyRequest.SerializeToString,
        response_deserializer=pb.PutRegistryPolicyResponse.FromString,
    )
    error = await refused(stub_call(request, metadata=metadata(KEY), timeout=10))
    assert rich_error(error).info.reason != "REQUEST_TOO_LARGE"
    rule = pb.ReplicationRule(
        destinations=[pb.ReplicationDestination(region="r" * 25, registry_id="1" * 12)] * 100,
        repository_filters=[pb.RepositoryFilter(filter="a" * 256, filter_type="PREFIX_MATCH")]
        * 100,
    )
    replication = pb.PutReplicationConfigurationRequest(
        replication_configuration=pb.ReplicationConfiguration(rules=[rule] * 10),
        registry_id="1" * 12,
        region="x" * 25,
        etag="e" * 128,
        validate_only=True,
    )
    assert len(replication.SerializeToString()) <= max_request_bytes("PutReplicationConfiguration")
    replication_call = channel.unary_unary(
        f"{SERVICE}/PutReplicationConfiguration",
        request_serializer=pb.PutReplicationConfigurationRequest.SerializeToString,
        response_deserializer=pb.PutReplicationConfigurationResponse.FromString,
    )
    error = await refused(replication_call(replication, metadata=metadata(KEY), timeout=10))
    assert rich_error(error).info.reason != "REQUEST_TOO_LARGE"
    assert writes.total == 0


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [40, 3_000, 20_000])
async def test_deeply_nested_statements_are_invalid_not_internal(
    channel: grpc.aio.Channel, writes: MotoWrites, aws_state: Any, depth: int
) -> None:
    before = aws_state()
    statement = {"Sid": "PaymentsDeep", "Effect": "Allow", "Principal": "__NEST__"}
    text = json.dumps([statement]).replace('"__NEST__"', nested(depth))
    stub_call = channel.unary_unary(
        f"{SERVICE}/PutPolicyStatements",
        request_serializer=pb.PutPolicyStatementsRequest.SerializeToString,
        response_deserializer=pb.PutPolicyStatementsResponse.FromString,
    )
    request = pb.PutPolicyStatementsRequest(statements_json=text[:80_000])
    if len(text) > 80_000:
        request = pb.PutPolicyStatementsRequest(statements_json=nested(depth))
    error = await refused(stub_call(request, metadata=metadata(KEY), timeout=10))
    err = rich_error(error)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT, err.message
    assert "nested" in err.message
    policy_call = channel.unary_unary(
        f"{SERVICE}/PutRegistryPolicy",
        request_serializer=pb.PutRegistryPolicyRequest.SerializeToString,
        response_deserializer=pb.PutRegistryPolicyResponse.FromString,
    )
    deep_policy = '{"Version":"2012-10-17","Statement":' + nested(min(depth, 5_000)) + "}"
    error = await refused(
        policy_call(
            pb.PutRegistryPolicyRequest(policy_text=deep_policy),
            metadata=metadata(KEY),
            timeout=10,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert writes.total == 0
    assert aws_state() == before


async def test_a_forged_request_id_is_replaced_not_repeated(
    channel: grpc.aio.Channel,
) -> None:
    forged = "x tenant=admin rpc=DeleteRegistryPolicy code=OK"
    stub_call = channel.unary_unary(
        f"{SERVICE}/DescribeRegistry",
        request_serializer=pb.DescribeRegistryRequest.SerializeToString,
        response_deserializer=pb.DescribeRegistryResponse.FromString,
    )
    call = stub_call(
        pb.DescribeRegistryRequest(),
        metadata=(*metadata(KEY), ("x-request-id", forged)),
        timeout=10,
    )
    await call
    trailers = dict(await call.trailing_metadata() or ())
    request_id = trailers["x-request-id"]
    assert request_id != forged and len(request_id) == 32
    int(request_id, 16)  # the gateway's own id: 32 hex digits
    # A safe id is kept, so callers can still correlate.
    call = stub_call(
        pb.DescribeRegistryRequest(),
        metadata=(*metadata(KEY), ("x-request-id", "build-42.step:7")),
        timeout=10,
    )
    await call
    assert dict(await call.trailing_metadata() or ())["x-request-id"] == "build-42.step:7"


async def test_the_audit_of_a_refused_write_names_what_was_asked(
    channel: grpc.aio.Channel, tmp_path: Path, writes: MotoWrites
) -> None:
    stub_call = channel.unary_unary(
        f"{SERVICE}/PutRegistryPolicy",
        request_serializer=pb.PutRegistryPolicyRequest.SerializeToString,
        response_deserializer=pb.PutRegistryPolicyResponse.FromString,
    )
    hostile_region = "eu-west-1\x1b[2J" + "x" * 5_000
    for registry_id, region in ((OTHER_ACCOUNT, "eu-west-1"), (OTHER_ACCOUNT, hostile_region)):
        error = await refused(
            stub_call(
                pb.PutRegistryPolicyRequest(
                    policy_text="{}", registry_id=registry_id, region=region
                ),
                metadata=metadata(KEY),
                timeout=10,
            )
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    def written() -> list[str]:
        return (tmp_path / "audit.jsonl").read_text().splitlines()

    # A line is written once its status is sent (the reporters run after the answer).
    lines = [
        json.loads(line)
        for line in await wait_until(
            lambda: len(written()) >= 2 and written(), what="two audit lines"
        )
    ]
    assert [(line["outcome"], line["registry_id"]) for line in lines] == [
        ("PERMISSION_DENIED", OTHER_ACCOUNT),
        ("PERMISSION_DENIED", OTHER_ACCOUNT),
    ]
    assert lines[0]["region"] == "eu-west-1"
    # Bounded and escaped like any echo: no raw escape sequence reaches the audit trail.
    assert len(lines[1]["region"]) <= 128 and "\x1b" not in lines[1]["region"]
    assert lines[1]["region"].startswith("eu-west-1\\x1b[2J")
    assert writes.total == 0
