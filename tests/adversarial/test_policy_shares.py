"""The registry policy shared by slices, against a tenant that wants more than its part and
against what AWS itself does to a stored policy (issue 21, findings 5 and 6, and the policy
scope read while AWS is unavailable).

- A share counts a tenant's statements as AWS stores them: ECR rewrites a bare account id
  into its root ARN (tests/support/moto_writes.py makes moto do it too), so a tenant counting the
  request could hold more than its share and refuse another's write within its own.
- Another tenant's statements are carried as AWS stores them: a deleted role shows as its
  unique id (`AROA...`) in its owner's statement, which must not lock anyone else out.
- A policy write while the account's policy scope is unknown because AWS is unavailable
  answers UNAVAILABLE with RetryInfo (clients retry it), and the retry goes through once
  AWS is back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from moto.ecr.models import ecr_backends

from service.aws.account_settings import Unreadable
from service.aws.errors import UPSTREAM_RETRY_AFTER_SECONDS
from service.ecr import limits
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.aws_proxy import CountingProxy, Fault, ecr_error
from tests.support.helpers import ACCOUNT, KEY, POLICY, config_dict, metadata, rich_error
from tests.support.moto_writes import (
    MotoWrites,
    behave_like_ecr,
    count_writes,
    store_principals_as_ecr,
)
from tests.support.slices_support import (
    BILLING_KEY,
    BILLING_PARTNER,
    billing_slice,
    leaked,
    quota_failure,
    seed_policy,
    shared_config,
    statement,
    stored_sids,
)

REGION = "us-east-1"
# Two slices of the shared registry's policy and no explicit shares: 10,201 // 2 each.
SHARE = limits.POLICY_STATEMENT_CHARS // 2
ROOT = len("arn:aws:iam::") + len(":root")  # what ECR adds to a bare account id


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> MotoWrites:
    """moto stores principals as ECR does; its write requests are counted."""
    behave_like_ecr(monkeypatch)
    store_principals_as_ecr(monkeypatch)
    return count_writes(monkeypatch)


@pytest.fixture
async def stub(gateway_factory: GatewayFactory, aws: str, writes: MotoWrites) -> AsyncIterator[Any]:
    """payments and billing, each with a slice of the policy (5,100 characters each)."""
    gateway = await gateway_factory(shared_config(aws))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        yield pb_grpc.RegistryConfigServiceStub(channel)


def put(statements: list[Any], **fields: Any) -> pb.PutPolicyStatementsRequest:
    return pb.PutPolicyStatementsRequest(statements_json=json.dumps(statements), **fields)


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def chars(statements: list[Any]) -> int:
    """What statements take in a compact merged policy (one comma each)."""
    return sum(len(json.dumps(s, separators=(",", ":"))) + 1 for s in statements)


def grants_to_accounts(within: int) -> tuple[list[dict[str, Any]], int]:
    """Payments' statements granting bare account ids, as many as fit `within` characters as
    sent; and how many account ids they name."""
    statements: list[dict[str, Any]] = []
    ids = 0
    while True:
        i = len(statements)
        accounts = [f"{100000000000 + 10 * i + j}" for j in range(10)]
        grant = statement(f"PaymentsGrant{i}") | {"Principal": {"AWS": accounts}}
        if chars([*statements, grant]) > within:
            return statements, ids
        statements.append(grant)
        ids += len(accounts)


def billing_fill(within: int) -> list[dict[str, Any]]:
    """Billing's statements (ARN principals, which AWS keeps as they are) up to `within`."""
    statements: list[dict[str, Any]] = []
    while True:
        grant = statement(f"Billing{len(statements)}", account=BILLING_PARTNER)
        if chars([*statements, grant]) > within:
            return statements
        statements.append(grant)


def stored_policy() -> dict[str, Any]:
    text = ecr_backends[ACCOUNT][REGION].registry_policy
    assert text is not None
    found: dict[str, Any] = json.loads(text)
    return found


# --- finding 5: a share counts what AWS stores ---------------------------------------------


