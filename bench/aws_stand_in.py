"""The AWS stand-in of the benchmark: moto, and a counting proxy in front of it, in one process.

Run as `python -m bench.aws_stand_in`; it prints one JSON line (`{"moto": URL, "proxy": URL}`)
and serves until stdin closes or it is terminated. Gateways and the direct-AWS client are
given the proxy's URL, so both paths pay the same hop and every upstream call is counted
outside the code under test (the idea of `tests/support/aws_proxy.py`).

Control endpoints on the proxy (GET, loopback only):
- `/__bench/counts`: `{"ecr:DescribeRegistry": n, "sts:GetCallerIdentity": m, ...}`
- `/__bench/reset`: zero the counts
- `/__bench/hold?op=ecr:DescribeRegistry&ms=1000`: hold that operation for `ms` before
  forwarding it (a slow AWS, so that a storm's calls are all in flight before the first
  answer); `ms=0` stops holding.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import sys
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
CONTROL_PREFIX = "/__bench/"


def operation_of(headers: Any, body: bytes) -> str:
    """`ecr:DescribeRegistry` (JSON protocol target) or `sts:GetCallerIdentity` (query)."""
    target = headers.get("X-Amz-Target")
    if target:
        return "ecr:" + str(target).rsplit(".", 1)[-1]
    action = urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("Action", ["?"])[0]
    return f"sts:{action}"


class CountingProxy:
    """Forwards every request to moto and counts it by AWS operation; can hold one op."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self.counts: Counter[str] = Counter()
        self.holds: dict[str, float] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> int:
        """Listen on a free loopback port; return it."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not self.path.startswith(CONTROL_PREFIX):
                    self.send_error(404)
                    return
                answer = proxy.control(self.path[len(CONTROL_PREFIX) :])
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                operation = operation_of(self.headers, body)
                with proxy._lock:
                    proxy.counts[operation] += 1
                    hold = proxy.holds.get(operation, 0.0)
                if hold:
                    time.sleep(hold)
                conn = http.client.HTTPConnection(*proxy._upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                conn.request("POST", self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
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

        ThreadingHTTPServer.daemon_threads = True
        # Every forwarded call is a connection of its own (HTTP/1.0): socketserver's listen
        # backlog of 5 overflows when a gateway makes a few dozen calls at once, and each
        # connection dropped waits out TCP's 1 s retransmission (TcpExtListenOverflows).
        ThreadingHTTPServer.request_queue_size = 1024
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        return int(self._server.server_address[1])

    def control(self, command: str) -> dict[str, Any]:
        """Answer one control request (`counts`, `reset`, `hold?op=..&ms=..`)."""
        name, _, query = command.partition("?")
        params = dict(urllib.parse.parse_qsl(query))
        with self._lock:
            if name == "reset":
                self.counts.clear()
            elif name == "hold":
                ms = float(params.get("ms", "0"))
                op = params.get("op", "")
                if ms > 0:
                    self.holds[op] = ms / 1000
                else:
                    self.holds.pop(op, None)
            elif name != "counts":
                return {"error": f"unknown command {name!r}"}
            return dict(self.counts)

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def answer_account_settings() -> None:
    """Give moto's ECR the GetAccountSetting it lacks (moto 5.x answers 500), answering
    REGISTRY_POLICY_SCOPE V2 as a new ECR registry does: the gateways read it for every
    (account, region) when they make its client, as they do from ECR."""
    from moto.ecr.responses import ECRResponse

    def get_account_setting(self: ECRResponse) -> str:
        name = str(self._get_param("name"))
        return json.dumps({"name": name, "value": "V2" if name == "REGISTRY_POLICY_SCOPE" else ""})

    if "get_account_setting" not in vars(ECRResponse):
        ECRResponse.get_account_setting = get_account_setting  # type: ignore[attr-defined]


def store_many_rules() -> None:
    """Let moto's ECR store up to ECR's 10 replication rules: moto 5.x refuses more than one
    ("This feature is disabled"), which ECR does not (bench/many_teams.py writes packed
    configurations of several rules; tests/support/moto_writes.py lifts it the same way)."""
    from moto.ecr.models import ECRBackend

    def put_replication(self: ECRBackend, replication_config: dict[str, Any]) -> dict[str, Any]:
        self.replication_config = replication_config
        return {"replicationConfiguration": replication_config}

    ECRBackend.put_replication_configuration = put_replication  # type: ignore[method-assign]


def main() -> int:
    """Start moto and the proxy, print their URLs, serve until stdin closes."""
    from moto.server import ThreadedMotoServer

    answer_account_settings()
    store_many_rules()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    proxy = CountingProxy(host, port)
    proxy_port = proxy.start()
    print(
        json.dumps({"moto": f"http://{host}:{port}", "proxy": f"http://127.0.0.1:{proxy_port}"}),
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        # The parent holds our stdin: when it goes away (even killed), so do we.
        sys.stdin.read()
    proxy.stop()
    moto.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
