"""Changes made around the gateway, through the real gateway on moto: drift reported once (audit
line with a diff naming the tenants' slices, counter), writes overwritten between write and
read-back answered ABORTED WRITE_OVERWRITTEN, and the gateway's own writes never taken for
either."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from moto.ecr.models import ECRBackend

from service.app.embedded import session_factory
from service.app.server import Gateway
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from service.state.cache import CacheKey
from tests.conftest import GatewayFactory, wait_until
from tests.support.helpers import ACCOUNT, KEY, metadata, rich_error, settled_text
from tests.support.moto_writes import behave_like_ecr
from tests.support.slices_support import (
    ADMIN_KEY,
    BILLING_KEY,
    PARTNER,
    aws_rule,
    repositories,
    rule,
    seed_policy,
    seed_rules,
    shared_config,
    statement,
)

REGION = "us-east-1"
NO_CACHE = ("cache-control", "no-cache")
REPLICATION = CacheKey(ACCOUNT, REGION, "registry")
POLICY = CacheKey(ACCOUNT, REGION, "policy")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in settled_text(path).splitlines()]


def events(path: Path, event: str | None = None) -> list[dict[str, Any]]:
    return [
        line
        for line in lines(path)
        if "event" in line and (event is None or line["event"] == event)
    ]


def counted(gateway: Gateway, name: str, resource: str) -> float:
    value = gateway.metrics.registry.get_sample_value(
        f"registry_gateway_{name}_total",
        {"registry_id": ACCOUNT, "region": REGION, "resource": resource},
    )
    return value or 0.0


async def aws_put_replication(rules: list[dict[str, Any]], endpoint: str) -> None:
    """A change made straight to AWS (moto), around the gateway: boto3, like a script."""
    async with session_factory().client("ecr", endpoint_url=endpoint, region_name=REGION) as ecr:
        await ecr.put_replication_configuration(replicationConfiguration={"rules": rules})


async def aws_put_policy(policy: dict[str, Any], endpoint: str) -> None:
    async with session_factory().client("ecr", endpoint_url=endpoint, region_name=REGION) as ecr:
        await ecr.put_registry_policy(policyText=json.dumps(policy))


@pytest.fixture(autouse=True)
def like_ecr(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto takes ECR's 10 rules and every ECR action (tests/support/moto_writes.py)."""
    behave_like_ecr(monkeypatch)


def audited_config(aws: str, tmp_path: Path, name: str = "audit.jsonl", **cache: Any) -> Any:
    raw = shared_config(aws)
    raw["audit"] = {"path": str(tmp_path / name)}
    # Every replica here runs on this process's clock: no skew to allow for, so a read made
    # right after the last recorded version counts (the 1 s default is unit-tested).
    raw["drift"] = {"clock_skew_seconds": 0}
    if cache:
        raw["cache"] = cache
    return raw


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory, aws: str, tmp_path: Path) -> Gateway:
    return await gateway_factory(audited_config(aws, tmp_path))


@pytest.fixture
async def stub(gateway: Gateway) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        yield pb_grpc.RegistryConfigServiceStub(channel)


async def describe(stub: Any, key: str = KEY) -> pb.DescribeRegistryResponse:
    response: pb.DescribeRegistryResponse = await stub.DescribeRegistry(
        pb.DescribeRegistryRequest(), metadata=(*metadata(key), NO_CACHE)
    )
    return response


async def get_policy(stub: Any) -> pb.GetRegistryPolicyResponse | None:
    try:
        response: pb.GetRegistryPolicyResponse = await stub.GetRegistryPolicy(
            pb.GetRegistryPolicyRequest(), metadata=(*metadata(KEY), NO_CACHE)
        )
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return None
    return response


# --- drift -----------------------------------------------------------------------------------


async def test_a_change_made_around_the_gateway_is_reported_on_the_next_load(
    gateway: Gateway, stub: Any, aws: str, tmp_path: Path
) -> None:
    seed_rules(aws_rule("payments/api"), aws_rule("billing/api"))
    before = await describe(stub)  # the baseline
    assert events(tmp_path / "audit.jsonl") == []
    # A script removes billing's rule and adds one for payments, straight to AWS.
    await aws_put_replication([aws_rule("payments/api"), aws_rule("payments/new")], aws)
    after = await describe(stub)
    [line] = events(tmp_path / "audit.jsonl")
    assert line["event"] == "out_of_band_change"
    assert (line["registry_id"], line["region"], line["resource"]) == (
        ACCOUNT,
        REGION,
        "replication",
    )
    assert (line["etag_before"], line["etag_after"]) == (before.etag, after.etag)
    assert line["tenants"] == ["billing", "payments"]
    assert {(d["action"], tuple(d["tenants"])) for d in line["diff"]} == {
        ("remove", ("billing",)),
        ("add", ("payments",)),
    }
    assert "billing/api" in json.dumps(line["diff"])  # the diff says which rule went
    assert counted(gateway, "drift", "replication") == 1
    # Read again and again: reported once.
    await describe(stub)
    await describe(stub)
    assert len(events(tmp_path / "audit.jsonl")) == 1
    assert counted(gateway, "drift", "replication") == 1
    [head, *_] = await gateway.history.page(REPLICATION, before_seq=None, limit=5)
    assert (head.origin, head.etag) == ("out-of-band", after.etag)


