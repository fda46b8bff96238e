"""GetPolicyStatements: a tenant reads only its own statements of a shared registry policy."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.helpers import KEY, metadata
from tests.support.moto_writes import behave_like_ecr
from tests.support.slices_support import BILLING_KEY, seed_policy, shared_config, statement


@pytest.fixture
async def stub(
    gateway_factory: GatewayFactory, aws: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[pb_grpc.RegistryConfigServiceAsyncStub]:
    """A stub on a gateway where payments and billing share one registry."""
    behave_like_ecr(monkeypatch)
    gateway = await gateway_factory(shared_config(aws))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        yield pb_grpc.RegistryConfigServiceStub(channel)


async def sids(stub: Any, key: str) -> tuple[list[str], str]:
    response = await stub.GetPolicyStatements(
        pb.GetPolicyStatementsRequest(), metadata=(*metadata(key), ("cache-control", "no-cache"))
    )
    return [s["Sid"] for s in json.loads(response.statements_json)], response.etag


async def test_each_tenant_reads_only_its_statements(stub: Any) -> None:
    seed_policy(
        statement("PaymentsPull"),
        statement("BillingPull"),
        statement("ReplicateFromPartner"),
        statement("PaymentsPush"),
    )
    payments, payments_etag = await sids(stub, KEY)
    billing, billing_etag = await sids(stub, BILLING_KEY)
    assert payments == ["PaymentsPull", "PaymentsPush"]
    assert billing == ["BillingPull"]
    assert payments_etag != billing_etag


async def test_no_policy_is_an_empty_slice(stub: Any) -> None:
    response = await stub.GetPolicyStatements(
        pb.GetPolicyStatementsRequest(), metadata=metadata(KEY)
    )
    assert json.loads(response.statements_json) == []
    assert response.etag
