"""Errors as data, and the one place that turns them into a rich gRPC status (AIP-193)."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from service.aws.errors import from_aws
from service.echo import echo
from service.errors import (
    DOMAIN,
    REQUEST_ID_KEY,
    FailedPrecondition,
    FieldViolation,
    GatewayError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaViolation,
    ResourceExhausted,
    RichStatus,
    UpstreamFailure,
    internal,
    to_status,
)
from tests.support.helpers import unpack_details

STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass
class Decoded:
    """A RichStatus taken apart as a client would."""

    status: status_pb2.Status
    details: list[any_pb2.Any]
    error_infos: list[error_details_pb2.ErrorInfo]
    bad_requests: list[error_details_pb2.BadRequest]
    retry_infos: list[error_details_pb2.RetryInfo]
    trailers: list[tuple[str, str | bytes]]


def decode(rich: RichStatus) -> Decoded:
    trailers = list(rich.trailing_metadata)
    [raw] = [value for key, value in trailers if key == STATUS_DETAILS_KEY]
    assert isinstance(raw, bytes)
    status = status_pb2.Status.FromString(raw)
    found = unpack_details(status)
    return Decoded(
        status,
        list(status.details),
        found.error_infos,
        found.bad_requests,
        found.retry_infos,
        trailers,
    )


def test_to_status_carries_every_detail() -> None:
    error = InvalidArgument(
        "two problems",
        reason="REQUEST_INVALID",
        metadata={"rpc": "PutRegistryPolicy"},
        field_violations=[
            FieldViolation("policy_text", "must be a JSON object"),
            FieldViolation("replication_configuration.rules[0].destinations", "at most 100"),
        ],
        retry_after_seconds=1.5,
    )
    rich = to_status(error, "req-42")
    decoded = decode(rich)

    assert rich.code == grpc.StatusCode.INVALID_ARGUMENT
    assert rich.message == "two problems"
    assert decoded.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert decoded.status.message == "two problems"

    [info] = decoded.error_infos
    assert decoded.details[0].Is(error_details_pb2.ErrorInfo.DESCRIPTOR)  # ErrorInfo first
    assert info.domain == DOMAIN == "registry-gateway"
    assert info.reason == "REQUEST_INVALID"
    assert dict(info.metadata) == {"rpc": "PutRegistryPolicy", "requestId": "req-42"}

    [bad] = decoded.bad_requests
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("policy_text", "must be a JSON object"),
        ("replication_configuration.rules[0].destinations", "at most 100"),
    ]

    [retry] = decoded.retry_infos
    assert (retry.retry_delay.seconds, retry.retry_delay.nanos) == (1, 500_000_000)

    assert (REQUEST_ID_KEY, "req-42") in decoded.trailers
    assert REQUEST_ID_KEY == "x-request-id"


def test_to_status_adds_only_what_the_error_has() -> None:
    rich = to_status(PermissionDenied("no", metadata={"tenant": "payments"}), "req-7")
    decoded = decode(rich)
    assert rich.code == grpc.StatusCode.PERMISSION_DENIED
    [info] = decoded.error_infos
    assert info.reason == "PERMISSION_DENIED"  # the class's reason when none is given
    assert dict(info.metadata) == {"tenant": "payments", "requestId": "req-7"}
    assert decoded.bad_requests == []
    assert decoded.retry_infos == []
    assert dict(decoded.trailers)[REQUEST_ID_KEY] == "req-7"


def test_to_status_keys_follow_aip_193() -> None:
    decoded = decode(to_status(from_aws("ThrottlingException", "slow", "aws-1", "X"), "r"))
    [info] = decoded.error_infos
    assert info.reason == info.reason.upper()
    assert all(k[0].islower() and "_" not in k for k in info.metadata)


@pytest.mark.parametrize(
    ("aws_code", "cls", "code", "reason"),
    [
        (
            "RegistryPolicyNotFoundException",
            NotFound,
            grpc.StatusCode.NOT_FOUND,
            "REGISTRY_POLICY_NOT_FOUND",
        ),
        (
            "InvalidParameterException",
            InvalidArgument,
            grpc.StatusCode.INVALID_ARGUMENT,
            "AWS_INVALID_PARAMETER",
        ),
        (
            "ValidationException",
            InvalidArgument,
            grpc.StatusCode.INVALID_ARGUMENT,
            "AWS_INVALID_PARAMETER",
        ),
        # UpstreamFailure: what AWS itself did, the only errors the breaker counts.
        (
            "ThrottlingException",
            UpstreamFailure,
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_UNAVAILABLE",
        ),
        ("ServerException", UpstreamFailure, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        (
            "AccessDeniedException",
            FailedPrecondition,
            grpc.StatusCode.FAILED_PRECONDITION,
            "UPSTREAM_ACCESS_DENIED",
        ),
        ("KmsException", Internal, grpc.StatusCode.INTERNAL, "UPSTREAM_ERROR"),
        ("SomethingNew", Internal, grpc.StatusCode.INTERNAL, "UPSTREAM_ERROR"),
    ],
)
def test_from_aws_maps_the_code(
    aws_code: str, cls: type[GatewayError], code: grpc.StatusCode, reason: str
) -> None:
    error = from_aws(aws_code, "AWS says so", "aws-req-1", "PutRegistryPolicy")
    assert type(error) is cls
    assert error.code == code
    assert error.reason == reason
    assert error.metadata == {
        "awsErrorCode": aws_code,
        "awsRequestId": "aws-req-1",
        "operation": "PutRegistryPolicy",
    }


@pytest.mark.parametrize("aws_code", ["ThrottlingException", "ServerException"])
def test_unavailable_tells_when_to_retry(aws_code: str) -> None:
    error = from_aws(aws_code, "rate exceeded", "aws-req-2", "DescribeRegistry")
    assert error.retry_after_seconds is not None
    assert error.retry_after_seconds > 0
    [retry] = decode(to_status(error, "r")).retry_infos
    delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    assert delay == pytest.approx(error.retry_after_seconds)


@pytest.mark.parametrize(
    "aws_code",
    ["RegistryPolicyNotFoundException", "AccessDeniedException", "SomethingNew"],
)
def test_no_retry_where_retrying_cannot_help(aws_code: str) -> None:
    error = from_aws(aws_code, "m", "aws-req-3", "GetRegistryPolicy")
    assert error.retry_after_seconds is None
    assert decode(to_status(error, "r")).retry_infos == []


def test_invalid_parameter_quotes_aws_on_one_line() -> None:
    error = from_aws(
        "InvalidParameterException",
        "Invalid parameter at 'policyText'\n  failed to satisfy constraint",
        "aws-req-4",
        "PutRegistryPolicy",
    )
    assert "Invalid parameter at 'policyText' failed to satisfy constraint" in error.message
    assert "\n" not in error.message


def test_invalid_parameter_clips_a_long_aws_message() -> None:
    error = from_aws("ValidationException", "x" * 5000, "aws-req-5", "PutRegistryPolicy")
    assert len(error.message) < 400


@pytest.mark.parametrize(
    "aws_code", ["AccessDeniedException", "UnrecognizedClientException", "SomethingNew"]
)
def test_aws_message_is_not_repeated_where_it_may_hold_credentials(aws_code: str) -> None:
    leaky = "User arn:aws:iam::123456789012:user/ci with key AKIAIOSFODNN7EXAMPLE is denied"
    error = from_aws(aws_code, leaky, "aws-req-6", "DescribeRegistry")
    assert "AKIAIOSFODNN7EXAMPLE" not in error.message
    assert "arn:aws:iam" not in error.message
    assert all("AKIA" not in v for v in error.metadata.values())


def test_internal_holds_the_request_id_and_nothing_else() -> None:
    first, second = internal("req-1111"), internal("req-2222")
    assert isinstance(first, Internal)
    assert first.code == grpc.StatusCode.INTERNAL
    assert first.reason == "INTERNAL"
    assert "req-1111" in first.message
    assert "\n" not in first.message
    # Nothing varies between two internal errors except the request id.
    assert first.message.replace("req-1111", "<id>") == second.message.replace("req-2222", "<id>")
    assert first.metadata == {}
    assert first.field_violations == ()
    assert first.retry_after_seconds is None
    decoded = decode(to_status(first, "req-1111"))
    [info] = decoded.error_infos
    assert dict(info.metadata) == {"requestId": "req-1111"}
    assert decoded.bad_requests == [] and decoded.retry_infos == []


# --- Bounds: whatever an error holds, the answer fits in gRPC's metadata and shows no
# --- raw control character.

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _wire(message: str) -> int:
    """Bytes of a message as grpc-message carries it (percent-encoded UTF-8)."""
    return sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in message.encode())


def _raw_details(rich: RichStatus) -> bytes:
    [raw] = [value for key, value in rich.trailing_metadata if key == STATUS_DETAILS_KEY]
    assert isinstance(raw, bytes)
    return raw


def _quota_failures(status: status_pb2.Status) -> list[error_details_pb2.QuotaFailure]:
    found = []
    for detail in status.details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            found.append(failure)
    return found


def _left_out(message: str, what: str) -> tuple[int, int]:
    match = re.search(rf"(\d+) of (\d+) {what}", message)
    assert match is not None, message
    return int(match[1]), int(match[2])


def test_a_huge_error_is_bounded_and_says_what_it_left_out() -> None:
    error = InvalidArgument(
        "bad\x00request\n" + "m" * 20_000,
        metadata={"registryId": "1" * 20_000, "region": "us-east-1\x00\x1b[2J\u202e"},
        field_violations=[
            FieldViolation(f"rules[{i}]\n" + "f" * 990, "\x1b[31m" + "d" * 995)
            for i in range(1_000)
        ],
    )
    rich = to_status(error, "req-huge")
    raw = _raw_details(rich)
    assert len(raw) < 4096
    decoded = decode(rich)
    assert decoded.status.message == rich.message
    assert _wire(rich.message) <= 1024

    [info] = decoded.error_infos
    assert all(len(v) <= 128 for v in info.metadata.values())
    assert info.metadata["registryId"] == "1" * 127 + "…"
    assert info.metadata["region"] == "us-east-1\\x00\\x1b[2J\\u202e"
    assert info.metadata["requestId"] == "req-huge"

    [bad] = decoded.bad_requests
    kept = list(bad.field_violations)
    assert 0 < len(kept) < 1_000
    # The trailing ones are dropped, in order, and the message counts them.
    assert [v.field.split("\\")[0] for v in kept] == [f"rules[{i}]" for i in range(len(kept))]
    assert _left_out(rich.message, "field violations") == (1_000 - len(kept), 1_000)
    for v in kept:
        assert v.field.startswith(f"rules[{kept.index(v)}]\\x0a")
        assert v.description.startswith("\\x1b[31m")
        assert len(v.field) <= 256 and len(v.description) <= 512

    assert rich.message.startswith("bad\\x00request\\x0amm")
    for text in (rich.message, *info.metadata.values(), *(v.field for v in kept)):
        assert not _CONTROL.search(text), text
    assert not any(_CONTROL.search(v.description) for v in kept)


@pytest.mark.parametrize("count", [5, 7, 16, 17, 40])
def test_a_few_long_violations_are_bounded_too(count: int) -> None:
    error = InvalidArgument(
        "bad", field_violations=[FieldViolation(f"f{i}", "d" * 2_000) for i in range(count)]
    )
    rich = to_status(error, "r")
    assert len(_raw_details(rich)) < 4096
    [bad] = decode(rich).bad_requests
    kept = len(bad.field_violations)
    assert [v.field for v in bad.field_violations] == [f"f{i}" for i in range(kept)]
    assert all(v.description == "d" * 511 + "…" for v in bad.field_violations)
    if kept == count:
        assert rich.message == "bad"
    else:
        assert _left_out(rich.message, "field violations") == (count - kept, count)


def test_quota_violations_are_bounded_too() -> None:
    error = ResourceExhausted(
        "over",
        quota_violations=[QuotaViolation("tenant:\n" + "s" * 900, "q" * 900)] * 300,
        retry_after_seconds=2,
    )
    rich = to_status(error, "r")
    raw = _raw_details(rich)
    assert len(raw) < 4096
    status = status_pb2.Status.FromString(raw)
    [failure] = _quota_failures(status)
    assert 0 < len(failure.violations) < 300
    assert all(v.subject.startswith("tenant:\\x0a") for v in failure.violations)
    assert _left_out(rich.message, "quota violations") == (300 - len(failure.violations), 300)
    [retry] = decode(rich).retry_infos  # what tells the caller when to retry is never dropped
    assert retry.retry_delay.seconds == 2


def test_many_metadata_entries_leave_one_error_info_with_the_request_id() -> None:
    metadata = {f"key{i:03d}": "東" * 500 for i in range(100)}
    metadata["requestId"] = "forged"
    rich = to_status(PermissionDenied("no", metadata=metadata), "req-1")
    assert len(_raw_details(rich)) < 4096
    [info] = decode(rich).error_infos
    assert info.metadata["requestId"] == "req-1"
    assert 1 < len(info.metadata) < 100
    assert all(len(v) <= 128 for v in info.metadata.values())
    left, total = _left_out(rich.message, "metadata entries")
    assert left + len(info.metadata) - 1 == total == 101


@pytest.mark.parametrize("unit", ["東", "%", "\x00", "é%\u2028"])
def test_the_message_fits_grpc_message_whatever_its_characters(unit: str) -> None:
    rich = to_status(PermissionDenied(unit * 5_000), "r")
    assert 0 < _wire(rich.message) <= 1024
    assert rich.message.endswith("…")
    assert not _CONTROL.search(rich.message)
    # The whole trailer set stays well under gRPC's default 8 KiB metadata limit.
    details = base64.b64encode(_raw_details(rich))
    assert len(details) + _wire(rich.message) + len(STATUS_DETAILS_KEY) < 7 * 1024


def test_escaping_an_already_echoed_value_changes_nothing() -> None:
    shown = echo("1" * 20_000 + "\x00")
    error = PermissionDenied(f"registry {shown}", metadata={"registryId": shown})
    rich = to_status(error, "r")
    [info] = decode(rich).error_infos
    assert info.metadata["registryId"] == shown
    assert rich.message == f"registry {shown}"


def test_hostile_reason_and_request_id_are_bounded() -> None:
    error = PermissionDenied("no", reason="X\n" * 100)
    rich = to_status(error, "r\n" * 1_000)
    [info] = decode(rich).error_infos
    assert len(info.reason) <= 64 and "\n" not in info.reason
    assert len(info.metadata["requestId"]) <= 128 and "\n" not in info.metadata["requestId"]