async def test_a_change_to_a_packed_rule_names_only_the_tenants_whose_slice_changed(
    gateway: Gateway, stub: Any, aws: str, tmp_path: Path
) -> None:
    """One packed rule holds payments' and billing's filters (same destination); a script
    adds a payments filter to it. Billing's slice is what it was: only payments is named,
    in the line and in the diff (not every tenant holding a filter of the changed rule)."""
    seed_rules(aws_rule("payments/api", "billing/api"))
    await describe(stub)
    await aws_put_replication([aws_rule("payments/api", "billing/api", "payments/new")], aws)
    await describe(stub)
    [line] = events(tmp_path / "audit.jsonl", "out_of_band_change")
    assert line["tenants"] == ["payments"]
    assert line["diff"] and all(d["tenants"] == ["payments"] for d in line["diff"])


async def test_a_policy_change_names_the_statements_slice_and_never_its_text(
    gateway: Gateway, stub: Any, aws: str, tmp_path: Path
) -> None:
    seed_policy(statement("PaymentsPull"), statement("BillingPull", account="444455556666"))
    await get_policy(stub)
    await aws_put_policy(
        {
            "Version": "2012-10-17",
            "Statement": [statement("PaymentsPull"), statement("BillingPush", "444455556666")],
        },
        aws,
    )
    await get_policy(stub)
    [line] = events(tmp_path / "audit.jsonl", "out_of_band_change")
    assert line["resource"] == "policy" and line["tenants"] == ["billing"]
    assert {(d["action"], d["path"]) for d in line["diff"]} == {
        ("remove", "policy_text.Statement[Sid=BillingPull]"),
        ("add", "policy_text.Statement[Sid=BillingPush]"),
    }
    # The operators' trail, yet no principal, no resource, no policy text in it.
    text = (tmp_path / "audit.jsonl").read_text()
    assert "444455556666" not in text and repositories("billing/") not in text
    assert "Principal" not in text


async def test_a_change_deleted_around_the_gateway_is_reported(
    gateway: Gateway, stub: Any, aws: str, tmp_path: Path
) -> None:
    seed_policy(statement("PaymentsPull"))
    await get_policy(stub)
    async with session_factory().client("ecr", endpoint_url=aws, region_name=REGION) as ecr:
        await ecr.delete_registry_policy()
    assert await get_policy(stub) is None
    [line] = events(tmp_path / "audit.jsonl", "out_of_band_change")
    assert line["etag_after"] == "absent" and line["tenants"] == ["payments"]
    assert counted(gateway, "drift", "policy") == 1


async def test_two_replicas_on_redis_report_a_change_once(
    gateway_factory: GatewayFactory, aws: str, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    cache = {"backend": "redis", "redis_url": redis_url, "key_prefix": redis_prefix}
    replicas = [
        await gateway_factory(audited_config(aws, tmp_path, f"audit-{i}.jsonl", **cache))
        for i in range(2)
    ]
    seed_rules(aws_rule("payments/api"))
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{replicas[0].port}") as one,
        grpc.aio.insecure_channel(f"127.0.0.1:{replicas[1].port}") as two,
    ):
        stubs = [pb_grpc.RegistryConfigServiceStub(one), pb_grpc.RegistryConfigServiceStub(two)]
        for stub in stubs:
            await describe(stub)
        await aws_put_replication([aws_rule("billing/api")], aws)
        # Both replicas load the change at once: each compares, one records and reports.
        await asyncio.gather(*(describe(stub) for stub in stubs))
        await asyncio.gather(*(describe(stub) for stub in stubs))
    found = [e for i in range(2) for e in events(tmp_path / f"audit-{i}.jsonl")]
    assert [e["event"] for e in found] == ["out_of_band_change"]
    assert sum(counted(r, "drift", "replication") for r in replicas) == 1


async def test_a_stranger_without_credentials_makes_no_load_and_sees_nothing(
    gateway: Gateway, stub: Any, aws: str, tmp_path: Path
) -> None:
    seed_rules(aws_rule("payments/api"))
    await describe(stub)
    await aws_put_replication([aws_rule("billing/api")], aws)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await describe(stub, key="no-such-key")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert events(tmp_path / "audit.jsonl") == []  # nothing read from AWS for a stranger


