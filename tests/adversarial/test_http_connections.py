"""Strangers against the HTTP listener's connections (issue 21, findings 1 and 3): a refused
request's body, idle and slow sockets. Connections are a resource like any other: a refusal
sent before the body ends the connection, nothing that never sends a whole request holds one
for long, one address cannot hold them all, and the concurrency limit counts requests in
flight, not open sockets. Raw sockets against a real gateway (service/http/connections.py)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import Gate, GatewayFactory, wait_until
from tests.http.conftest import http_config
from tests.http.support import SERVICE
from tests.support.helpers import KEY

# A second loopback address (Linux answers the whole 127.0.0.0/8): the stranger's, so its
# connections are counted apart from the bystander's (127.0.0.1).
STRANGER = "127.0.0.2"
BLOCK = b"x" * 65536
# What a client may push into the kernel's buffers (its send buffer, the server's receive
# window) before a server that stopped reading closes: a few MB on loopback, far below this.
BUFFERED_AT_MOST = 8 * 1024 * 1024
UPLOAD = 64 * 1024 * 1024  # what a server that reads and discards the body takes whole


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def read_answer(sock: socket.socket) -> Answer:
    """One HTTP/1.1 response off a blocking socket (content-length or chunked)."""
    data = b""

    def more() -> None:
        nonlocal data
        chunk = sock.recv(65536)
        assert chunk, f"the server closed before a whole answer: {data!r}"
        data += chunk

    while b"\r\n\r\n" not in data:
        more()
    head, _, data = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, value in (line.split(":", 1) for line in lines)
    }
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while b"\r\n" not in data:
                more()
            size_line, _, data = data.partition(b"\r\n")
            size = int(size_line, 16)
            while len(data) < size + 2:
                more()
            body, data = body + data[:size], data[size + 2 :]
            if size == 0:
                return Answer(int(status_line.split()[1]), headers, body)
    length = int(headers.get("content-length", "0"))
    while len(data) < length:
        more()
    return Answer(int(status_line.split()[1]), headers, data[:length])


def closed_by_server(sock: socket.socket, timeout: float = 20.0) -> bool:
    """Whether the server closes `sock` within `timeout` (reading and dropping what it sends)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def request_head(path: str, headers: dict[str, str], method: str = "POST") -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "host: gateway",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@contextmanager
def connection(port: int, source: str = "127.0.0.1") -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    try:
        yield sock
    finally:
        sock.close()


def upload(port: int, headers: dict[str, str], framing: str) -> tuple[Answer, int, bool]:
    """A POST whose body never ends, sent without waiting for an answer: (the answer, the
    bytes the client could send, whether the server closed the connection)."""
    framed = {
        "chunked": {"transfer-encoding": "chunked"},
        "length": {"content-length": "100000000"},
    }
    block = b"%x\r\n%s\r\n" % (len(BLOCK), BLOCK) if framing == "chunked" else BLOCK
    with connection(port) as sock:
        # A small send buffer, so what the kernel holds does not depend on the machine.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
        head = request_head(
            f"/{SERVICE}/PutRegistryPolicy",
            {"content-type": "application/json", **headers, **framed[framing]},
        )
        sock.sendall(head)
        sent = 0
        closed = False
        try:
            while sent < UPLOAD:
                sent += sock.send(block)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        # Linux keeps what arrived before the server's reset for the reader.
        answer = read_answer(sock)
        return answer, sent, closed or closed_by_server(sock, timeout=5)


