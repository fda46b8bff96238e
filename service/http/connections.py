"""The HTTP listener's connections, as a resource: caps per peer address and in all, the
time a connection may take to send a whole request head and a whole body, and requests in
flight counted apart from open sockets.

What uvicorn (0.54, h11) offers and lacks:
- `limit_concurrency` answers 503 once open *connections* or requests in flight reach it:
  idle sockets count, so a stranger holding silent sockets (no request, no credentials)
  locks every tenant out of HTTP (issue 21). Here it is off, and `max_requests_in_flight`
  counts requests only.
- `timeout_keep_alive` closes a connection left silent after a response, but any byte
  disarms it, and nothing times a connection that never sent a request, a head trickling in
  a byte at a time (slowloris) or a body that never ends (Kludex/uvicorn#1192; its
  `data_received` disarms the timer first). Here the head must arrive whole within
  `header_timeout_seconds` of the connection (or of a later request's first byte, as hyper's
  `header_read_timeout` does) and the body within `body_timeout_seconds` of the head.
- h11 bounds the head's size (`h11_max_incomplete_event_size`, set by the listener), not
  its time.
- After a response, h11 keeps a connection alive and uvicorn reads and discards the rest of
  the request's body, however long (100 MB after a 401, issue 21). Here an answer sent
  before the whole body arrived carries `connection: close`, and the connection ends in
  stages (RFC 9112 section 9.6, as Go's net/http and nginx do): the answer, a FIN, then at
  most LINGER_BYTES more read unparsed and dropped (a client's small rest of body, so its
  close can be seen) and LINGER_SECONDS before the socket is closed. Closing at once would
  reset a client still writing its body before it read the answer (Node's fetch then
  reports EPIPE, not the 401 or 429).

Hence `GuardedH11Protocol`, a subclass of uvicorn's H11Protocol: these need the
connection's life (accept, bytes, h11's state of the request) that an ASGI application
never sees, and uvicorn offers no hook for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.flow_control import CLOSE_HEADER
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.auth.failures import address_key

log = logging.getLogger("registry_gateway.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The answer to a connection past a cap, written at once and followed by a close.
_TOO_MANY = b"too many connections\n"
_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\n"
    b"connection: close\r\n\r\n%s" % (len(_TOO_MANY), _TOO_MANY)
)
_BUSY = b"too many requests in flight\n"
# The staged close of a connection answered before its whole body (see the docstring).
LINGER_BYTES = 64 * 1024
LINGER_SECONDS = 1.0
# Connections refused at a cap are logged at most this often (a count since the last line),
# so a flood of them is one line every few seconds.
_LOG_EVERY_SECONDS = 10.0


@dataclass(frozen=True)
class ConnectionLimits:
    """The caps and timeouts of one HTTP listener (server.http_* in the config)."""

    max_connections: int
    max_connections_per_address: int  # 0: no cap per address
    max_requests_in_flight: int
    header_timeout_seconds: float
    body_timeout_seconds: float


class ConnectionTable:
    """Open connections per address and in all, and requests in flight, of one listener."""

    def __init__(
        self, limits: ConnectionLimits, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self.open = 0
        self.in_flight = 0
        self.refused = 0  # connections refused at a cap, in all
        self._by_address: dict[str, int] = {}
        self._clock = clock
        self._logged_at: float | None = None
        self._unlogged = 0

    def admit(self, address: str) -> bool:
        """Count a new connection from `address`, or refuse it (past a cap)."""
        held = self._by_address.get(address, 0)
        per_address = self.limits.max_connections_per_address
        if self.open >= self.limits.max_connections:
            self._refuse("http_max_connections", address)
            return False
        if per_address and held >= per_address:
            self._refuse("http_max_connections_per_address", address)
            return False
        self._by_address[address] = held + 1
        self.open += 1
        return True

    def _refuse(self, cap: str, address: str) -> None:
        self.refused += 1
        self._unlogged += 1
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < _LOG_EVERY_SECONDS:
            return
        log.warning(
            "HTTP connections refused at server.%s: %d since the last such line (the last "
            "from peer)",
            cap,
            self._unlogged,
            extra={"peer": address},
        )
        self._logged_at = now
        self._unlogged = 0

    def release(self, address: str) -> None:
        held = self._by_address.get(address, 0)
        if held <= 1:
            self._by_address.pop(address, None)
        else:
            self._by_address[address] = held - 1
        self.open -= 1

    def held_by(self, address: str) -> int:
        return self._by_address.get(address, 0)


class _StagedClose(asyncio.Transport):
    """The connection's transport as uvicorn sees it: the same, but once `staged`, its
    close() ends the connection in stages (the module's docstring). uvicorn closes the
    transport itself when h11 says the connection must close, so this is where to act."""

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.inner = inner
        self._loop = loop
        self.staged = False  # set when an answer goes out before the whole body
        self.lingering = False
        self._timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        if self.staged and not self.lingering and not self.inner.is_closing():
            self.lingering = True
            if self.inner.can_write_eof():
                self.inner.write_eof()  # a FIN once the answer is written (not over TLS)
            self.inner.resume_reading()  # to see the client's close (the protocol bounds it)
            self._timer = self._loop.call_later(LINGER_SECONDS, self.inner.close)
            return
        self.cancel()
        self.inner.close()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def is_closing(self) -> bool:
        return self.lingering or self.inner.is_closing()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.inner.write(data)

    def abort(self) -> None:
        self.cancel()
        self.inner.abort()

    def pause_reading(self) -> None:
        self.inner.pause_reading()

    def resume_reading(self) -> None:
        if not self.lingering:  # reading while lingering is the protocol's, bounded
            self.inner.resume_reading()

    def is_reading(self) -> bool:
        return self.inner.is_reading()

    def can_write_eof(self) -> bool:
        return self.inner.can_write_eof()

    def write_eof(self) -> None:
        self.inner.write_eof()

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.inner.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.inner.get_protocol()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the caps and timeouts of its `table` (see the module's
    docstring). A subclass per listener binds the table: `protocol_for`."""

    table: ConnectionTable

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inner_app = self.app
        self.app = self._guarded_app
        self._address: str | None = None  # set once admitted: what to release
        self._staged: _StagedClose | None = None
        self._lingered = 0  # bytes dropped while lingering
        self._timer: asyncio.TimerHandle | None = None
        self._timing: str | None = None  # "head" or "body": what the timer waits for

    # --- the connection: admitted under the caps, released when lost

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._staged = _StagedClose(transport, self.loop)
        super().connection_made(self._staged)
        address = address_key(self.client[0] if self.client else None)
        if not self.table.admit(address):
            # Before any request (nothing read, nothing to reset): answered and closed.
            transport.write(_REFUSED)
            transport.close()
            return
        self._address = address
        # The first request's head is timed from the connection (a client that opens one
        # sends at once); a later one's from its first byte.
        self._arm("head", self.table.limits.header_timeout_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._staged is not None:
            self._staged.cancel()
        if self._address is not None:
            self.table.release(self._address)
            self._address = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._address is None:
            return  # refused: closing, nothing is read
        staged = self._staged
        if staged is not None and staged.lingering:
            # Answered and closing: dropped unparsed, and reading stops past the bound.
            self._lingered += len(data)
            if self._lingered >= LINGER_BYTES:
                staged.inner.pause_reading()
            return
        if self._timer is None and self.conn.their_state is h11.IDLE:
            # A new request's first bytes (uvicorn's keep-alive timer is disarmed by them).
            self._arm("head", self.table.limits.header_timeout_seconds)
        super().data_received(data)
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            self._disarm()  # closing (perhaps in stages): nothing more is timed
            return
        # A pipelined request may have been parsed (in part) from what was buffered.
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            if self._timer is None:
                self._arm("head", self.table.limits.header_timeout_seconds)
        else:
            self._follow_request()

    # --- timers: one per connection, on what the request still owes

    def _follow_request(self) -> None:
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self._timing != "body":
                self._arm("body", self.table.limits.body_timeout_seconds)
        elif state is not h11.IDLE:
            self._disarm()  # the whole request is in: its deadline times the rest

    def _arm(self, what: str, seconds: float) -> None:
        self._disarm()
        self._timing = what
        self._timer = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timing = None

    def _expired(self, what: str) -> None:
        self._timer = None
        self._timing = None
        state = self.conn.their_state
        late = state is h11.IDLE if what == "head" else state is h11.SEND_BODY
        if late and not self.transport.is_closing():
            # The request is cut: an application waiting for the body hears a disconnect.
            self.transport.close()

    # --- each request: counted in flight; answered before its body, the connection ends

    async def _guarded_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = self._closing_sender(send)
        table = self.table
        if table.in_flight >= table.limits.max_requests_in_flight:
            await sender(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(_BUSY)).encode()),
                        CLOSE_HEADER,
                    ],
                }
            )
            await sender({"type": "http.response.body", "body": _BUSY, "more_body": False})
            return
        table.in_flight += 1
        try:
            await self._inner_app(scope, receive, sender)
        finally:
            table.in_flight -= 1

    def _closing_sender(self, send: Send) -> Send:
        conn = self.conn

        async def sender(message: Message) -> None:
            if message["type"] == "http.response.start" and conn.their_state is h11.SEND_BODY:
                # The body has not all arrived: end the connection after this answer (h11
                # then has uvicorn close it, in stages) rather than read the rest.
                headers = list(message.get("headers", ()))
                if CLOSE_HEADER not in headers:
                    message = {**message, "headers": [*headers, CLOSE_HEADER]}
                if self._staged is not None:
                    self._staged.staged = True
            await send(message)

        return sender


def protocol_for(table: ConnectionTable) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn builds each connection with, bound to `table`."""

    class Guarded(GuardedH11Protocol):
        pass

    Guarded.table = table
    return Guarded
