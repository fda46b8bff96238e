"""Fixtures: a real moto server over HTTP as AWS, and real gateway servers on free ports."""

from __future__ import annotations

import asyncio
import inspect
import threading
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.session
import grpc
import pytest
from botocore.loaders import Loader
from moto.server import ThreadedMotoServer

from service import config as config_mod
from service.app.embedded import session_factory
from service.app.server import Gateway
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.support import moto_account_settings
from tests.support.aws_proxy import CountingProxy
from tests.support.certs import make_pki
from tests.support.helpers import config_dict

pytest_plugins = ["tests.support.redis_server"]

GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture(scope="session", autouse=True)
def botocore_data_parsed_once() -> Iterator[None]:
    """Every botocore session of the run reads botocore's data through one loader.

    A served gateway parses botocore's JSON (endpoints, service models) once per session:
    a few sessions per process. The suite starts hundreds of gateways in one process, each
    with its own session and one per assumed role, and that parsing was most of a gateway's
    start. The loader caches only what it read from botocore's own files; every session
    still has its own credentials, events, config and clients."""
    original = botocore.session.create_loader
    shared = original()

    def create_loader(search_path_string: str | None = None) -> Loader:
        if search_path_string:  # a session given its own data_path keeps its own loader
            return original(search_path_string)
        # boto3 appends its resource models' folder to the loader's path on every new
        # Session: on a shared loader, keep it once.
        shared.search_paths[:] = list(dict.fromkeys(shared.search_paths))
        return shared

    patch = pytest.MonkeyPatch()
    patch.setattr(botocore.session, "create_loader", create_loader)
    yield
    patch.undo()


@pytest.fixture(scope="session", autouse=True)
def aws_trust_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """AWS_CA_BUNDLE: a trust store of one test CA instead of the machine's, for the run.

    aiohttp loads the CA bundle into a new SSL context for every AWS client botocore makes,
    even for moto's plain http:// endpoint where no TLS happens: a few tens of milliseconds
    for the machine's bundle, several times per gateway started, hundreds of gateways (in
    this process and the `registry-gateway` processes the tests start, which inherit it).
    An https:// endpoint would fail verification against it, loudly, never pass unverified."""
    bundle = make_pki(tmp_path_factory.mktemp("aws-trust")).ca_cert
    patch = pytest.MonkeyPatch()
    patch.setenv("AWS_CA_BUNDLE", str(bundle))
    yield bundle
    patch.undo()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto server for the session, on 127.0.0.1 and a free port.

    moto lacks ECR's GetAccountSetting: it is added (tests/support/moto_account_settings.py) and
    answers REGISTRY_POLICY_SCOPE V2, as ECR does for a new registry, unless a test says
    otherwise."""
    uninstall = moto_account_settings.install()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    uninstall()


@pytest.fixture
def aws(moto_endpoint: str) -> Iterator[str]:
    """The moto endpoint, with every account's state reset before the test."""
    url = f"{moto_endpoint}/moto-api/reset"
    request = urllib.request.Request(url, method="POST")  # noqa: S310 - http on loopback
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        assert response.status == 200
    yield moto_endpoint


@pytest.fixture
async def gateway_factory(aws: str) -> AsyncIterator[GatewayFactory]:
    """Builds and starts gateways (several per test if needed); stops them all afterwards."""
    started: list[Gateway] = []

    async def build(
        raw: dict[str, Any] | None = None,
        *,
        environ: dict[str, str] | None = None,
        config_path: Path | None = None,
        span_exporter: Any = None,
        **server: Any,
    ) -> Gateway:
        env = environ or {}
        if config_path is not None:
            cfg = config_mod.load(config_path, environ=env)
        else:
            cfg = config_mod.from_mapping(raw or config_dict(aws, **server), environ=env)
        gateway = Gateway(
            cfg,
            session_factory=session_factory,
            environ=env,
            config_path=config_path,
            span_exporter=span_exporter,
        )
        await gateway.start()
        started.append(gateway)
        return gateway

    yield build
    for gateway in started:
        await gateway.stop_now()


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> Gateway:
    """A gateway with the default test config (tenants `payments` and `readonly`)."""
    return await gateway_factory()


@pytest.fixture
async def channel(gateway: Gateway) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the default gateway."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.RegistryConfigServiceAsyncStub:
    """The generated stub on the default gateway."""
    return pb_grpc.RegistryConfigServiceStub(channel)


class Gate:
    """Holds a patched moto handler until the test opens it (a real event, not a sleep)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def wait(self) -> None:
        self.entered.set()
        # Bounded so a failing test cannot hang moto's thread forever.
        self.opened.wait(timeout=30)


async def wait_until(
    condition: Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "the condition",
) -> Any:
    """Poll `condition` (a function or a coroutine function) until it answers something
    truthy, and return that. A wait on a real event, bounded generously: a loaded machine
    makes it slow, never wrong. Fails the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"still waiting for {what} after {timeout} s")
        await asyncio.sleep(interval)


@pytest.fixture
def slow_describe(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    """moto's DescribeRegistry blocks until the gate opens: a slow AWS, for deadlines/drain."""
    from moto.ecr.models import ECRBackend

    gate = Gate()
    original = ECRBackend.describe_registry

    def held(self: ECRBackend) -> Any:
        gate.wait()
        return original(self)

    monkeypatch.setattr(ECRBackend, "describe_registry", held)
    yield gate
    gate.opened.set()


@pytest.fixture
def aws_state() -> Callable[[], dict[str, Any]]:
    """A snapshot function of every registry's policy and replication config in moto."""
    from moto.ecr.models import ecr_backends

    def snapshot() -> dict[str, Any]:
        state: dict[str, Any] = {}
        for account, regions in ecr_backends.items():
            for region, backend in regions.items():
                state[f"{account}/{region}"] = (
                    backend.registry_policy,
                    repr(backend.replication_config),
                )
        return state

    return snapshot


@pytest.fixture
def proxy(aws: str) -> Iterator[CountingProxy]:
    """A counting proxy in front of moto (give the gateway `proxy.url` as its endpoint)."""
    counting = CountingProxy(aws)
    counting.start()
    yield counting
    counting.stop()