async def describe(port: int, key: str = KEY) -> httpx.Response:
    """A bystander tenant's read, on a connection of its own from 127.0.0.1."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        return await client.post(
            f"/{SERVICE}/DescribeRegistry",
            content=b"{}",
            headers={"content-type": "application/json", "authorization": f"Bearer {key}"},
        )


# --- Finding 1: a refusal before the body ends the connection ------------------------------


@pytest.mark.parametrize("framing", ["chunked", "length"])
async def test_a_refused_body_is_not_read(
    gateway_factory: GatewayFactory, aws: str, framing: str
) -> None:
    """The finding: a stranger's 401 came at once, then the server read and dropped all
    that followed (100 MB), one event loop for everyone."""
    gateway = await gateway_factory(http_config(aws))
    answer, sent, closed = await asyncio.to_thread(upload, gateway.http_port, {}, framing)
    assert answer.status == 401
    assert answer.headers.get("connection") == "close"
    # The server stopped reading at its answer: what the client pushed is what the kernel
    # buffers hold, not the 64 MB a server draining the body takes.
    assert closed and sent < BUFFERED_AT_MOST, f"{sent} bytes sent, closed: {closed}"
    assert (await describe(gateway.http_port)).status_code == 200


async def test_a_body_refused_as_too_large_is_not_read_further(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    """A tenant's body past the transport's limit is refused while it is being read: the
    refusal also ends the connection."""
    gateway = await gateway_factory(http_config(aws))
    auth = {"authorization": f"Bearer {KEY}"}
    answer, sent, closed = await asyncio.to_thread(upload, gateway.http_port, auth, "length")
    assert answer.status in (400, 413), answer
    assert answer.headers.get("connection") == "close"
    assert closed and sent < BUFFERED_AT_MOST, f"{sent} bytes sent, closed: {closed}"


async def test_a_client_still_writing_its_body_reads_the_refusal(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    """The connection ends in stages: a client that sends its (small) body after the head,
    as Node's fetch does, finishes writing and then reads the refusal and a clean close,
    not a reset that would hide the answer."""
    gateway = await gateway_factory(http_config(aws))

    def late_body() -> tuple[Answer, bytes]:
        with connection(gateway.http_port) as sock:
            body = b'{"policyText": "' + b"p" * 300 + b'"}'
            headers = {"content-type": "application/json", "content-length": str(len(body))}
            sock.sendall(request_head(f"/{SERVICE}/PutRegistryPolicy", headers))
            answer = read_answer(sock)  # before the body was sent
            # In two writes: a server that closed at once resets the first, and the second
            # then fails (EPIPE), as Node's did.
            sock.sendall(body[:100])
            time.sleep(0.1)  # the reset, if any, is back (the server lingers 1 s)
            sock.sendall(body[100:])
            return answer, sock.recv(65536)  # ConnectionResetError if the server reset

    answer, after = await asyncio.to_thread(late_body)
    assert answer.status == 401 and answer.headers["connection"] == "close"
    assert after == b""


def test_connections_are_counted_per_address_and_per_ipv6_64() -> None:
    from service.auth.failures import address_key
    from service.http.connections import ConnectionLimits, ConnectionTable

    assert address_key("10.0.0.1") == "10.0.0.1"
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2")
    assert address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key(None) == ""
    table = ConnectionTable(
        ConnectionLimits(
            max_connections=3,
            max_connections_per_address=2,
            max_requests_in_flight=1,
            header_timeout_seconds=1,
            body_timeout_seconds=1,
        )
    )
    assert [table.admit("a") for _ in range(3)] == [True, True, False]
    assert table.admit("b") and not table.admit("c")  # the listener's cap, for everyone
    table.release("a")
    assert table.admit("c") and table.held_by("a") == 1 and table.open == 3


async def test_a_read_body_keeps_the_connection_alive(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    """Keep-alive stays for every answer sent after the whole body arrived: a small POST's
    body comes with its head, so even its 401 keeps the connection."""
    gateway = await gateway_factory(http_config(aws))

    def calls() -> list[Answer]:
        answers = []
        with connection(gateway.http_port) as sock:
            for key in (KEY, "not-a-key", KEY):
                body = b"{}"
                headers = {
                    "content-type": "application/json",
                    "authorization": f"Bearer {key}",
                    "content-length": str(len(body)),
                }
                sock.sendall(request_head(f"/{SERVICE}/DescribeRegistry", headers) + body)
                answers.append(read_answer(sock))
        return answers

    answers = await asyncio.to_thread(calls)
    assert [a.status for a in answers] == [200, 401, 200]
    assert all("connection" not in a.headers for a in answers)


# --- Finding 3: idle and slow connections ---------------------------------------------------


async def test_idle_connections_do_not_take_request_slots(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    """The finding: open sockets counted against max_concurrent_rpcs answered everyone 503."""
    gateway = await gateway_factory(http_config(aws, max_concurrent_rpcs=2))
    idle = [
        socket.create_connection(("127.0.0.1", gateway.http_port), source_address=(STRANGER, 0))
        for _ in range(20)
    ]
    try:
        # The stranger's connections were accepted before the bystander's (one backlog).
        for _ in range(3):
            reply = await describe(gateway.http_port)
            assert reply.status_code == 200, reply.text
    finally:
        for sock in idle:
            sock.close()


async def test_requests_in_flight_are_still_limited(
    gateway_factory: GatewayFactory, aws: str, slow_describe: Gate
) -> None:
    gateway = await gateway_factory(http_config(aws, max_concurrent_rpcs=1))
    first = asyncio.create_task(describe(gateway.http_port))
    await wait_until(slow_describe.entered.is_set, what="the first call to reach AWS")
    second = await describe(gateway.http_port)
    assert second.status_code == 503 and second.headers["connection"] == "close"
    slow_describe.opened.set()
    assert (await first).status_code == 200
    assert (await describe(gateway.http_port)).status_code == 200


def stranger_config(aws: str, **server: Any) -> dict[str, Any]:
    """Small caps and short timeouts, so the test is cheap."""
    limits = {
        "http_max_connections_per_address": 4,
        "http_header_timeout_seconds": 1,
        "http_idle_timeout_seconds": 1,
        "http_body_timeout_seconds": 1,
    }
    return http_config(aws, **{**limits, **server})


async def test_an_address_over_its_cap_is_refused_alone(
    gateway_factory: GatewayFactory, aws: str, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = await gateway_factory(
        stranger_config(aws, http_header_timeout_seconds=60, http_idle_timeout_seconds=60)
    )
    port = gateway.http_port
    held = [
        socket.create_connection(("127.0.0.1", port), source_address=(STRANGER, 0))
        for _ in range(4)
    ]
    try:

        def refused() -> Answer:
            with connection(port, STRANGER) as sock:
                answer = read_answer(sock)
                assert closed_by_server(sock)
                return answer

        answer = await asyncio.to_thread(refused)
        assert answer.status == 503 and answer.headers["connection"] == "close"
        assert (await describe(port)).status_code == 200  # another address is served
        assert [r.getMessage() for r in caplog.records if "refused at" in r.getMessage()] == [
            "HTTP connections refused at server.http_max_connections_per_address: 1 since "
            "the last such line (the last from peer)"
        ]
    finally:
        for sock in held:
            sock.close()
    # The stranger's slots are its own again once it let go.
    await wait_until(lambda: gateway.http is not None and gateway.http.open_connections() == 0)
    with connection(port, STRANGER) as sock:
        headers = {"content-type": "application/json", "content-length": "2"}
        sock.sendall(request_head(f"/{SERVICE}/DescribeRegistry", headers) + b"{}")
        assert (await asyncio.to_thread(read_answer, sock)).status == 401


async def test_silent_and_slow_sockets_are_closed(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    """A socket that never sends a request, a head trickling in (slowloris), a body that
    never ends, and a kept-alive connection left idle: each is closed by the server."""
    gateway = await gateway_factory(stranger_config(aws))
    port = gateway.http_port

    def silent() -> bool:
        with connection(port, STRANGER) as sock:
            return closed_by_server(sock)

    def slow_head() -> bool:
        with connection(port, STRANGER) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\n")
            sock.settimeout(0.2)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    sock.sendall(b"x")  # a header line, a byte at a time, never ending
                    if sock.recv(65536) == b"":
                        return True
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    return True
            return False

    def slow_body() -> bool:
        with connection(port) as sock:
            headers = {
                "content-type": "application/json",
                "authorization": f"Bearer {KEY}",
                "content-length": "1000",
                "connect-timeout-ms": "60000",
            }
            sock.sendall(request_head(f"/{SERVICE}/DescribeRegistry", headers) + b"{")
            return closed_by_server(sock)

    def idle_after_answer() -> bool:
        with connection(port) as sock:
            headers = {
                "content-type": "application/json",
                "authorization": f"Bearer {KEY}",
                "content-length": "2",
            }
            sock.sendall(request_head(f"/{SERVICE}/DescribeRegistry", headers) + b"{}")
            read_answer(sock)
            return closed_by_server(sock)

    results = await asyncio.gather(
        *(asyncio.to_thread(f) for f in (silent, slow_head, slow_body, idle_after_answer))
    )
    assert results == [True, True, True, True]
    assert (await describe(port)).status_code == 200
