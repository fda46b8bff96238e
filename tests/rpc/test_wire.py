"""wire.locate: the field path of the first fault in bytes protobuf refused."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import FieldViolation
from service.gen.v1 import registry_pb2 as pb
from service.rpc.wire import locate

PUT = pb.PutReplicationConfigurationRequest.DESCRIPTOR


def rule_bytes(region: bytes) -> bytes:
    """A PutReplicationConfigurationRequest whose rules[0].destinations[1].region is `region`."""
    ok = pb.ReplicationDestination(region="eu-west-1", registry_id="123456789012")
    first = ok.SerializeToString()
    second = b"\x0a" + bytes([len(region)]) + region
    rule = b"\x0a" + bytes([len(first)]) + first + b"\x0a" + bytes([len(second)]) + second
    config = b"\x0a" + bytes([len(rule)]) + rule
    return b"\x0a" + bytes([len(config)]) + config


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            rule_bytes(b"eu-\xffwest-1"),
            FieldViolation(
                "replication_configuration.rules[0].destinations[1].region",
                "is not valid UTF-8 (byte 0xff at position 3 of the text)",
            ),
        ),
        (
            b"\x12\x02\xc3\x28",
            FieldViolation(
                "registry_id", "is not valid UTF-8 (byte 0xc3 at position 0 of the text)"
            ),
        ),
        (
            b"\x0a\x05ab",
            FieldViolation("replication_configuration", "declares 5 bytes but only 2 remain"),
        ),
        (
            b"\xff\xff\xff\xff",
            FieldViolation("", "the bytes end inside a field tag (byte offset 4)"),
        ),
        (
            b"\x0f",
            FieldViolation("replication_configuration", "wire type 7 is not valid (byte offset 0)"),
        ),
        (
            b"\x0c",
            FieldViolation(
                "replication_configuration", "closes a group that was never opened (byte offset 0)"
            ),
        ),
        (b"\x5b\x08\x01", FieldViolation("11", "group 11 is never closed")),
        (b"\x02\x00", FieldViolation("", "field number 0 is not valid (byte offset 0)")),
        (
            b"\x28" + b"\xff" * 11,
            FieldViolation("validate_only", "a varint at byte offset 11 is longer than 10 bytes"),
        ),
        (
            b"\x21\x01\x02",
            FieldViolation("etag", "declares a fixed 8-byte value but the bytes end first"),
        ),
    ],
    ids=[
        "nested-utf8",
        "utf8",
        "truncated",
        "random",
        "wire-type",
        "end-group",
        "open-group",
        "field-0",
        "long-varint",
        "short-fixed64",
    ],
)
def test_names_the_first_fault(data: bytes, expected: FieldViolation) -> None:
    with pytest.raises(DecodeError):  # the premise: protobuf itself refuses these bytes
        pb.PutReplicationConfigurationRequest.FromString(data)
    assert locate(PUT, data) == expected


def test_bytes_it_cannot_fault_get_a_generic_answer() -> None:
    valid = pb.PutReplicationConfigurationRequest(region="eu-west-1").SerializeToString()
    assert locate(PUT, valid) == FieldViolation(
        "", "is not a valid ecr.registry.v1.PutReplicationConfigurationRequest message"
    )


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.binary(max_size=64))
def test_never_raises(data: bytes) -> None:
    violation = locate(PUT, data)
    assert isinstance(violation, FieldViolation) and violation.description
