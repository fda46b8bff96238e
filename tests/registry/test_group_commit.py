"""Slice writes queued on a registry's lock, applied together (service/registry/writes/
group_commit.py, `RegistryOperations._commit`), on the in-memory ECR with real in-process
locks, a real ReadCache and a real (memory) history: one put for many writes, each change
judged on its own, each caller answered and recorded on its own; the queue alone too."""

from __future__ import annotations

import asyncio
import contextvars
import json
import math
from dataclasses import dataclass
from typing import Any, cast

import pytest

from service import call as call_mod
from service import config as config_mod
from service.auth.content import ContentRules
from service.auth.targets import Target
from service.aws.errors import from_aws
from service.aws.memory import Call, MemoryEcr
from service.config import PolicyGuardrails
from service.ecr import convert, limits
from service.errors import (
    EtagMismatch,
    GatewayError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from service.gen.v1 import registry_pb2 as pb
from service.registry.model import slices
from service.registry.rpcs.slice_operations import SliceOperations
from service.registry.rpcs.validation import RequestValidator
from service.registry.writes import resources
from service.registry.writes.context import WriteContext
from service.registry.writes.drift import DriftDetector
from service.registry.writes.group_commit import GroupCommit, Takes
from service.registry.writes.operations import RegistryOperations, etag_read_before
from service.state.cache import CacheKey, MemoryStore, ReadCache
from service.state.history import MemoryHistory
from service.state.locks import RegistryLocks
from tests.registry.conftest import ACCOUNT, CACHE, REGION, Clock, target

REPLICATION = CacheKey(ACCOUNT, REGION, "registry")
POLICY = CacheKey(ACCOUNT, REGION, "policy")
TENANTS = [f"team{i:02d}" for i in range(12)]
CONFIG = config_mod.from_mapping(
    {
        "tenants": [
            {
                "name": name,
                "registries": [
                    {
                        "registry_id": ACCOUNT,
                        "regions": [REGION],
                        "owned_repository_prefixes": [f"{name}/"],
                        "owned_statement_sid_prefix": name.capitalize(),
                    }
                ],
            }
            for name in TENANTS
        ]
    },
    environ={},
)
WHO = {name: target(name, prefixes=(f"{name}/",), sid_prefix=name.capitalize()) for name in TENANTS}


def rule(*filters: str, region: str = "eu-west-1") -> pb.ReplicationRule:
    return pb.ReplicationRule(
        destinations=[pb.ReplicationDestination(region=region, registry_id=ACCOUNT)],
        repository_filters=[
            pb.RepositoryFilter(filter=f, filter_type="PREFIX_MATCH") for f in filters
        ],
    )


def intent(name: str, region: str = "eu-west-1") -> list[pb.ReplicationRule]:
    return [rule(f"{name}/api", f"{name}/web", region=region)]


@dataclass
class Seen:
    events: list[tuple[str, dict[str, Any]]]

    def event(self, event: str, /, **fields: object) -> None:
        self.events.append((event, dict(fields)))

    def count(self, *_: str) -> None:
        return None


@dataclass
class Domain:
    ecr: MemoryEcr
    ops: RegistryOperations
    slices: SliceOperations
    history: MemoryHistory
    seen: Seen

    def puts(self) -> int:
        return sum(1 for c in self.ecr.calls if c.operation == "put_replication_configuration")

    def stored(self) -> pb.ReplicationConfiguration:
        return self.ecr.replication(ACCOUNT, REGION)


def build(
    *, max_batch: int = 50, max_writes_per_tenant: int = 4, ecr: MemoryEcr | None = None
) -> Domain:
    ecr, clock, seen = ecr or MemoryEcr(), Clock(), Seen([])
    history, locks = MemoryHistory(50, 1 << 20), RegistryLocks()
    cache = ReadCache(CACHE, MemoryStore(100), clock=clock, jitter=lambda: 1.0)
    drift = DriftDetector(history, seen, seen.count, clock, config=lambda: CONFIG, locks=locks)
    ops = RegistryOperations(
        ecr,
        locks,
        cache,
        max_writes_per_tenant=max_writes_per_tenant,
        max_writes_per_batch=max_batch,
        drift=drift,
    )
    return Domain(ecr, ops, SliceOperations(ops, ContentRules(), RequestValidator()), history, seen)


def context(name: str, *, deadline: float = math.inf) -> WriteContext:
    return WriteContext(identity=f"api_key:{name}", rpc="PutReplicationRules", deadline=deadline)


async def queued(domain: Domain, count: int) -> None:
    """Until `count` writes wait on the registry's replication queue."""
    batches = domain.ops._batches  # the queue itself, to know the writes are in it
    assert batches is not None
    for _ in range(500):
        if batches.waiting(REPLICATION) >= count:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{batches.waiting(REPLICATION)} writes queued, expected {count}")


async def holding_the_lock(domain: Domain) -> tuple[asyncio.Event, asyncio.Task[Any]]:
    """A first write (team00's) taken and stopped at its put, so the next ones queue."""
    gate = asyncio.Event()
    domain.ecr.hold_writes = gate
    first = asyncio.create_task(
        domain.slices.put_rules(
            WHO["team00"], intent("team00"), "", False, context=context("team00")
        )
    )
    for _ in range(500):
        if domain.puts():
            break
        await asyncio.sleep(0.001)
    assert domain.puts() == 1
    return gate, first


def mine(domain: Domain, name: str) -> list[pb.ReplicationRule]:
    return slices.Ownership.of(WHO[name]).rules_in(domain.stored())


async def test_writes_waiting_on_the_lock_go_in_one_put_and_each_reads_back_its_intent() -> None:
    domain = build()
    gate, first = await holding_the_lock(domain)
    names = TENANTS[1:]
    writes = [
        asyncio.create_task(
            domain.slices.put_rules(WHO[n], intent(n), "", False, context=context(n))
        )
        for n in names
    ]
    await queued(domain, len(names))
    gate.set()
    await first
    results = await asyncio.gather(*writes)
    # The first write alone, then every waiting one in one put: 2 puts for 12 writes.
    assert domain.puts() == 2
    for name, result in zip(names, results, strict=True):
        assert (
            list(result.response.rules)
            == mine(domain, name)
            == slices.Ownership.of(WHO[name]).rules_in(
                pb.ReplicationConfiguration(rules=intent(name))
            )
        )
        assert result.response.etag == slices.rules_etag(mine(domain, name))
    # Packed: one rule holds every tenant's filters (one destination set).
    assert len(domain.stored().rules) == 1
    # One version per writer, in arrival order, each its own author; the head is AWS's.
    versions = await domain.history.page(REPLICATION, before_seq=None, limit=50)
    gateway = [v for v in reversed(versions) if v.origin == "gateway"]
    assert [v.tenant for v in gateway] == TENANTS
    assert [v.identity for v in gateway] == [f"api_key:{n}" for n in TENANTS]
    head = versions[0]
    assert head.etag == results[-1].etag_after
    # The chain: each writer's etag_before is the version before it.
    assert [r.etag_before for r in results] == [v.etag for v in gateway[:-1]]
    assert domain.seen.events == []  # nothing taken for drift


async def test_a_tenants_second_write_waits_for_the_next_batch_and_sees_its_first() -> None:
    domain = build()
    gate, first = await holding_the_lock(domain)
    one = asyncio.create_task(domain.slices.put_rules(WHO["team01"], intent("team01"), "", False))
    other = asyncio.create_task(domain.slices.put_rules(WHO["team02"], intent("team02"), "", False))
    await queued(domain, 2)
    # team01's second write, with the etag its first will leave: judged after it.
    expected = slices.rules_etag(
        slices.Ownership.of(WHO["team01"]).rules_in(
            pb.ReplicationConfiguration(rules=intent("team01"))
        )
    )
    second = asyncio.create_task(
        domain.slices.put_rules(WHO["team01"], intent("team01", "us-west-2"), expected, False)
    )
    await queued(domain, 3)
    gate.set()
    await asyncio.gather(first, one, other, second)
    assert domain.puts() == 3  # team00 alone; team01 + team02; team01's second
    assert mine(domain, "team01") == intent("team01", "us-west-2")


async def test_one_bad_change_fails_only_its_caller() -> None:
    domain = build()
    gate, first = await holding_the_lock(domain)
    good = [
        asyncio.create_task(domain.slices.put_rules(WHO[n], intent(n), "", False))
        for n in ("team01", "team02")
    ]
    stale = asyncio.create_task(
        domain.slices.put_rules(WHO["team03"], intent("team03"), "sha256:stale", False)
    )
    over_share = asyncio.create_task(
        domain.slices.put_rules(
            target("team04", prefixes=("team04/",), share=_one_rule()),
            [rule("team04/a"), rule("team04/b", region="us-west-2")],
            "",
            False,
        )
    )
    await queued(domain, 3)  # the over-share write is refused before it queues
    gate.set()
    await first
    await asyncio.gather(*good)
    with pytest.raises(EtagMismatch) as raised:
        await stale
    # Its own etag read: of the document as the writers before it left it.
    assert etag_read_before(raised.value) is not None
    with pytest.raises(ResourceExhausted):
        await over_share
    assert mine(domain, "team03") == [] and mine(domain, "team04") == []
    assert mine(domain, "team01") == intent("team01") and mine(domain, "team02") == intent("team02")
    assert domain.puts() == 2


def _one_rule() -> limits.Share:
    return limits.Share(1, 1, 100, 10)


async def test_a_caller_leaving_before_its_change_is_taken_writes_nothing() -> None:
    domain = build()
    gate, first = await holding_the_lock(domain)
    staying = asyncio.create_task(
        domain.slices.put_rules(WHO["team01"], intent("team01"), "", False)
    )
    leaving = asyncio.create_task(
        domain.slices.put_rules(WHO["team02"], intent("team02"), "", False)
    )
    await queued(domain, 2)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert domain.ops._batches is not None and domain.ops._batches.waiting(REPLICATION) == 1
    gate.set()
    await asyncio.gather(first, staying)
    assert mine(domain, "team02") == [] and mine(domain, "team01") == intent("team01")


async def test_a_caller_whose_deadline_leaves_no_time_for_the_lock_answers_lock_busy() -> None:
    domain = build()
    gate, first = await holding_the_lock(domain)
    deadline = asyncio.get_running_loop().time() + 0.3
    with pytest.raises(Unavailable) as raised:
        await domain.slices.put_rules(
            WHO["team01"], intent("team01"), "", False, context=context("team01", deadline=deadline)
        )
    assert raised.value.reason == "WRITE_LOCK_BUSY"
    gate.set()
    await first
    assert mine(domain, "team01") == [] and domain.puts() == 1


async def test_a_caller_leaving_once_taken_still_has_its_write_applied() -> None:
    domain = build()
    gate, first = await holding_the_lock(domain)
    writes = [
        asyncio.create_task(domain.slices.put_rules(WHO[n], intent(n), "", False))
        for n in ("team01", "team02")
    ]
    await queued(domain, 2)
    batch_put = asyncio.Event()
    domain.ecr.hold_writes = batch_put  # the batch's put waits too
    gate.set()
    await first
    for _ in range(500):  # until the batch's put is sent
        if domain.puts() == 2:
            break
        await asyncio.sleep(0.001)
    writes[0].cancel()
    await asyncio.sleep(0.01)
    assert not writes[0].done()  # its caller waits for the write's outcome, then leaves
    batch_put.set()
    with pytest.raises(asyncio.CancelledError) as raised:
        await writes[0]
    # The abandoned write is audited with the etag it read.
    assert etag_read_before(raised.value) is not None
    await writes[1]
    assert mine(domain, "team01") == intent("team01")


async def test_a_put_failing_fails_every_caller_of_the_batch_each_with_its_own_error() -> None:
    domain = build()
    gate, first = await holding_the_lock(domain)
    names = ("team01", "team02", "team03")
    writes = [
        asyncio.create_task(domain.slices.put_rules(WHO[n], intent(n), "", False)) for n in names
    ]
    await queued(domain, 3)
    domain.ecr.fail_next["put_replication_configuration"] = Unavailable(
        "AWS ECR is unavailable", reason="UPSTREAM_UNAVAILABLE"
    )
    gate.set()
    await first
    errors = await asyncio.gather(*writes, return_exceptions=True)
    assert all(isinstance(e, Unavailable) and e.reason == "UPSTREAM_UNAVAILABLE" for e in errors)
    assert len({id(e) for e in errors}) == 3  # one error each
    befores = [etag_read_before(e) for e in errors if isinstance(e, BaseException)]
    assert all(befores) and len(set(befores)) == 3  # each the etag its own change saw
    assert all(mine(domain, n) == [] for n in names)
    # Nothing recorded of them; the cache forgot the key (the outcome was unknown).
    versions = await domain.history.page(REPLICATION, before_seq=None, limit=50)
    assert {v.tenant for v in versions if v.origin == "gateway"} == {"team00"}


class Refusing(MemoryEcr):
    """ECR refusing (400) any configuration holding a filter the gateway's checks pass."""

    async def put_replication_configuration(
        self,
        target: Target,
        configuration: pb.ReplicationConfiguration,
        *,
        finish_once_sent: bool = False,
    ) -> pb.ReplicationConfiguration:
        if any(
            f.filter.endswith("/poison") for r in configuration.rules for f in r.repository_filters
        ):
            self.calls.append(Call("put_replication_configuration", ACCOUNT, REGION))
            raise from_aws(
                "InvalidParameterException", "refused", "req-1", "put_replication_configuration"
            )
        return await super().put_replication_configuration(
            target, configuration, finish_once_sent=finish_once_sent
        )


async def test_aws_refusing_a_batch_fails_only_the_caller_whose_document_it_refuses() -> None:
    domain = build(ecr=Refusing())
    gate, first = await holding_the_lock(domain)
    names = ("team01", "team02", "team03")
    good = [
        asyncio.create_task(domain.slices.put_rules(WHO[n], intent(n), "", False)) for n in names
    ]
    poison = asyncio.create_task(
        domain.slices.put_rules(WHO["team04"], [rule("team04/poison")], "", False)
    )
    await queued(domain, 4)
    gate.set()
    await asyncio.gather(first, *good)
    with pytest.raises(InvalidArgument) as raised:
        await poison
    assert raised.value.reason == "AWS_INVALID_PARAMETER"
    assert "team01" not in raised.value.message  # the merged document's text withheld
    assert all(mine(domain, n) == intent(n) for n in names) and mine(domain, "team04") == []
    # The first alone, the refused batch, then in halves: [1, 2] taken, [3, 4] refused,
    # then [3] taken and [4] refused.
    assert domain.puts() == 1 + 1 + 4


async def test_one_change_aws_refuses_costs_log_n_puts_not_n() -> None:
    """A tenant whose change AWS alone refuses must not make every batch serial: the
    refused batch is sent again in halves, so 11 writes cost 2*ceil(log2 11) more puts, not
    11 (one at a time)."""
    domain = build(ecr=Refusing())
    gate, first = await holding_the_lock(domain)
    names = TENANTS[1:]
    writes = {
        n: asyncio.create_task(
            domain.slices.put_rules(
                WHO[n], [rule(f"{n}/poison")] if n == "team05" else intent(n), "", False
            )
        )
        for n in names
    }
    await queued(domain, len(names))
    gate.set()
    await first
    answers = dict(
        zip(writes, await asyncio.gather(*writes.values(), return_exceptions=True), strict=True)
    )
    poison = answers.pop("team05")
    assert isinstance(poison, InvalidArgument) and poison.reason == "AWS_INVALID_PARAMETER"
    assert not any(isinstance(a, BaseException) for a in answers.values()), answers
    assert all(mine(domain, n) == intent(n) for n in answers) and mine(domain, "team05") == []
    assert domain.puts() <= 1 + 1 + 2 * math.ceil(math.log2(len(names)))


async def test_a_batch_is_bounded_and_a_tenants_writes_in_flight_count_while_queued() -> None:
    domain = build(max_batch=3, max_writes_per_tenant=2)
    gate, first = await holding_the_lock(domain)
    names = TENANTS[1:8]
    writes = [
        asyncio.create_task(domain.slices.put_rules(WHO[n], intent(n), "", False)) for n in names
    ]
    await queued(domain, len(names))
    # team00 has one write holding the lock and one queued: its third is refused.
    extra = asyncio.create_task(domain.slices.put_rules(WHO["team00"], intent("team00"), "", False))
    await queued(domain, len(names) + 1)
    with pytest.raises(ResourceExhausted) as raised:
        await domain.slices.put_rules(WHO["team00"], intent("team00"), "", False)
    assert raised.value.reason == "WRITES_IN_FLIGHT"
    gate.set()
    await asyncio.gather(first, extra, *writes)
    # 1 + ceil(8 / 3) puts.
    assert domain.puts() == 4
    assert all(mine(domain, n) == intent(n) for n in names)


async def test_policy_statement_writes_go_together_too() -> None:
    domain = build()
    gate = asyncio.Event()
    domain.ecr.hold_writes = gate
    guard = PolicyGuardrails()

    def statements(name: str) -> str:
        return json.dumps(
            [
                {
                    "Sid": f"{name.capitalize()}Pull",
                    "Effect": "Allow",
                    "Principal": {"AWS": "arn:aws:iam::210987654321:root"},
                    "Action": ["ecr:BatchGetImage"],
                    "Resource": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{name}/*",
                }
            ]
        )

    names = TENANTS[:5]
    writes = [
        asyncio.create_task(domain.slices.put_statements(WHO[n], guard, statements(n), "", False))
        for n in names
    ]
    for _ in range(500):
        if domain.ecr.writes():
            break
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(*writes)
    # Queued together before the leader took the lock: one put for the five.
    assert len(domain.ecr.writes()) == 1
    stored = json.loads(domain.ecr.policy(ACCOUNT, REGION) or "{}")
    assert [s["Sid"] for s in stored["Statement"]] == [f"{n.capitalize()}Pull" for n in names]
    for name, result in zip(names, results, strict=True):
        assert json.loads(result.response.statements_json) == json.loads(statements(name))
    versions = await domain.history.page(POLICY, before_seq=None, limit=50)
    assert [v.tenant for v in reversed(versions) if v.origin == "gateway"] == names


async def test_full_writes_and_validate_only_keep_their_own_path() -> None:
    domain = build()
    gate, first = await holding_the_lock(domain)
    plan = asyncio.create_task(domain.slices.put_rules(WHO["team01"], intent("team01"), "", True))
    full = asyncio.create_task(
        domain.ops.put_replication_configuration(
            WHO["team02"], pb.ReplicationConfiguration(rules=intent("team02")), "", False
        )
    )
    await asyncio.sleep(0.02)
    assert domain.ops._batches is not None and domain.ops._batches.waiting(REPLICATION) == 0
    gate.set()
    await asyncio.gather(first, plan, full)
    assert domain.puts() == 2


# --- the queue alone ------------------------------------------------------------------------


async def test_a_batch_takes_one_write_per_tenant_of_one_affinity_in_order() -> None:
    taken: list[list[str]] = []

    async def commit(key: str, takes: Takes[str, str]) -> None:
        batch = takes.take()
        taken.append([q.payload for q in batch])
        for q in batch:
            q.answered(q.payload)

    group: GroupCommit[str, str, str] = GroupCommit(commit, max_batch=3)
    order = [("a", "r1"), ("a", "r1"), ("b", "r1"), ("c", "r2"), ("d", "r1"), ("e", "r1")]
    answers = await asyncio.gather(
        *(
            group.submit(
                "k",
                f"{tenant}{i}",
                tenant=tenant,
                affinity=role,
                patience=math.inf,
                tired=lambda: RuntimeError("tired"),
            )
            for i, (tenant, role) in enumerate(order)
        )
    )
    assert answers == [f"{t}{i}" for i, (t, _) in enumerate(order)]
    assert taken == [["a0", "b2", "d4"], ["a1", "e5"], ["c3"]]


async def test_a_failure_before_taking_fails_every_queued_write_with_its_own_copy() -> None:
    async def commit(key: str, takes: Takes[str, str]) -> None:
        raise Unavailable("the lock is away", reason="WRITE_LOCK_UNAVAILABLE")

    group: GroupCommit[str, str, str] = GroupCommit(commit, max_batch=5)
    errors = await asyncio.gather(
        *(
            group.submit(
                "k", str(i), tenant=str(i), affinity=None, patience=math.inf, tired=RuntimeError
            )
            for i in range(3)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(e, GatewayError) and e.reason == "WRITE_LOCK_UNAVAILABLE" for e in errors)
    assert len({id(e) for e in errors}) == 3
    assert group.waiting("k") == 0


def test_the_batch_size_is_a_config_key() -> None:
    cache = config_mod.CacheConfig()
    assert cache.max_writes_per_batch >= 2
    with pytest.raises(ValueError):
        config_mod.CacheConfig(max_writes_per_batch=0)


def test_a_writers_running_value_is_the_one_aws_json_would_give() -> None:
    """`with_document` (one per writer of a batch) builds the message and etag that
    DescribeRegistry's answer of the same configuration parses to."""
    document = pb.ReplicationConfiguration(
        rules=[
            rule("team01/a", "team02/b"),
            rule("team03/c", region="us-west-2"),
            pb.ReplicationRule(
                destinations=[pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT)]
            ),
        ]
    )
    like = pb.DescribeRegistryResponse(registry_id=ACCOUNT)
    expected = convert.describe_response(
        {"registryId": ACCOUNT, "replicationConfiguration": convert.replication_to_aws(document)}
    )
    assert resources.REPLICATION.with_document(like, document) == expected


class SeesDeadline(MemoryEcr):
    """ECR remembering the deadline each put was made within, as the AWS client sees it
    (service/call.py `time_left`: what bounds the time before a write is sent)."""

    def __init__(self) -> None:
        super().__init__()
        self.put_time_left: list[float] = []

    async def put_replication_configuration(
        self,
        target: Target,
        configuration: pb.ReplicationConfiguration,
        *,
        finish_once_sent: bool = False,
    ) -> pb.ReplicationConfiguration:
        self.put_time_left.append(call_mod.time_left())
        return await super().put_replication_configuration(
            target, configuration, finish_once_sent=finish_once_sent
        )


async def test_a_batchs_put_is_made_within_the_latest_deadline_of_its_callers() -> None:
    """The leader runs outside every call; its put must still be bounded (before it is sent)
    by a caller's deadline, the latest of the batch's, as a caller's own put is by its own."""
    ecr = SeesDeadline()
    domain = build(ecr=ecr)
    gate, first = await holding_the_lock(domain)
    now = asyncio.get_running_loop().time()

    async def within(name: str, seconds: float) -> Any:
        deadline = now + seconds
        call_mod.begin(
            call_mod.Call(
                "r-" + name, cast(Any, None), "PutReplicationRules", deadline, cast(Any, None)
            )
        )
        return await domain.slices.put_rules(
            WHO[name], intent(name), "", False, context=context(name, deadline=deadline)
        )

    loop = asyncio.get_running_loop()
    writes = [
        loop.create_task(within(name, seconds), context=contextvars.Context())
        for name, seconds in (("team01", 30.0), ("team02", 60.0), ("team03", 45.0))
    ]
    await queued(domain, 3)
    gate.set()
    await asyncio.gather(first, *writes)
    assert domain.puts() == 2
    first_put, batch_put = ecr.put_time_left
    assert math.isinf(first_put)  # team00's write, outside any call
    assert 50.0 < batch_put <= 60.0  # team02's, the latest
