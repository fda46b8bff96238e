"""One gateway, many accounts (issue 27): forty (account, region) clients, each reached through
its role; start-up probes a few at a time; an account that does not answer holds no other back.

The figures (memory and time to SERVING against the number of clients, up to 300) are the
bench's (`python -m bench --only accounts`, docs/performance.md): here, what could break.
"""

from __future__ import annotations

import gc
import http.client
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import botocore.loaders
import botocore.session
import grpc
import pytest
from botocore.loaders import JSONFileLoader
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.app.gc_pause import gc_paused
from service.app.server import SERVICE_NAME, Gateway
from service.auth.api_keys import hash_key
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory, wait_until
from tests.support.helpers import KEY, config_dict, metadata

REGIONS = ["us-east-1", "eu-west-1"]
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def account(i: int) -> str:
    return f"4000000000{i:02d}"


def many_accounts(endpoint: str, accounts: list[str], **aws: Any) -> dict[str, Any]:
    """One tenant, one registry per account, each reached through its role, in two regions."""
    raw = config_dict(endpoint)
    raw["aws"].update(aws)
    raw["tenants"] = [
        {
            "name": "payments",
            "api_keys": [hash_key(KEY)],
            "registries": [
                {
                    "registry_id": a,
                    "role_arn": f"arn:aws:iam::{a}:role/registry-gateway",
                    "regions": REGIONS,
                    "operations": ["DescribeRegistry"],
                }
                for a in accounts
            ],
        }
    ]
    return raw


