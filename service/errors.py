"""Every error the gateway answers, as data, and the one place that turns it into a status.

AIP-193: a code, a clear message, exactly one ErrorInfo in domain `registry-gateway`
with an UPPER_SNAKE_CASE reason and lowerCamelCase metadata keys, plus the detail types
the README's error table names (BadRequest, RetryInfo, QuotaFailure; docs/architecture.md,
"Error model"). Messages never hold a stack trace, a credential or an AWS key: they are
written here, from fields, not copied from exceptions. Whatever an error holds, its answer
is escaped and bounded to fit gRPC's metadata limit (`to_status`).

AWS's own errors are mapped into these next to the AWS client, in service/aws/errors.py.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.echo import echo

DOMAIN = "registry-gateway"
REQUEST_ID_KEY = "x-request-id"
# The reason of a request refused for its fields (service/registry/rpcs/validation.py, and
# the domain's own checks of a request's content: service/registry/model/slices.py).
INVALID_REQUEST = "INVALID_REQUEST"
# Field violations listed in one answer: enough to fix a request by, and small enough that
# the status details stay well inside the 8 KiB of trailing metadata a gRPC client accepts
# by default.
MAX_VIOLATIONS = 25


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
    # A write that failed after reading the resource fresh inside the registry's lock: the
    # etag it read, for the audit trail (set by service/registry/writes/operations.py, which
    # alone knows it; never part of the answer). None: it failed before reading.
    etag_read_before: str | None = None

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
        retry_after_seconds: float | None = None,
        quota_violations: Sequence[QuotaViolation] = (),
        etag_read_before: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})
        self.field_violations = tuple(field_violations)
        self.retry_after_seconds = retry_after_seconds
        self.quota_violations = tuple(quota_violations)
        self.etag_read_before = etag_read_before


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


class WriteOverwritten(GatewayError):
    """The write reached AWS, but what AWS holds after it is another writer's state: a
    writer around the gateway (console, Terraform) or one whose lock was lost (a Redis
    failover) wrote between this write and its read-back. Not a plain success: the caller's
    change may be gone. Carries the etag of what now stands (`currentEtag`)."""

    code = grpc.StatusCode.ABORTED
    reason = "WRITE_OVERWRITTEN"


class Unavailable(GatewayError):
    """AWS throttled, failed or could not be reached; retry later."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "UPSTREAM_UNAVAILABLE"


class UpstreamFailure(Unavailable):
    """AWS itself failed: a 5xx, throttling, a connection failure or botocore's own timeout.

    The only errors the circuit breaker counts (service/aws/resilience.py): a caller's deadline
    or departure, a full bulkhead, a refused or invalid request say nothing of AWS's health.
    """


class UpstreamNoAnswer(UpstreamFailure):
    """The request went to AWS (or may have: an earlier attempt did) and no answer came:
    botocore's read timeout, a connection dropped after sending. A read is simply retried;
    a write's outcome is unknown until it is read back (service/registry/writes/settlement.py).
    A connection that failed before anything was sent is a plain UpstreamFailure."""


class ResourceExhausted(GatewayError):
    """The tenant is over its rate; carries RetryInfo and a QuotaFailure."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RATE_LIMITED"


class DeadlineExceeded(GatewayError):
    """The call's deadline was spent."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Cancelled(GatewayError):
    """The gateway ended a call the caller let stall (its request message did not arrive in
    time). CANCELLED, not DEADLINE_EXCEEDED: the caller's doing, which pages nobody."""

    code = grpc.StatusCode.CANCELLED
    reason = "CANCELLED"


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


# Bounds of what an answer may carry. grpc-message percent-encodes every byte outside
# printable ASCII (and `%`) to three; grpc-status-details-bin is base64 (4/3). With the
# message at most MESSAGE_LIMIT on the wire and the whole serialized google.rpc.Status
# (message included) under DETAILS_LIMIT, the trailers stay near 6.5 KiB, under gRPC's
# default 8 KiB metadata limit, so the caller gets its error and not RESOURCE_EXHAUSTED.
MESSAGE_LIMIT = 1024
DETAILS_LIMIT = 4096
_REASON_LIMIT = 64
_KEY_LIMIT = 64  # AIP-193's bound on an ErrorInfo metadata key
_FIELD_LIMIT = 256
_DESCRIPTION_LIMIT = 512
# The length prefixes of ErrorInfo / BadRequest / QuotaFailure, their Any and the details
# entry each grow by a byte or so as the greedy fill adds entries; the exact size is then
# checked by serializing, this only keeps that check from having to drop more than once.
_SLACK = 16
_WRAPPER = len("type.googleapis.com/google.rpc.QuotaFailure") + 8  # Any and its lengths
_ASCII = bytes(range(0x80))
# Errors with at most this many metadata entries and violations are first built whole.
_FEW = 16


def _wire_size(text: str) -> int:
    """Bytes of `text` as grpc-message sends it (percent-encoded UTF-8)."""
    raw = text.encode("utf-8")
    return len(raw) + 2 * (len(raw.translate(None, _ASCII)) + raw.count(b"%"))


