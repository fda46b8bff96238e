"""The drift detector on a real history store (memory, and Redis for replicas): baseline,
no change, drift reported once with a diff naming the tenants whose slice it touched, the
races it must not report, and overwritten writes through RegistryOperations."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as redis

from service import config as config_mod
from service.auth.content import ContentRules
from service.auth.targets import Target
from service.aws.memory import MemoryEcr
from service.aws.port import NoPolicy
from service.config import PolicyGuardrails
from service.ecr import convert, etags
from service.errors import GatewayError, Unavailable, WriteOverwritten
from service.gen.v1 import registry_pb2 as pb
from service.registry.rpcs.slice_operations import SliceOperations
from service.registry.rpcs.validation import RequestValidator
from service.registry.writes import settlement
from service.registry.writes.drift import DriftDetector
from service.registry.writes.operations import RegistryOperations
from service.state.cache import CacheKey, MemoryStore, ReadCache
from service.state.history import HistoryStore, MemoryHistory, RedisHistory, Version
from service.state.locks import RegistryLocks
from tests.registry.conftest import ACCOUNT, CACHE, REGION, Clock, target

REPLICATION = CacheKey(ACCOUNT, REGION, "registry")
POLICY_KEY = CacheKey(ACCOUNT, REGION, "policy")
CONFIG = config_mod.from_mapping(
    {
        "tenants": [
            {
                "name": "payments",
                "registries": [
                    {
                        "registry_id": ACCOUNT,
                        "regions": [REGION],
                        "owned_repository_prefixes": ["payments/"],
                        "owned_statement_sid_prefix": "Payments",
                    }
                ],
            },
            {
                "name": "orders",
                "registries": [
                    {
                        "registry_id": ACCOUNT,
                        "regions": [REGION],
                        "owned_repository_prefixes": ["orders/"],
                        "owned_statement_sid_prefix": "Orders",
                    }
                ],
            },
        ]
    },
    environ={},
)


def rule(prefix: str, region: str = "eu-west-1") -> pb.ReplicationRule:
    return pb.ReplicationRule(
        destinations=[pb.ReplicationDestination(region=region, registry_id=ACCOUNT)],
        repository_filters=[pb.RepositoryFilter(filter=prefix, filter_type="PREFIX_MATCH")],
    )


def described(*rules: pb.ReplicationRule) -> pb.DescribeRegistryResponse:
    configuration = pb.ReplicationConfiguration(rules=rules)
    return convert.describe_response(
        {
            "registryId": ACCOUNT,
            "replicationConfiguration": convert.replication_to_aws(configuration),
        }
    )


def policy(*sids: str, principal: str = "arn:aws:iam::210987654321:root") -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": sid,
                    "Effect": "Allow",
                    "Principal": {"AWS": principal},
                    "Action": ["ecr:ReplicateImage"],
                    "Resource": f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/secret-{sid}/*",
                }
                for sid in sids
            ],
        }
    )


@dataclass
class Recorded:
    """The audit's event lines and the counts, as the detector reported them."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    counts: list[tuple[str, str, str, str]] = field(default_factory=list)

    def event(self, event: str, /, **fields: object) -> None:
        self.events.append((event, dict(fields)))

    def count(self, event: str, registry_id: str, region: str, resource: str) -> None:
        self.counts.append((event, registry_id, region, resource))


def detector(history: HistoryStore, clock: Clock, seen: Recorded) -> DriftDetector:
    return DriftDetector(history, seen, seen.count, clock, config=lambda: CONFIG)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def seen() -> Recorded:
    return Recorded()


@pytest.fixture
def history() -> MemoryHistory:
    return MemoryHistory(50, 1 << 20)


