"""Every error the gateway answers, as data, and the one place that turns it into a status.

AIP-193: a code, a clear message, exactly one ErrorInfo in domain `registry-gateway`
with an UPPER_SNAKE_CASE reason and lowerCamelCase metadata keys, plus the detail types
the error table of DESIGN.md names (BadRequest, RetryInfo, QuotaFailure). Messages never
hold a stack trace, a credential or an AWS key: they are written here, from fields, not
copied from exceptions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "registry-gateway"
REQUEST_ID_KEY = "x-request-id"


@dataclass(frozen=True)
class FieldViolation:
    """One problem with one request field, named by its proto field path."""

    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One quota the call ran past: whose (subject) and which limit."""

    subject: str
    description: str


class GatewayError(Exception):
    """Base of every error the gateway answers on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
        retry_after_seconds: float | None = None,
        quota_violations: Sequence[QuotaViolation] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})
        self.field_violations = tuple(field_violations)
        self.retry_after_seconds = retry_after_seconds
        self.quota_violations = tuple(quota_violations)


class Unauthenticated(GatewayError):
    """No credentials, or credentials that prove nobody."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(GatewayError):
    """The tenant may not do this (target, destination, guardrail)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class InvalidArgument(GatewayError):
    """A malformed request; carries one FieldViolation per problem."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class FailedPrecondition(GatewayError):
    """The system is not in a state to do this, e.g. credentials reach another account."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class NotFound(GatewayError):
    """The resource does not exist (a registry without a policy)."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class EtagMismatch(GatewayError):
    """The caller's etag precondition does not hold any more."""

    code = grpc.StatusCode.ABORTED
    reason = "ETAG_MISMATCH"


class Unavailable(GatewayError):
    """AWS throttled, failed or could not be reached; retry later."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "UPSTREAM_UNAVAILABLE"


class ResourceExhausted(GatewayError):
    """The tenant is over its rate; carries RetryInfo and a QuotaFailure."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RATE_LIMITED"


class DeadlineExceeded(GatewayError):
    """The call's deadline was spent."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Internal(GatewayError):
    """Something unexpected; the message holds nothing but the request id."""

    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


@dataclass(frozen=True)
class RichStatus:
    """A status ready to answer: code, message and the trailing metadata carrying details."""

    code: grpc.StatusCode
    message: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = field(default_factory=tuple)


def to_status(error: GatewayError, request_id: str) -> RichStatus:
    """Build the google.rpc.Status of an error: exactly one ErrorInfo, then other details."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=DOMAIN, metadata={**error.metadata, "requestId": request_id}
    )
    details = [info]
    details.append(error_details_pb2.RequestInfo(request_id=request_id))
    if error.field_violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.field_violations
                ]
            )
        )
    if error.quota_violations:
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=v.subject, description=v.description
                    )
                    for v in error.quota_violations
                ]
            )
        )
    if error.retry_after_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_seconds * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    grpc_status = rpc_status.to_status(status)
    return RichStatus(
        code=error.code,
        message=error.message,
        trailing_metadata=(*grpc_status.trailing_metadata, (REQUEST_ID_KEY, request_id)),
    )


def internal(request_id: str) -> Internal:
    """The only thing an unexpected failure tells the caller: that it happened, and its id."""
    return Internal(f"internal error; quote request id {request_id} to the operators")


# AWS error codes of the ECR model and the transport, mapped as DESIGN.md's table says.
_AWS_UNAVAILABLE = frozenset(
    {
        "ServerException",
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalError",
    }
)
_AWS_INVALID = frozenset(
    {"InvalidParameterException", "ValidationException", "LimitExceededException"}
)
_AWS_NOT_FOUND = frozenset({"RegistryPolicyNotFoundException"})
_AWS_ACCESS = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
    }
)

# How long a caller should wait before retrying after AWS said it is unavailable.
UPSTREAM_RETRY_AFTER_SECONDS = 1.0


def from_aws(aws_code: str, aws_message: str, aws_request_id: str, operation: str) -> GatewayError:
    """Map an AWS error (code, message, request id) of `operation` to a gateway error."""
    metadata = {"awsErrorCode": aws_code, "awsRequestId": aws_request_id, "operation": operation}
    if aws_code in _AWS_NOT_FOUND:
        return NotFound(
            "the registry has no registry policy",
            reason="REGISTRY_POLICY_NOT_FOUND",
            metadata=metadata,
        )
    if aws_code in _AWS_INVALID:
        # AWS's own message names the parameter and constraint; it holds no secrets.
        return InvalidArgument(
            f"AWS refused the request: {_clip(aws_message)}",
            reason="AWS_INVALID_PARAMETER",
            metadata=metadata,
        )
    if aws_code in _AWS_UNAVAILABLE:
        return Unavailable(
            f"AWS ECR is unavailable ({aws_code}); retry later",
            metadata=metadata,
            retry_after_seconds=UPSTREAM_RETRY_AFTER_SECONDS,
        )
    if aws_code in _AWS_ACCESS:
        # The gateway's own AWS credentials are refused: an operator's problem, not the
        # caller's permission, so not PERMISSION_DENIED (which names what the tenant may not do).
        return FailedPrecondition(
            "the gateway's AWS credentials were refused for this registry; tell the operators",
            reason="UPSTREAM_ACCESS_DENIED",
            metadata=metadata,
        )
    return Internal(
        f"AWS answered an unexpected error ({aws_code})", reason="UPSTREAM_ERROR", metadata=metadata
    )


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
