"""Group commit against a hostile neighbour (issue 22): payments' slice writes are applied in
the same batches as billing's (one fresh read, one put, one read-back), and payments tries to
use that to make billing's valid write fail, to hold it back, or to read billing's part. A
real gateway on Redis, moto behind a counting proxy that answers each put late, so that the
writes queue and go together."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from service.auth.targets import Target
from service.aws.memory import MemoryEcr
from service.errors import FailedPrecondition, Unavailable
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from service.registry.model import slices
from tests.conftest import GatewayFactory
from tests.registry.conftest import ACCOUNT, REGION
from tests.registry.test_group_commit import (
    WHO,
    build,
    context,
    holding_the_lock,
    intent,
    mine,
    queued,
)
from tests.support.aws_proxy import CountingProxy, Fault
from tests.support.helpers import KEY, metadata, rich_error
from tests.support.moto_writes import behave_like_ecr
from tests.support.slices_support import (
    BILLING_KEY,
    PARTNER,
    billing_rules,
    billing_slice,
    filters_in,
    isolation_config,
    leaked,
    rule,
    statement,
    stored_rules,
)

PUT = "ecr:PutReplicationConfiguration"


@pytest.fixture
async def stub(
    gateway_factory: GatewayFactory,
    proxy: CountingProxy,
    redis_url: str,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Any]:
    behave_like_ecr(monkeypatch)
    proxy.fault = Fault(frozenset({PUT, "ecr:PutRegistryPolicy"}), late_seconds=0.3)
    raw = isolation_config(proxy.url)
    raw["cache"] = {"backend": "redis", "redis_url": redis_url, "key_prefix": redis_prefix}
    gateway = await gateway_factory(raw)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        yield pb_grpc.RegistryConfigServiceStub(channel)


async def answer(call: Any) -> Any:
    """The response, or the AioRpcError."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        return exc


def put_rules(stub: Any, key: str, rules: list[pb.ReplicationRule], etag: str = "") -> Any:
    return answer(
        stub.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=rules, etag=etag),
            metadata=metadata(key),
            timeout=20,
        )
    )


async def test_payments_bad_writes_in_billings_batches_never_fail_it_nor_show_it(
    stub: Any, proxy: CountingProxy
) -> None:
    """Payments sends, alongside billing's writes, every change that fails under the lock or
    before it: a stale etag, a filter it does not own, rules past its share, a destination it
    may not use; and valid ones. Billing's writes all hold; payments' answers show nothing of
    billing's part."""
    hostile = [
        put_rules(stub, KEY, [rule("payments/a")], etag="sha256:" + "0" * 64),
        put_rules(stub, KEY, [rule("billing/ledger")]),  # billing's filter
        put_rules(stub, KEY, [rule(*(f"payments/{n:04d}" for n in range(100)))] * 11),
        put_rules(stub, KEY, [rule("payments/b", to=PARTNER), rule("payments/b")]),
        put_rules(stub, KEY, [rule("payments/ok")]),
    ]
    first = asyncio.create_task(put_rules(stub, BILLING_KEY, billing_rules()))
    await asyncio.sleep(0.1)
    mixed = await asyncio.gather(
        *hostile, *(put_rules(stub, BILLING_KEY, billing_rules()) for _ in range(3))
    )
    billing = [await first, *mixed[len(hostile) :]]
    assert all(isinstance(a, pb.PutReplicationRulesResponse) for a in billing), billing
    for got in billing:
        assert filters_in(got.rules) == filters_in(billing_rules())
    held = {f for f in filters_in(stored_rules()) if f.startswith(("billing/", "invoices/"))}
    assert held == filters_in(billing_rules())
    for i, got in enumerate(mixed[: len(hostile)]):
        if i != 1:  # (the refusal of billing's filter quotes payments' own request)
            assert leaked(got) == []  # neither its answer nor its error shows billing's part
    assert isinstance(mixed[1], grpc.aio.AioRpcError)
    assert mixed[1].code() == grpc.StatusCode.PERMISSION_DENIED
    assert isinstance(mixed[0], grpc.aio.AioRpcError)
    assert rich_error(mixed[0]).info.reason == "ETAG_MISMATCH"
    # Batched: fewer puts than the writes that reached the lock.
    assert proxy.count(PUT) < 1 + 3 + 2