def _bounded_message(message: str, limit: int) -> str:
    text = echo(message, limit)
    size = _wire_size(text)
    # Only text with `%` or non-ASCII runs over: shrink by the ratio seen until it fits.
    while size > limit and len(text) > 1:
        text = echo(message, max(1, min(len(text) - 1, len(text) * limit // size)))
        size = _wire_size(text)
    return text


def _entry_size(size: int) -> int:
    """A length-delimited protobuf field of `size` bytes: tag, length, payload."""
    return 1 + max(1, (size.bit_length() + 6) // 7) + size


@dataclass
class _Kept:
    """The droppable parts of an error that fit, each already bounded."""

    metadata: list[tuple[str, str]] = field(default_factory=list)
    fields: list[error_details_pb2.BadRequest.FieldViolation] = field(default_factory=list)
    quotas: list[error_details_pb2.QuotaFailure.Violation] = field(default_factory=list)

    def pop(self) -> bool:
        """Drop the last part kept (quotas, then fields, then metadata); False if none."""
        for parts in (self.quotas, self.fields, self.metadata):
            if parts:
                parts.pop()
                return True
        return False

    def left_out(self, error: GatewayError) -> str:
        """What the message says when parts were dropped: how many of each."""
        counts = (
            (len(error.metadata), len(self.metadata), "metadata entries"),
            (len(error.field_violations), len(self.fields), "field violations"),
            (len(error.quota_violations), len(self.quotas), "quota violations"),
        )
        parts = [
            f"{total - kept} of {total} {what}" for total, kept, what in counts if total > kept
        ]
        return f" ({', '.join(parts)} left out)" if parts else ""


def _fill(error: GatewayError, room: int) -> _Kept:
    """Keep metadata entries, then field violations, then quota violations, in order, while
    they fit in `room` bytes; bound each as it comes so a huge error costs no more."""
    kept = _Kept()
    for key, value in error.metadata.items():
        pair = (echo(key, _KEY_LIMIT), echo(value))
        room -= _entry_size(_entry_size(len(pair[0].encode())) + _entry_size(len(pair[1].encode())))
        if room < 0:
            return kept
        kept.metadata.append(pair)
    for v in error.field_violations:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=echo(v.field, _FIELD_LIMIT), description=echo(v.description, _DESCRIPTION_LIMIT)
        )
        room -= _entry_size(violation.ByteSize())
        if room < 0:
            return kept
        kept.fields.append(violation)
    for q in error.quota_violations:
        quota = error_details_pb2.QuotaFailure.Violation(
            subject=echo(q.subject, _FIELD_LIMIT),
            description=echo(q.description, _DESCRIPTION_LIMIT),
        )
        room -= _entry_size(quota.ByteSize())
        if room < 0:
            return kept
        kept.quotas.append(quota)
    return kept


def _status(error: GatewayError, message: str, request_id: str, kept: _Kept) -> status_pb2.Status:
    # requestId last: the gateway's, whatever a caller put under that key.
    metadata = {**dict(kept.metadata), "requestId": request_id}
    details: list[Message] = [
        error_details_pb2.ErrorInfo(
            reason=echo(error.reason, _REASON_LIMIT), domain=DOMAIN, metadata=metadata
        ),
        error_details_pb2.RequestInfo(request_id=request_id),
    ]
    if kept.fields:
        details.append(error_details_pb2.BadRequest(field_violations=kept.fields))
    if kept.quotas:
        details.append(error_details_pb2.QuotaFailure(violations=kept.quotas))
    if error.retry_after_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_seconds * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=error.code.value[0], message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


def _fitted(error: GatewayError, request_id: str, message: str) -> tuple[status_pb2.Status, str]:
    """The Status of an error too large to answer whole: what fits, and the new message."""
    empty = _status(error, message, request_id, _Kept()).ByteSize()
    kept = _fill(error, DETAILS_LIMIT - 1 - empty - 2 * _entry_size(_WRAPPER) - _SLACK)
    while True:
        note = kept.left_out(error)
        if note:
            message = _bounded_message(error.message, MESSAGE_LIMIT - len(note)) + note
        status = _status(error, message, request_id, kept)
        if status.ByteSize() < DETAILS_LIMIT or not kept.pop():
            return status, message


def to_status(error: GatewayError, request_id: str) -> RichStatus:
    """Build the google.rpc.Status of an error: exactly one ErrorInfo, then other details.

    The last line of defence for whatever the error holds. Every text is escaped and cut
    with `echo`: ErrorInfo metadata values to 128 characters, its keys and the reason to
    64, field paths and quota subjects to 256, descriptions to 512, the request id to 128.
    The message is cut to MESSAGE_LIMIT bytes as grpc-message sends them (so at most
    1,024 characters); each caller value echoed inside it should already be at most 128
    characters, so this cut only catches the careless. The serialized Status, message
    included, stays under DETAILS_LIMIT: metadata entries, then field violations, then
    quota violations that would not fit are left out from the end, and the message says
    how many of each. ErrorInfo (with the request id) and RequestInfo are always there.
    """
    request_id = echo(request_id)
    message = _bounded_message(error.message, MESSAGE_LIMIT)
    parts = len(error.metadata) + len(error.field_violations) + len(error.quota_violations)
    status: status_pb2.Status | None = None
    if parts <= _FEW:
        # Nearly every error: build it whole once (each part bounded) and keep it if it fits.
        whole = _status(error, message, request_id, _fill(error, sys.maxsize))
        if whole.ByteSize() < DETAILS_LIMIT:
            status = whole
    if status is None:
        status, message = _fitted(error, request_id, message)
    grpc_status = rpc_status.to_status(status)
    return RichStatus(
        code=error.code,
        message=message,
        trailing_metadata=(*grpc_status.trailing_metadata, (REQUEST_ID_KEY, request_id)),
    )


def internal(request_id: str) -> Internal:
    """The only thing an unexpected failure tells the caller: that it happened, and its id."""
    return Internal(f"internal error; quote request id {request_id} to the operators")