class AssumeRoleProxy:
    """moto behind a proxy that knows which account each STS AssumeRole is for: it holds those
    of `held` accounts (an account that does not answer) until released, slows the others by
    `delay` seconds, and records when each arrived and how many were in flight at once."""

    def __init__(self, moto: str, held: frozenset[str] = frozenset(), delay: float = 0.0):
        parsed = urllib.parse.urlsplit(moto)
        self._moto = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.held = held
        self.delay = delay
        self.released = threading.Event()
        self.arrivals: list[tuple[float, str]] = []  # (monotonic time, account)
        self.in_flight = 0
        self.peak = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                query = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
                if query.get("Action") == ["AssumeRole"]:
                    role = query["RoleArn"][0]
                    proxy._assume_role(role.split(":")[4])
                self._forward(body)

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(*proxy._moto, timeout=30)
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

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128  # dozens of connections at once: no SYN dropped

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def _assume_role(self, account: str) -> None:
        with self._lock:
            self.arrivals.append((time.monotonic(), account))
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            if account in self.held:
                self.released.wait(60)
            elif self.delay:
                time.sleep(self.delay)
        finally:
            with self._lock:
                self.in_flight -= 1

    def arrived(self, account: str) -> list[float]:
        with self._lock:
            return [t for t, a in self.arrivals if a == account]

    def stop(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def moto_parses(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The gateway's own parses of botocore's service models (in this thread: moto answers in
    threads of its own), with every botocore session making its own loader again, as outside
    the test suite (tests/conftest.py `botocore_data_parsed_once` shares one)."""
    monkeypatch.setattr(botocore.session, "create_loader", botocore.loaders.create_loader)
    counts: Counter[str] = Counter()
    load_file = JSONFileLoader.load_file

    def counting(self: JSONFileLoader, file_path: str) -> Any:
        data = load_file(self, file_path)
        if data is not None and threading.current_thread() is threading.main_thread():
            path = Path(file_path)
            counts[f"{path.parent.parent.name}/{path.name}"] += 1
        return data

    monkeypatch.setattr(JSONFileLoader, "load_file", counting)
    return counts


async def health_of(gateway: Gateway) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub: Any = health_pb2_grpc.HealthStub(ch)
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    return int(answer.status)


async def describe_each(gateway: Gateway, accounts: list[str]) -> Counter[str]:
    codes: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        for a in accounts:
            for region in REGIONS:
                request = pb.DescribeRegistryRequest(registry_id=a, region=region)
                try:
                    answer = await stub.DescribeRegistry(
                        request, metadata=(*metadata(), ("cache-control", "no-cache"))
                    )
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
                    continue
                # Each client reached its own account (moto answers with the caller's).
                codes["OK" if answer.registry_id == a else f"WRONG {answer.registry_id}"] += 1
    return codes


async def test_forty_clients_one_parse_each_its_own_account_made_again_when_idle(
    gateway_factory: GatewayFactory, aws: str, moto_parses: Counter[str]
) -> None:
    # A gateway of one account first: what a process parses once whatever it serves (the
    # request validator's model, the region checks' endpoint data) is parsed by then.
    one = await gateway_factory(many_accounts(aws, [account(99)]))
    assert await describe_each(one, [account(99)]) == Counter({"OK": 2})
    before = moto_parses.copy()

    accounts = [account(i) for i in range(20)]
    gateway = await gateway_factory(many_accounts(aws, accounts, client_idle_seconds=0.5))
    assert await health_of(gateway) == health_pb2.HealthCheckResponse.SERVING
    assert gc.isenabled()  # paused for the start-up probes only
    assert await describe_each(gateway, accounts) == Counter({"OK": 40})
    # Twenty roles' sessions, forty ECR clients: ECR's model parsed once more, by the
    # loader they share, not once per role.
    assert moto_parses["ecr/service-2"] - before["ecr/service-2"] == 1, moto_parses
    assert gateway.upstream.shared.tls.made == 1

    # Idle: every client closed; then made again on the next call, transparently.
    await wait_until(lambda: len(gateway.upstream.clients) == 0, what="the idle clients closed")
    assert await describe_each(gateway, accounts) == Counter({"OK": 40})
    assert moto_parses["ecr/service-2"] - before["ecr/service-2"] == 1, moto_parses


@pytest.fixture
def slow_roles(aws: str) -> Iterator[AssumeRoleProxy]:
    proxy = AssumeRoleProxy(aws, delay=0.2)
    yield proxy
    proxy.stop()


async def test_start_up_probes_run_a_few_at_a_time(
    gateway_factory: GatewayFactory, slow_roles: AssumeRoleProxy
) -> None:
    accounts = [account(i) for i in range(12)]
    gateway = await gateway_factory(
        many_accounts(slow_roles.url, accounts, probe_concurrency=3, connect_timeout_seconds=5)
    )
    assert await health_of(gateway) == health_pb2.HealthCheckResponse.SERVING
    # Twelve roles assumed at start (each takes 0.2 s at AWS), never more than three at once.
    assert sorted(a for _, a in slow_roles.arrivals) == accounts
    assert 1 <= slow_roles.peak <= 3


@pytest.fixture
def silent_accounts(aws: str) -> Iterator[AssumeRoleProxy]:
    proxy = AssumeRoleProxy(aws, held=frozenset(account(i) for i in range(3)))
    yield proxy
    proxy.stop()


async def test_accounts_that_do_not_answer_hold_no_other_back(
    gateway_factory: GatewayFactory, silent_accounts: AssumeRoleProxy
) -> None:
    # Three accounts whose AssumeRole never answers, first in the config; two probes at a
    # time, each waiting up to 3 x 1 s.
    silent = [account(i) for i in range(3)]
    answering = [account(i) for i in range(3, 13)]
    gateway = await gateway_factory(
        many_accounts(
            silent_accounts.url,
            silent + answering,
            probe_concurrency=2,
            connect_timeout_seconds=1,
        )
    )
    probe_timeout = gateway.upstream.probe_timeout_seconds
    assert await health_of(gateway) == health_pb2.HealthCheckResponse.SERVING
    # The answering accounts' probes began before the silent ones' timed out: a silent
    # probe gives its place to the next after connect_timeout_seconds (with its place held
    # to its timeout, the first answering account would wait the whole probe timeout).
    first_silent = min(t for a in silent for t in silent_accounts.arrived(a))
    first_answering = min(t for a in answering for t in silent_accounts.arrived(a))
    assert first_answering - first_silent < probe_timeout
    # Probed once each before SERVING; their second region's policy scope is not read at
    # start (it would wait out another timeout).
    assert [len(silent_accounts.arrived(a)) for a in silent] == [1, 1, 1]
    assert await describe_each(gateway, answering) == Counter({"OK": 20})


def test_gc_paused_turns_the_collector_back_on_and_leaves_it_as_found() -> None:
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("a start-up that fails")
    assert gc.isenabled()
    gc.disable()  # off already (by something else): left off
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