async def test_payments_flooding_the_queue_does_not_hold_billings_write_back(
    stub: Any,
) -> None:
    """A batch takes one write per tenant: payments' queue of writes, however long, takes one
    place per batch, and billing's write goes in the next batch after it arrives."""
    done: dict[str, float] = {}

    async def timed(name: str, call: Any) -> Any:
        got = await call
        done[name] = time.monotonic()
        return got

    flood = [
        asyncio.create_task(timed(f"payments{i}", put_rules(stub, KEY, [rule(f"payments/v{i}")])))
        for i in range(4)
    ]
    await asyncio.sleep(0.1)
    got = await timed("billing", put_rules(stub, BILLING_KEY, billing_rules()))
    assert isinstance(got, pb.PutReplicationRulesResponse)
    await asyncio.gather(*flood)
    # Payments' writes run one per batch; billing's went with one of the first two.
    later = sorted(t for name, t in done.items() if name.startswith("payments"))
    assert done["billing"] < later[-1]
    assert sum(1 for t in later if t > done["billing"]) >= 2


async def test_statements_written_together_keep_each_tenant_to_its_own(stub: Any) -> None:
    """Payments' and billing's statements applied in one batch: each answer is its caller's
    own statements; payments' over-share write fails alone."""
    mine = json.dumps([statement("PaymentsPull")])
    hostile = json.dumps([statement(f"PaymentsBig{i}") for i in range(60)])
    billing = json.dumps([statement("BillingPull", account="444455556666")])

    def put(key: str, text: str) -> Any:
        return answer(
            stub.PutPolicyStatements(
                pb.PutPolicyStatementsRequest(statements_json=text),
                metadata=metadata(key),
                timeout=20,
            )
        )

    first = asyncio.create_task(put(KEY, mine))
    await asyncio.sleep(0.1)
    big, theirs = await asyncio.gather(put(KEY, hostile), put(BILLING_KEY, billing))
    assert isinstance(await first, pb.PutPolicyStatementsResponse)
    assert isinstance(big, grpc.aio.AioRpcError) and leaked(big) == []
    assert isinstance(theirs, pb.PutPolicyStatementsResponse)
    assert [s["Sid"] for s in json.loads(theirs.statements_json)] == ["BillingPull"]
    assert [s["Sid"] for s in billing_slice()[1]] == ["BillingPull"]


async def test_a_stranger_queues_nothing(stub: Any, proxy: CountingProxy) -> None:
    """Without credentials a write is refused before it reaches the queue: nothing is read
    or written for it."""
    before = proxy.count("ecr:DescribeRegistry")
    got = await answer(
        stub.PutReplicationRules(pb.PutReplicationRulesRequest(rules=[rule("payments/x")]))
    )
    assert isinstance(got, grpc.aio.AioRpcError)
    assert got.code() == grpc.StatusCode.UNAUTHENTICATED
    assert proxy.count("ecr:DescribeRegistry") == before and proxy.count(PUT) == 0


# --- a neighbour's credentials or AWS call slots (in-memory ECR, real locks, cache, history:
# the helpers of tests/registry/test_group_commit.py) ---------------------------------------

BROKEN_ROLE = "arn:aws:iam::222222222222:role/team01-broken"


class BrokenRole(MemoryEcr):
    """ECR reached with team01's role fails (its role cannot be assumed, its external id is
    unset: what service/aws/upstream.py answers EXTERNAL_ID_MISSING / AccessDenied for)."""

    async def describe_registry(
        self, target: Target, *, shared: bool = False
    ) -> pb.DescribeRegistryResponse:
        if target.registry.role_arn == BROKEN_ROLE:
            raise FailedPrecondition(
                "env TEAM01_EXTERNAL_ID is not set", reason="EXTERNAL_ID_MISSING"
            )
        return await super().describe_registry(target, shared=shared)