async def test_the_first_read_is_the_baseline_and_no_event(
    history: MemoryHistory, clock: Clock, seen: Recorded
) -> None:
    drift = detector(history, clock, seen)
    await drift.observe(REPLICATION, described(rule("payments/")), started=clock.now)
    head = await history.head(REPLICATION)
    assert head is not None and head.origin == "baseline"
    assert head.etag == described(rule("payments/")).etag
    assert seen.events == [] and seen.counts == []


async def test_the_same_state_again_is_nothing(
    history: MemoryHistory, clock: Clock, seen: Recorded
) -> None:
    drift = detector(history, clock, seen)
    await drift.observe(REPLICATION, described(rule("payments/")), started=clock.now)
    clock.now += 100
    await drift.observe(REPLICATION, described(rule("payments/")), started=clock.now)
    assert len(await history.page(REPLICATION, before_seq=None, limit=10)) == 1
    assert seen.events == []


async def test_a_change_is_reported_with_a_diff_naming_the_tenants_it_touched(
    history: MemoryHistory, clock: Clock, seen: Recorded
) -> None:
    drift = detector(history, clock, seen)
    before = described(rule("payments/"), rule("orders/"), rule("shared/"))
    await drift.observe(REPLICATION, before, started=clock.now)
    clock.now += 100
    # Someone removes the payments rule and changes orders' destination, around the gateway.
    after = described(rule("orders/", "us-west-2"), rule("shared/"))
    await drift.observe(REPLICATION, after, started=clock.now)
    [(event, line)] = seen.events
    assert event == "out_of_band_change"
    assert (line["registry_id"], line["region"], line["resource"]) == (
        ACCOUNT,
        REGION,
        "replication",
    )
    assert (line["etag_before"], line["etag_after"]) == (before.etag, after.etag)
    assert line["tenants"] == ["orders", "payments"]
    by_action = {(d["action"], tuple(d["tenants"])) for d in line["diff"]}
    assert by_action == {("remove", ("payments",)), ("remove", ("orders",)), ("add", ("orders",))}
    assert all("destination" in d["description"] for d in line["diff"])
    assert seen.counts == [("out_of_band_change", ACCOUNT, REGION, "replication")]
    head = await history.head(REPLICATION)
    assert head is not None and head.origin == "out-of-band" and head.etag == after.etag
    # Seen again: nothing more.
    clock.now += 100
    await drift.observe(REPLICATION, after, started=clock.now)
    assert len(seen.events) == 1


async def test_a_head_whose_document_does_not_parse_is_reported_without_a_diff(
    history: MemoryHistory, clock: Clock, seen: Recorded
) -> None:
    # A stored replication document that is not one (written by another version, damaged):
    # the change is still reported, once, as a change without a diff; nothing raises.
    await history.append(
        REPLICATION,
        Version(0, clock.now, "baseline", "etag-of-junk", b"\xff\xff"),
        if_head_etag=None,
    )
    drift = detector(history, clock, seen)
    clock.now += 100
    after = described(rule("payments/"))
    await drift.observe(REPLICATION, after, started=clock.now)
    [(event, line)] = seen.events
    assert event == "out_of_band_change" and line["resource"] == "replication"
    assert (line["etag_before"], line["etag_after"]) == ("etag-of-junk", after.etag)
    assert line["diff"] == [] and "diff_unavailable" in line
    assert seen.counts == [("out_of_band_change", ACCOUNT, REGION, "replication")]


async def test_a_policy_diff_names_statements_by_sid_never_their_text(
    history: MemoryHistory, clock: Clock, seen: Recorded
) -> None:
    drift = detector(history, clock, seen)
    await drift.observe(POLICY_KEY, policy("PaymentsPull", "OrdersPull"), started=clock.now)
    clock.now += 100
    await drift.observe(POLICY_KEY, policy("OrdersPull", "OrdersPush"), started=clock.now)
    [(event, line)] = seen.events
    assert event == "out_of_band_change" and line["resource"] == "policy"
    assert {(d["action"], d["path"], tuple(d["tenants"])) for d in line["diff"]} == {
        ("remove", "policy_text.Statement[Sid=PaymentsPull]", ("payments",)),
        ("add", "policy_text.Statement[Sid=OrdersPush]", ("orders",)),
    }
    text = json.dumps(seen.events)
    # Effect and actions only: no principal, no resource, no policy text.
    assert "210987654321" not in text and "secret-" not in text and "Principal" not in text


