"""Every error the client raises, in one file, built from the gateway's rich status.

The gateway answers each failure with a google.rpc.Status in the `grpc-status-details-bin`
trailer: exactly one ErrorInfo (domain `registry-gateway`, metadata `requestId`), a
RequestInfo, and where they apply BadRequest, RetryInfo and QuotaFailure. `from_rpc_error`
turns that into one exception class per gRPC code, so callers write
`except EtagMismatch as exc: exc.current_etag` instead of unpacking protobuf `Any`s.

    RegistryGatewayError
    ├── Unauthenticated          UNAUTHENTICATED
    ├── PermissionDenied         PERMISSION_DENIED
    ├── InvalidArgument          INVALID_ARGUMENT     .field_violations
    ├── NotFound                 NOT_FOUND
    ├── FailedPrecondition       FAILED_PRECONDITION
    ├── Aborted                  ABORTED
    │   ├── EtagMismatch         ABORTED, reason ETAG_MISMATCH   .current_etag
    │   └── WriteOverwritten     ABORTED, reason WRITE_OVERWRITTEN   .current_etag
    ├── Unavailable              UNAVAILABLE          .retry_delay
    ├── ResourceExhausted        RESOURCE_EXHAUSTED   .retry_delay, .quota_violations
    ├── DeadlineExceeded         DEADLINE_EXCEEDED
    └── Internal                 INTERNAL, UNKNOWN, and every other code
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "registry-gateway"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
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


class RegistryGatewayError(Exception):
    """A call the gateway (or the transport) answered with an error status.

    Attributes hold what the rich status said; every one is present (empty when the
    status carried no such detail, e.g. a transport error that never reached the gateway).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        request_id: str = "",
        retry_delay: float | None = None,
        field_violations: Iterable[FieldViolation] = (),
        quota_violations: Iterable[QuotaViolation] = (),
        status: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        #: ErrorInfo.reason, UPPER_SNAKE_CASE, e.g. "TARGET_NOT_ALLOWED"; "" without ErrorInfo.
        self.reason = reason
        self.domain = domain
        #: ErrorInfo.metadata (lowerCamelCase keys: requestId, tenant, rpc, registryId, ...).
        self.metadata: dict[str, str] = dict(metadata or {})
        #: The gateway's id of the failed call: quote it to the operators.
        self.request_id = request_id
        #: Seconds the gateway asked the caller to wait (RetryInfo), if it said.
        self.retry_delay = retry_delay
        self.field_violations: tuple[FieldViolation, ...] = tuple(field_violations)
        self.quota_violations: tuple[QuotaViolation, ...] = tuple(quota_violations)
        #: The decoded google.rpc.Status, for details this class does not surface.
        self.status = status

    def __str__(self) -> str:
        parts = [f"{self.code.name}: {self.message}"]
        if self.reason:
            parts.append(f"reason={self.reason}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)


class Unauthenticated(RegistryGatewayError):
    """No credentials, or credentials that prove nobody."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(RegistryGatewayError):
    """The tenant may not do this: target, replication destination or policy guardrail."""

    code = grpc.StatusCode.PERMISSION_DENIED


class InvalidArgument(RegistryGatewayError):
    """The request is malformed; `field_violations` names each problem by proto field path."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(RegistryGatewayError):
    """The resource does not exist, e.g. a registry without a registry policy."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(RegistryGatewayError):
    """The gateway cannot do this now, e.g. its AWS credentials reach another account."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(RegistryGatewayError):
    """The call was aborted, typically by a concurrency conflict."""

    code = grpc.StatusCode.ABORTED


class EtagMismatch(Aborted):
    """The `etag` precondition did not hold: someone changed the configuration since."""

    @property
    def current_etag(self) -> str:
        """The etag the configuration has now (ErrorInfo metadata `currentEtag`)."""
        return self.metadata.get("currentEtag", "")


class WriteOverwritten(Aborted):
    """The write reached AWS, but reading it back found another writer's state: AWS holds
    that, not what was written. Read again (`current_etag`), decide, write again. Never
    retried by the client: repeating the write blindly could undo the other writer's."""

    @property
    def current_etag(self) -> str:
        """The etag of the state that now stands (ErrorInfo metadata `currentEtag`)."""
        return self.metadata.get("currentEtag", "")


class Unavailable(RegistryGatewayError):
    """AWS (or the gateway) is unavailable for now; `retry_delay` says when to try again."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(RegistryGatewayError):
    """Over the tenant's rate or the server's capacity; see `retry_delay`, `quota_violations`."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(RegistryGatewayError):
    """The call's deadline passed before it was answered."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(RegistryGatewayError):
    """Something unexpected; the message holds only a request id to quote to the operators."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[RegistryGatewayError]] = {
    cls.code: cls
    for cls in (
        Unauthenticated,
        PermissionDenied,
        InvalidArgument,
        NotFound,
        FailedPrecondition,
        Aborted,
        Unavailable,
        ResourceExhausted,
        DeadlineExceeded,
        Internal,
    )
}


def decode_status(trailing_metadata: Any) -> status_pb2.Status | None:
    """The google.rpc.Status a call's trailing metadata carries, or None."""
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status: status_pb2.Status = status_pb2.Status.FromString(value)
            return status
    return None


def _trailer(trailing_metadata: Any, name: str) -> str:
    for key, value in trailing_metadata or ():
        if key == name and isinstance(value, str):
            return value
    return ""


def from_rpc_error(
    code: grpc.StatusCode, details: str | None, trailing_metadata: Any
) -> RegistryGatewayError:
    """Build the typed exception for a failed call from its code, message and trailers."""
    status = decode_status(trailing_metadata)
    reason = domain = ""
    metadata: dict[str, str] = {}
    request_id = _trailer(trailing_metadata, REQUEST_ID_KEY)
    retry_delay: float | None = None
    fields: list[FieldViolation] = []
    quotas: list[QuotaViolation] = []
    # A failure without details (a transport error that never reached the gateway) still
    # becomes a typed error, with empty fields.
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if not reason:  # AIP-193: exactly one; the first wins if a server sends more.
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.RequestInfo.DESCRIPTOR):
            request = error_details_pb2.RequestInfo()
            detail.Unpack(request)
            request_id = request_id or request.request_id
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_delay = retry.retry_delay.ToNanoseconds() / 1e9
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            quotas.extend(QuotaViolation(v.subject, v.description) for v in quota.violations)
    request_id = request_id or metadata.get("requestId", "")
    cls = _BY_CODE.get(code, RegistryGatewayError)
    if code == grpc.StatusCode.ABORTED and reason == "ETAG_MISMATCH":
        cls = EtagMismatch
    elif code == grpc.StatusCode.ABORTED and reason == "WRITE_OVERWRITTEN":
        cls = WriteOverwritten
    elif code == grpc.StatusCode.UNKNOWN:
        cls = Internal
    return cls(
        details or code.name,
        code=code,
        reason=reason,
        domain=domain,
        metadata=metadata,
        request_id=request_id,
        retry_delay=retry_delay,
        field_violations=fields,
        quota_violations=quotas,
        status=status,
    )
