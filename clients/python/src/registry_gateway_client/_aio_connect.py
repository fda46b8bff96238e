"""The Connect transport of the async client: one attempt over HTTP (the `connect` extra).

The gateway's HTTP listener speaks Connect (and gRPC-Web) with binary or JSON protobuf,
and accepts no compressed request (service/http/listener.py: a compressed body is work its
byte limits do not see until inflated; it answers UNIMPLEMENTED, reason
COMPRESSION_NOT_SUPPORTED). connectrpc's clients send gzip by default, so this transport
sends identity and asks for identity (`send_compression=None`, `accept_compression=()`).
Errors come back as the same google.rpc details as over gRPC (the Connect error JSON's
`details`) and become the same typed errors; `x-request-id` and `x-cache` are response
headers here, handed on where gRPC hands trailers.

Only the clients import this module, and only when given an `http://` or `https://`
target: without the extra, the rest of the package works. Its blocking twin,
`_sync_connect.py`, is generated from this file by `scripts/unasync.py`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import grpc
from connectrpc.client import ResponseMetadata
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import Headers
from google.protobuf import any_pb2
from google.rpc import status_pb2
from pyqwest import Client, HTTPTransport

from registry_gateway_client._aio_only import raise_if_cancelled
from registry_gateway_client._core import Tls
from registry_gateway_client._errors import RegistryGatewayError, from_status
from registry_gateway_client._transport import Attempt, Reply
from registry_gateway_client.v1 import registry_pb2 as pb
from registry_gateway_client.v1.registry_connect import RegistryConfigServiceClient

# Connect's codes are gRPC's under the same names, but for CANCELLED's spelling.
_GRPC_CODES: dict[Code, grpc.StatusCode] = {
    code: grpc.StatusCode.CANCELLED if code == Code.CANCELED else grpc.StatusCode[code.name]
    for code in Code
}
# The generated client's method of each RPC: DescribeRegistry -> describe_registry.
_METHODS = {
    method.name: re.sub(r"(?<!^)(?=[A-Z])", "_", method.name).lower()
    for method in pb.DESCRIPTOR.services_by_name["RegistryConfigService"].methods
}


def connect_error(
    error: ConnectError, received: tuple[tuple[str, Any], ...]
) -> RegistryGatewayError:
    """The typed error for a Connect error: its details are the gateway's google.rpc details."""
    code = _GRPC_CODES.get(error.code, grpc.StatusCode.UNKNOWN)
    status = status_pb2.Status(
        code=code.value[0],
        message=error.message,
        details=[
            any_pb2.Any(
                type_url=f"type.googleapis.com/{detail.type_name}", value=detail.message_bytes
            )
            for detail in error.details
        ],
    )
    return from_status(code, error.message, status if error.details else None, received)


def _received(meta: ResponseMetadata) -> tuple[tuple[str, Any], ...]:
    """The response's headers, then its trailers, as (key, value) pairs."""
    return (*meta.headers.allitems(), *meta.trailers.allitems())


def _http_transport(tls: Tls) -> HTTPTransport:
    """An HTTP transport trusting `tls.ca_file`, or the system's roots without one (pyqwest's
    shared default transport trusts no certificate at all: "If this is unset and tls_ca_cert
    is not provided, TLS will not function", pyqwest 0.12 `HTTPTransport`)."""
    if tls.server_name is not None:
        raise ValueError("Tls.server_name is a gRPC option: over Connect, use the server's name")

    def read(path: str | Path | None) -> bytes | None:
        return Path(path).read_bytes() if path is not None else None

    return HTTPTransport(
        tls_ca_cert=read(tls.ca_file),
        tls_include_system_certs=tls.ca_file is None,
        tls_cert=read(tls.cert_file),
        tls_key=read(tls.key_file),
    )


class ConnectTransport:
    """Sends each attempt to the gateway's HTTP listener at `url` (`http://host:port`)."""

    def __init__(self, url: str, *, tls: Tls | None = None) -> None:
        https = url.startswith("https://")
        self._http = _http_transport(tls or Tls()) if tls is not None or https else None
        self._client = RegistryConfigServiceClient(
            url.rstrip("/"),
            # The gateway accepts no compressed request and sends none (see above).
            send_compression=None,
            accept_compression=(),
            http_client=Client(self._http) if self._http is not None else None,
        )

    async def unary(self, attempt: Attempt) -> Reply:
        method: Any = getattr(self._client, _METHODS[attempt.rpc])
        with ResponseMetadata() as meta:
            try:
                response = await method(
                    attempt.request,
                    headers=Headers(list(attempt.metadata)),
                    # connectrpc refuses a timeout of 0 ms as DEADLINE_EXCEEDED itself.
                    timeout_ms=math.ceil(attempt.timeout * 1000),
                )
            except ConnectError as exc:
                raise_if_cancelled(exc)
                raise connect_error(exc, _received(meta)) from exc
        return Reply(response, _received(meta))

    async def close(self) -> None:
        await self._client.close()
        if self._http is not None:
            await self._http.aclose()