async def test_a_deleted_policy_is_drift_too(
    history: MemoryHistory, clock: Clock, seen: Recorded
) -> None:
    drift = detector(history, clock, seen)
    await drift.observe(POLICY_KEY, policy("PaymentsPull"), started=clock.now)
    clock.now += 100
    await drift.observe(POLICY_KEY, None, started=clock.now)
    [(_, line)] = seen.events
    assert line["etag_after"] == etags.ABSENT and line["tenants"] == ["payments"]


async def test_a_load_begun_before_the_head_was_recorded_is_skipped(
    history: MemoryHistory, clock: Clock, seen: Recorded
) -> None:
    drift = detector(history, clock, seen)
    old, new = described(rule("payments/")), described(rule("orders/"))
    started = clock.now  # a cache load begins ...
    clock.now += 0.5
    await drift.observe(REPLICATION, old, started=clock.now, under_lock=True)
    await drift.record_write(
        REPLICATION, new, tenant="orders", identity="api_key:x", rpc="Put", etag_before=old.etag
    )
    # ... and answers the state before the write: not drift.
    await drift.observe(REPLICATION, old, started=started)
    assert seen.events == []
    # Under the lock nothing races: the same read is drift there.
    clock.now += 100
    await drift.observe(REPLICATION, old, started=clock.now, under_lock=True)
    assert [e for e, _ in seen.events] == ["out_of_band_change"]


async def test_a_stale_read_of_the_version_just_replaced_is_skipped_for_a_while(
    history: MemoryHistory, clock: Clock, seen: Recorded
) -> None:
    drift = detector(history, clock, seen)
    old, new = described(rule("payments/")), described(rule("orders/"))
    await drift.observe(REPLICATION, old, started=clock.now, under_lock=True)
    await drift.record_write(
        REPLICATION, new, tenant="orders", identity=None, rpc=None, etag_before=old.etag
    )
    clock.now += 3  # a load begun after the write answers the old state (eventual consistency)
    await drift.observe(REPLICATION, old, started=clock.now)
    assert seen.events == []
    clock.now += 30  # still the old state long after: someone put it back
    await drift.observe(REPLICATION, old, started=clock.now)
    assert [e for e, _ in seen.events] == ["out_of_band_change"]


async def test_a_gateway_write_is_recorded_and_is_not_drift(
    history: MemoryHistory, clock: Clock, seen: Recorded
) -> None:
    drift = detector(history, clock, seen)
    old, new = described(rule("payments/")), described(rule("orders/"))
    await drift.observe(REPLICATION, old, started=clock.now, under_lock=True)
    await drift.record_write(
        REPLICATION, new, tenant="orders", identity="api_key:abc", rpc="Put", etag_before=old.etag
    )
    clock.now += 100
    await drift.observe(REPLICATION, new, started=clock.now)
    assert seen.events == []
    [gateway, baseline] = await history.page(REPLICATION, before_seq=None, limit=10)
    assert (gateway.origin, gateway.tenant, gateway.identity, gateway.rpc) == (
        "gateway",
        "orders",
        "api_key:abc",
        "Put",
    )
    assert baseline.origin == "baseline"


async def test_a_write_that_changed_nothing_adds_no_version(
    history: MemoryHistory, clock: Clock, seen: Recorded
) -> None:
    drift = detector(history, clock, seen)
    same = described(rule("payments/"))
    await drift.observe(REPLICATION, same, started=clock.now, under_lock=True)
    await drift.record_write(
        REPLICATION, same, tenant="payments", identity=None, rpc=None, etag_before=same.etag
    )
    assert len(await history.page(REPLICATION, before_seq=None, limit=10)) == 1