# --- the gateway's own writes ------------------------------------------------------------------


async def test_the_gateways_own_writes_are_neither_drift_nor_overwritten(
    gateway: Gateway, stub: Any, tmp_path: Path
) -> None:
    seed_rules(aws_rule("billing/api"))
    seed_policy(statement("BillingPull"))
    await describe(stub)
    await get_policy(stub)
    current = await describe(stub, ADMIN_KEY)
    # A full write, a slice write of each kind, a policy write and a delete.
    await stub.PutReplicationConfiguration(
        pb.PutReplicationConfigurationRequest(
            replication_configuration=pb.ReplicationConfiguration(
                rules=[rule("billing/api"), rule("payments/a"), rule()]
            ),
            etag=current.etag,
        ),
        metadata=metadata(KEY),
    )
    await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(rules=[rule("billing/x", "invoices/y")]),
        metadata=metadata(BILLING_KEY),
    )
    await stub.PutPolicyStatements(
        pb.PutPolicyStatementsRequest(
            statements_json=json.dumps([statement("BillingPush", "444455556666")])
        ),
        metadata=metadata(BILLING_KEY),
    )
    await stub.PutRegistryPolicy(
        pb.PutRegistryPolicyRequest(
            policy_text=json.dumps(
                {"Version": "2012-10-17", "Statement": [statement("PaymentsPull")]}
            )
        ),
        metadata=metadata(KEY),
    )
    await stub.DeleteRegistryPolicy(pb.DeleteRegistryPolicyRequest(), metadata=metadata(KEY))
    await describe(stub)
    await get_policy(stub)
    path = tmp_path / "audit.jsonl"
    assert events(path) == []
    writes = [line for line in lines(path) if "outcome" in line]
    assert [w["outcome"] for w in writes] == ["OK"] * 5
    replication = await gateway.history.page(REPLICATION, before_seq=None, limit=10)
    assert [(v.origin, v.tenant, v.rpc) for v in replication] == [
        ("gateway", "billing", "PutReplicationRules"),
        ("gateway", "payments", "PutReplicationConfiguration"),
        ("baseline", None, None),
    ]
    assert replication[1].identity is not None
    assert replication[1].identity.startswith("api_key:")
    policy = await gateway.history.page(POLICY, before_seq=None, limit=10)
    assert [(v.origin, v.rpc) for v in policy] == [
        ("gateway", "DeleteRegistryPolicy"),
        ("gateway", "PutRegistryPolicy"),
        ("gateway", "PutPolicyStatements"),
        ("baseline", None),
    ]
    assert policy[0].etag == "absent" and policy[0].document == b""


# --- overwritten writes -----------------------------------------------------------------------


@pytest.fixture
def competing(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Right after the gateway's write, another writer stores its configuration (moto's
    backend patched under its HTTP handler: the gateway's write reached AWS)."""
    stands: dict[str, Any] = {}
    put_replication = ECRBackend.put_replication_configuration
    put_policy = ECRBackend.put_registry_policy

    def replication(self: ECRBackend, replication_config: dict[str, Any]) -> Any:
        taken = put_replication(self, replication_config)
        if "rules" in stands:
            self.replication_config = {"rules": stands["rules"]}
        return taken

    def policy(self: ECRBackend, policy_text: str) -> Any:
        taken = put_policy(self, policy_text)
        if "policy" in stands:
            self.registry_policy = stands["policy"]
        return taken

    monkeypatch.setattr(ECRBackend, "put_replication_configuration", replication)
    monkeypatch.setattr(ECRBackend, "put_registry_policy", policy)
    return stands


async def test_an_overwritten_write_answers_aborted_with_the_current_etag_and_is_audited(
    gateway: Gateway, stub: Any, tmp_path: Path, competing: dict[str, Any]
) -> None:
    seed_rules(aws_rule("billing/api"))
    competing["rules"] = [aws_rule("billing/other")]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.PutReplicationConfiguration(
            pb.PutReplicationConfigurationRequest(
                replication_configuration=pb.ReplicationConfiguration(rules=[rule("payments/a")])
            ),
            metadata=metadata(KEY),
        )
    error = rich_error(raised.value)
    assert error.code == grpc.StatusCode.ABORTED
    assert error.info.reason == "WRITE_OVERWRITTEN"
    assert "another writer" in error.message
    # The current etag is what now stands, and the cache holds it (a cached read agrees).
    cached = await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata(KEY))
    assert error.info.metadata["currentEtag"] == cached.etag
    assert list(cached.replication_configuration.rules) == [rule("billing/other")]
    path = tmp_path / "audit.jsonl"
    [write] = await wait_until(
        lambda: [line for line in lines(path) if "outcome" in line], what="the write's line"
    )
    assert (write["outcome"], write["reason"]) == ("ABORTED", "WRITE_OVERWRITTEN")
    [event] = events(path)
    assert event["event"] == "overwritten"
    assert (event["tenant"], event["rpc"]) == ("payments", "PutReplicationConfiguration")
    assert event["etag_after"] == cached.etag
    assert event["request_id"] == write["request_id"]
    assert {(d["action"], tuple(d["tenants"])) for d in event["diff"]} == {
        ("remove", ("payments",)),
        ("add", ("billing",)),
    }
    assert counted(gateway, "overwritten_writes", "replication") == 1
    assert counted(gateway, "drift", "replication") == 0
    [head, *_] = await gateway.history.page(REPLICATION, before_seq=None, limit=5)
    assert (head.origin, head.etag) == ("out-of-band", cached.etag)


