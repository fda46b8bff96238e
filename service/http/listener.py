"""The HTTP listener: the generated Connect ASGI application on uvicorn, in the gateway's
process and event loop, beside the grpc.aio server.

Why uvicorn (not hypercorn): the listener serves Connect unary calls over HTTP/1.1 (curl,
connect-web, connect-node, gRPC-Web), which needs neither HTTP/2 nor trailers; gRPC
callers have the grpc.aio listeners. uvicorn is the smaller and faster of the two for
HTTP/1.1 (hypercorn adds h2, wsproto and its own task groups per connection); its server
runs as a coroutine on the running loop, with its socket handed in (bound here, so
`--workers` can share the port with SO_REUSEPORT, as grpcio does). It parses with h11,
which bounds the request head (MAX_HEADER_BYTES). Its connections are a resource like any
other (service/http/connections.py): capped per peer address and in all, timed to a whole
head and a whole body, with requests in flight (not open sockets) counted against
`server.max_concurrent_rpcs`, and a refusal sent before the body ends the connection.

uvicorn's own SIGINT/SIGTERM handlers are not installed: `Server.serve` would otherwise
take over those signals and stop the listener at once, bypassing the gateway's drain
(service/app/server.py: NOT_SERVING, drain_seconds of serving, then stop with grace).
The gateway stops it with `stop`, after the drain, waiting up to grace_seconds.

In front of the Connect application, a thin ASGI layer does what is HTTP's and not the
Connect protocol's: the `304 Not Modified` of a matching `If-None-Match` (decided by the
transport after authentication and authorization), CORS when configured, the deadline
cap in `connect-timeout-ms` (so connectrpc enforces it over the whole call, body
included), and header bytes that are not UTF-8 (connectrpc would answer them 500; here
they reach authentication as Latin-1, as grpcio hands them over).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import uvicorn
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from google.rpc import error_details_pb2

from service.config import HttpConfig, ServerConfig, parse_listen
from service.gen.v1.registry_connect import RegistryConfigServiceASGIApplication
from service.http.codec import BinaryCodec, JsonCodec, transport_limit
from service.http.connections import ConnectionLimits, ConnectionTable, protocol_for
from service.http.protocol_headers import ProtocolHeaders
from service.http.transport import EXCHANGE, ConnectPipeline, ConnectService, Exchange

log = logging.getLogger("registry_gateway.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_TIMEOUT_HEADER = b"connect-timeout-ms"
# The request line and headers together, at most (uvicorn answers 400 past it): a bearer
# JWT and Connect's headers fit many times over; gRPC's own default is 8 KiB of metadata.
MAX_HEADER_BYTES = 16 * 1024
# A 304 carries the validators and caching headers of the 200 it stands for, not its body.
_NOT_WITH_304 = frozenset({b"content-type", b"content-length", b"content-encoding"})
# What a browser may send and read (CORS): Connect's, gRPC-Web's and the gateway's own.
_CORS_REQUEST_HEADERS = (
    "authorization, content-type, connect-protocol-version, connect-timeout-ms, "
    "grpc-timeout, x-grpc-web, x-user-agent, x-request-id, cache-control, if-none-match"
)
_CORS_EXPOSED_HEADERS = (
    "x-request-id, x-cache, x-unverified-destinations, etag, grpc-status, grpc-message, "
    "grpc-status-details-bin"
)
_CORS_MAX_AGE = "7200"
# The details the gateway sends, by the type name Connect's error JSON gives them.
_DETAIL_TYPES: dict[str, type[ProtoMessage]] = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (
        error_details_pb2.ErrorInfo,
        error_details_pb2.RequestInfo,
        error_details_pb2.BadRequest,
        error_details_pb2.RetryInfo,
        error_details_pb2.QuotaFailure,
    )
}


def with_debug(body: bytes) -> bytes:
    """A Connect error JSON with each known detail also shown as JSON (`debug`).

    Connect's `debug` is optional; connectrpc writes it only for protobuf-py messages, and
    the gateway's details are google.protobuf ones. A person reading curl's output should
    not have to decode base64 protobuf to see the reason and the request id."""
    try:
        error = json.loads(body)
        for detail in error.get("details", ()):
            cls = _DETAIL_TYPES.get(detail.get("type"))
            if cls is None or "debug" in detail:
                continue
            value = detail["value"]
            raw = base64.b64decode(value + "=" * (-len(value) % 4))
            detail["debug"] = json_format.MessageToDict(cls.FromString(raw))
    except (ValueError, TypeError, AttributeError, KeyError, DecodeError, binascii.Error):
        return body  # not an error the gateway wrote: sent as it is
    return json.dumps(error, ensure_ascii=False).encode()


def _utf8(value: bytes) -> bytes:
    """Header bytes connectrpc can decode: as sent when UTF-8, else read as Latin-1."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1").encode("utf-8")
    return value


