"""GetReplicationRules: a tenant reads its own rules of a shared registry, and its use of its
share of the limits; an admin's full PutReplicationConfiguration and the slices coexist."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.helpers import KEY, OTHER_KEY, PARTNER_ACCOUNT, metadata, rich_error
from tests.support.moto_writes import behave_like_ecr
from tests.support.slices_support import (
    ADMIN_KEY,
    BILLING_KEY,
    PARTNER,
    aws_rule,
    rule,
    seed_rules,
    shared_config,
    stored_rules,
)

NO_CACHE = ("cache-control", "no-cache")


@pytest.fixture
async def stub(
    gateway_factory: GatewayFactory, aws: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[pb_grpc.RegistryConfigServiceAsyncStub]:
    """A stub on a gateway where payments, billing and platform share one registry."""
    behave_like_ecr(monkeypatch)
    gateway = await gateway_factory(shared_config(aws))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        yield pb_grpc.RegistryConfigServiceStub(channel)


async def rules_of(stub: Any, key: str) -> pb.GetReplicationRulesResponse:
    response: pb.GetReplicationRulesResponse = await stub.GetReplicationRules(
        pb.GetReplicationRulesRequest(), metadata=(*metadata(key), NO_CACHE)
    )
    return response


async def test_each_tenant_reads_only_its_rules_and_its_share(stub: Any) -> None:
    seed_rules(
        aws_rule("billing/api"),
        aws_rule("payments/api", registry_id=PARTNER_ACCOUNT, region="us-west-2"),
        aws_rule(),  # every repository: nobody's
        aws_rule("payments/x", "billing/y"),  # straddles two slices: each owns its filter
        aws_rule("invoices/z"),
    )
    # Each reads its filters in its canonical form: one rule per destination set, sorted.
    payments = await rules_of(stub, KEY)
    assert list(payments.rules) == [rule("payments/x"), rule("payments/api", to=PARTNER)]
    billing = await rules_of(stub, BILLING_KEY)
    assert list(billing.rules) == [rule("billing/api", "billing/y", "invoices/z")]
    # Its own use of its own share (platform holds none): every subset of the two
    # allow-lists makes eight destination sets, few enough that each may hold ten rules;
    # each may name the destinations its allow-list has.
    assert (payments.rules_used, payments.rules_limit) == (2, 10)
    assert (payments.unique_destinations_used, payments.unique_destinations_limit) == (2, 3)
    assert (payments.filters_used, payments.filters_limit) == (2, 153)
    assert (billing.rules_used, billing.rules_limit) == (1, 10)
    assert (billing.unique_destinations_used, billing.unique_destinations_limit) == (1, 2)
    assert payments.etag != billing.etag


async def test_an_empty_registry_is_an_empty_slice(stub: Any) -> None:
    response = await rules_of(stub, KEY)
    assert list(response.rules) == []
    assert response.etag
    assert response.rules_used == 0


async def test_a_tenant_not_granted_the_rpc_is_denied(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetReplicationRules(
            pb.GetReplicationRulesRequest(), metadata=metadata(OTHER_KEY)
        )
    assert rich_error(caught.value).info.reason == "TARGET_NOT_ALLOWED"


async def test_admin_full_writes_and_slices_coexist(stub: Any) -> None:
    await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(rules=[rule("payments/a")]), metadata=metadata(KEY)
    )
    await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(rules=[rule("billing/a")]), metadata=metadata(BILLING_KEY)
    )
    payments_etag = (await rules_of(stub, KEY)).etag
    billing_etag = (await rules_of(stub, BILLING_KEY)).etag
    described = await stub.DescribeRegistry(
        pb.DescribeRegistryRequest(), metadata=metadata(ADMIN_KEY)
    )
    # The admin rewrites payments' rule and adds a rule for every repository.
    configuration = pb.ReplicationConfiguration(
        rules=[rule("payments/a", to=PARTNER), rule("billing/a"), rule()]
    )
    await stub.PutReplicationConfiguration(
        pb.PutReplicationConfigurationRequest(
            replication_configuration=configuration, etag=described.etag
        ),
        metadata=metadata(ADMIN_KEY),
    )
    assert (await rules_of(stub, KEY)).etag != payments_etag
    assert (await rules_of(stub, BILLING_KEY)).etag == billing_etag
    # Payments' write with its old etag is refused: it would undo the admin's change unseen.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=[rule("payments/b")], etag=payments_etag),
            metadata=metadata(KEY),
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED
    # A fresh slice write keeps the admin's other rules, including the one for everything.
    await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(rules=[rule("payments/b")]), metadata=metadata(KEY)
    )
    # Packed: payments/b and billing/a go to one destination set; the rule for everything
    # is carried as the admin wrote it.
    assert stored_rules() == [aws_rule("billing/a", "payments/b"), aws_rule()]
    # Through the same cache: the admin's DescribeRegistry sees the merged configuration.
    after = await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata(ADMIN_KEY))
    assert list(after.replication_configuration.rules) == [rule("billing/a", "payments/b"), rule()]
