"""What travels between replicas when a slice write is handed over (service/registry/writes/
handoff.py): a request reads back as sent, deadlines included; an error comes back as the
caller's own, field by field; anything else in the lists (garbage, a forged or oversized
entry) reads as nothing, never as a request or an answer."""

from __future__ import annotations

import json
import math

import pytest

from service.errors import (
    EtagMismatch,
    FieldViolation,
    GatewayError,
    InvalidArgument,
    QuotaViolation,
    ResourceExhausted,
    Unavailable,
)
from service.registry.writes.handoff import (
    MAX_REQUEST_BYTES,
    Handed,
    error_answer,
    parse_answer,
    value_answer,
)


def request(**changes: object) -> Handed:
    fields: dict[str, object] = {
        "id": "r1",
        "replica": "abc",
        "tenant": "payments",
        "rpc": "PutReplicationRules",
        "body": b"\x00\x01binary\xff",
        "identity": "api_key:payments",
        "request_id": "req-1",
        "patience_until": 1_800_000_000.5,
        "deadline": 1_800_000_001.25,
    }
    fields.update(changes)
    return Handed(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "handed",
    [
        request(),
        request(patience_until=math.inf, deadline=math.inf),  # a caller without a deadline
        request(identity=None, request_id=None, body=b""),
    ],
)
def test_a_request_reads_back_as_sent(handed: Handed) -> None:
    assert Handed.decode(handed.encode()) == handed


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        json.dumps({"id": "x"}).encode(),
        request().encode().replace(b'"body":"', b'"body":"!!'),  # not base64
        request().encode().replace(b'"patience_until":1800000000.5', b'"patience_until":NaN'),
        b"x" * (MAX_REQUEST_BYTES + 1),
    ],
)
def test_anything_else_in_the_list_is_no_request(raw: bytes) -> None:
    assert Handed.decode(raw) is None


@pytest.mark.parametrize(
    "error",
    [
        EtagMismatch("stale", metadata={"currentEtag": "e2"}, etag_read_before="e1"),
        InvalidArgument(
            "bad",
            reason="VALIDATION",
            field_violations=[FieldViolation("rules[0].destinations", "too many")],
        ),
        ResourceExhausted(
            "over",
            reason="REPLICATION_QUOTA_EXCEEDED",
            quota_violations=[QuotaViolation("tenant:payments", "max_rules: 2")],
            retry_after_seconds=None,
        ),
        Unavailable("busy", reason="WRITE_LOCK_BUSY", retry_after_seconds=0.5),
    ],
)
def test_an_error_comes_back_as_the_caller_s_own(error: GatewayError) -> None:
    parsed = parse_answer(error_answer("r1", error))
    assert parsed is not None
    request_id, back = parsed
    assert request_id == "r1"
    assert type(back) is type(error) and isinstance(back, GatewayError)
    assert back.code == error.code
    assert (back.message, back.reason, back.metadata) == (
        error.message,
        error.reason,
        error.metadata,
    )
    assert back.field_violations == error.field_violations
    assert back.quota_violations == error.quota_violations
    assert back.retry_after_seconds == error.retry_after_seconds
    assert back.etag_read_before == error.etag_read_before


def test_an_error_of_a_kind_this_replica_does_not_know_is_unavailable() -> None:
    raw = json.loads(error_answer("r1", Unavailable("x")))
    raw["error"]["class"] = "SomethingNewer"
    parsed = parse_answer(json.dumps(raw).encode())
    assert parsed is not None and type(parsed[1]) is Unavailable


def test_a_value_answer_reads_back() -> None:
    value = {"before": "YQ==", "after": "Yg==", "sent": True, "etag_before": "a"}
    assert parse_answer(value_answer("r2", value)) == ("r2", value)


@pytest.mark.parametrize(
    "raw",
    [b"", b"{}", b'{"id": "r"}', b'{"id": "r", "value": 3}', b'{"id": "r", "error": {}}'],
)
def test_anything_else_on_the_answer_list_is_no_answer(raw: bytes) -> None:
    assert parse_answer(raw) is None
