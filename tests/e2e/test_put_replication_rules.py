"""PutReplicationRules: a tenant replaces its own rules of a shared registry, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.helpers import ACCOUNT, KEY, metadata, rich_error
from tests.support.moto_writes import MotoWrites, behave_like_ecr, count_writes
from tests.support.slices_support import (
    BILLING_KEY,
    PARTNER,
    aws_rule,
    quota_failure,
    rule,
    seed_rules,
    shared_config,
    stored_rules,
)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> MotoWrites:
    """moto takes ECR's 10 rules; its write requests are counted."""
    behave_like_ecr(monkeypatch)
    return count_writes(monkeypatch)


@pytest.fixture
async def stub(
    gateway_factory: GatewayFactory, aws: str, writes: MotoWrites
) -> AsyncIterator[pb_grpc.RegistryConfigServiceAsyncStub]:
    """A stub on a gateway where payments, billing and platform share one registry."""
    gateway = await gateway_factory(shared_config(aws))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        yield pb_grpc.RegistryConfigServiceStub(channel)


async def test_own_rules_are_replaced_and_packed_with_the_others(
    stub: Any, writes: MotoWrites
) -> None:
    seed_rules(
        aws_rule("billing/api"),
        aws_rule("payments/old"),
        aws_rule(),  # every repository: nobody's
        aws_rule("payments/older"),
    )
    response = await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(rules=[rule("payments/a"), rule("payments/b", to=PARTNER)]),
        metadata=metadata(KEY),
    )
    # Packed: one rule per destination set (billing's filter and payments/a share one),
    # the rule without filters carried after.
    assert stored_rules() == [
        aws_rule("billing/api", "payments/a"),
        aws_rule("payments/b", registry_id=PARTNER.registry_id, region=PARTNER.region),
        aws_rule(),
    ]
    assert writes.calls["put_replication_configuration"] == 1  # one write, the merged whole
    assert list(response.rules) == [rule("payments/a"), rule("payments/b", to=PARTNER)]
    got = await stub.GetReplicationRules(pb.GetReplicationRulesRequest(), metadata=metadata(KEY))
    assert got.etag == response.etag


async def test_a_tenant_without_rules_gets_its_filters_packed_in(stub: Any) -> None:
    seed_rules(aws_rule("payments/a"))
    await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(rules=[rule("billing/x", "invoices/y")]),
        metadata=metadata(BILLING_KEY),
    )
    assert stored_rules() == [aws_rule("billing/x", "invoices/y", "payments/a")]
    # And an empty slice removes them again, leaving payments' rule alone.
    await stub.PutReplicationRules(pb.PutReplicationRulesRequest(), metadata=metadata(BILLING_KEY))
    assert stored_rules() == [aws_rule("payments/a")]


@pytest.mark.parametrize(
    ("rules", "reason"),
    [
        ([rule("payments/a", "billing/x")], "RULE_NOT_OWNED"),  # one filter outside
        ([rule("billing/x")], "RULE_NOT_OWNED"),  # another tenant's prefix
        ([rule("payments")], "RULE_NOT_OWNED"),  # wider than payments/: payments-x too
        ([rule()], "RULE_WITHOUT_FILTER"),  # every repository: nobody's
    ],
    ids=["mixed", "other-tenant", "wider-prefix", "no-filter"],
)
async def test_rules_outside_the_slice_are_denied(
    stub: Any,
    writes: MotoWrites,
    aws_state: Callable[[], dict[str, Any]],
    rules: list[pb.ReplicationRule],
    reason: str,
) -> None:
    seed_rules(aws_rule("billing/api"), aws_rule("payments/a"))
    before = aws_state()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=rules), metadata=metadata(KEY)
        )
    error = rich_error(caught.value)
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.info.reason == reason
    assert error.info.metadata["rpc"] == "PutReplicationRules"
    assert aws_state() == before
    assert writes.total == 0


async def test_destination_outside_the_allow_list_is_denied(stub: Any, writes: MotoWrites) -> None:
    far = pb.ReplicationDestination(region="ap-south-1", registry_id=ACCOUNT)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=[rule("billing/x", to=far)]),
            metadata=metadata(BILLING_KEY),
        )
    error = rich_error(caught.value)
    assert (error.code, error.info.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "DESTINATION_NOT_ALLOWED",
    )
    assert error.info.metadata["field"] == "rules[0].destinations[0]"
    assert writes.total == 0


