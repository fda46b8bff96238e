"""The gateway's errors as Connect errors: the same status, message and details as gRPC's.

One function (service/errors.py `to_status`) builds every answer: the code, the bounded
message and the google.rpc details (ErrorInfo with the request id, RequestInfo, and where
they apply BadRequest, RetryInfo, QuotaFailure). Over gRPC they travel in
`grpc-status-details-bin`; here the same serialized details go into the Connect error
JSON's `details` (`{"type": "google.rpc.ErrorInfo", "value": <base64>}`), and connectrpc
picks the HTTP status the Connect spec gives each code (400, 401, 403, 404, 409, 429, 503,
504, ...).

connectrpc's own refusals of a request it could not read are the caller's errors
(`unreadable_request`): INVALID_ARGUMENT, never INTERNAL.
"""

from __future__ import annotations

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError, ErrorDetail
from google.rpc import status_pb2
from protobuf.wkt import Any as ConnectAny

from service.echo import echo
from service.errors import FieldViolation, GatewayError, InvalidArgument, to_status

_DETAILS_KEY = "grpc-status-details-bin"
# The same codes under Connect's names (gRPC's CANCELLED is Connect's `canceled`).
CONNECT_CODES: dict[grpc.StatusCode, Code] = {
    code: Code.CANCELED if code == grpc.StatusCode.CANCELLED else Code[code.name]
    for code in grpc.StatusCode
    if code != grpc.StatusCode.OK
}
GRPC_CODES: dict[Code, grpc.StatusCode] = {code: grpc for grpc, code in CONNECT_CODES.items()}


# What connectrpc answers about a request it could not read, before the servicer ran: the
# caller's bytes (a gRPC-Web envelope with bad flags, truncated, or flagged compressed; a
# unary call of no or several messages; GET parameters), never the server's failure.
# connectrpc answers some of these INTERNAL or UNIMPLEMENTED (connectrpc 0.13:
# `_envelope.py`, "sent compressed message without compression support"; `_server_async.py`,
# "unary request has multiple messages"), which would page the operators
# (deploy/prometheus/alerts.yaml counts INTERNAL) and log "unexpected error".
_READING_CODES = frozenset({Code.INVALID_ARGUMENT, Code.INTERNAL, Code.UNIMPLEMENTED})


def unreadable_request(error: ConnectError) -> GatewayError | None:
    """The gateway's answer to connectrpc's refusal of a request it could not read (raised
    before the servicer ran), or None when `error` is not one."""
    if error.code not in _READING_CODES or (
        error.__cause__ is not None and not isinstance(error.__cause__, GatewayError)
    ):
        # A codec that raised something it should not have (connectrpc wraps it as
        # `unmarshal message: ...`): not a judgement of the caller's bytes.
        return None
    if error.code == Code.UNIMPLEMENTED and error.message.startswith("unknown compression"):
        # Connect and gRPC both answer an unknown content coding UNIMPLEMENTED. connectrpc's
        # message repeats the coding's name whole (the caller's text): not repeated here.
        gateway = GatewayError(
            "compressed requests are not accepted: send the request uncompressed (identity)",
            reason="COMPRESSION_NOT_SUPPORTED",
        )
        gateway.code = grpc.StatusCode.UNIMPLEMENTED
        return gateway
    # connectrpc's own words (byte counts, no caller text today), bounded all the same.
    said = echo(error.message)
    return InvalidArgument(
        f"the request is not a valid Connect or gRPC-Web request: {said}",
        reason="UNDECODABLE_REQUEST",
        field_violations=[FieldViolation("", said)],
    )


def to_connect_error(error: GatewayError, request_id: str) -> ConnectError:
    """The Connect form of what gRPC answers for `error`."""
    status = to_status(error, request_id)
    details: list[ErrorDetail] = []
    for key, value in status.trailing_metadata:
        if key == _DETAILS_KEY and isinstance(value, bytes):
            for packed in status_pb2.Status.FromString(value).details:
                # connectrpc's Any (protobuf-py) carries google.protobuf's bytes unchanged.
                details.append(
                    ErrorDetail(ConnectAny(type_url=packed.type_url, value=packed.value))
                )
    return ConnectError(CONNECT_CODES[status.code], status.message, details)