async def test_two_replicas_on_one_redis_report_a_change_once(
    redis_client: redis.Redis, redis_prefix: str, clock: Clock
) -> None:
    seen_one, seen_two = Recorded(), Recorded()
    one = detector(RedisHistory(redis_client, redis_prefix, 50, 1 << 20), clock, seen_one)
    two = detector(RedisHistory(redis_client, redis_prefix, 50, 1 << 20), clock, seen_two)
    await one.observe(REPLICATION, described(rule("payments/")), started=clock.now)
    for i in range(10):
        clock.now += 100
        changed = described(rule(f"orders/{i}/"))
        await asyncio.gather(
            one.observe(REPLICATION, changed, started=clock.now),
            two.observe(REPLICATION, changed, started=clock.now),
        )
        assert len(seen_one.events) + len(seen_two.events) == i + 1
    assert len(seen_one.counts) + len(seen_two.counts) == 10


class Broken:
    """A history that fails every call."""

    async def head(self, key: CacheKey) -> Any:
        raise RuntimeError("broken")

    async def append(
        self, key: CacheKey, version: Any, *, if_head_etag: str | None, mine: Any = None
    ) -> Any:
        raise RuntimeError("broken")

    async def page(self, key: CacheKey, *, before_seq: int | None, limit: int) -> Any:
        raise RuntimeError("broken")

    async def scan(self, key: CacheKey) -> Any:
        raise RuntimeError("broken")


async def test_a_failing_history_never_fails_the_read(clock: Clock, seen: Recorded) -> None:
    drift = detector(Broken(), clock, seen)
    await drift.observe(REPLICATION, described(), started=clock.now)
    await drift.record_write(REPLICATION, described(), tenant="t", identity=None, rpc=None)
    await drift.overwritten(
        REPLICATION,
        pb.ReplicationConfiguration(),
        described(),
        etag_before="x",
        tenant="t",
        identity=None,
        rpc=None,
        request_id=None,
    )
    assert seen.events == []


# --- through RegistryOperations: overwritten writes ----------------------------------------


