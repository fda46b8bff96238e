"""The suite's cross-replica consistency tests against a real three-node Redis Cluster
(issue 23): two gateway replicas sharing the cluster (each its own cluster client, its own
in-process copies) keep the etag chain (one of two writers on one etag wins, every replica
reads the winner at once), single flight, both tenants' latest slices under a write storm,
and one history. The same tests on one Redis: tests/e2e/test_concurrency.py,
test_cache.py, test_slices_concurrency.py, test_get_configuration_history.py."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import grpc
import pytest

from service.app.server import Gateway
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.e2e.test_concurrency import POLICY_B, POLICY_C, put, stored_policy
from tests.support.aws_proxy import CountingProxy
from tests.support.helpers import ACCOUNT, KEY, POLICY, config_dict, metadata
from tests.support.moto_writes import behave_like_ecr
from tests.support.redis_cluster import RedisClusterSet, redis_cluster  # noqa: F401
from tests.support.slices_support import (
    BILLING_KEY,
    aws_rule,
    rule,
    seed_policy,
    seed_rules,
    shared_config,
    statement,
    stored_rules,
    stored_sids,
)

WRITES = 10  # per tenant and document: the storm of test_slices_concurrency.py, shorter


def on_cluster(raw: dict[str, Any], cluster: RedisClusterSet, prefix: str) -> dict[str, Any]:
    raw["cache"] = {
        "backend": "redis",
        "redis_cluster_nodes": cluster.nodes,
        "key_prefix": prefix,
        "ttl_seconds": 30,
    }
    return raw


@pytest.fixture
def prefix() -> str:
    return f"registry-gateway-test:{uuid.uuid4().hex}:"


async def replicas(
    gateway_factory: GatewayFactory, raw: dict[str, Any]
) -> tuple[list[grpc.aio.Channel], list[Any], list[Gateway]]:
    """Two gateways on the cluster (each with its own client and in-process copies)."""
    gateways = [await gateway_factory(json.loads(json.dumps(raw))) for _ in "ab"]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{g.port}") for g in gateways]
    return channels, [pb_grpc.RegistryConfigServiceStub(c) for c in channels], gateways


async def test_two_replicas_on_a_cluster_lose_no_update_and_read_their_writes(
    gateway_factory: GatewayFactory,
    aws: str,
    redis_cluster: RedisClusterSet,  # noqa: F811
    prefix: str,
) -> None:
    channels, (one, two), _ = await replicas(
        gateway_factory, on_cluster(config_dict(aws), redis_cluster, prefix)
    )
    try:
        assert await put(one, POLICY, "") == grpc.StatusCode.OK
        etag = (
            await two.GetRegistryPolicy(pb.GetRegistryPolicyRequest(), metadata=metadata())
        ).etag
        codes = await asyncio.gather(put(one, POLICY_B, etag), put(two, POLICY_C, etag))
        assert sorted(c.name for c in codes) == ["ABORTED", "OK"]
        winner = POLICY_B if codes[0] == grpc.StatusCode.OK else POLICY_C
        assert stored_policy() == winner
        for stub in (one, two):
            call = stub.GetRegistryPolicy(pb.GetRegistryPolicyRequest(), metadata=metadata())
            assert (await call).policy_text == winner
            # From the cluster, not from AWS: the write put it there for every replica.
            assert dict(await call.trailing_metadata())["x-cache"] == "hit"
    finally:
        for channel in channels:
            await channel.close()


async def test_a_cold_storm_on_two_replicas_makes_at_most_one_aws_call_each(
    gateway_factory: GatewayFactory,
    proxy: CountingProxy,
    redis_cluster: RedisClusterSet,  # noqa: F811
    prefix: str,
) -> None:
    channels, stubs, _ = await replicas(
        gateway_factory, on_cluster(config_dict(proxy.url), redis_cluster, prefix)
    )
    try:
        calls = [
            stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata(), timeout=30)
            for stub in stubs
            for _ in range(40)
        ]
        answers = await asyncio.gather(*calls)
        assert {a.registry_id for a in answers} == {ACCOUNT}
        assert 1 <= proxy.count("ecr:DescribeRegistry") <= 2
        # Cached for both now: hits, no more AWS calls.
        for stub in stubs:
            call = stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
            await call
            assert dict(await call.trailing_metadata())["x-cache"] == "hit"
        assert proxy.count("ecr:DescribeRegistry") <= 2
    finally:
        for channel in channels:
            await channel.close()


async def test_two_tenants_slices_and_one_history_through_two_replicas_on_a_cluster(
    gateway_factory: GatewayFactory,
    aws: str,
    redis_cluster: RedisClusterSet,  # noqa: F811
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    behave_like_ecr(monkeypatch)
    seed_rules(aws_rule(), aws_rule("shared/base"))  # nobody's rules, kept throughout
    seed_policy(statement("Shared"))
    channels, stubs, _ = await replicas(
        gateway_factory, on_cluster(shared_config(aws), redis_cluster, prefix)
    )

    async def rules(key: str, tenant: str, order: list[Any]) -> None:
        for i in range(WRITES):
            await order[i % 2].PutReplicationRules(
                pb.PutReplicationRulesRequest(
                    rules=[rule(f"{tenant}/v{i}/a"), rule(f"{tenant}/v{i}/b")]
                ),
                metadata=metadata(key),
                timeout=20,
            )

    async def statements(key: str, sid: str, order: list[Any]) -> None:
        for i in range(WRITES):
            await order[(i + 1) % 2].PutPolicyStatements(
                pb.PutPolicyStatementsRequest(
                    statements_json=json.dumps([statement(f"{sid}V{i}")])
                ),
                metadata=metadata(key),
                timeout=20,
            )

    try:
        await asyncio.gather(
            rules(KEY, "payments", stubs),
            rules(BILLING_KEY, "billing", stubs[::-1]),
            statements(KEY, "Payments", stubs),
            statements(BILLING_KEY, "Billing", stubs[::-1]),
        )
        last = WRITES - 1
        seen = []
        for stub in stubs:
            got = await stub.GetReplicationRules(
                pb.GetReplicationRulesRequest(), metadata=metadata(BILLING_KEY)
            )
            seen.append(sorted(f.filter for r in got.rules for f in r.repository_filters))
        # Every replica reads billing's latest slice at once, whole.
        assert seen == [[f"billing/v{last}/a", f"billing/v{last}/b"]] * 2
        # One history, whichever replica wrote: every write recorded once, newest first,
        # the same through either replica.
        pages = []
        for stub in stubs:
            page = await stub.GetConfigurationHistory(
                pb.GetConfigurationHistoryRequest(
                    resource=pb.HISTORY_RESOURCE_REPLICATION, page_size=50
                ),
                metadata=metadata(KEY),
            )
            pages.append([(v.etag, v.tenant) for v in page.versions])
        assert pages[0] == pages[1]
        written = [tenant for _, tenant in pages[0] if tenant]
        assert sorted(written) == ["billing"] * WRITES + ["payments"] * WRITES
    finally:
        for channel in channels:
            await channel.close()
    filters = sorted(f["filter"] for r in stored_rules() for f in r.get("repositoryFilters", []))
    # Nobody's rules kept, and both tenants' latest slices, none older.
    assert filters == sorted(
        ["shared/base"] + [f"{t}/v{last}/{n}" for t in ("payments", "billing") for n in "ab"]
    )
    sids = stored_sids()
    assert sids is not None and sids[0] == "Shared"
    assert sorted(sids[1:]) == [f"BillingV{last}", f"PaymentsV{last}"]