async def test_own_share_of_filters_gives_quota_failure(stub: Any, writes: MotoWrites) -> None:
    # payments and billing give no shares: every subset of their allow-lists makes 8
    # destination sets, over which 307 filters always pack into ECR's 10 rules: 153 each.
    seed_rules(aws_rule("payments/a"))
    many = [
        rule(*[f"payments/f{i}" for i in range(100)]),
        rule(*[f"payments/g{i}" for i in range(54)]),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=many), metadata=metadata(KEY)
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rich_error(caught.value).info.reason == "REPLICATION_QUOTA_EXCEEDED"
    (violation,) = quota_failure(caught.value).violations
    assert violation.subject == (
        f"tenant payments on registry {ACCOUNT} in us-east-1: repository filters"
    )
    assert "share of tenant payments is 153 repository filters" in violation.description
    assert "would hold 154" in violation.description
    assert stored_rules() == [aws_rule("payments/a")]
    assert writes.total == 0
    # Within it, the same filters are written (two rules of one set: 100 filters, then 53).
    await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(
            rules=[many[0], rule(*[f"payments/g{i}" for i in range(53)])]
        ),
        metadata=metadata(KEY),
    )
    assert [len(r["repositoryFilters"]) for r in stored_rules()] == [100, 53]


async def test_a_registry_full_of_unowned_rules_refuses_with_counts_only(
    stub: Any, writes: MotoWrites
) -> None:
    # An admin's full write left 9 rules without filters (every repository, to nine
    # accounts): carried as they are, they leave one rule, and payments asks two sets.
    others = [aws_rule(registry_id=f"30000000000{i}") for i in range(9)]
    others.append(aws_rule("payments/a"))
    seed_rules(*others)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutReplicationRules(
            pb.PutReplicationRulesRequest(
                rules=[rule("payments/x"), rule("payments/y", to=PARTNER)]
            ),
            metadata=metadata(KEY),
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rich_error(caught.value).info.reason == "REPLICATION_QUOTA_EXCEEDED"
    (violation,) = quota_failure(caught.value).violations
    assert violation.subject == f"registry {ACCOUNT} in us-east-1: replication rules"
    assert "at most 10 rules" in violation.description
    assert "would hold 11, with tenant payments holding 2" in violation.description
    assert "30000000000" not in violation.description + (caught.value.details() or "")
    assert stored_rules() == others
    assert writes.total == 0


async def test_shared_destination_limit_gives_quota_failure(stub: Any, writes: MotoWrites) -> None:
    # Billing's rules (written by an admin) use 24 unique destinations: 8 accounts x 3 regions.
    folded = [
        {
            "destinations": [
                {"region": region, "registryId": f"30000000000{i}"}
                for region in ("eu-west-1", "us-west-2", "eu-central-1")
            ],
            "repositoryFilters": [{"filter": f"billing/r{i}", "filterType": "PREFIX_MATCH"}],
        }
        for i in range(8)
    ]
    seed_rules(*folded)
    two = pb.ReplicationRule(
        destinations=[
            pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT),
            PARTNER,
        ],
        repository_filters=[pb.RepositoryFilter(filter="payments/a", filter_type="PREFIX_MATCH")],
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=[two]), metadata=metadata(KEY)
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    (violation,) = quota_failure(caught.value).violations
    assert violation.subject == f"registry {ACCOUNT} in us-east-1: unique replication destinations"
    assert "would name 26, 2 of them in the rules of tenant payments" in violation.description
    assert "30000000000" not in violation.description + (caught.value.details() or "")
    assert stored_rules() == folded
    assert writes.total == 0


async def test_validate_only_answers_the_plan_of_the_callers_slice(
    stub: Any, writes: MotoWrites
) -> None:
    seed_rules(aws_rule("billing/api"), aws_rule("payments/old"))
    response = await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(
            rules=[rule("payments/new", to=PARTNER), rule("payments/old")], validate_only=True
        ),
        metadata=metadata(KEY),
    )
    # By identity, between the caller's canonical forms: payments/old is kept though it
    # moved, payments/new (another destination set) is a rule of its own, the canonical
    # form's rules[1]; billing's rule is not in the plan.
    assert [(c.action, c.path) for c in response.changes] == [("add", "rules[1]")]
    assert "filter payments/new" in response.changes[0].description
    assert not any("billing" in c.description for c in response.changes)
    assert writes.total == 0
    assert stored_rules() == [aws_rule("billing/api"), aws_rule("payments/old")]


async def test_stale_slice_etag_is_aborted(stub: Any, writes: MotoWrites) -> None:
    seed_rules(aws_rule("payments/a"))
    etag = (
        await stub.GetReplicationRules(pb.GetReplicationRulesRequest(), metadata=metadata(KEY))
    ).etag
    # Another tenant's change does not move payments' etag ...
    await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(rules=[rule("billing/x")]), metadata=metadata(BILLING_KEY)
    )
    ok = await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(rules=[rule("payments/b")], etag=etag),
        metadata=metadata(KEY),
    )
    # ... its own does: the old etag is now stale.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=[rule("payments/c")], etag=etag),
            metadata=metadata(KEY),
        )
    error = rich_error(caught.value)
    assert (error.code, error.info.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    assert error.info.metadata["currentEtag"] == ok.etag
    assert stored_rules() == [aws_rule("billing/x", "payments/b")]
