"""No lost updates: etag preconditions under the registry lock, in one process and across
processes sharing Redis; read-your-writes on every replica; AWS's rewrite of policies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from moto.ecr.models import ECRBackend, ecr_backends

from service.app.server import REDIS_HEALTH
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.helpers import ACCOUNT, POLICY, config_dict, metadata
from tests.support.processes import gateway_process

POLICY_B = POLICY.replace("ReplicateFromPartner", "ReplicateFromOther")
# The racers both write something new: a writer that put back the very text already there
# would leave the etag as it was, and the other writer's precondition would rightly hold.
POLICY_C = POLICY.replace("ReplicateFromPartner", "ReplicateFromThird")


def stub_on(port: int) -> tuple[grpc.aio.Channel, Any]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return channel, pb_grpc.RegistryConfigServiceStub(channel)


async def put(stub: Any, policy: str, etag: str) -> grpc.StatusCode:
    try:
        await stub.PutRegistryPolicy(
            pb.PutRegistryPolicyRequest(policy_text=policy, etag=etag),
            metadata=metadata(),
            timeout=20,
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def stored_policy() -> str | None:
    policy: str | None = ecr_backends[ACCOUNT]["us-east-1"].registry_policy
    return policy


async def test_two_writers_with_one_etag_one_wins(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory()
    channel, stub = stub_on(gateway.port)
    async with channel:
        await put(stub, POLICY, "")
        etag = (
            await stub.GetRegistryPolicy(pb.GetRegistryPolicyRequest(), metadata=metadata())
        ).etag
        codes = await asyncio.gather(put(stub, POLICY_B, etag), put(stub, POLICY_C, etag))
    assert sorted(c.name for c in codes) == ["ABORTED", "OK"]
    winner = POLICY_B if codes[0] == grpc.StatusCode.OK else POLICY_C
    assert stored_policy() == winner


async def test_create_only_race_has_one_creator(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory()
    channel, stub = stub_on(gateway.port)
    async with channel:
        codes = await asyncio.gather(*(put(stub, POLICY, "absent") for _ in range(5)))
    assert [c.name for c in codes].count("OK") == 1
    assert [c.name for c in codes].count("ABORTED") == 4


@pytest.fixture
def redis_config(aws: str, redis_url: str, redis_prefix: str) -> dict[str, Any]:
    raw = config_dict(aws)
    raw["cache"] = {"backend": "redis", "redis_url": redis_url, "key_prefix": redis_prefix}
    return raw


async def test_two_processes_on_one_redis_lose_no_update(
    gateway_factory: GatewayFactory, redis_config: dict[str, Any], tmp_path: Path
) -> None:
    here = await gateway_factory(redis_config)
    async with gateway_process(redis_config, tmp_path / "gateway.yaml") as (port,):
        ch1, one = stub_on(here.port)
        ch2, two = stub_on(port)
        async with ch1, ch2:
            await put(one, POLICY, "")
            etag = (
                await two.GetRegistryPolicy(pb.GetRegistryPolicyRequest(), metadata=metadata())
            ).etag
            codes = await asyncio.gather(put(one, POLICY_B, etag), put(two, POLICY_C, etag))
            assert sorted(c.name for c in codes) == ["ABORTED", "OK"]
            winner = POLICY_B if codes[0] == grpc.StatusCode.OK else POLICY_C
            assert stored_policy() == winner
            # Both replicas read the winner at once (read-your-writes through Redis).
            for stub in (one, two):
                got = await stub.GetRegistryPolicy(
                    pb.GetRegistryPolicyRequest(), metadata=metadata()
                )
                assert got.policy_text == winner


async def test_read_your_writes_across_processes(
    gateway_factory: GatewayFactory, redis_config: dict[str, Any], tmp_path: Path
) -> None:
    here = await gateway_factory(redis_config)
    async with gateway_process(redis_config, tmp_path / "gateway.yaml") as (port,):
        ch1, reader = stub_on(here.port)
        ch2, writer = stub_on(port)
        async with ch1, ch2:
            # The reader caches "no replication" first (TTL 30 s by default).
            before = await reader.DescribeRegistry(
                pb.DescribeRegistryRequest(), metadata=metadata()
            )
            assert list(before.replication_configuration.rules) == []
            rule = pb.ReplicationRule(
                destinations=[pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT)]
            )
            written = await writer.PutReplicationConfiguration(
                pb.PutReplicationConfigurationRequest(
                    replication_configuration=pb.ReplicationConfiguration(rules=[rule])
                ),
                metadata=metadata(),
            )
            call = reader.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
            after = await call
            assert list(after.replication_configuration.rules) == [rule]
            assert after.etag == written.etag
            # Served from Redis, not from AWS: the write put it there.
            assert dict(await call.trailing_metadata())["x-cache"] == "hit"


async def test_redis_down_reads_still_succeed_and_the_cache_resumes(
    gateway_factory: GatewayFactory, aws: str, tmp_path: Path
) -> None:
    server = await _start_redis(tmp_path)
    port = server[1]
    raw = config_dict(aws)
    raw["cache"] = {"backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0"}
    gateway = await gateway_factory(raw)
    channel, stub = stub_on(gateway.port)
    async with channel:
        await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
        server[0].terminate()
        await server[0].wait()
        for _ in range(3):  # Redis away: served from AWS or in-process copies, never failed
            response = await stub.DescribeRegistry(
                pb.DescribeRegistryRequest(), metadata=(*metadata(), ("cache-control", "no-cache"))
            )
            assert response.registry_id == ACCOUNT
        assert await redis_health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        server = await _start_redis(tmp_path, port)
        try:
            await stub.DescribeRegistry(
                pb.DescribeRegistryRequest(), metadata=(*metadata(), ("cache-control", "no-cache"))
            )
            # The cache resumed: the load went into the new Redis, and health says so.
            async with redis.Redis.from_url(f"redis://127.0.0.1:{port}/0") as client:
                assert [k async for k in client.scan_iter(match="registry-gateway:cache:*")]
            assert await redis_health(channel) == health_pb2.HealthCheckResponse.SERVING
        finally:
            server[0].terminate()
            await server[0].wait()


async def redis_health(channel: grpc.aio.Channel) -> int:
    health: Any = health_pb2_grpc.HealthStub(channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service=REDIS_HEALTH))
    status: int = response.status
    return status


async def _start_redis(tmp_path: Path, port: int = 0) -> tuple[asyncio.subprocess.Process, int]:
    """A redis-server of this test's own, which it can stop and start again on one port."""
    import socket

    if port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    while True:  # until it says it is ready (its log, not a sleep)
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=10)
        assert line, "redis-server exited"
        if b"Ready to accept connections" in line:
            return proc, port


