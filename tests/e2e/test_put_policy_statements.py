"""PutPolicyStatements: a tenant replaces its own statements of a shared registry policy."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.helpers import KEY, metadata, rich_error
from tests.support.moto_writes import MotoWrites, behave_like_ecr, count_writes
from tests.support.slices_support import (
    BILLING_KEY,
    seed_policy,
    shared_config,
    statement,
    stored_sids,
)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> MotoWrites:
    """moto takes every ECR action in a policy; its write requests are counted."""
    behave_like_ecr(monkeypatch)
    return count_writes(monkeypatch)


@pytest.fixture
async def stub(
    gateway_factory: GatewayFactory, aws: str, writes: MotoWrites
) -> AsyncIterator[pb_grpc.RegistryConfigServiceAsyncStub]:
    """A stub on a gateway where payments and billing share one registry."""
    gateway = await gateway_factory(shared_config(aws))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        yield pb_grpc.RegistryConfigServiceStub(channel)


def put(statements: list[Any], **fields: Any) -> pb.PutPolicyStatementsRequest:
    return pb.PutPolicyStatementsRequest(statements_json=json.dumps(statements), **fields)


async def test_own_statements_are_replaced_in_place_and_others_kept(
    stub: Any, writes: MotoWrites
) -> None:
    seed_policy(statement("BillingPull"), statement("PaymentsOld"), statement("Shared"))
    response = await stub.PutPolicyStatements(
        put([statement("PaymentsA"), statement("PaymentsB")]), metadata=metadata(KEY)
    )
    assert stored_sids() == ["BillingPull", "PaymentsA", "PaymentsB", "Shared"]
    assert writes.calls["put_registry_policy"] == 1
    assert [s["Sid"] for s in json.loads(response.statements_json)] == ["PaymentsA", "PaymentsB"]
    got = await stub.GetPolicyStatements(pb.GetPolicyStatementsRequest(), metadata=metadata(KEY))
    assert got.etag == response.etag


async def test_first_statement_creates_the_policy_and_the_last_deletes_it(
    stub: Any, writes: MotoWrites
) -> None:
    await stub.PutPolicyStatements(put([statement("BillingPull")]), metadata=metadata(BILLING_KEY))
    assert stored_sids() == ["BillingPull"]
    await stub.PutPolicyStatements(put([]), metadata=metadata(BILLING_KEY))
    assert stored_sids() is None
    assert writes.calls["delete_registry_policy"] == 1


@pytest.mark.parametrize(
    ("statements", "reason"),
    [
        ([statement("BillingPull")], "STATEMENT_NOT_OWNED"),  # another tenant's Sid
        ([statement("Shared")], "STATEMENT_NOT_OWNED"),  # nobody's Sid
        # The caller's guardrails apply to its own statements: no wildcard principal.
        ([statement("PaymentsA", account="*")], "WILDCARD_PRINCIPAL"),
    ],
    ids=["other-tenant", "unowned", "guardrail"],
)
async def test_statements_outside_the_slice_or_guardrails_are_denied(
    stub: Any,
    writes: MotoWrites,
    aws_state: Callable[[], dict[str, Any]],
    statements: list[Any],
    reason: str,
) -> None:
    seed_policy(statement("BillingPull"), statement("PaymentsOld"))
    before = aws_state()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutPolicyStatements(put(statements), metadata=metadata(KEY))
    error = rich_error(caught.value)
    assert (error.code, error.info.reason) == (grpc.StatusCode.PERMISSION_DENIED, reason)
    assert error.info.metadata["rpc"] == "PutPolicyStatements"
    assert aws_state() == before
    assert writes.total == 0


async def test_statements_without_sid_are_invalid(stub: Any, writes: MotoWrites) -> None:
    anonymous = statement("PaymentsA")
    del anonymous["Sid"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutPolicyStatements(put([anonymous]), metadata=metadata(KEY))
    error = rich_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.bad_request is not None
    assert [v.field for v in error.bad_request.field_violations] == ["statements_json[0].Sid"]
    assert writes.total == 0


async def test_validate_only_and_the_slice_etag(stub: Any, writes: MotoWrites) -> None:
    seed_policy(statement("BillingPull"), statement("PaymentsOld"))
    current = await stub.GetPolicyStatements(
        pb.GetPolicyStatementsRequest(), metadata=metadata(KEY)
    )
    assert [s["Sid"] for s in json.loads(current.statements_json)] == ["PaymentsOld"]
    plan = await stub.PutPolicyStatements(
        put([statement("PaymentsNew")], validate_only=True, etag=current.etag),
        metadata=metadata(KEY),
    )
    assert sorted((c.action, c.path) for c in plan.changes) == [
        ("add", "statements_json[Sid=PaymentsNew]"),
        ("remove", "statements_json[Sid=PaymentsOld]"),
    ]
    assert plan.etag == current.etag
    assert writes.total == 0
    # Billing's change leaves payments' etag valid; payments' own write moves it.
    await stub.PutPolicyStatements(put([]), metadata=metadata(BILLING_KEY))
    await stub.PutPolicyStatements(
        put([statement("PaymentsNew")], etag=current.etag), metadata=metadata(KEY)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutPolicyStatements(
            put([statement("PaymentsOther")], etag=current.etag), metadata=metadata(KEY)
        )
    assert rich_error(caught.value).info.reason == "ETAG_MISMATCH"
    assert stored_sids() == ["PaymentsNew"]
