"""RegistryOperations on the in-memory ECR: reads through the cache, the read-modify-write
of each resource (one generic path, each resource a description), and what each operation
returns (Read, WriteResult)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from google.protobuf.message import Message

from service.auth.targets import Target
from service.aws.memory import MemoryEcr
from service.aws.port import EcrPort
from service.ecr import convert, etags
from service.errors import (
    EtagMismatch,
    NotFound,
    ResourceExhausted,
    Unavailable,
    UpstreamFailure,
    UpstreamNoAnswer,
    WriteOverwritten,
)
from service.gen.v1 import registry_pb2 as pb
from service.registry.model.slices import Ownership
from service.registry.writes import resources
from service.registry.writes.operations import RegistryOperations, check_etag, etag_read_before
from service.registry.writes.resources import KINDS, Changed, ResourceKind, key_of, kind_of
from service.state.cache import CacheKey
from service.state.cache.base import Resource
from service.state.history import Mine
from service.state.locks import HeldLock, RegistryLocks
from tests.registry.conftest import ACCOUNT, REGION, Domain, build, target

PAYMENTS = target()
POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PaymentsPull",
                "Effect": "Allow",
                "Principal": {"AWS": "210987654321"},
                "Action": ["ecr:ReplicateImage"],
                "Resource": "*",
            }
        ],
    },
    separators=(",", ":"),
)
OTHER_POLICY = POLICY.replace("PaymentsPull", "PaymentsPush")
EU_RULE = pb.ReplicationRule(
    destinations=[pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT)],
    repository_filters=[pb.RepositoryFilter(filter="payments/", filter_type="PREFIX_MATCH")],
)
WEST_RULE = pb.ReplicationRule(
    destinations=[pb.ReplicationDestination(region="us-west-2", registry_id=ACCOUNT)]
)


def root_arns(text: str) -> str:
    """What ECR does to a policy it stores: bare account ids become root ARNs."""
    return text.replace('"210987654321"', '"arn:aws:iam::210987654321:root"')


# --- reads ---------------------------------------------------------------------------------


async def test_describe_is_loaded_once_then_served_from_the_cache(domain: Domain) -> None:
    domain.ecr.set_replication(ACCOUNT, REGION, pb.ReplicationConfiguration(rules=[EU_RULE]))
    first = await domain.ops.describe_registry(PAYMENTS)
    second = await domain.ops.describe_registry(PAYMENTS)
    assert (first.cache_outcome, second.cache_outcome) == ("miss", "hit")
    assert first.answer() == second.answer()
    assert list(first.answer().replication_configuration.rules) == [EU_RULE]
    # The etag is the digest of the configuration as AWS returns it.
    assert first.answer().etag == etags.of_json(
        convert.replication_to_aws(pb.ReplicationConfiguration(rules=[EU_RULE]))
    )
    [load] = domain.ecr.calls
    assert (load.operation, load.shared) == ("describe_registry", True)  # a load is nobody's


async def test_fresh_read_goes_to_ecr(domain: Domain) -> None:
    await domain.ops.describe_registry(PAYMENTS)
    again = await domain.ops.describe_registry(PAYMENTS, fresh=True)
    assert again.cache_outcome == "miss"
    assert len(domain.ecr.calls) == 2


async def test_no_policy_is_a_read_without_value_whose_answer_is_not_found(
    domain: Domain,
) -> None:
    first = await domain.ops.get_registry_policy(PAYMENTS)
    assert (first.value, first.cache_outcome) == (None, "miss")
    with pytest.raises(NotFound) as caught:
        first.answer()
    # A miss answers what ECR said, with its request id for the operators.
    assert caught.value.reason == "REGISTRY_POLICY_NOT_FOUND"
    assert caught.value.metadata["awsErrorCode"] == "RegistryPolicyNotFoundException"
    assert caught.value.metadata["awsRequestId"].startswith("memory-")
    second = await domain.ops.get_registry_policy(PAYMENTS)
    assert (second.value, second.cache_outcome) == (None, "hit")  # "none" is cached too
    with pytest.raises(NotFound):
        second.answer()
    assert len(domain.ecr.calls) == 1


async def test_policy_read_has_the_etag_of_its_text(domain: Domain) -> None:
    domain.ecr.set_policy(ACCOUNT, REGION, POLICY)
    read = (await domain.ops.get_registry_policy(PAYMENTS)).answer()
    assert (read.registry_id, read.policy_text) == (ACCOUNT, POLICY)
    assert read.etag == etags.of_policy(POLICY) != etags.ABSENT


# --- PutRegistryPolicy ---------------------------------------------------------------------


async def test_put_policy_answers_and_writes_through_the_read_back() -> None:
    domain = build(MemoryEcr(rewrite_policy=root_arns))
    written = await domain.ops.put_registry_policy(PAYMENTS, POLICY, "", False)
    stored = root_arns(POLICY)
    assert domain.ecr.policy(ACCOUNT, REGION) == stored != POLICY
    # The etag is the one of what AWS holds (read back), not of the request.
    assert written.etag_before == etags.ABSENT
    assert written.etag_after == written.response.etag == etags.of_policy(stored)
    assert written.response.registry_id == ACCOUNT
    # Written through: the next read is a hit, with the same etag, and calls nothing.
    calls = len(domain.ecr.calls)
    read = await domain.ops.get_registry_policy(PAYMENTS)
    assert read.cache_outcome == "hit"
    assert read.answer().etag == written.response.etag
    assert read.answer().policy_text == stored
    assert len(domain.ecr.calls) == calls
    [write] = domain.ecr.writes()
    assert write.finish_once_sent  # a write once sent is finished, not abandoned


async def test_put_policy_with_absent_creates_only(domain: Domain) -> None:
    created = await domain.ops.put_registry_policy(PAYMENTS, POLICY, etags.ABSENT, False)
    assert created.etag_before == etags.ABSENT
    with pytest.raises(EtagMismatch) as caught:
        await domain.ops.put_registry_policy(PAYMENTS, OTHER_POLICY, etags.ABSENT, False)
    assert caught.value.metadata["currentEtag"] == created.response.etag
    assert domain.ecr.policy(ACCOUNT, REGION) == POLICY
    assert len(domain.ecr.writes()) == 1


async def test_put_policy_with_a_stale_etag_writes_nothing_and_says_what_it_read(
    domain: Domain,
) -> None:
    first = await domain.ops.put_registry_policy(PAYMENTS, POLICY, "", False)
    # Someone changes it behind the gateway's back; the caller's etag is now stale.
    domain.ecr.set_policy(ACCOUNT, REGION, OTHER_POLICY)
    with pytest.raises(EtagMismatch) as caught:
        await domain.ops.put_registry_policy(PAYMENTS, POLICY, first.response.etag, False)
    assert caught.value.metadata["currentEtag"] == etags.of_policy(OTHER_POLICY)
    assert etag_read_before(caught.value) == etags.of_policy(OTHER_POLICY)  # for the audit
    assert domain.ecr.policy(ACCOUNT, REGION) == OTHER_POLICY
    assert len(domain.ecr.writes()) == 1


async def test_put_policy_with_the_current_etag_writes(domain: Domain) -> None:
    first = await domain.ops.put_registry_policy(PAYMENTS, POLICY, "", False)
    second = await domain.ops.put_registry_policy(
        PAYMENTS, OTHER_POLICY, first.response.etag, False
    )
    assert second.etag_before == first.response.etag
    assert second.etag_after == etags.of_policy(OTHER_POLICY)
    assert domain.ecr.policy(ACCOUNT, REGION) == OTHER_POLICY


async def test_validate_only_put_answers_the_plan_and_writes_nothing(domain: Domain) -> None:
    domain.ecr.set_policy(ACCOUNT, REGION, POLICY)
    cached = await domain.ops.get_registry_policy(PAYMENTS)
    planned = await domain.ops.put_registry_policy(PAYMENTS, OTHER_POLICY, "", True)
    assert domain.ecr.writes() == []
    assert domain.ecr.policy(ACCOUNT, REGION) == POLICY
    assert planned.etag_after is None
    assert planned.etag_before == planned.response.etag == etags.of_policy(POLICY)
    assert planned.response.policy_text == OTHER_POLICY
    assert [(c.action, c.path) for c in planned.response.changes] == [
        ("remove", "policy_text.Statement[Sid=PaymentsPull]"),
        ("add", "policy_text.Statement[Sid=PaymentsPush]"),
    ]
    # The cache is untouched: still the value read before.
    again = await domain.ops.get_registry_policy(PAYMENTS)
    assert again.cache_outcome == "hit" and again.answer() == cached.answer()


async def test_validate_only_fails_where_the_real_write_would(domain: Domain) -> None:
    domain.ecr.set_policy(ACCOUNT, REGION, POLICY)
    with pytest.raises(EtagMismatch):
        await domain.ops.put_registry_policy(PAYMENTS, OTHER_POLICY, etags.ABSENT, True)


# --- DeleteRegistryPolicy ------------------------------------------------------------------


async def test_delete_missing_policy_is_not_found_and_calls_no_delete(domain: Domain) -> None:
    with pytest.raises(NotFound) as caught:
        await domain.ops.delete_registry_policy(PAYMENTS, "", False)
    assert caught.value.reason == "REGISTRY_POLICY_NOT_FOUND"
    assert etag_read_before(caught.value) == etags.ABSENT
    assert domain.ecr.writes() == []
    # "absent" holds, so the precondition passes and the answer is still NotFound ...
    with pytest.raises(NotFound):
        await domain.ops.delete_registry_policy(PAYMENTS, etags.ABSENT, True)
    # ... while a wrong etag fails first, as before.
    with pytest.raises(EtagMismatch):
        await domain.ops.delete_registry_policy(PAYMENTS, "0" * 32, False)


async def test_delete_answers_the_old_policy_and_caches_its_absence(domain: Domain) -> None:
    put = await domain.ops.put_registry_policy(PAYMENTS, POLICY, "", False)
    deleted = await domain.ops.delete_registry_policy(PAYMENTS, put.response.etag, False)
    assert deleted.response.policy_text == POLICY
    assert deleted.response.etag == deleted.etag_after == etags.ABSENT
    assert deleted.etag_before == put.response.etag
    assert domain.ecr.policy(ACCOUNT, REGION) is None
    read = await domain.ops.get_registry_policy(PAYMENTS)
    assert (read.value, read.cache_outcome) == (None, "hit")  # the read-back, written through


async def test_validate_only_delete_plans_the_removal(domain: Domain) -> None:
    domain.ecr.set_policy(ACCOUNT, REGION, POLICY)
    planned = await domain.ops.delete_registry_policy(PAYMENTS, "", True)
    assert domain.ecr.policy(ACCOUNT, REGION) == POLICY
    assert planned.response.policy_text == POLICY
    assert planned.etag_after is None
    assert [(c.action, c.path) for c in planned.response.changes] == [
        ("remove", "policy_text.Statement[Sid=PaymentsPull]")
    ]


# --- PutReplicationConfiguration -----------------------------------------------------------


async def test_put_replication_writes_through_and_answers_the_read_back(domain: Domain) -> None:
    configuration = pb.ReplicationConfiguration(rules=[EU_RULE, WEST_RULE])
    written = await domain.ops.put_replication_configuration(PAYMENTS, configuration, "", False)
    assert list(domain.ecr.replication(ACCOUNT, REGION).rules) == [EU_RULE, WEST_RULE]
    assert written.etag_before == etags.of_json({"rules": []})
    assert written.response.etag == written.etag_after
    assert written.response.replication_configuration == configuration
    read = await domain.ops.describe_registry(PAYMENTS)
    assert read.cache_outcome == "hit"
    assert read.answer().etag == written.response.etag


async def test_put_replication_validate_only_plans_by_identity(domain: Domain) -> None:
    domain.ecr.set_replication(
        ACCOUNT, REGION, pb.ReplicationConfiguration(rules=[EU_RULE, WEST_RULE])
    )
    moved = pb.ReplicationConfiguration(rules=[WEST_RULE, EU_RULE])
    planned = await domain.ops.put_replication_configuration(PAYMENTS, moved, "", True)
    assert domain.ecr.writes() == []
    assert planned.etag_after is None
    assert [(c.action, c.path) for c in planned.response.changes] == [
        ("change", "replication_configuration.rules")
    ]


async def test_put_replication_with_a_stale_etag_writes_nothing(domain: Domain) -> None:
    before = (await domain.ops.describe_registry(PAYMENTS)).answer()
    domain.ecr.set_replication(ACCOUNT, REGION, pb.ReplicationConfiguration(rules=[EU_RULE]))
    with pytest.raises(EtagMismatch):
        await domain.ops.put_replication_configuration(
            PAYMENTS, pb.ReplicationConfiguration(rules=[WEST_RULE]), before.etag, False
        )
    assert list(domain.ecr.replication(ACCOUNT, REGION).rules) == [EU_RULE]


# --- failures, locks, concurrency ----------------------------------------------------------


async def test_a_failed_write_forgets_the_cached_value(domain: Domain) -> None:
    domain.ecr.set_policy(ACCOUNT, REGION, POLICY)
    await domain.ops.get_registry_policy(PAYMENTS)  # cached
    domain.ecr.fail_next["put_registry_policy"] = UpstreamFailure("ECR is down")
    with pytest.raises(UpstreamFailure) as caught:
        await domain.ops.put_registry_policy(PAYMENTS, OTHER_POLICY, "", False)
    assert etag_read_before(caught.value) == etags.of_policy(POLICY)
    # AWS may or may not have applied it: the next read goes to AWS.
    assert (await domain.ops.get_registry_policy(PAYMENTS)).cache_outcome == "miss"


async def test_an_abandoned_write_still_finishes_then_forgets_the_cached_value(
    domain: Domain,
) -> None:
    await domain.ops.get_registry_policy(PAYMENTS)  # "none", cached
    domain.ecr.hold_writes = asyncio.Event()
    write = asyncio.ensure_future(domain.ops.put_registry_policy(PAYMENTS, POLICY, "", False))
    while not domain.ecr.writes():
        await asyncio.sleep(0)
    write.cancel()  # the caller leaves while the write is at AWS
    await asyncio.sleep(0.01)
    assert not write.done()  # it waits for the write it sent
    domain.ecr.hold_writes.set()
    with pytest.raises(asyncio.CancelledError) as caught:
        await write
    assert domain.ecr.policy(ACCOUNT, REGION) == POLICY  # written once, not half
    assert etag_read_before(caught.value) == etags.ABSENT  # audited with what it read
    assert (await domain.ops.get_registry_policy(PAYMENTS)).cache_outcome == "miss"


class LostLocks:
    """In-process locks whose holder finds, before writing, that it lost the lock."""

    def __init__(self) -> None:
        self._locks = RegistryLocks()

    @asynccontextmanager
    async def hold(
        self, registry_id: str, region: str, *, within: float | None = None
    ) -> AsyncIterator[HeldLock]:
        async with self._locks.hold(registry_id, region, within=within):
            yield self

    async def held(self, registry_id: str, region: str) -> bool:
        return await self._locks.held(registry_id, region)

    async def held_elsewhere(self, registry_id: str, region: str) -> bool:
        return False

    async def ensure_owned(self) -> None:
        raise Unavailable("lost", reason="WRITE_LOCK_LOST")

    async def owned(self) -> bool:
        return False

    def remaining(self) -> float:
        return 0.0

    @asynccontextmanager
    async def writing(self, resource: str) -> AsyncIterator[None]:
        yield


async def test_ownership_is_checked_before_the_write(domain: Domain) -> None:
    ops = RegistryOperations(domain.ecr, LostLocks(), domain.cache)
    with pytest.raises(Unavailable) as caught:
        await ops.put_registry_policy(PAYMENTS, POLICY, "", False)
    assert caught.value.reason == "WRITE_LOCK_LOST"
    assert domain.ecr.writes() == []
    # validate_only writes nothing, so it needs no ownership check.
    await ops.put_registry_policy(PAYMENTS, POLICY, "", True)


async def test_writes_of_one_registry_go_one_at_a_time_on_fresh_reads(domain: Domain) -> None:
    domain.ecr.hold_writes = asyncio.Event()
    # Both ask to create only: the second runs after the first, reads fresh, and refuses.
    first = asyncio.ensure_future(
        domain.ops.put_registry_policy(PAYMENTS, POLICY, etags.ABSENT, False)
    )
    second = asyncio.ensure_future(
        domain.ops.put_registry_policy(PAYMENTS, OTHER_POLICY, etags.ABSENT, False)
    )
    await asyncio.sleep(0.01)
    assert len(domain.ecr.writes()) == 1  # the second waits for the lock
    domain.ecr.hold_writes.set()
    assert (await first).etag_before == etags.ABSENT
    with pytest.raises(EtagMismatch):
        await second
    assert domain.ecr.policy(ACCOUNT, REGION) == POLICY


async def test_a_tenant_has_a_bounded_number_of_writes_in_flight() -> None:
    domain = build(max_writes_per_tenant=1)
    domain.ecr.hold_writes = asyncio.Event()
    held = asyncio.ensure_future(domain.ops.put_registry_policy(PAYMENTS, POLICY, "", False))
    await asyncio.sleep(0.01)
    with pytest.raises(ResourceExhausted) as caught:
        await domain.ops.put_registry_policy(PAYMENTS, OTHER_POLICY, "", False)
    assert caught.value.reason == "WRITES_IN_FLIGHT"
    assert etag_read_before(caught.value) is None  # refused before reading anything
    # Another tenant is not refused: it queues for the lock.
    billing = asyncio.ensure_future(
        domain.ops.put_registry_policy(target("billing"), OTHER_POLICY, "", False)
    )
    await asyncio.sleep(0.01)
    assert not billing.done()
    domain.ecr.hold_writes.set()
    await held
    await billing
    assert domain.ecr.policy(ACCOUNT, REGION) == OTHER_POLICY
    # Once finished, the tenant may write again.
    await domain.ops.put_registry_policy(PAYMENTS, POLICY, "", False)


# --- one read-modify-write for every resource (service/registry/writes/resources.py) -------


class Unanswered(MemoryEcr):
    """ECR that applies each write, then its answer is lost (botocore's read timeout)."""

    async def put_registry_policy(
        self, target: Target, policy_text: str, *, finish_once_sent: bool = False
    ) -> str:
        await super().put_registry_policy(target, policy_text, finish_once_sent=finish_once_sent)
        raise UpstreamNoAnswer("read timeout", reason="UPSTREAM_UNREACHABLE")

    async def delete_registry_policy(
        self, target: Target, *, finish_once_sent: bool = False
    ) -> str:
        await super().delete_registry_policy(target, finish_once_sent=finish_once_sent)
        raise UpstreamNoAnswer("read timeout", reason="UPSTREAM_UNREACHABLE")

    async def put_replication_configuration(
        self,
        target: Target,
        configuration: pb.ReplicationConfiguration,
        *,
        finish_once_sent: bool = False,
    ) -> pb.ReplicationConfiguration:
        await super().put_replication_configuration(
            target, configuration, finish_once_sent=finish_once_sent
        )
        raise UpstreamNoAnswer("read timeout", reason="UPSTREAM_UNREACHABLE")


async def test_an_unanswered_put_answers_the_policy_its_read_back_holds() -> None:
    domain = build(Unanswered(rewrite_policy=root_arns))
    written = await domain.ops.put_registry_policy(PAYMENTS, POLICY, "", False)
    # AWS's form (root ARNs), as read back: not the text sent, which AWS never echoed.
    assert written.response.policy_text == root_arns(POLICY)
    assert written.etag_after == etags.of_policy(root_arns(POLICY))
    assert (await domain.ops.get_registry_policy(PAYMENTS)).cache_outcome == "hit"


async def test_an_unanswered_delete_answers_the_policy_it_deleted() -> None:
    domain = build(Unanswered())
    domain.ecr.set_policy(ACCOUNT, REGION, POLICY)
    deleted = await domain.ops.delete_registry_policy(PAYMENTS, "", False)
    assert deleted.response.policy_text == POLICY
    assert (deleted.etag_before, deleted.etag_after) == (etags.of_policy(POLICY), etags.ABSENT)


async def test_an_unanswered_replication_put_answers_its_read_back() -> None:
    domain = build(Unanswered())
    configuration = pb.ReplicationConfiguration(rules=[EU_RULE])
    written = await domain.ops.put_replication_configuration(PAYMENTS, configuration, "", False)
    assert list(written.response.replication_configuration.rules) == [EU_RULE]
    assert written.etag_after == (await domain.ops.describe_registry(PAYMENTS)).answer().etag


def test_each_resource_keeps_its_stored_name_and_its_reported_name() -> None:
    # Stored names key the cache, the history and the write markers in Redis: unchanged.
    assert [(k.stored_as, k.name) for k in KINDS.values()] == [
        ("registry", "replication"),
        ("policy", "policy"),
    ]
    assert kind_of(CacheKey(ACCOUNT, REGION, "registry")) is resources.REPLICATION
    assert kind_of(CacheKey(ACCOUNT, REGION, "policy")) is resources.POLICY


class Notes:
    """A resource of another kind, described in a few lines: one note per registry, stored
    here rather than in AWS, whose "AWS" upper-cases what it stores."""

    name = "note"
    stored_as: Resource = "policy"  # a test resource borrows a stored name (no drift here)

    def __init__(self) -> None:
        self.notes: dict[str, str] = {}
        self.puts: list[str] = []
        self.overwrite_with: str | None = None  # another writer's note, after the put

    async def read(
        self, ecr: EcrPort, target: Target, *, shared: bool = False
    ) -> tuple[str, NotFound | None]:
        return self.notes.get(target.registry_id, ""), None

    def entry(self, target: Target, value: str) -> Message | None:
        return convert.policy_response(target.registry_id, value)

    def etag(self, value: str) -> str:
        return etags.of_policy(value)

    def document(self, value: str) -> str:
        return value

    def with_document(self, like: str, document: str) -> str:
        return document

    def operation(self, proposed: str) -> str:
        return "put_note"

    def nothing_to_send(self, current: str, proposed: str) -> bool:
        return False

    async def put(self, ecr: EcrPort, target: Target, proposed: str) -> str:
        self.puts.append(proposed)
        self.notes[target.registry_id] = self.overwrite_with or proposed.upper()
        return proposed.upper()

    def taken(self, proposed: str, answered: str) -> str | None:
        return answered

    def holds(self, written: str, after: str, answered: str | None) -> bool:
        return after in (written, answered)

    def serialized(self, document: str) -> bytes:
        return document.encode()

    def parsed(self, stored: bytes) -> str:
        return stored.decode()

    def changes(self, before: str, after: str) -> list[Changed]:
        return []

    def owned_pieces(self, owner: Ownership) -> Mine:
        return lambda kind, data: False  # no slices of a note

    def value_bytes(self, value: str) -> bytes:
        return value.encode()

    def value_from(self, raw: bytes) -> str:
        return raw.decode()


async def test_a_new_resource_is_one_description_on_the_same_read_modify_write(
    domain: Domain,
) -> None:
    notes = Notes()
    kind: ResourceKind[str, str] = notes
    notes.notes[ACCOUNT] = "FIRST"

    planned = await domain.ops.update(kind, PAYMENTS, lambda now: now + " and second", True)
    assert (planned.done, planned.sent, notes.puts) == (False, False, [])

    update = await domain.ops.update(kind, PAYMENTS, lambda now: now + " and second", False)
    assert notes.puts == ["FIRST and second"]
    # Judged against AWS's form of what it took, written through, etags around it.
    assert (update.after, update.answered) == ("FIRST AND SECOND", "FIRST AND SECOND")
    assert (update.etag_before, update.etag_after) == (
        etags.of_policy("FIRST"),
        etags.of_policy("FIRST AND SECOND"),
    )
    cached = await domain.cache.get_or_load(key_of(kind, PAYMENTS), _no_load)
    assert isinstance(cached, pb.GetRegistryPolicyResponse)
    assert cached.policy_text == "FIRST AND SECOND"

    # The caller's precondition, checked in `change` under the lock, with the etag read.
    def stale(now: str) -> str:
        check_etag(etags.of_policy("FIRST"), etags.of_policy(now), PAYMENTS)
        return "third"

    with pytest.raises(EtagMismatch) as mismatch:
        await domain.ops.update(kind, PAYMENTS, stale, False)
    assert etag_read_before(mismatch.value) == etags.of_policy("FIRST AND SECOND")

    # Another writer's note read back: overwritten, the cache keeping what stands.
    notes.overwrite_with = "THEIRS"
    with pytest.raises(WriteOverwritten) as caught:
        await domain.ops.update(kind, PAYMENTS, lambda now: "mine", False)
    assert caught.value.metadata["currentEtag"] == etags.of_policy("THEIRS")
    cached = await domain.cache.get_or_load(key_of(kind, PAYMENTS), _no_load)
    assert isinstance(cached, pb.GetRegistryPolicyResponse)
    assert cached.policy_text == "THEIRS"


async def _no_load() -> Message:
    raise AssertionError("served from the cache, never loaded")
