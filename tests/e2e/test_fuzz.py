"""Raw bytes through the real server, for every RPC: never INTERNAL or UNKNOWN, AWS untouched.

The corpus is generated from a fixed seed (deterministic, so CI cannot flake): random
bytes, truncations and bit flips of complete requests, invalid UTF-8 in every string
field, unknown fields of every wire type, and huge repeated fields (under the 4 MiB limit).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.config import OPERATIONS
from service.gen.v1 import registry_pb2 as pb
from service.registry.rpcs.history_view import page_token
from service.state.cache.base import CacheKey
from tests.support.helpers import ACCOUNT, POLICY, metadata
from tests.support.moto_writes import MotoWrites, configured, count_writes

SERVICE = "/ecr.registry.v1.RegistryConfigService"
SEED = 20_241_127
EU = pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT)

# A complete request per RPC, every field set: the raw material of truncations and flips.
FULL: dict[str, Message] = {
    "DescribeRegistry": pb.DescribeRegistryRequest(registry_id=ACCOUNT, region="us-east-1"),
    "GetRegistryPolicy": pb.GetRegistryPolicyRequest(registry_id=ACCOUNT, region="us-east-1"),
    "PutRegistryPolicy": pb.PutRegistryPolicyRequest(
        policy_text=POLICY, registry_id=ACCOUNT, region="us-east-1", etag="e", validate_only=True
    ),
    "DeleteRegistryPolicy": pb.DeleteRegistryPolicyRequest(
        registry_id=ACCOUNT, region="us-east-1", etag="e", validate_only=True
    ),
    "PutReplicationConfiguration": pb.PutReplicationConfigurationRequest(
        replication_configuration=pb.ReplicationConfiguration(
            rules=[
                pb.ReplicationRule(
                    destinations=[EU],
                    repository_filters=[
                        pb.RepositoryFilter(filter="prod", filter_type="PREFIX_MATCH")
                    ],
                )
            ]
        ),
        registry_id=ACCOUNT,
        region="us-east-1",
        etag="e",
        validate_only=True,
    ),
    "GetReplicationRules": pb.GetReplicationRulesRequest(registry_id=ACCOUNT, region="us-east-1"),
    "PutReplicationRules": pb.PutReplicationRulesRequest(
        rules=[
            pb.ReplicationRule(
                destinations=[EU],
                repository_filters=[
                    pb.RepositoryFilter(filter="payments/", filter_type="PREFIX_MATCH")
                ],
            )
        ],
        registry_id=ACCOUNT,
        region="us-east-1",
        etag="e",
        validate_only=True,
    ),
    "GetPolicyStatements": pb.GetPolicyStatementsRequest(registry_id=ACCOUNT, region="us-east-1"),
    "PutPolicyStatements": pb.PutPolicyStatementsRequest(
        statements_json=json.dumps(
            [dict(json.loads(POLICY)["Statement"][0], Sid="PaymentsReplication")]
        ),
        registry_id=ACCOUNT,
        region="us-east-1",
        etag="e",
        validate_only=True,
    ),
    "GetConfigurationHistory": pb.GetConfigurationHistoryRequest(
        registry_id=ACCOUNT,
        region="us-east-1",
        resource=pb.HISTORY_RESOURCE_POLICY,
        page_size=5,
        page_token=page_token(CacheKey(ACCOUNT, "us-east-1", "policy"), 3),
    ),
}
# What a well-behaved server may answer to garbage; never INTERNAL, UNKNOWN or a timeout.
DEFINED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # over max_message_bytes
}
REFUSED = DEFINED - {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ABORTED}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bad_utf8(message: Message, rng: random.Random) -> Iterator[bytes]:
    """The message once per string field (top level), that field holding invalid UTF-8."""
    for field in message.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            bad = rng.choice(
                [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"a\x80b"]
            )
            yield message.SerializeToString() + _field(field.number, bad)
    if isinstance(message, pb.PutReplicationConfigurationRequest):
        destination = _field(1, b"eu-\xffwest-1") + _field(2, ACCOUNT.encode())
        yield _field(1, _field(1, _field(1, destination)))
        yield _field(1, _field(1, _field(2, _field(1, b"pr\xc0d") + _field(2, b"PREFIX_MATCH"))))


def _unknown_fields(message: Message) -> Iterator[bytes]:
    body = message.SerializeToString()
    yield body + b"\x48\x01"  # field 9, varint
    yield body + b"\x51" + b"\x00" * 8  # field 10, 64-bit
    yield body + b"\x5d" + b"\x00" * 4  # field 11, 32-bit
    yield body + _field(12, b"newer client")  # field 12, length-delimited
    yield body + b"\x6b\x08\x01\x6c"  # field 13, a group
    yield body + b"\x08\x01"  # field 1 with the wrong wire type
    yield body + _field(536_870_911, b"x")  # the highest field number


def _huge() -> Iterator[tuple[str, bytes]]:
    destination = _field(1, EU.SerializeToString())
    yield "PutReplicationConfiguration", _field(1, _field(1, destination * 100_000))
    yield "PutReplicationConfiguration", _field(1, _field(1, destination) * 50_000)
    filters = _field(
        2, pb.RepositoryFilter(filter="p", filter_type="PREFIX_MATCH").SerializeToString()
    )
    yield "PutReplicationConfiguration", _field(1, _field(1, destination + filters * 200_000))
    yield "PutRegistryPolicy", _field(1, b"[" * 1_000_000)
    yield "PutRegistryPolicy", _field(1, b"x" * 3_000_000)
    yield "DescribeRegistry", b"\x48\x01" * 1_000_000  # unknown fields on a read
    yield "DeleteRegistryPolicy", _field(12, b"x" * 3_000_000)
    # An empty configuration merged 2M times: a valid "clear replication", so a dry run.
    yield "PutReplicationConfiguration", b"\x28\x01" + b"\x0a\x00" * 2_000_000
    yield "PutRegistryPolicy", b"x" * (5 * 1024 * 1024)  # over max_message_bytes


def _dry_run_first(message: Message) -> bytes:
    """The message with `validate_only: true` encoded first as well as in its place.

    A truncation of a complete write could otherwise be a complete, valid, *real* write
    (fields are serialized by number, validate_only last): a legitimate request, not fuzz.
    With the flag up front every prefix still asks for a dry run, and `etag: "e"` makes a
    flip that clears it fail the precondition instead of writing.
    """
    flag = message.DESCRIPTOR.fields_by_name.get("validate_only")
    prefix = _varint(flag.number << 3) + b"\x01" if flag is not None else b""
    return prefix + message.SerializeToString()


def corpus() -> list[tuple[str, bytes]]:
    """(rpc, bytes) for every RPC, from a fixed seed."""
    rng = random.Random(SEED)
    cases: list[tuple[str, bytes]] = []
    for rpc in OPERATIONS:
        full = _dry_run_first(FULL[rpc])
        cases += [(rpc, rng.randbytes(rng.randint(1, 96))) for _ in range(40)]
        cases += [(rpc, full[:n]) for n in sorted(rng.sample(range(len(full)), min(30, len(full))))]
        for _ in range(30):
            flipped = bytearray(full)
            for _ in range(rng.randint(1, 4)):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            cases.append((rpc, bytes(flipped)))
        cases += [(rpc, data) for data in _bad_utf8(FULL[rpc], rng)]
        cases += [(rpc, data) for data in _unknown_fields(FULL[rpc])]
    cases += list(_huge())
    return cases


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> MotoWrites:
    """The write requests moto receives during the test."""
    return count_writes(monkeypatch)


async def test_fuzzed_bytes_get_defined_answers_and_change_nothing(
    channel: grpc.aio.Channel, writes: MotoWrites, aws_state: Callable[[], dict[str, Any]]
) -> None:
    before = configured(aws_state())
    seen: Counter[str] = Counter()
    for rpc, data in corpus():
        method: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            f"{SERVICE}/{rpc}", request_serializer=None, response_deserializer=None
        )
        writes_before = writes.total
        try:
            await method(data, metadata=metadata(), timeout=10)
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code != grpc.StatusCode.RESOURCE_EXHAUSTED:  # grpcio's own status has no details
                assert exc.trailing_metadata() is not None
                assert any(k == "grpc-status-details-bin" for k, _ in exc.trailing_metadata() or ())
        seen[code.name] += 1
        assert code in DEFINED, (rpc, data[:80], code)
        if code in REFUSED:
            assert writes.total == writes_before, (rpc, data[:80], code)
    # Only an empty DeleteRegistryPolicy body (a complete, valid request: "delete the
    # policy") may reach moto, and finds none to delete. Nothing else wrote; nothing changed.
    assert configured(aws_state()) == before == {}
    assert set(writes.calls) <= {"delete_registry_policy"}
    assert seen["INVALID_ARGUMENT"] > 300 and seen["RESOURCE_EXHAUSTED"] >= 1
    # The server is still up and serving.
    health: Any = health_pb2_grpc.HealthStub(channel)  # typed for sync channels only
    assert (
        await health.Check(health_pb2.HealthCheckRequest())
    ).status == health_pb2.HealthCheckResponse.SERVING
    described = await channel.unary_unary(
        f"{SERVICE}/DescribeRegistry",
        request_serializer=pb.DescribeRegistryRequest.SerializeToString,
        response_deserializer=pb.DescribeRegistryResponse.FromString,
    )(pb.DescribeRegistryRequest(), metadata=metadata())
    assert described.registry_id == ACCOUNT
