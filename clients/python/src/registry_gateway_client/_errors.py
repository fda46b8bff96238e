"""Every error the client raises, in one file, built from the gateway's rich status.

The gateway answers each failure with a google.rpc.Status (gRPC: the
`grpc-status-details-bin` trailer; Connect: the error JSON's `details`): exactly one
ErrorInfo (domain `registry-gateway`, metadata `requestId`), a RequestInfo, and where they
apply BadRequest, RetryInfo and QuotaFailure. `from_status` turns that into one exception
class per status code, whatever the transport, so callers write
`except EtagMismatch as exc: exc.current_etag` instead of unpacking protobuf `Any`s. The
model is google-api-core's `exceptions.from_grpc_error`: one class per code, the code's
class for a status no more specific class claims, never a bare base class.

    RegistryGatewayError
    ├── Cancelled                CANCELLED
    ├── InvalidArgument          INVALID_ARGUMENT     .field_violations
    ├── DeadlineExceeded         DEADLINE_EXCEEDED
    ├── NotFound                 NOT_FOUND
    │   └── VersionNotFound      no recorded version has that etag (client-side; a LookupError)
    ├── AlreadyExists            ALREADY_EXISTS
    ├── PermissionDenied         PERMISSION_DENIED
    ├── ResourceExhausted        RESOURCE_EXHAUSTED   .retry_delay, .quota_violations
    ├── FailedPrecondition       FAILED_PRECONDITION
    │   └── VersionNotRestorable a version kept without its document (client-side; a ValueError)
    ├── Aborted                  ABORTED
    │   ├── EtagMismatch         ABORTED, reason ETAG_MISMATCH   .current_etag
    │   └── WriteOverwritten     ABORTED, reason WRITE_OVERWRITTEN   .current_etag
    ├── OutOfRange               OUT_OF_RANGE
    ├── Unimplemented            UNIMPLEMENTED   e.g. COMPRESSION_NOT_SUPPORTED
    ├── Internal                 INTERNAL, and the server faults UNKNOWN and DATA_LOSS
    ├── Unavailable              UNAVAILABLE          .retry_delay
    └── Unauthenticated          UNAUTHENTICATED

Failures that never reached the gateway land here too: the transport's (connection refused,
TLS handshake, the client's own deadline: Unavailable, DeadlineExceeded, as grpc and
connectrpc report them), and data the client cannot even encode (an AWS-JSON dict with a
misspelt field: InvalidArgument, reason UNDECODABLE_REQUEST, one field violation, domain
`registry-gateway-client`). Errors the client makes itself carry that domain and no request
id. Misuse of the API itself (a wrong type, contradictory arguments) stays TypeError or
ValueError, raised before any call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "registry-gateway"
#: The ErrorInfo domain of the errors the client raises itself, before or without a call.
CLIENT_DOMAIN = "registry-gateway-client"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
REQUEST_ID_KEY = "x-request-id"

#: Metadata as it arrives: gRPC's (key, str | bytes) pairs (namedtuples, which types-grpcio
#: types as objects of their own), or Connect's (key, str) headers.
ReceivedMetadata: TypeAlias = Iterable[Any]


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
    """A call the gateway (or the transport, or the client itself) answered with an error.

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
        trailing_metadata: ReceivedMetadata = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        #: ErrorInfo.reason, UPPER_SNAKE_CASE, e.g. "TARGET_NOT_ALLOWED"; "" without ErrorInfo.
        self.reason = reason
        #: ErrorInfo.domain: "registry-gateway", or "registry-gateway-client" for the
        #: client's own errors; "" when nobody said (a transport failure).
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
        #: What the failed call's answer carried besides the status: gRPC's trailing
        #: metadata, or Connect's response headers and trailers.
        self.trailing_metadata: tuple[tuple[str, Any], ...] = tuple(trailing_metadata)

    def __str__(self) -> str:
        parts = [f"{self.code.name}: {self.message}"]
        if self.reason:
            parts.append(f"reason={self.reason}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)


class Cancelled(RegistryGatewayError):
    """The call was cancelled (usually by the caller, e.g. a blocking call interrupted)."""

    code = grpc.StatusCode.CANCELLED


class InvalidArgument(RegistryGatewayError):
    """The request is malformed; `field_violations` names each problem by proto field path."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(RegistryGatewayError):
    """The call's deadline passed before it was answered."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(RegistryGatewayError):
    """The resource does not exist, e.g. a registry without a registry policy."""

    code = grpc.StatusCode.NOT_FOUND


class VersionNotFound(NotFound, LookupError):
    """`restore`: no recorded version of the resource has that etag (it may have aged out of
    the gateway's bounded history). Also a LookupError, as `restore` raised before."""


class AlreadyExists(RegistryGatewayError):
    """The resource already exists (not answered by today's gateway; one class per code)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(RegistryGatewayError):
    """The tenant may not do this: target, replication destination or policy guardrail."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(RegistryGatewayError):
    """Over the tenant's rate or the server's capacity (`retry_delay` set: retried), or over
    the tenant's share of the registry's limits (no `retry_delay`: final); see
    `quota_violations`."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(RegistryGatewayError):
    """The gateway cannot do this now, e.g. its AWS credentials reach another account."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class VersionNotRestorable(FailedPrecondition, ValueError):
    """`restore`: the version was kept without its document (`document_omitted`, larger than
    the gateway's `history.max_bytes`), so it cannot be written back; nothing was written.
    Also a ValueError, as `restore` raised before."""


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


class OutOfRange(RegistryGatewayError):
    """A value past its valid range (not answered by today's gateway; one class per code)."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(RegistryGatewayError):
    """The gateway does not do this: an RPC an older gateway lacks, or a compressed request
    (reason COMPRESSION_NOT_SUPPORTED)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(RegistryGatewayError):
    """Something unexpected on the server (INTERNAL; also UNKNOWN and DATA_LOSS, whose
    `code` they keep); the message holds only a request id to quote to the operators."""

    code = grpc.StatusCode.INTERNAL


class Unavailable(RegistryGatewayError):
    """AWS (or the gateway) is unavailable for now; `retry_delay` says when to try again."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(RegistryGatewayError):
    """No credentials, or credentials that prove nobody."""

    code = grpc.StatusCode.UNAUTHENTICATED


# Every code but OK has its class: none falls through to the bare base class.
_CLASSES: tuple[type[RegistryGatewayError], ...] = (
    Cancelled,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    Unauthenticated,
)
_BY_CODE: dict[grpc.StatusCode, type[RegistryGatewayError]] = {cls.code: cls for cls in _CLASSES}
_BY_CODE[grpc.StatusCode.UNKNOWN] = Internal  # server faults, as INTERNAL (keeping their code)
_BY_CODE[grpc.StatusCode.DATA_LOSS] = Internal
_BY_REASON: dict[tuple[grpc.StatusCode, str], type[RegistryGatewayError]] = {
    (grpc.StatusCode.ABORTED, "ETAG_MISMATCH"): EtagMismatch,
    (grpc.StatusCode.ABORTED, "WRITE_OVERWRITTEN"): WriteOverwritten,
}


def error_class(code: grpc.StatusCode, reason: str = "") -> type[RegistryGatewayError]:
    """The class of an error with this code and ErrorInfo reason."""
    return _BY_REASON.get((code, reason)) or _BY_CODE.get(code, Internal)


def decode_status(trailing_metadata: ReceivedMetadata | None) -> status_pb2.Status | None:
    """The google.rpc.Status a call's trailing metadata carries, or None."""
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status: status_pb2.Status = status_pb2.Status.FromString(value)
            return status
    return None


def _text(metadata: ReceivedMetadata | None, name: str) -> str:
    for key, value in metadata or ():
        if key == name and isinstance(value, str):
            return value
    return ""


def from_status(
    code: grpc.StatusCode,
    message: str | None,
    status: status_pb2.Status | None,
    trailing_metadata: ReceivedMetadata | None = (),
) -> RegistryGatewayError:
    """The typed exception for a failed call: its code, message, decoded google.rpc.Status
    (None when it carried none) and what else its answer carried (for `x-request-id`)."""
    trailing = tuple(trailing_metadata or ())
    reason = domain = ""
    metadata: dict[str, str] = {}
    request_id = _text(trailing, REQUEST_ID_KEY)
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
    return error_class(code, reason)(
        message or code.name,
        code=code,
        reason=reason,
        domain=domain,
        metadata=metadata,
        request_id=request_id,
        retry_delay=retry_delay,
        field_violations=fields,
        quota_violations=quotas,
        status=status,
        trailing_metadata=trailing,
    )


def from_rpc_error(
    code: grpc.StatusCode, details: str | None, trailing_metadata: ReceivedMetadata | None
) -> RegistryGatewayError:
    """The typed exception for a failed gRPC call, from its code, message and trailers."""
    return from_status(code, details, decode_status(trailing_metadata), trailing_metadata)


def client_error(
    cls: type[RegistryGatewayError],
    message: str,
    *,
    reason: str,
    field: str | None = None,
) -> RegistryGatewayError:
    """An error the client raises itself (domain `registry-gateway-client`, no request id);
    `field` names the request field at fault, as a field violation."""
    fields = [FieldViolation(field, message)] if field is not None else []
    return cls(message, reason=reason, domain=CLIENT_DOMAIN, field_violations=fields)