@pytest.fixture
def aws_rewrites_policies(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """AWS stores a policy rewritten: account ids become root ARNs, whitespace changes.

    moto stores it verbatim; ECR does not (crossplane-contrib/provider-aws#700), so the etag
    must be the digest of what AWS returns, never of the request.
    """
    original = ECRBackend.put_registry_policy

    def rewrite(self: ECRBackend, policy_text: str) -> dict[str, Any]:
        policy = json.loads(policy_text)
        for statement in policy["Statement"]:
            aws = statement.get("Principal", {}).get("AWS")
            if isinstance(aws, str) and aws.isdigit():
                statement["Principal"]["AWS"] = f"arn:aws:iam::{aws}:root"
        result: dict[str, Any] = original(self, json.dumps(policy, indent=1))
        return result

    monkeypatch.setattr(ECRBackend, "put_registry_policy", rewrite)
    yield


async def test_etag_is_of_what_aws_stores(
    gateway_factory: GatewayFactory, aws_rewrites_policies: None
) -> None:
    policy = json.loads(POLICY)
    policy["Statement"][0]["Principal"] = {"AWS": "210987654321"}
    text = json.dumps(policy)
    gateway = await gateway_factory()
    channel, stub = stub_on(gateway.port)
    async with channel:
        written = await stub.PutRegistryPolicy(
            pb.PutRegistryPolicyRequest(policy_text=text), metadata=metadata()
        )
        fresh = await stub.GetRegistryPolicy(
            pb.GetRegistryPolicyRequest(), metadata=(*metadata(), ("cache-control", "no-cache"))
        )
        assert "arn:aws:iam::210987654321:root" in fresh.policy_text
        assert written.etag == fresh.etag
        # The same write again, conditional on that etag, succeeds (no endless diff loop).
        assert await put(stub, text, written.etag) == grpc.StatusCode.OK
