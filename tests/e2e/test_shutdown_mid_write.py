"""SIGTERM to a real `registry-gateway serve` process while writes it sent to AWS wait for
their answers past the grace period (issue 26, finding 5): moto behind a fault proxy that
applies each write and holds its answer, the gateway on the test Redis.

Every write is accounted for: the ones already sent settle (read back, recorded under their
author) and their callers hear the outcome; a write that had not reached AWS when the grace
period ended is refused with an ErrorInfo (SHUTTING_DOWN, nothing written); every attempt
has its audit line; and a replica that reads afterwards takes none of them for drift.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio
import yaml
from moto.ecr.models import ecr_backends

from service.ecr import etags
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from service.state.cache import CacheKey
from service.state.history import RedisHistory
from tests.conftest import GatewayFactory, wait_until
from tests.support.aws_proxy import CountingProxy, Fault
from tests.support.helpers import ACCOUNT, POLICY, config_dict, metadata, rich_error
from tests.support.processes import serving_event

BIN = Path(sys.executable).parent
PUT_POLICY = frozenset({"ecr:PutRegistryPolicy"})
# AWS applies each write and holds its answer until the test lets it go (once the grace
# period is over), at most this long.
HELD_SECONDS = 60.0
GRACE_SECONDS = 1.0
# What the gateway logs when the grace period ends with writes still settling.
GRACE_OVER = "grace period over"
EU = pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def gateway_process(
    raw: dict[str, Any], path: Path, log: list[str]
) -> AsyncIterator[tuple[Any, int]]:
    """`registry-gateway serve --config` on `raw`: (the process, its port); its log lines
    are appended to `log`."""
    path.write_text(yaml.safe_dump(raw))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_GATEWAY")},
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "registry-gateway"),
        "serve",
        "--config",
        str(path),
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        env=env,
    )
    assert proc.stderr is not None
    drain: asyncio.Future[None] | None = None
    try:
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), timeout=60)).decode()
            assert line, "the gateway process exited before serving"
            event = serving_event(line)
            if event is not None:
                break
        drain = asyncio.ensure_future(_drain(proc.stderr, log))
        yield proc, event[1]
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), timeout=30)
        if drain is not None:
            drain.cancel()


async def _drain(stream: asyncio.StreamReader, log: list[str]) -> None:
    while line := await stream.readline():
        log.append(line.decode(errors="replace"))


def started_writes(metrics_port: int, rpc: str) -> float:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("grpc_server_started_total") and f'grpc_method="{rpc}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def call(port: int, rpc: str, request: Any, request_id: str) -> Any:
    """(code, reason or None, rich error or response) of one call; reason None and no
    details when the status carries no ErrorInfo."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        try:
            response = await getattr(stub, rpc)(
                request, metadata=(*metadata(), ("x-request-id", request_id)), timeout=60
            )
        except grpc.aio.AioRpcError as exc:
            trailing = dict(exc.trailing_metadata() or ())
            if "grpc-status-details-bin" not in trailing:
                return exc.code(), None, exc.details()
            error = rich_error(exc)
            return exc.code(), error.info.reason, error
        return grpc.StatusCode.OK, None, response


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_sigterm_while_writes_wait_for_aws_accounts_for_every_write(
    gateway_factory: GatewayFactory,
    proxy: CountingProxy,
    aws: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    audit = tmp_path / "audit.jsonl"
    metrics_port = free_port()
    raw = config_dict(proxy.url, drain_seconds=0, grace_seconds=GRACE_SECONDS)
    raw["aws"]["read_timeout_seconds"] = 30
    raw["cache"] = {"backend": "redis", "redis_url": redis_url, "key_prefix": redis_prefix}
    raw["audit"] = {"path": str(audit)}
    raw["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
    log: list[str] = []
    async with gateway_process(raw, tmp_path / "gateway.yaml", log) as (proc, port):
        proxy.fault = Fault(PUT_POLICY, late_seconds=HELD_SECONDS)
        try:
            # Two writes AWS applies and answers late, on two registries' locks (two regions).
            first = asyncio.ensure_future(
                call(
                    port,
                    "PutRegistryPolicy",
                    pb.PutRegistryPolicyRequest(policy_text=POLICY, region="us-east-1"),
                    "write-first",
                )
            )
            second = asyncio.ensure_future(
                call(
                    port,
                    "PutRegistryPolicy",
                    pb.PutRegistryPolicyRequest(policy_text=POLICY, region="eu-west-1"),
                    "write-second",
                )
            )
            await wait_until(
                lambda: (
                    ecr_backends[ACCOUNT]["us-east-1"].registry_policy is not None
                    and ecr_backends[ACCOUNT]["eu-west-1"].registry_policy is not None
                ),
                timeout=30,
                what="both writes to reach AWS",
            )
            # A third write waits for the first one's lock: it has sent nothing yet.
            configuration = pb.ReplicationConfiguration(
                rules=[pb.ReplicationRule(destinations=[EU])]
            )
            third = asyncio.ensure_future(
                call(
                    port,
                    "PutReplicationConfiguration",
                    pb.PutReplicationConfigurationRequest(
                        replication_configuration=configuration, region="us-east-1"
                    ),
                    "write-third",
                )
            )
            await wait_until(
                lambda: started_writes(metrics_port, "PutReplicationConfiguration") >= 1,
                timeout=30,
                what="the third write to reach the gateway",
            )
            proc.send_signal(signal.SIGTERM)
            # AWS answers only once the grace period is over (or the process is gone).
            await wait_until(
                lambda: proc.returncode is not None or any(GRACE_OVER in line for line in log),
                timeout=60,
                what="the end of the grace period",
            )
            proxy.released.set()
            results = await asyncio.wait_for(asyncio.gather(first, second, third), timeout=90)
            assert await asyncio.wait_for(proc.wait(), timeout=60) == 0
        finally:
            proxy.fault = None
            proxy.released.set()

    # The writes sent to AWS were settled, and their callers heard so.
    for code, reason, response in results[:2]:
        assert (code, reason) == (grpc.StatusCode.OK, None), response
        assert response.etag == etags.of_policy(POLICY)
    # The write that had sent nothing was refused, with an ErrorInfo and a RetryInfo.
    code, reason, error = results[2]
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN"), error
    assert error.retry_info is not None
    assert ecr_backends[ACCOUNT]["us-east-1"].replication_config in (None, {}, {"rules": []})
    # One audit line per write attempt, each with its outcome.
    lines = {line["request_id"]: line for line in audit_lines(audit) if "event" not in line}
    assert {rid: (line["outcome"], line["reason"]) for rid, line in lines.items()} == {
        "write-first": ("OK", None),
        "write-second": ("OK", None),
        "write-third": ("UNAVAILABLE", "SHUTTING_DOWN"),
    }
    # Both writes recorded in the shared history as the caller's.
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        history = RedisHistory(client, redis_prefix, 50, 1 << 20)
        for region in ("us-east-1", "eu-west-1"):
            head = await history.head(CacheKey(ACCOUNT, region, "policy"))
            assert head is not None, region
            assert (head.origin, head.tenant, head.etag) == (
                "gateway",
                "payments",
                etags.of_policy(POLICY),
            )
    finally:
        await client.aclose()
    # A replica reading afterwards sees the history agree with AWS: no drift reported.
    survivor_audit = tmp_path / "survivor.jsonl"
    survivor_raw = config_dict(aws)
    survivor_raw["cache"] = {"backend": "redis", "redis_url": redis_url, "key_prefix": redis_prefix}
    survivor_raw["audit"] = {"path": str(survivor_audit)}
    survivor = await gateway_factory(survivor_raw)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{survivor.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        for region in ("us-east-1", "eu-west-1"):
            read = await stub.GetRegistryPolicy(
                pb.GetRegistryPolicyRequest(region=region),
                metadata=(*metadata(), ("cache-control", "no-cache")),
                timeout=30,
            )
            assert read.etag == etags.of_policy(POLICY)
    assert [line for line in audit_lines(survivor_audit) if "event" in line] == []
