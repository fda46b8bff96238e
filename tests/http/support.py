"""One way to call the gateway over either transport, for tests that run over both.

`Transport.call` makes one call and answers what a test looks at, whichever transport
carried it: the status code, the response, the error's message and google.rpc details,
and the per-call facts (`x-request-id`, `x-cache`, which gRPC sends as trailers and
HTTP as headers). The Connect side posts JSON with httpx, as any HTTP client would, and
checks that each error comes with the HTTP status the Connect spec gives its code.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import httpx
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from service.gen.v1 import registry_pb2 as pb
from tests.support.helpers import KEY

SERVICE = "ecr.registry.v1.RegistryConfigService"
# https://connectrpc.com/docs/protocol/#error-codes
CONNECT_HTTP_STATUS = {
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_BY_CONNECT_NAME = {
    ("canceled" if code == grpc.StatusCode.CANCELLED else code.name.lower()): code
    for code in grpc.StatusCode
}


def response_class(rpc: str) -> type[Message]:
    """The response message class of `rpc`."""
    cls: type[Message] = getattr(pb, f"{rpc}Response")
    return cls


@dataclass
class Answer:
    """What one call answered, whichever transport carried it."""

    code: grpc.StatusCode
    response: Any = None
    message: str = ""
    details: list[Any] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    http_status: int | None = None

    def _one(self, kind: type[Any]) -> Any:
        found = [d for d in self.details if isinstance(d, kind)]
        assert len(found) <= 1, found
        return found[0] if found else None

    @property
    def info(self) -> error_details_pb2.ErrorInfo:
        """The one ErrorInfo (AIP-193)."""
        infos = [d for d in self.details if isinstance(d, error_details_pb2.ErrorInfo)]
        assert len(infos) == 1, (self.code, self.message, self.details)
        return infos[0]

    @property
    def bad_request(self) -> error_details_pb2.BadRequest | None:
        found: error_details_pb2.BadRequest | None = self._one(error_details_pb2.BadRequest)
        return found

    @property
    def retry_info(self) -> error_details_pb2.RetryInfo | None:
        found: error_details_pb2.RetryInfo | None = self._one(error_details_pb2.RetryInfo)
        return found

    @property
    def quota_failure(self) -> error_details_pb2.QuotaFailure | None:
        found: error_details_pb2.QuotaFailure | None = self._one(error_details_pb2.QuotaFailure)
        return found

    @property
    def fields(self) -> list[str]:
        """The paths of the BadRequest's field violations."""
        bad = self.bad_request
        return [v.field for v in bad.field_violations] if bad is not None else []


_DETAIL_TYPES: dict[str, type[Any]] = {
    f"google.rpc.{cls.__name__}": cls
    for cls in (
        error_details_pb2.ErrorInfo,
        error_details_pb2.BadRequest,
        error_details_pb2.RetryInfo,
        error_details_pb2.QuotaFailure,
        error_details_pb2.RequestInfo,
    )
}


def _unpack(type_name: str, value: bytes) -> Any:
    cls = _DETAIL_TYPES.get(type_name)
    assert cls is not None, f"unexpected detail {type_name}"
    return cls.FromString(value)


class Transport(Protocol):
    """Calls the gateway's RPCs."""

    name: str

    async def call(
        self,
        rpc: str,
        request: Message,
        *,
        key: str | None = KEY,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """One call of `rpc`; never raises for an error status."""
        ...


class GrpcTransport:
    """Over grpc.aio, as the generated stubs call."""

    name = "grpc"

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    async def call(
        self,
        rpc: str,
        request: Message,
        *,
        key: str | None = KEY,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Answer:
        method: grpc.aio.UnaryUnaryMultiCallable[Message, Message] = self._channel.unary_unary(
            f"/{SERVICE}/{rpc}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class(rpc).FromString,
        )
        metadata = [*(headers or {}).items()]
        if key is not None:
            metadata.append(("authorization", f"Bearer {key}"))
        call = method(request, metadata=metadata, timeout=timeout)
        try:
            response = await call
        except grpc.aio.AioRpcError as exc:
            trailing = {k: v for k, v in (exc.trailing_metadata() or ())}
            details: list[Any] = []
            raw = trailing.get("grpc-status-details-bin")
            if isinstance(raw, bytes):
                for packed in status_pb2.Status.FromString(raw).details:
                    details.append(_unpack(packed.TypeName(), packed.value))
            meta = {k: v for k, v in trailing.items() if isinstance(v, str)}
            return Answer(exc.code(), None, exc.details() or "", details, meta)
        trailing_md = await call.trailing_metadata()
        meta = {k: v for k, v in (trailing_md or ()) if isinstance(v, str)}
        return Answer(grpc.StatusCode.OK, response, meta=meta)


class ConnectTransport:
    """Over HTTP/1.1 and JSON (the Connect protocol), with httpx."""

    name = "connect"

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def call(
        self,
        rpc: str,
        request: Message,
        *,
        key: str | None = KEY,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Answer:
        sent = {"content-type": "application/json", **(headers or {})}
        if key is not None:
            sent["authorization"] = f"Bearer {key}"
        if timeout is not None:
            sent["connect-timeout-ms"] = str(int(timeout * 1000))
        body = json_format.MessageToJson(request, indent=None)
        reply = await self._client.post(f"/{SERVICE}/{rpc}", content=body, headers=sent)
        return connect_answer(rpc, reply)


def connect_answer(rpc: str, reply: httpx.Response) -> Answer:
    """Read a Connect unary answer (JSON codec) as an Answer."""
    meta = {k: v for k, v in reply.headers.items() if k in ("x-request-id", "x-cache", "etag")}
    if reply.status_code == 200:
        response = response_class(rpc)()
        # As strict as the server: a field the client does not know is a test failure.
        json_format.Parse(reply.text, response, ignore_unknown_fields=False)
        return Answer(grpc.StatusCode.OK, response, meta=meta, http_status=200)
    assert reply.headers.get("content-type") == "application/json", reply
    error = json.loads(reply.text)
    code = _BY_CONNECT_NAME[error["code"]]
    assert reply.status_code == CONNECT_HTTP_STATUS[code], (reply.status_code, error)
    details = [
        _unpack(d["type"], base64.b64decode(d["value"] + "=" * (-len(d["value"]) % 4)))
        for d in error.get("details", ())
    ]
    return Answer(code, None, error.get("message", ""), details, meta, reply.status_code)
