"""The gateway's errors as Connect errors: the same status, message and details as gRPC's.

One function (service/errors.py `to_status`) builds every answer: the code, the bounded
message and the google.rpc details (ErrorInfo with the request id, RequestInfo, and where
they apply BadRequest, RetryInfo, QuotaFailure). Over gRPC they travel in
`grpc-status-details-bin`; here the same serialized details go into the Connect error
JSON's `details` (`{"type": "google.rpc.ErrorInfo", "value": <base64>}`), and connectrpc
picks the HTTP status the Connect spec gives each code (400, 401, 403, 404, 409, 429, 503,
504, ...).
"""

from __future__ import annotations

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError, ErrorDetail
from google.rpc import status_pb2
from protobuf.wkt import Any as ConnectAny

from service.errors import GatewayError, to_status

_DETAILS_KEY = "grpc-status-details-bin"
# The same codes under Connect's names (gRPC's CANCELLED is Connect's `canceled`).
CONNECT_CODES: dict[grpc.StatusCode, Code] = {
    code: Code.CANCELED if code == grpc.StatusCode.CANCELLED else Code[code.name]
    for code in grpc.StatusCode
    if code != grpc.StatusCode.OK
}
GRPC_CODES: dict[Code, grpc.StatusCode] = {code: grpc for grpc, code in CONNECT_CODES.items()}


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