class GatewayHttpApp:
    """The ASGI layer in front of the Connect application (see the module's docstring)."""

    def __init__(
        self,
        connect: App,
        *,
        default_deadline_seconds: float,
        max_deadline_seconds: float,
        cors_allowed_origins: tuple[str, ...] = (),
    ) -> None:
        self._connect = connect
        self._default_ms = str(math.ceil(default_deadline_seconds * 1000)).encode()
        self._max_ms = math.ceil(max_deadline_seconds * 1000)
        self._origins = frozenset(cors_allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            # lifespan is off; websockets are not served.
            return
        headers, content_type, origin = self._headers(scope)
        if content_type.startswith(b"application/grpc") and not content_type.startswith(
            b"application/grpc-web"
        ):
            # gRPC needs HTTP/2 and trailers: it is served on the gRPC listeners.
            await _empty(send, 415, [(b"accept-post", b"application/json, application/proto")])
            return
        cors = self._cors(origin)
        if cors is not None and scope["method"] == "OPTIONS":
            await _empty(send, 204, [*cors, *self._preflight()])
            return
        scope["headers"] = headers
        query = scope.get("query_string", b"")
        scope["query_string"] = _utf8(query) if query else query
        exchange = Exchange()
        token = EXCHANGE.set(exchange)
        try:
            await self._connect(scope, receive, self._sender(send, exchange, cors))
        finally:
            EXCHANGE.reset(token)

    def _headers(self, scope: Scope) -> tuple[list[tuple[bytes, bytes]], bytes, bytes | None]:
        headers: list[tuple[bytes, bytes]] = []
        content_type = b""
        origin: bytes | None = None
        timeout: bytes | None = None
        for key, value in scope.get("headers", ()):
            name = _utf8(key).lower()
            if name == _TIMEOUT_HEADER:
                timeout = value
                continue
            if name == b"content-type":
                content_type = value.strip().lower()
            elif name == b"origin":
                origin = value
            headers.append((name, _utf8(value)))
        if not content_type.startswith(b"application/grpc"):
            # The caller's deadline, capped; the default when none (as over gRPC). A value
            # that is not a number is passed on for connectrpc to refuse.
            if timeout is None:
                timeout = self._default_ms
            elif timeout.isdigit() and len(timeout) <= 10 and int(timeout) > self._max_ms:
                timeout = str(self._max_ms).encode()
            headers.append((_TIMEOUT_HEADER, _utf8(timeout)))
        elif timeout is not None:
            headers.append((_TIMEOUT_HEADER, _utf8(timeout)))
        return headers, content_type, origin

    def _cors(self, origin: bytes | None) -> list[tuple[bytes, bytes]] | None:
        """The CORS headers for a request from `origin`, or None when CORS does not apply."""
        if origin is None or not self._origins:
            return None
        text = origin.decode("latin-1")
        if "*" in self._origins:
            allowed = b"*"
        elif text in self._origins:
            allowed = origin
        else:
            return None
        return [
            (b"access-control-allow-origin", allowed),
            (b"access-control-expose-headers", _CORS_EXPOSED_HEADERS.encode()),
            (b"vary", b"Origin"),
        ]

    @staticmethod
    def _preflight() -> list[tuple[bytes, bytes]]:
        return [
            (b"access-control-allow-methods", b"GET, POST"),
            (b"access-control-allow-headers", _CORS_REQUEST_HEADERS.encode()),
            (b"access-control-max-age", _CORS_MAX_AGE.encode()),
        ]

    @staticmethod
    def _sender(send: Send, exchange: Exchange, cors: list[tuple[bytes, bytes]] | None) -> Send:
        error_json = False

        async def sender(message: Message) -> None:
            nonlocal error_json
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                error_json = (
                    message["status"] >= 400
                    and (
                        b"content-type",
                        b"application/json",
                    )
                    in headers
                )
                if cors:
                    headers.extend(cors)
                if exchange.not_modified and message["status"] == 200:
                    message = {
                        **message,
                        "status": 304,
                        "headers": [(k, v) for k, v in headers if k.lower() not in _NOT_WITH_304],
                    }
                else:
                    message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and exchange.not_modified:
                message = {**message, "body": b""}
            elif message["type"] == "http.response.body" and error_json:
                # connectrpc writes an error's JSON in one piece.
                message = {**message, "body": with_debug(message.get("body", b""))}
            await send(message)

        return sender


async def _empty(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the gateway's own drain both listeners."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_app(
    config: HttpConfig,
    server: ServerConfig,
    pipeline: ConnectPipeline,
    service: ConnectService,
) -> App:
    """The ASGI application the listener serves (tests may serve it themselves)."""
    # connectrpc refuses a body larger than this while reading it; each RPC's own bound is
    # then checked by the codec.
    largest = transport_limit(server.max_message_bytes)
    connect = RegistryConfigServiceASGIApplication(
        service,
        # At the front, so connectrpc runs it before reading the body.
        interceptors=[pipeline],
        read_max_bytes=largest,
        # Answers are a few KB at most: compressing costs more than it saves, and a
        # compressed request is work the byte limits do not see until it is inflated.
        compressions=(),
        codecs=[JsonCodec(server.max_message_bytes), BinaryCodec(server.max_message_bytes)],
    )
    # connectrpc refuses a bad protocol header before the pipeline sees the call: in front
    # of everything, it is taken out and left to the pipeline to refuse, bounded and traced
    # (service/http/protocol_headers.py).
    return ProtocolHeaders(
        GatewayHttpApp(
            connect,
            default_deadline_seconds=server.default_deadline_seconds,
            max_deadline_seconds=server.max_deadline_seconds,
            cors_allowed_origins=config.cors_allowed_origins,
        )
    )


class HttpListener:
    """One uvicorn server for the Connect application, started and stopped by the Gateway."""

    def __init__(
        self,
        config: HttpConfig,
        server: ServerConfig,
        pipeline: ConnectPipeline,
        service: ConnectService,
        *,
        reuse_port: bool = False,
    ) -> None:
        assert config.listen is not None
        self.config = config
        self._server_config = server
        self._reuse_port = reuse_port
        self.app = build_app(config, server, pipeline, service)
        self.port = 0
        self._uvicorn: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.connections = ConnectionTable(
            ConnectionLimits(
                max_connections=server.http_max_connections,
                max_connections_per_address=server.http_max_connections_per_address,
                max_requests_in_flight=server.max_concurrent_rpcs,
                header_timeout_seconds=server.http_header_timeout_seconds,
                body_timeout_seconds=server.http_body_timeout_seconds,
            )
        )

    def open_connections(self) -> int:
        """Connections open and admitted now (tests, and what a stranger holds)."""
        return self.connections.open

    def bind(self, listen: str | None = None) -> socket.socket:
        """Bind the listening socket (raises OSError when the address is taken)."""
        host, port = parse_listen(listen or self.config.listen or "")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP named, not 0: asyncio turns TCP_NODELAY on only for sockets whose proto
        # says TCP, and without it a keep-alive connection's answers wait ~40 ms on Nagle
        # and the client's delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(2048)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def start(self, listen: str | None = None) -> int:
        """Bind and serve; returns the bound port."""
        sock = self.bind(listen)
        self.port = sock.getsockname()[1]
        s = self._server_config
        tls = self.config.tls
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            # h11, not httptools: h11 bounds a request's line and headers (below); httptools
            # buffers headers of any size, so one connection could hold megabytes. uvicorn's
            # H11Protocol with the connection caps and timeouts (service/http/connections.py).
            http=protocol_for(self.connections),
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            loop="none",  # the gateway's running loop
            log_config=None,  # the gateway's logging, unchanged
            access_log=False,  # the gateway's access log (service/pipeline/reporters.py)
            # The peer is the socket's: X-Forwarded-For would let a caller choose the
            # address its failed authentications are counted against.
            proxy_headers=False,
            server_header=False,
            # Off: uvicorn counts open connections against it, so idle sockets would answer
            # everyone 503; requests in flight are counted by the protocol instead.
            limit_concurrency=None,
            timeout_keep_alive=s.http_idle_timeout_seconds,
            timeout_graceful_shutdown=math.ceil(s.grace_seconds),
            ssl_certfile=tls.cert_file if tls else None,
            ssl_keyfile=tls.key_file if tls else None,
        )
        # uvicorn logs its own start and stop at INFO; the gateway logs its listeners.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._uvicorn = _Server(config)
        self._task = asyncio.get_running_loop().create_task(self._uvicorn.serve(sockets=[sock]))
        while not self._uvicorn.started:
            if self._task.done():
                self._task.result()  # raises what failed
                raise RuntimeError("the HTTP listener stopped while starting")
            await asyncio.sleep(0.005)
        return self.port

    async def stop(self, grace: bool = True) -> None:
        """Stop accepting, let calls in flight finish (up to grace_seconds), close."""
        if self._uvicorn is None or self._task is None:
            return
        self._uvicorn.should_exit = True
        if not grace:
            self._uvicorn.force_exit = True
        try:
            await self._task
        finally:
            self._uvicorn = None
            self._task = None