class Overwriting(MemoryEcr):
    """ECR where another writer stores its own state right after each of the gateway's writes;
    or whose next `lag` policy reads after a write answer the policy before it (reads lagging
    the write); or whose read-back after a write fails (`read_back_fails`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replication_after: pb.ReplicationConfiguration | None = None
        self.policy_after: str | None = None
        self.overwrite_policy = False
        self.lag = 0
        self.read_back_fails: GatewayError | None = None
        self._lagging: tuple[int, str | None] = (0, None)

    async def put_replication_configuration(
        self, target: Target, configuration: pb.ReplicationConfiguration, **kwargs: Any
    ) -> pb.ReplicationConfiguration:
        taken = await super().put_replication_configuration(target, configuration, **kwargs)
        if self.replication_after is not None:
            self.set_replication(target.registry_id, target.region, self.replication_after)
        if self.read_back_fails is not None:
            self.fail_next["describe_registry"] = self.read_back_fails
        return taken

    async def put_registry_policy(self, target: Target, policy_text: str, **kwargs: Any) -> str:
        before = self.policy(target.registry_id, target.region)
        taken = await super().put_registry_policy(target, policy_text, **kwargs)
        if self.overwrite_policy:
            self.set_policy(target.registry_id, target.region, self.policy_after)
        if self.read_back_fails is not None:
            self.fail_next["get_registry_policy"] = self.read_back_fails
        self._lagging = (self.lag, before)
        return taken

    async def get_registry_policy(self, target: Target, *, shared: bool = False) -> str | NoPolicy:
        answer = await super().get_registry_policy(target, shared=shared)
        left, before = self._lagging
        if left:
            self._lagging = (left - 1, before)
            return NoPolicy("lagging") if before is None else before
        return answer

    def reads(self, operation: str) -> int:
        return sum(1 for call in self.calls if call.operation == operation)


@dataclass
class Ops:
    ecr: Overwriting
    ops: RegistryOperations
    cache: ReadCache
    history: MemoryHistory
    seen: Recorded
    clock: Clock
    locks: RegistryLocks


def ops(ecr: Overwriting) -> Ops:
    clock, seen, history, locks = Clock(), Recorded(), MemoryHistory(50, 1 << 20), RegistryLocks()
    cache = ReadCache(CACHE, MemoryStore(100), clock=clock, jitter=lambda: 1.0)
    drift = DriftDetector(history, seen, seen.count, clock, config=lambda: CONFIG, locks=locks)
    operations = RegistryOperations(ecr, locks, cache, drift=drift)
    return Ops(ecr, operations, cache, history, seen, clock, locks)


def root_arns(text: str) -> str:
    """What ECR does to a policy it stores: bare account ids become root ARNs."""
    return text.replace('"210987654321"', '"arn:aws:iam::210987654321:root"')


async def test_a_normal_write_is_recorded_and_not_overwritten() -> None:
    domain = ops(Overwriting(rewrite_policy=root_arns))
    written = policy("PaymentsPull", principal="210987654321")
    result = await domain.ops.put_registry_policy(target(), written, "", False)
    # ECR stored its own form of it: the same policy, other bytes.
    stored = domain.ecr.policy(ACCOUNT, REGION)
    assert stored is not None and stored != written and "arn:aws:iam::210987654321:root" in stored
    assert result.etag_after == etags.of_policy(stored)
    [version, baseline] = await domain.history.page(POLICY_KEY, before_seq=None, limit=10)
    assert (version.origin, version.tenant, baseline.origin) == ("gateway", "payments", "baseline")
    assert domain.seen.events == []


async def test_an_overwritten_replication_write_answers_aborted_and_is_reported() -> None:
    domain = ops(Overwriting())
    domain.ecr.replication_after = pb.ReplicationConfiguration(rules=[rule("orders/")])
    configuration = pb.ReplicationConfiguration(rules=[rule("payments/")])
    with pytest.raises(WriteOverwritten) as raised:
        await domain.ops.put_replication_configuration(target(), configuration, "", False)
    standing = described(rule("orders/"))
    assert raised.value.reason == "WRITE_OVERWRITTEN"
    assert raised.value.metadata["currentEtag"] == standing.etag
    # The cache keeps the read-back: the next read is a hit on what stands.
    read = await domain.ops.describe_registry(target())
    assert read.cache_outcome == "hit" and read.answer().etag == standing.etag
    head = await domain.history.head(REPLICATION)
    assert head is not None and (head.origin, head.etag) == ("out-of-band", standing.etag)
    [(event, line)] = domain.seen.events
    assert event == "overwritten" and line["tenant"] == "payments"
    assert line["etag_after"] == standing.etag
    assert {(d["action"], tuple(d["tenants"])) for d in line["diff"]} == {
        ("remove", ("payments",)),
        ("add", ("orders",)),
    }
    assert domain.seen.counts == [("overwritten", ACCOUNT, REGION, "replication")]


async def test_an_overwritten_delete_and_put_of_the_policy() -> None:
    domain = ops(Overwriting())
    domain.ecr.set_policy(ACCOUNT, REGION, policy("PaymentsPull"))
    domain.ecr.overwrite_policy, domain.ecr.policy_after = True, None  # deleted right after
    with pytest.raises(WriteOverwritten) as raised:
        await domain.ops.put_registry_policy(target(), policy("PaymentsPush"), "", False)
    assert raised.value.metadata["currentEtag"] == etags.ABSENT


async def test_no_detector_still_refuses_to_call_an_overwritten_write_a_success() -> None:
    ecr = Overwriting()
    ecr.replication_after = pb.ReplicationConfiguration(rules=[rule("orders/")])
    cache = ReadCache(CACHE, MemoryStore(100), jitter=lambda: 1.0)
    operations = RegistryOperations(ecr, RegistryLocks(), cache)
    with pytest.raises(WriteOverwritten):
        await operations.put_replication_configuration(
            target(), pb.ReplicationConfiguration(rules=[rule("payments/")]), "", False
        )


async def test_a_read_back_neither_before_nor_written_is_overwritten_at_once() -> None:
    domain = ops(Overwriting())
    domain.ecr.overwrite_policy, domain.ecr.policy_after = True, policy("OrdersPull")
    with pytest.raises(WriteOverwritten):
        await domain.ops.put_registry_policy(target(), policy("PaymentsPull"), "", False)
    # The fresh read and one read-back: another writer's state is not waited for.
    assert domain.ecr.reads("get_registry_policy") == 2


# --- the gateway's own writes, racing what observes them ----------------------------------


async def test_a_load_while_a_write_of_its_resource_is_in_flight_is_neither_reported_nor_recorded(
    history: MemoryHistory, clock: Clock, seen: Recorded
) -> None:
    locks = RegistryLocks()
    drift = DriftDetector(history, seen, seen.count, clock, config=lambda: CONFIG, locks=locks)
    old, new = described(rule("payments/")), described(rule("orders/"))
    await drift.observe(REPLICATION, old, started=clock.now)
    await drift.observe(POLICY_KEY, policy("Payments"), started=clock.now)
    clock.now += 100
    async with locks.hold(ACCOUNT, REGION) as held:
        # The lock alone (a write not sent yet) hides nothing.
        await drift.observe(POLICY_KEY, policy("Payments", "Rogue"), started=clock.now)
        assert [e for e, _ in seen.events] == ["out_of_band_change"]
        async with held.writing("registry"):
            # A load sees a write that has reached AWS and is not recorded yet.
            await drift.observe(REPLICATION, new, started=clock.now)
            head = await history.head(REPLICATION)
            assert head is not None and head.etag == old.etag
            # The other resource's changes are not hidden by that write.
            clock.now += 100
            await drift.observe(POLICY_KEY, policy("Rogue"), started=clock.now)
            assert [e for e, _ in seen.events] == ["out_of_band_change"] * 2
    # With the write settled, a state nobody recorded is drift.
    clock.now += 100
    await drift.observe(REPLICATION, new, started=clock.now)
    assert [e for e, _ in seen.events] == ["out_of_band_change"] * 3


async def test_the_write_lock_does_not_hide_what_the_writes_own_reads_see(
    history: MemoryHistory, clock: Clock, seen: Recorded
) -> None:
    locks = RegistryLocks()
    drift = DriftDetector(history, seen, seen.count, clock, config=lambda: CONFIG, locks=locks)
    await drift.observe(REPLICATION, described(rule("payments/")), started=clock.now)
    clock.now += 100
    async with locks.hold(ACCOUNT, REGION):
        await drift.observe(
            REPLICATION, described(rule("orders/")), started=clock.now, under_lock=True
        )
    assert [e for e, _ in seen.events] == ["out_of_band_change"]


async def test_a_write_whose_caller_left_is_read_back_and_recorded_all_the_same() -> None:
    domain = ops(Overwriting())
    domain.ecr.hold_writes = asyncio.Event()
    configuration = pb.ReplicationConfiguration(rules=[rule("payments/")])
    write = asyncio.ensure_future(
        domain.ops.put_replication_configuration(target(), configuration, "", False)
    )
    while not domain.ecr.writes():
        await asyncio.sleep(0)
    write.cancel()  # the caller leaves once its write is sent
    await asyncio.sleep(0)
    domain.ecr.hold_writes.set()
    with pytest.raises(asyncio.CancelledError):
        await write
    written = described(rule("payments/"))
    head = await domain.history.head(REPLICATION)
    assert head is not None and (head.origin, head.tenant, head.etag) == (
        "gateway",
        "payments",
        written.etag,
    )
    domain.clock.now += 100
    read = await domain.ops.describe_registry(target())
    assert read.cache_outcome == "miss"  # forgotten: the caller never learnt the outcome
    assert read.answer().etag == written.etag
    assert domain.seen.events == []


async def test_a_read_back_that_fails_records_what_aws_answered_the_write() -> None:
    # AWS answers the write with the text it was sent, and stores its own form of it.
    domain = ops(Overwriting(rewrite_policy=root_arns))
    domain.ecr.read_back_fails = Unavailable("AWS failed the read-back")
    written = policy("PaymentsPull", principal="210987654321")
    with pytest.raises(Unavailable):
        await domain.ops.put_registry_policy(target(), written, "", False)
    head = await domain.history.head(POLICY_KEY)
    assert head is not None and (head.origin, head.tenant, head.etag) == (
        "gateway",
        "payments",
        etags.of_policy(written),
    )
    domain.clock.now += 100
    domain.ecr.read_back_fails = None
    read = await domain.ops.get_registry_policy(target())
    stored = domain.ecr.policy(ACCOUNT, REGION)
    assert read.cache_outcome == "miss" and read.answer().etag == etags.of_policy(stored)
    # AWS's form of the gateway's write is the gateway's write: recorded as such, not drift.
    assert domain.seen.events == []
    [adopted, answered, baseline] = await domain.history.page(POLICY_KEY, before_seq=None, limit=5)
    assert (adopted.origin, adopted.tenant, adopted.etag) == (
        "gateway",
        "payments",
        etags.of_policy(stored),
    )
    assert (answered.etag, baseline.origin) == (etags.of_policy(written), "baseline")
    # A real change afterwards is still drift.
    domain.clock.now += 100
    domain.ecr.set_policy(ACCOUNT, REGION, policy("OrdersPull"))
    await domain.ops.get_registry_policy(target(), fresh=True)
    assert [e for e, _ in domain.seen.events] == ["out_of_band_change"]


@pytest.mark.parametrize("lag", [1, 3])
async def test_a_read_back_lagging_the_write_is_read_again_and_the_write_holds(lag: int) -> None:
    domain = ops(Overwriting())
    domain.ecr.set_policy(ACCOUNT, REGION, policy("PaymentsPull"))
    domain.ecr.lag = lag
    written = policy("PaymentsPush")
    result = await domain.ops.put_registry_policy(target(), written, "", False)
    assert result.etag_after == etags.of_policy(written)
    assert domain.ecr.reads("get_registry_policy") == 1 + lag + 1
    head = await domain.history.head(POLICY_KEY)
    assert head is not None and (head.origin, head.etag) == ("gateway", etags.of_policy(written))
    assert domain.seen.events == []


async def test_a_read_back_that_stays_on_the_state_before_is_overwritten_after_the_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another writer put the state before back (or AWS lagged longer than the retries).
    monkeypatch.setattr(settlement, "READ_BACK_RETRY_SECONDS", (0.0, 0.0))
    domain = ops(Overwriting())
    before = policy("PaymentsPull")
    domain.ecr.set_policy(ACCOUNT, REGION, before)
    domain.ecr.lag = 10
    with pytest.raises(WriteOverwritten) as raised:
        await domain.ops.put_registry_policy(target(), policy("PaymentsPush"), "", False)
    assert raised.value.metadata["currentEtag"] == etags.of_policy(before)
    assert domain.ecr.reads("get_registry_policy") == 1 + 3


# --- slice writes: judged on the caller's slice ---------------------------------------------


def orders_statement(sid: str) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::210987654321:root"},
        "Action": ["ecr:ReplicateImage"],
        "Resource": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/orders/*",
    }


def orders() -> Target:
    return target("orders", prefixes=("orders/",), sid_prefix="Orders")


async def test_a_slice_write_that_holds_while_another_part_changed_is_ok_and_drift() -> None:
    domain = ops(Overwriting())
    slice_ops = SliceOperations(domain.ops, ContentRules(), RequestValidator())
    domain.ecr.set_policy(ACCOUNT, REGION, policy("PaymentsPull"))
    # Right after orders' write, another writer changes payments' statement only.
    mine = orders_statement("OrdersPush")
    document = json.loads(policy("PaymentsOther"))
    document["Statement"].append(mine)
    domain.ecr.overwrite_policy, domain.ecr.policy_after = True, json.dumps(document)
    result = await slice_ops.put_statements(
        orders(), PolicyGuardrails(), json.dumps([mine]), "", False
    )
    read = await slice_ops.get_statements(orders())
    # OK, with the etag of orders' slice as it now stands.
    assert result.response.etag == read.answer().etag
    assert json.loads(result.response.statements_json) == [mine]
    [(event, line)] = domain.seen.events
    assert event == "out_of_band_change" and line["tenants"] == ["payments"]
    assert {(d["action"], d["path"]) for d in line["diff"]} == {
        ("remove", "policy_text.Statement[Sid=PaymentsPull]"),
        ("add", "policy_text.Statement[Sid=PaymentsOther]"),
    }
    assert domain.seen.counts == [("out_of_band_change", ACCOUNT, REGION, "policy")]
    [foreign, written, baseline] = await domain.history.page(POLICY_KEY, before_seq=None, limit=5)
    assert (foreign.origin, written.origin, written.tenant, baseline.origin) == (
        "out-of-band",
        "gateway",
        "orders",
        "baseline",
    )
    assert foreign.etag == etags.of_policy(json.dumps(document))


async def test_a_slice_write_whose_own_slice_was_changed_is_overwritten() -> None:
    domain = ops(Overwriting())
    slice_ops = SliceOperations(domain.ops, ContentRules(), RequestValidator())
    domain.ecr.set_policy(ACCOUNT, REGION, policy("PaymentsPull"))
    domain.ecr.overwrite_policy = True
    domain.ecr.policy_after = json.dumps(
        {"Version": "2012-10-17", "Statement": [orders_statement("OrdersOther")]}
    )
    with pytest.raises(WriteOverwritten):
        await slice_ops.put_statements(
            orders(), PolicyGuardrails(), json.dumps([orders_statement("OrdersPush")]), "", False
        )
    assert [e for e, _ in domain.seen.events] == ["overwritten"]


async def test_a_full_write_is_judged_on_the_whole() -> None:
    domain = ops(Overwriting())
    domain.ecr.overwrite_policy = True
    # A full write's caller answers for the whole: another part changed is its write lost.
    written = json.dumps({"Version": "2012-10-17", "Statement": [orders_statement("OrdersPush")]})
    domain.ecr.policy_after = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                orders_statement("OrdersPush"),
                json.loads(policy("PaymentsX"))["Statement"][0],
            ],
        }
    )
    with pytest.raises(WriteOverwritten):
        await domain.ops.put_registry_policy(orders(), written, "", False)


# --- the report ---------------------------------------------------------------------------


class FailingAudit(Recorded):
    def event(self, event: str, /, **fields: object) -> None:
        raise OSError("the audit's disk is full")


async def test_a_report_that_fails_after_the_append_is_logged_and_never_raised(
    history: MemoryHistory, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    seen = FailingAudit()
    drift = detector(history, clock, seen)
    await drift.observe(REPLICATION, described(rule("payments/")), started=clock.now)
    clock.now += 100
    changed = described(rule("orders/"))
    await drift.observe(REPLICATION, changed, started=clock.now)
    head = await history.head(REPLICATION)
    assert head is not None and (head.origin, head.etag) == ("out-of-band", changed.etag)
    assert any("reporting out_of_band_change failed" in r.getMessage() for r in caplog.records)
