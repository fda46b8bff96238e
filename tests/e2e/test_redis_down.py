"""The gateway on a Redis that goes away and comes back (README: "If Redis is down, reads
keep working ..., the health entry `registry-gateway.redis` turns NOT_SERVING, and writes
fail with UNAVAILABLE (`WRITE_LOCK_UNAVAILABLE`) rather than run unlocked").

The Redis here is the test's own: a throw-away redis-server on a free port, stopped and
started again on that port. The machine's shared Redis (tests/support/redis_server.py) is never
stopped.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.app.server import REDIS_HEALTH, Gateway
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory, wait_until
from tests.support.aws_proxy import CountingProxy
from tests.support.helpers import ACCOUNT, POLICY, config_dict, metadata, rich_error

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class OwnRedis:
    """A redis-server of this test's own on a free port, which it can stop and start again."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self._binary = binary
        self._workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (on the same port as before) and wait until it answers PING."""
        log = (self._workdir / "redis.log").open("ab")
        self._process = subprocess.Popen(
            [
                self._binary,
                *("--bind", "127.0.0.1", "--port", str(self.port)),
                *("--save", "", "--appendonly", "no", "--dir", str(self._workdir)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
        try:
            deadline = time.monotonic() + 30  # an external process coming up: bounded poll
            while True:
                assert self._process.poll() is None, (self._workdir / "redis.log").read_text()
                try:
                    if client.ping():
                        return
                except (redis.RedisError, OSError):
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop it: connections to its port are refused from now on."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    binary = shutil.which("redis-server")
    # A failure, not a skip (as tests/support/redis_server.py): a missing Redis must not pass CI.
    assert binary, "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)"
    server = OwnRedis(binary, tmp_path)
    server.start()
    yield server
    server.stop()


async def on_redis(factory: GatewayFactory, endpoint: str, server: OwnRedis) -> Gateway:
    raw = config_dict(endpoint)
    raw["cache"] = {"backend": "redis", "redis_url": server.url, "key_prefix": "down-test:"}
    return await factory(raw)


def redis_up(gateway: Gateway) -> float | None:
    return gateway.metrics.registry.get_sample_value("registry_gateway_redis_up")


async def redis_health_is(gateway: Gateway, status: int) -> bool:
    """Whether the health entry of Redis reports `status` (not there yet: no)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        health: Any = health_pb2_grpc.HealthStub(ch)
        try:
            response = await health.Check(health_pb2.HealthCheckRequest(service=REDIS_HEALTH))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND  # set on Redis's first answer
            return False
    return bool(response.status == status)


async def describe(gateway: Gateway) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        try:
            await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def put_policy(gateway: Gateway, **fields: Any) -> grpc.aio.AioRpcError | None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        try:
            await stub.PutRegistryPolicy(
                pb.PutRegistryPolicyRequest(policy_text=POLICY, **fields),
                metadata=metadata(),
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            return exc
    return None


async def test_write_while_redis_is_down_is_refused_and_aws_unchanged(
    gateway_factory: GatewayFactory,
    proxy: CountingProxy,
    own_redis: OwnRedis,
    aws_state: Callable[[], dict[str, Any]],
) -> None:
    gateway = await on_redis(gateway_factory, proxy.url, own_redis)
    # With Redis up the write lock is granted (validate-only: AWS is not written).
    assert await put_policy(gateway, validate_only=True) is None
    before_state, before_calls = aws_state(), sum(proxy.counts.values())

    own_redis.stop()
    refused = await put_policy(gateway)
    assert refused is not None
    error = rich_error(refused)
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.info.reason == "WRITE_LOCK_UNAVAILABLE"
    assert error.retry_info is not None
    # Refused before AWS: not even the fresh read went out, and nothing was written.
    assert sum(proxy.counts.values()) == before_calls, proxy.counts
    assert proxy.count("ecr:PutRegistryPolicy") == 0
    assert aws_state() == before_state

    # Redis back: the same write goes through.
    own_redis.start()
    assert await put_policy(gateway) is None
    assert proxy.count("ecr:PutRegistryPolicy") == 1
    assert aws_state()[f"{ACCOUNT}/us-east-1"][0] == POLICY


async def test_redis_up_gauge_and_health_follow_redis(
    gateway_factory: GatewayFactory, aws: str, own_redis: OwnRedis
) -> None:
    gateway = await on_redis(gateway_factory, aws, own_redis)
    assert await describe(gateway) == grpc.StatusCode.OK  # a miss, stored in Redis
    assert redis_up(gateway) == 1.0
    # The health entry is set by a task of its own: wait for it (an event, bounded).
    await wait_until(lambda: redis_health_is(gateway, SERVING), what="Redis health SERVING")

    own_redis.stop()
    # Reads keep working (from the in-process copy); the next one finds Redis away.
    assert await describe(gateway) == grpc.StatusCode.OK
    assert redis_up(gateway) == 0.0
    await wait_until(lambda: redis_health_is(gateway, NOT_SERVING), what="Redis health NOT_SERVING")

    own_redis.start()
    assert await describe(gateway) == grpc.StatusCode.OK
    assert redis_up(gateway) == 1.0
    await wait_until(lambda: redis_health_is(gateway, SERVING), what="Redis health SERVING again")
