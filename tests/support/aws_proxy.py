"""A counting, fault-injecting HTTP proxy in front of moto: counts AWS calls outside the code
under test, answers chosen calls with faults (5xx, ECR error bodies, resets, delays), and
can go down and come back on the same port (AWS unreachable, then recovered)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def operation_of(headers: Any, body: bytes) -> str:
    """`ecr:DescribeRegistry` (JSON protocol target) or `sts:GetCallerIdentity` (query)."""
    target = headers.get("X-Amz-Target")
    if target:
        return "ecr:" + str(target).rsplit(".", 1)[-1]
    action = urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("Action", ["?"])[0]
    return f"sts:{action}"


@dataclass
class Fault:
    """What the proxy does instead of (or before) forwarding a matching call."""

    operations: frozenset[str]  # e.g. {"ecr:DescribeRegistry"}; empty: every call
    status: int = 0  # answer this HTTP status (0: forward to moto)
    body: bytes = b""
    reset: bool = False  # close the connection without an answer
    delay_seconds: float = 0.0  # wait before answering (a slow AWS)
    # Forward to moto first, then wait this long before answering: AWS applied the call and
    # its answer comes late (past the gateway's read timeout, say). Cut short by `released`.
    late_seconds: float = 0.0

    def matches(self, operation: str) -> bool:
        return not self.operations or operation in self.operations


def ecr_error(code: str, message: str = "injected fault") -> bytes:
    """The JSON body ECR answers an error with."""
    return json.dumps({"__type": code, "message": message}).encode()


class CountingProxy:
    """Forwards every request to moto and counts it by AWS operation."""

    def __init__(self, upstream_url: str) -> None:
        parsed = urllib.parse.urlsplit(upstream_url)
        self._upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.counts: Counter[str] = Counter()
        self.fault: Fault | None = None
        self.released = threading.Event()  # a delayed answer returns early once this is set
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The endpoint to give the gateway instead of moto's."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen (on the same port as before, after a stop)."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                operation = operation_of(self.headers, body)
                with proxy._lock:
                    proxy.counts[operation] += 1
                fault = proxy.fault
                if fault is not None and fault.matches(operation):
                    if fault.delay_seconds:
                        proxy.released.wait(fault.delay_seconds)
                    if fault.reset:
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    if fault.status:
                        self.send_response(fault.status)
                        self.send_header("Content-Type", "application/x-amz-json-1.1")
                        self.send_header("Content-Length", str(len(fault.body)))
                        self.end_headers()
                        self.wfile.write(fault.body)
                        return
                conn = http.client.HTTPConnection(*proxy._upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                conn.request("POST", self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if fault is not None and fault.matches(operation) and fault.late_seconds:
                    proxy.released.wait(fault.late_seconds)
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening: connections are refused, as when AWS is unreachable."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)

    def count(self, operation: str) -> int:
        """How many requests of `operation` (e.g. `ecr:DescribeRegistry`) went through."""
        with self._lock:
            return self.counts[operation]