async def test_a_tenant_cannot_take_anothers_share_through_awss_rewrite(
    stub: Any, writes: MotoWrites
) -> None:
    grants, ids = grants_to_accounts(SHARE)
    sent = chars(grants)
    # The attack: within its share as sent, past it once AWS has rewritten the account ids.
    assert sent <= SHARE < sent + ROOT * ids
    error = await refused(stub.PutPolicyStatements(put(grants), metadata=metadata(KEY)))
    details = rich_error(error)
    assert (details.code, details.info.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "POLICY_QUOTA_EXCEEDED",
    )
    (violation,) = quota_failure(error).violations
    assert f"share of tenant payments is {SHARE}" in violation.description
    assert f"would take {sent + ROOT * ids} as AWS stores them" in violation.description
    assert f"{sent} as sent" in violation.description
    assert writes.total == 0
    # validate_only says the same, before anything is written.
    error = await refused(
        stub.PutPolicyStatements(put(grants, validate_only=True), metadata=metadata(KEY))
    )
    assert rich_error(error).info.reason == "POLICY_QUOTA_EXCEEDED"

    # What fits as AWS stores it is written, and stored within the share ...
    fitting = grants[: len(grants) // 2]
    assert chars(fitting) + ROOT * 10 * len(fitting) <= SHARE
    await stub.PutPolicyStatements(put(fitting), metadata=metadata(KEY))
    held = [s for s in stored_policy()["Statement"] if s["Sid"].startswith("Payments")]
    assert all(p.startswith("arn:aws:iam::") for s in held for p in s["Principal"]["AWS"])
    assert chars(held) <= SHARE
    # ... so billing fills its own share to the last character it may.
    mine = billing_fill(SHARE)
    assert SHARE - chars(mine) < chars([statement("Billing99", account=BILLING_PARTNER)])
    response = await stub.PutPolicyStatements(put(mine), metadata=metadata(BILLING_KEY))
    assert len(json.loads(response.statements_json)) == len(mine)
    whole = json.dumps(stored_policy(), separators=(",", ":"))
    assert len(whole) <= limits.MAX_POLICY_CHARS


async def test_billing_writes_its_whole_share_whatever_payments_sent_first(
    stub: Any, writes: MotoWrites
) -> None:
    # The finding as reported: payments sends just under its share as sent, then billing
    # writes within its own share. Whatever payments is answered, billing's write holds.
    grants, _ = grants_to_accounts(SHARE - 54)
    try:
        await stub.PutPolicyStatements(put(grants), metadata=metadata(KEY))
    except grpc.aio.AioRpcError as exc:
        assert rich_error(exc).info.reason == "POLICY_QUOTA_EXCEEDED"
    mine = billing_fill(SHARE)
    response = await stub.PutPolicyStatements(put(mine), metadata=metadata(BILLING_KEY))
    assert [s["Sid"] for s in json.loads(response.statements_json)] == [s["Sid"] for s in mine]
    assert [s["Sid"] for s in billing_slice()[1]] == [s["Sid"] for s in mine]


# --- finding 6: others' statements are carried as AWS stores them --------------------------

# What IAM shows in place of a role's ARN once the role is deleted (its unique id).
DELETED_ROLE = "AROAKSCDLFT9R5DQP782U"


def billing_grant_to_a_deleted_role() -> list[dict[str, Any]]:
    """Billing's statements as AWS answers them after one of its roles was deleted."""
    one = statement("BillingCi", account=BILLING_PARTNER) | {
        "Principal": {"AWS": [f"arn:aws:iam::{BILLING_PARTNER}:role/ci", DELETED_ROLE]}
    }
    only = statement("BillingOld", account=BILLING_PARTNER) | {"Principal": {"AWS": DELETED_ROLE}}
    return [one, only]


async def test_a_deleted_role_in_anothers_statement_locks_no_one_out(
    stub: Any, writes: MotoWrites
) -> None:
    theirs = billing_grant_to_a_deleted_role()
    seed_policy(*theirs)  # straight into moto: what AWS answers after the role's deletion
    for request in (
        put([statement("PaymentsPull")], validate_only=True),
        put([statement("PaymentsPull")]),
    ):
        response = await stub.PutPolicyStatements(request, metadata=metadata(KEY))
        assert [s["Sid"] for s in json.loads(response.statements_json)] == ["PaymentsPull"]
        assert DELETED_ROLE not in str(response) and leaked(response) == []
    assert writes.calls["put_registry_policy"] == 1
    # Billing's statements went back to AWS as AWS had them.
    assert billing_slice()[1] == theirs
    assert stored_sids() == ["BillingCi", "BillingOld", "PaymentsPull"]
    # Payments goes on writing (its removal too), still beside them.
    await stub.PutPolicyStatements(
        put([statement("PaymentsPull"), statement("PaymentsPush")]), metadata=metadata(KEY)
    )
    await stub.PutPolicyStatements(put([]), metadata=metadata(KEY))
    assert billing_slice()[1] == theirs
    assert stored_sids() == ["BillingCi", "BillingOld"]


async def test_the_owner_of_a_deleted_role_is_told_to_replace_it(
    stub: Any, writes: MotoWrites
) -> None:
    theirs = billing_grant_to_a_deleted_role()
    seed_policy(*theirs)
    # Its own statements are judged: the unique id is no principal it can write.
    error = await refused(stub.PutPolicyStatements(put(theirs), metadata=metadata(BILLING_KEY)))
    details = rich_error(error)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.bad_request is not None
    violations = {v.field: v.description for v in details.bad_request.field_violations}
    assert set(violations) == {
        "statements_json[0].Principal.AWS[1]",
        "statements_json[1].Principal.AWS",
    }
    assert all("deleted user or role" in d for d in violations.values())
    assert writes.total == 0
    # Without it, the owner's write goes through.
    repaired = [theirs[0] | {"Principal": {"AWS": f"arn:aws:iam::{BILLING_PARTNER}:role/ci"}}]
    await stub.PutPolicyStatements(put(repaired), metadata=metadata(BILLING_KEY))
    assert billing_slice()[1] == repaired


# --- the policy scope while AWS is unavailable ---------------------------------------------

SCOPE_READS = frozenset({"ecr:GetAccountSetting"})
THROTTLED = Fault(SCOPE_READS, status=400, body=ecr_error("ThrottlingException"))


def policy_writes() -> list[tuple[str, Any]]:
    return [
        ("PutRegistryPolicy", pb.PutRegistryPolicyRequest(policy_text=POLICY)),
        ("PutPolicyStatements", put([statement("PaymentsPull")])),
    ]


async def answer(stub: Any, rpc: str, request: Any) -> grpc.aio.AioRpcError | None:
    try:
        await getattr(stub, rpc)(request, metadata=metadata(KEY), timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


async def retried_until_written(stub: Any, rpc: str, request: Any) -> list[str]:
    """Retry as a client retries UNAVAILABLE, until written (generous deadline); the
    reasons of the refusals on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while (error := await answer(stub, rpc, request)) is not None:
        details = rich_error(error)
        assert details.code == grpc.StatusCode.UNAVAILABLE, details.message
        seen.append(details.info.reason)
        assert time.monotonic() < deadline, f"{rpc} still refused: {details.message}"
        await asyncio.sleep(0.2)
    return seen


def assert_retry_later(error: grpc.aio.AioRpcError | None) -> None:
    assert error is not None
    details = rich_error(error)
    assert (details.code, details.info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "POLICY_SCOPE_UNKNOWN",
    ), details.message
    assert details.retry_info is not None
    assert details.retry_info.retry_delay.ToNanoseconds() > 0


async def test_a_policy_write_while_aws_throttles_the_scope_read_is_retried(
    gateway_factory: GatewayFactory, proxy: CountingProxy, writes: MotoWrites
) -> None:
    proxy.fault = THROTTLED
    gateway = await gateway_factory(config_dict(proxy.url))
    assert isinstance(gateway.upstream.policy_scopes.read(ACCOUNT, REGION), Unreadable)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        for rpc, request in policy_writes():
            assert_retry_later(await answer(stub, rpc, request))
        # Many writes while AWS still throttles: the setting is read again, not once a write.
        reads = proxy.count("ecr:GetAccountSetting")
        started = time.monotonic()
        burst = await asyncio.gather(*(answer(stub, *policy_writes()[0]) for _ in range(30)))
        for error in burst:
            assert_retry_later(error)
        elapsed = time.monotonic() - started
        # At most one read under way, one a second (the RetryInfo's delay).
        read_again = proxy.count("ecr:GetAccountSetting") - reads
        assert read_again <= 2 + elapsed / UPSTREAM_RETRY_AFTER_SECONDS
        assert writes.total == 0
        # AWS answers again: the clients' retries go through.
        proxy.fault = None
        for rpc, request in policy_writes():
            assert set(await retried_until_written(stub, rpc, request)) <= {"POLICY_SCOPE_UNKNOWN"}
    assert gateway.upstream.policy_scopes.read(ACCOUNT, REGION) == "V2"


async def test_a_policy_write_while_aws_is_unreachable_is_retried(
    gateway_factory: GatewayFactory, proxy: CountingProxy, writes: MotoWrites
) -> None:
    gateway = await gateway_factory(config_dict(proxy.url))
    proxy.stop()  # AWS unreachable, then the setting is read again (as on reload)
    await gateway.upstream.refresh_policy_scopes(gateway.config)
    assert isinstance(gateway.upstream.policy_scopes.read(ACCOUNT, REGION), Unreadable)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        for rpc, request in policy_writes():
            assert_retry_later(await answer(stub, rpc, request))
        proxy.start()  # AWS is back, on the same port
        for rpc, request in policy_writes():
            await retried_until_written(stub, rpc, request)
    assert writes.calls["put_registry_policy"] == 2