async def test_an_overwritten_slice_write_names_only_the_callers_slice(
    gateway: Gateway, stub: Any, tmp_path: Path, competing: dict[str, Any]
) -> None:
    seed_policy(statement("PaymentsPull"))
    # Another writer puts back a policy with payments' statement changed and billing's gone.
    competing["policy"] = json.dumps(
        {"Version": "2012-10-17", "Statement": [statement("PaymentsOther")]}
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.PutPolicyStatements(
            pb.PutPolicyStatementsRequest(
                statements_json=json.dumps([statement("BillingPull", "444455556666")])
            ),
            metadata=metadata(BILLING_KEY),
        )
    error = rich_error(raised.value)
    assert (error.code, error.info.reason) == (grpc.StatusCode.ABORTED, "WRITE_OVERWRITTEN")
    # billing's etag: of its own (now empty) slice, never the whole policy's.
    mine = await stub.GetPolicyStatements(
        pb.GetPolicyStatementsRequest(), metadata=metadata(BILLING_KEY)
    )
    assert error.info.metadata["currentEtag"] == mine.etag
    assert mine.statements_json in ("", "[]")
    whole = await stub.GetRegistryPolicy(pb.GetRegistryPolicyRequest(), metadata=metadata(KEY))
    assert error.info.metadata["currentEtag"] != whole.etag
    # Nothing of payments' part in what billing is told.
    answered = error.message + json.dumps(dict(error.info.metadata))
    assert "Payments" not in answered and "210987654321" not in answered
    assert counted(gateway, "overwritten_writes", "policy") == 1


async def test_a_slice_write_that_holds_while_another_part_changed_is_ok_and_reported_as_drift(
    gateway: Gateway, stub: Any, tmp_path: Path, competing: dict[str, Any]
) -> None:
    # payments replicates elsewhere than billing: packing keeps their rules apart.
    to_partner = {"registry_id": PARTNER.registry_id, "region": PARTNER.region}
    seed_rules(aws_rule("payments/api", **to_partner))
    # Right after billing's write reaches AWS, a script changes payments' rule only: billing's
    # rule is exactly what billing wrote.
    competing["rules"] = [aws_rule("billing/a"), aws_rule("payments/other", **to_partner)]
    answer = await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(rules=[rule("billing/a")]), metadata=metadata(BILLING_KEY)
    )
    mine = await stub.GetReplicationRules(
        pb.GetReplicationRulesRequest(), metadata=metadata(BILLING_KEY)
    )
    # billing hears OK with its slice's etag, nothing of payments' part.
    assert list(answer.rules) == list(mine.rules) == [rule("billing/a")]
    assert answer.etag == mine.etag
    path = tmp_path / "audit.jsonl"
    [write] = await wait_until(
        lambda: [line for line in lines(path) if "outcome" in line], what="the write's line"
    )
    assert write["outcome"] == "OK"
    # The operators hear of payments' change, once, as a change made around the gateway.
    [event] = events(path)
    assert event["event"] == "out_of_band_change" and event["tenants"] == ["payments"]
    assert {(d["action"], tuple(d["tenants"])) for d in event["diff"]} == {
        ("remove", ("payments",)),
        ("add", ("payments",)),
    }
    assert counted(gateway, "drift", "replication") == 1
    assert counted(gateway, "overwritten_writes", "replication") == 0
    await describe(stub)
    assert len(events(path)) == 1
    [head, written, *_] = await gateway.history.page(REPLICATION, before_seq=None, limit=5)
    assert (head.origin, head.etag) == ("out-of-band", (await describe(stub)).etag)
    assert (written.origin, written.tenant) == ("gateway", "billing")
    assert pb.ReplicationConfiguration.FromString(written.document).rules == [
        rule("billing/a"),
        rule("payments/api", to=PARTNER),
    ]
