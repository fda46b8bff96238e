"""The Connect and gRPC-Web protocol headers, judged by the pipeline rather than by connectrpc.

connectrpc refuses a `connect-protocol-version` other than `1`, a `connect-timeout-ms`
that is not at most 10 digits (Connect) and a `grpc-timeout` that is not at most 8 digits
and a unit (gRPC-Web) while it builds the request's context, before any interceptor runs
(connectrpc 0.13, `_protocol_connect.py` and `_protocol_grpc.py`,
`create_request_context`). Its answer repeats the whole value, control characters
included (up to the 16 KiB of a request head), and the refusal has no request id, no
access log line and no metric: the pipeline never sees the call.

`ProtocolHeaders`, in front of the Connect application, takes such a header out of the
request, so that connectrpc serves the call (a missing timeout is the gateway's default
deadline; a missing version is Connect's `1`), and leaves the refusal in the request's
context (`REFUSAL`). The pipeline's interceptor (service/http/transport.py) answers it
after authentication, like any refused call: INVALID_ARGUMENT `INVALID_HEADER` naming the
header, its value echoed bounded and escaped (service/echo.py), a request id, an access
log line and the metrics. A stranger with a bad header hears UNAUTHENTICATED, as for
anything else it sends.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from service.echo import echo
from service.errors import FieldViolation, InvalidArgument

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# The refusal of the request in this task, if one of its protocol headers was bad. The
# ASGI layer and connectrpc's interceptor run in the same task (as EXCHANGE does).
REFUSAL: contextvars.ContextVar[InvalidArgument | None] = contextvars.ContextVar(
    "registry_gateway_protocol_refusal", default=None
)

_CONNECT_VERSION = b"connect-protocol-version"
_CONNECT_TIMEOUT = b"connect-timeout-ms"
_GRPC_TIMEOUT = b"grpc-timeout"
_GRPC_TIMEOUT_UNITS = frozenset(b"HMSmun")
_GRPC_WEB = b"application/grpc-web"
_GRPC = b"application/grpc"


def _connect_version(value: bytes) -> str | None:
    return None if value == b"1" else "must be 1"


def _connect_timeout(value: bytes) -> str | None:
    # An empty value is no timeout for connectrpc; bytes.isdigit is ASCII digits only.
    if not value or (len(value) <= 10 and value.isdigit()):
        return None
    return "must be a number of milliseconds of at most 10 digits"


def _grpc_timeout(value: bytes) -> str | None:
    # The gRPC grammar: at most 8 digits, then one unit (PROTOCOL-HTTP2.md, Timeout).
    if 2 <= len(value) <= 9 and value[:-1].isdigit() and value[-1] in _GRPC_TIMEOUT_UNITS:
        return None
    return "must be at most 8 digits and a unit (H, M, S, m, u or n)"


_CONNECT_CHECKS = {_CONNECT_VERSION: _connect_version, _CONNECT_TIMEOUT: _connect_timeout}
_GRPC_WEB_CHECKS = {_GRPC_TIMEOUT: _grpc_timeout}


def _protocol(content_type: bytes) -> str:
    """The protocol connectrpc serves a content type with (its negotiate_server_protocol,
    which matches the value as sent)."""
    if content_type == _GRPC_WEB or content_type.startswith(_GRPC_WEB + b"+"):
        return "grpc-web"
    if content_type == _GRPC or content_type.startswith(_GRPC + b"+"):
        return "grpc"
    return "connect"


def refusal(header: str, value: bytes, problem: str) -> InvalidArgument:
    """The answer to a request whose protocol header `header` is `value`."""
    # Not repr(): echo's escapes are final (echo is idempotent; repr would escape them again).
    shown = f"'{echo(value)}'"
    return InvalidArgument(
        f"the header {header} {problem}, got {shown}",
        reason="INVALID_HEADER",
        metadata={"header": header},
        field_violations=[FieldViolation("", f"header {header} {problem}, got {shown}")],
    )


def check(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[list[tuple[bytes, bytes]], InvalidArgument | None]:
    """The headers connectrpc may see, and the refusal of the first bad protocol header
    (None when all are good, and the headers are then as sent)."""
    kept = list(headers)
    content_type = next((v for k, v in kept if k.lower() == b"content-type"), b"")
    protocol = _protocol(content_type)
    # gRPC (HTTP/2) is refused by the listener (415) before connectrpc sees it.
    checks = _CONNECT_CHECKS if protocol == "connect" else _GRPC_WEB_CHECKS
    found: InvalidArgument | None = None
    bad: set[bytes] = set()
    for key, value in kept:
        name = key.lower()
        judge = checks.get(name)
        if judge is None:
            continue
        problem = judge(value)
        if problem is not None:
            bad.add(name)
            if found is None:
                found = refusal(name.decode(), value, problem)
    if found is None:
        return kept, None
    return [(k, v) for k, v in kept if k.lower() not in bad], found


class ProtocolHeaders:
    """ASGI: a bad protocol header taken out before connectrpc, its refusal left to the
    pipeline (see the module's docstring)."""

    def __init__(self, app: App) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers, found = check(scope.get("headers", ()))
        if found is None:
            await self._app(scope, receive, send)
            return
        token = REFUSAL.set(found)
        try:
            await self._app({**scope, "headers": headers}, receive, send)
        finally:
            REFUSAL.reset(token)
