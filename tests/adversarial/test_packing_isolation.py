"""Packing against a hostile neighbour (issue 22): payments and billing share the registry's
packed rules (one rule per destination set holds both tenants' filters), and payments tries
to use that to read, shrink or evict billing's part, or to make billing's valid write fail.
Against a real gateway on moto, ECR's limits enforced (tests/support/moto_writes.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from service.registry.model import packing
from tests.conftest import GatewayFactory
from tests.support.helpers import KEY, metadata, rich_error
from tests.support.moto_writes import MotoWrites, behave_like_ecr, count_writes
from tests.support.slices_support import (
    BILLING_FAR,
    BILLING_FILTERS,
    BILLING_KEY,
    EU,
    PARTNER,
    billing_rules,
    filters_in,
    isolation_config,
    leaked,
    quota_failure,
    rule,
    stored_rules,
)


def allowed(*destinations: pb.ReplicationDestination) -> list[dict[str, Any]]:
    return [{"registry_id": d.registry_id, "regions": [d.region]} for d in destinations]


def packing_config(aws: str) -> dict[str, Any]:
    """isolation_config with catalogs: payments may use {EU} and {PARTNER}; billing those,
    {EU, PARTNER} and {BILLING_FAR}. Four sets in all: 703 filters always fit 10 rules, 351
    each."""
    raw = isolation_config(aws)
    entries = {t["name"]: t["registries"][0] for t in raw["tenants"]}
    entries["payments"]["destination_sets"] = [allowed(EU), allowed(PARTNER)]
    entries["billing"]["destination_sets"] = [
        allowed(EU),
        allowed(PARTNER),
        allowed(EU, PARTNER),
        allowed(BILLING_FAR),
    ]
    return raw


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> MotoWrites:
    behave_like_ecr(monkeypatch)
    return count_writes(monkeypatch)


@pytest.fixture
async def stub(gateway_factory: GatewayFactory, aws: str, writes: MotoWrites) -> AsyncIterator[Any]:
    gateway = await gateway_factory(packing_config(aws))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        yield pb_grpc.RegistryConfigServiceStub(channel)


def many(prefix: str, count: int, to: pb.ReplicationDestination) -> list[pb.ReplicationRule]:
    """`count` filters to `to`, 100 a rule (the most a request's rule may hold)."""
    names = [f"{prefix}{n:04d}" for n in range(count)]
    return [rule(*names[i : i + 100], to=to) for i in range(0, count, 100)]


def both(*filters: str) -> pb.ReplicationRule:
    return pb.ReplicationRule(
        destinations=[EU, PARTNER],
        repository_filters=rule(*filters).repository_filters,
    )


def full_payments() -> list[pb.ReplicationRule]:
    """payments' whole share: 351 filters over its two sets."""
    return many("payments/e", 200, EU) + many("payments/p", 151, PARTNER)


def full_billing() -> list[pb.ReplicationRule]:
    """billing's whole share: 351 filters over its four sets, its own two filters among them."""
    return [
        *billing_rules(),  # billing/ledger to BILLING_FAR, invoices/2024 to EU
        *many("billing/e", 150, EU),
        *many("billing/p", 100, PARTNER),
        both(*(f"billing/b{n}" for n in range(99))),
    ]


async def put(stub: Any, key: str, rules: list[pb.ReplicationRule], **fields: Any) -> Any:
    return await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(rules=rules, **fields), metadata=metadata(key)
    )


async def read(stub: Any, key: str) -> pb.GetReplicationRulesResponse:
    response: pb.GetReplicationRulesResponse = await stub.GetReplicationRules(
        pb.GetReplicationRulesRequest(), metadata=(*metadata(key), ("cache-control", "no-cache"))
    )
    return response


def billings_meaning() -> dict[tuple[str, str], frozenset[tuple[str, str]]]:
    """Where each of billing's filters replicates, as AWS holds it now."""
    rules = [
        pb.ReplicationRule(
            destinations=[
                pb.ReplicationDestination(registry_id=d["registryId"], region=d["region"])
                for d in r["destinations"]
            ],
            repository_filters=[
                pb.RepositoryFilter(filter=f["filter"], filter_type=f["filterType"])
                for f in r.get("repositoryFilters", [])
            ],
        )
        for r in stored_rules()
    ]
    return {
        key: targets
        for key, targets in packing.filter_destinations(rules).items()
        if key[0].startswith(("billing/", "invoices/"))
    }


async def test_a_rule_shared_with_billing_shows_payments_nothing_of_billings(
    stub: Any, writes: MotoWrites
) -> None:
    await put(stub, BILLING_KEY, billing_rules())
    written = await put(stub, KEY, [rule("payments/a")])
    # AWS holds one rule for EU with both tenants' filters in it ...
    assert any({"payments/a", BILLING_FILTERS[1]} <= filters_in([r]) for r in stored_rules()), (
        stored_rules()
    )
    # ... and payments is shown its filter alone, wherever it looks.
    mine = await read(stub, KEY)
    assert list(mine.rules) == list(written.rules) == [rule("payments/a")]
    plan = await put(stub, KEY, [rule("payments/a", to=PARTNER)], validate_only=True)
    assert [(c.action, c.path) for c in plan.changes] == [
        ("remove", "rules[0]"),
        ("add", "rules[0]"),
    ]
    for answer in (written, mine, plan):
        assert leaked(answer) == []
    assert (mine.filters_used, mine.filters_limit) == (1, 351)