def with_role(who: Target, role_arn: str) -> Target:
    return dataclasses.replace(who, registry=who.registry.model_copy(update={"role_arn": role_arn}))


async def test_review_one_tenants_broken_credentials_fail_anothers_queued_write() -> None:
    """team01's credentials are broken; team02's are fine (another affinity: never in the
    same batch). Without batching each write reads with its own credentials, so only team01
    fails. With batching the leader's fresh read used the first queued writer's target, and a
    failure before `take()` failed EVERY write queued on the registry, team02's included."""
    domain = build(ecr=BrokenRole())
    gate, first = await holding_the_lock(domain)
    broken = with_role(WHO["team01"], BROKEN_ROLE)
    bad = asyncio.create_task(
        domain.slices.put_rules(broken, intent("team01"), "", False, context=context("team01"))
    )
    await queued(domain, 1)
    good = asyncio.create_task(
        domain.slices.put_rules(
            WHO["team02"], intent("team02"), "", False, context=context("team02")
        )
    )
    await queued(domain, 2)
    gate.set()
    await first
    bad_answer, good_answer = await asyncio.gather(bad, good, return_exceptions=True)
    assert isinstance(bad_answer, FailedPrecondition)  # its own fault: fine
    # team02's valid write must not fail because of team01's credentials.
    assert not isinstance(good_answer, BaseException), good_answer
    assert mine(domain, "team02") == slices.Ownership.of(WHO["team02"]).rules_in(
        pb.ReplicationConfiguration(rules=intent("team02"))
    )


class Team01SlotsFull(MemoryEcr):
    """Every AWS call made on behalf of team01 finds its share of the AWS call slots full
    (what service/aws/resilience.py answers TENANT_BULKHEAD_FULL): team01 keeps them busy."""

    def _full(self, target: Target) -> None:
        if target.tenant == "team01":
            raise Unavailable(
                f"tenant {target.tenant} has 2 AWS calls in flight for {ACCOUNT}:{REGION}",
                reason="TENANT_BULKHEAD_FULL",
                metadata={"tenant": target.tenant},
            )

    async def describe_registry(
        self, target: Target, *, shared: bool = False
    ) -> pb.DescribeRegistryResponse:
        if not shared:
            self._full(target)
        return await super().describe_registry(target, shared=shared)

    async def put_replication_configuration(
        self,
        target: Target,
        configuration: pb.ReplicationConfiguration,
        *,
        finish_once_sent: bool = False,
    ) -> pb.ReplicationConfiguration:
        self._full(target)
        return await super().put_replication_configuration(
            target, configuration, finish_once_sent=finish_once_sent
        )


async def test_a_tenant_keeping_its_aws_call_slots_full_fails_no_other_write_of_its_batch() -> None:
    """team01 (same credentials as team02: the same batch) keeps its own AWS call slots full
    and queues first. The batch's fresh read, put and read-back are made on behalf of no
    one tenant: team02's write is applied, and no answer names team01."""
    domain = build(ecr=Team01SlotsFull())
    gate, first = await holding_the_lock(domain)
    writes = {
        name: asyncio.create_task(
            domain.slices.put_rules(WHO[name], intent(name), "", False, context=context(name))
        )
        for name in ("team01", "team02", "team03")
    }
    await queued(domain, 3)
    gate.set()
    await first
    answers = dict(
        zip(writes, await asyncio.gather(*writes.values(), return_exceptions=True), strict=True)
    )
    for name in ("team02", "team03"):
        assert not isinstance(answers[name], BaseException), answers[name]
        assert mine(domain, name) == intent(name)
    assert domain.puts() == 2  # team00 alone, then the three together
