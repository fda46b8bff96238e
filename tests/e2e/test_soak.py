"""Soak: mixed reads and writes from several tenants; AWS ends as the last acknowledged
writes left it, no call gets an unexpected status, and (long version) memory stays flat.

`make test` runs a short version; `make soak` sets REGISTRY_GATEWAY_SOAK_CALLS for minutes
of load and also checks tracemalloc growth per thousand calls after warm-up. The test's
time budget follows its call count (pytest-timeout's global 120 s is for the short run),
and it prints calls/s (and, long version, memory growth) whatever the capture setting.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from moto.ecr.models import ecr_backends

from service.auth.api_keys import hash_key
from service.config import OPERATIONS
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.helpers import ACCOUNT, KEY, OTHER_ACCOUNT, OTHER_KEY, POLICY, config_dict

CALLS = int(os.environ.get("REGISTRY_GATEWAY_SOAK_CALLS", "600"))
LONG = CALLS >= 5000
OTHER_TENANT_KEY = "soak-key-other"
# Bytes of traced memory the server may grow per thousand calls after warm-up.
GROWTH_LIMIT_PER_1000 = 64 * 1024
# The budget: a minute for setup and the checks, plus 20 ms a call (about ten times the
# cost measured with tracemalloc on): a 20,000-call `make soak` gets 460 s, not 120.
SETUP_SECONDS = 60
SECONDS_PER_CALL = 0.02
TIMEOUT_SECONDS = max(120, int(SETUP_SECONDS + (CALLS + (1000 if LONG else 0)) * SECONDS_PER_CALL))

# Evaluated at collection, from the same REGISTRY_GATEWAY_SOAK_CALLS the test reads; a mark
# overrides the ini `timeout`.
pytestmark = pytest.mark.timeout(TIMEOUT_SECONDS)


def policy(n: int) -> str:
    text = json.loads(POLICY)
    text["Statement"][0]["Sid"] = f"Soak{n}"
    return json.dumps(text)


def replication(n: int) -> pb.ReplicationConfiguration:
    region = ("eu-west-1", "us-west-2")[n % 2]
    registry = ACCOUNT if region == "eu-west-1" else "210987654321"
    return pb.ReplicationConfiguration(
        rules=[
            pb.ReplicationRule(
                destinations=[pb.ReplicationDestination(region=region, registry_id=registry)],
                repository_filters=[
                    pb.RepositoryFilter(filter=f"team{n}", filter_type="PREFIX_MATCH")
                ],
            )
        ]
    )


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    """Print one line past pytest's capture (the gateway's own logs stay captured)."""
    with capsys.disabled():
        print(f"\nsoak: {line}")


def md(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def test_soak(
    gateway_factory: GatewayFactory,
    aws: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    raw = config_dict(aws)
    raw["tenants"].append(
        {
            "name": "other",
            "api_keys": [hash_key(OTHER_TENANT_KEY)],
            "registries": [
                {
                    "registry_id": OTHER_ACCOUNT,
                    "role_arn": f"arn:aws:iam::{OTHER_ACCOUNT}:role/registry-gateway",
                    "regions": ["us-east-1"],
                    "operations": list(OPERATIONS),
                    # The slice writes need a slice: they may act on nothing else.
                    "owned_repository_prefixes": ["other/"],
                    "owned_statement_sid_prefix": "Other",
                }
            ],
        }
    )
    raw["cache"] = {"ttl_seconds": 0.2}
    # The audit trail to a file: on stdout it would land in pytest's capture buffer, which
    # grows with every write line and was measured as the gateway's own growth.
    raw["audit"] = {"path": str(tmp_path / "audit.jsonl")}
    gateway = await gateway_factory(raw)
    statuses: Counter[str] = Counter()
    acknowledged: dict[str, Any] = {}
    budget = {"left": CALLS}

    def take() -> bool:
        budget["left"] -= 1
        return budget["left"] >= 0

    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)

        async def invoke(name: str, request: Any, key: str, expected: set[str]) -> Any:
            try:
                response = await getattr(stub, name)(request, metadata=md(key), timeout=30)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                response, code = None, exc.code().name
            statuses[f"{name}:{code}"] += 1
            assert code in expected, f"{name} answered {code}"
            return response

        async def policy_writer(key: str, registry: str) -> None:
            etag, n = "", 0
            while take():
                n += 1
                text = policy(n)
                response = await invoke(
                    "PutRegistryPolicy",
                    pb.PutRegistryPolicyRequest(policy_text=text, registry_id=registry, etag=etag),
                    key,
                    {"OK"},
                )
                etag = response.etag
                acknowledged[f"policy/{registry}"] = text

        async def replication_writer() -> None:
            n = 0
            while take():
                n += 1
                config = replication(n)
                await invoke(
                    "PutReplicationConfiguration",
                    pb.PutReplicationConfigurationRequest(replication_configuration=config),
                    KEY,
                    {"OK"},
                )
                acknowledged[f"replication/{ACCOUNT}"] = config

        async def reader(key: str, registry: str) -> None:
            while take():
                await invoke(
                    "DescribeRegistry",
                    pb.DescribeRegistryRequest(registry_id=registry),
                    key,
                    {"OK"},
                )
                await invoke(
                    "GetRegistryPolicy",
                    pb.GetRegistryPolicyRequest(registry_id=registry),
                    key,
                    {"OK", "NOT_FOUND"},
                )

        async def intruder() -> None:  # the read-only tenant tries to write: always refused
            while take():
                await invoke(
                    "PutRegistryPolicy",
                    pb.PutRegistryPolicyRequest(policy_text=policy(0)),
                    OTHER_KEY,
                    {"PERMISSION_DENIED"},
                )

        async def run(calls_before: int) -> float:
            """Run `calls_before` calls; answer their rate in calls per second."""
            budget["left"] = calls_before
            started = time.perf_counter()
            await asyncio.gather(
                policy_writer(KEY, ACCOUNT),
                policy_writer(OTHER_TENANT_KEY, OTHER_ACCOUNT),
                replication_writer(),
                *(reader(KEY, ACCOUNT) for _ in range(4)),
                reader(OTHER_KEY, ACCOUNT),
                reader(OTHER_TENANT_KEY, OTHER_ACCOUNT),
                intruder(),
            )
            return calls_before / (time.perf_counter() - started)

        if LONG:
            # Warm-up (clients, caches, interned strings), then two equal windows: memory
            # that keeps growing from the first window to the second is a leak.
            await run(1000)
            tracemalloc.start()
            rates = [await run(CALLS // 2)]
            gc.collect()
            first = tracemalloc.get_traced_memory()[0]
            rates.append(await run(CALLS // 2))
            gc.collect()
            growth = tracemalloc.get_traced_memory()[0] - first
            tracemalloc.stop()
            per_1000 = growth / (CALLS / 2000)
            report(
                capsys,
                f"{CALLS} calls (after 1000 of warm-up), {min(rates):.0f}-{max(rates):.0f}"
                f" calls/s with tracemalloc on; memory growth {growth} bytes over the"
                f" second window, {per_1000:.0f} bytes per 1000 calls"
                f" (limit {GROWTH_LIMIT_PER_1000}); budget {TIMEOUT_SECONDS} s",
            )
            assert per_1000 < GROWTH_LIMIT_PER_1000, f"grew {per_1000:.0f} bytes per 1000 calls"
        else:
            rate = await run(CALLS)
            report(capsys, f"{CALLS} calls, {rate:.0f} calls/s; budget {TIMEOUT_SECONDS} s")

    # AWS holds exactly what the last acknowledged writes put there.
    assert ecr_backends[ACCOUNT]["us-east-1"].registry_policy == acknowledged[f"policy/{ACCOUNT}"]
    assert (
        ecr_backends[OTHER_ACCOUNT]["us-east-1"].registry_policy
        == acknowledged[f"policy/{OTHER_ACCOUNT}"]
    )
    stored = ecr_backends[ACCOUNT]["us-east-1"].replication_config
    expected = acknowledged[f"replication/{ACCOUNT}"]
    assert stored["rules"][0]["repositoryFilters"][0]["filter"] == (
        expected.rules[0].repository_filters[0].filter
    )
    assert statuses["PutRegistryPolicy:PERMISSION_DENIED"] > 0
    assert sum(statuses.values()) >= CALLS