async def test_payments_never_shrinks_nor_evicts_billings_part(
    stub: Any, writes: MotoWrites
) -> None:
    await put(stub, BILLING_KEY, full_billing())
    before = billings_meaning()
    etag = (await read(stub, BILLING_KEY)).etag
    # payments fills its share, rewrites it into the other set, empties it, fills it again:
    # every write repacks the rules billing's filters stand in.
    for rules in (
        full_payments(),
        many("payments/p", 351, PARTNER),
        [],
        [rule("payments/e0000", to=PARTNER), *full_payments()[1:]],
    ):
        await put(stub, KEY, rules)
        assert billings_meaning() == before
        assert (await read(stub, BILLING_KEY)).etag == etag
        assert len(stored_rules()) <= 10


async def test_a_full_share_never_fails_anothers_valid_write(stub: Any, writes: MotoWrites) -> None:
    await put(stub, KEY, full_payments())
    # billing's whole share is still its own to write, beside payments' whole share.
    written = await put(stub, BILLING_KEY, full_billing())
    assert list(written.rules) == packing.canonical(full_billing())
    assert len(stored_rules()) <= 10
    assert len(filters_in(stored_rules())) == 702
    # And each reads back exactly its intent, in its canonical form.
    assert list((await read(stub, KEY)).rules) == packing.canonical(full_payments())
    assert list((await read(stub, BILLING_KEY)).rules) == packing.canonical(full_billing())
    # The order of the writes does not matter: payments writing again changes no byte.
    document = stored_rules()
    await put(stub, KEY, full_payments()[::-1])
    assert stored_rules() == document


async def test_past_its_share_payments_is_refused_alone(stub: Any, writes: MotoWrites) -> None:
    await put(stub, BILLING_KEY, billing_rules())
    before = stored_rules()
    calls = writes.total
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await put(stub, KEY, [*full_payments(), rule("payments/one-more")])
    error = rich_error(caught.value)
    assert (error.code, error.info.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "REPLICATION_QUOTA_EXCEEDED",
    )
    (violation,) = quota_failure(caught.value).violations
    assert violation.subject.startswith("tenant payments on registry")
    assert "share of tenant payments is 351 repository filters" in violation.description
    assert leaked(caught.value) == []
    assert stored_rules() == before and writes.total == calls
    # billing's write goes on.
    await put(stub, BILLING_KEY, full_billing())


async def test_a_set_outside_its_catalog_is_refused_naming_only_its_own(
    stub: Any, writes: MotoWrites
) -> None:
    await put(stub, BILLING_KEY, [both("billing/both")])  # billing's catalog has {EU, PARTNER}
    calls = writes.total
    # payments' has not: payments/x named by two rules goes to their union.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await put(stub, KEY, [rule("payments/x"), rule("payments/x", to=PARTNER)])
    error = rich_error(caught.value)
    assert (error.code, error.info.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "DESTINATION_SET_NOT_IN_CATALOG",
    )
    assert error.info.metadata["field"] == "rules[0].destinations"
    assert "2 destination sets of the catalog of tenant payments" in error.message
    assert leaked(caught.value) == [] and "billing" not in error.message
    assert writes.total == calls


async def test_a_stranger_packs_nothing(stub: Any, writes: MotoWrites) -> None:
    await put(stub, BILLING_KEY, billing_rules())
    before = stored_rules()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutReplicationRules(pb.PutReplicationRulesRequest(rules=[rule("billing/x")]))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert leaked(caught.value) == []
    assert stored_rules() == before


async def test_billings_history_tells_nothing_of_payments_writes_to_their_shared_rule(
    gateway_factory: GatewayFactory, aws: str, writes: MotoWrites
) -> None:
    raw = packing_config(aws)
    billing = next(t for t in raw["tenants"] if t["name"] == "billing")
    billing["registries"][0]["operations"].append("GetConfigurationHistory")
    gateway = await gateway_factory(raw)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        await put(stub, BILLING_KEY, billing_rules())
        # payments' writes repack the rule billing's invoices/2024 stands in, again and again.
        for n in range(3):
            await put(stub, KEY, [rule(*(f"payments/v{n}/{i}" for i in range(n + 1)))])
        view = await stub.GetConfigurationHistory(
            pb.GetConfigurationHistoryRequest(resource=pb.HISTORY_RESOURCE_REPLICATION),
            metadata=metadata(BILLING_KEY),
        )
    assert view.slice_view
    # Only billing's own write (and where its history begins): its canonical slice never
    # moved while payments rewrote the rule they share.
    assert [v.tenant for v in view.versions] == ["billing", ""]
    assert list(view.versions[0].replication_configuration.rules) == packing.canonical(
        billing_rules()
    )
    assert "payments" not in str(view)
