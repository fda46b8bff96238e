"""Errors as data, and the one place that turns them into a rich gRPC status (AIP-193)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

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
    RichStatus,
    Unavailable,
    from_aws,
    internal,
    to_status,
)
from tests.helpers import unpack_details

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
        (
            "ThrottlingException",
            Unavailable,
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_UNAVAILABLE",
        ),
        ("ServerException", Unavailable, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
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
