"""A hostile review of the hand-over of slice writes between replicas (service/registry/
writes/handoff.py, operations.py `_commit` / `_hand_over` / `_hand_one` / `_adopt`), on the
domain with the in-memory ECR: the Redis lists replaced by an in-memory `HandOff` that can
inject the faults Redis can (a slow LREM, a reply lost after the command ran), and a lock
whose "held by another replica" the test sets. Each test states an invariant (group_commit.py,
handoff.py) that the first version of the hand-over broke; the docstrings say how it did."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from service import call as call_mod
from service import config as config_mod
from service.auth.content import ContentRules
from service.auth.targets import Target
from service.auth.tenancy import build_tenancy
from service.aws.memory import MemoryEcr
from service.errors import FailedPrecondition, GatewayError, Unavailable
from service.gen.v1 import registry_pb2 as pb
from service.registry.model import slices
from service.registry.rpcs.slice_operations import SliceOperations
from service.registry.rpcs.validation import RequestValidator
from service.registry.writes.context import WriteContext
from service.registry.writes.handoff import Handed, HandOffAway
from service.registry.writes.operations import RegistryOperations
from service.state.cache import CacheKey, MemoryStore, ReadCache
from service.state.locks import HeldLock, RegistryLocks
from tests.adversarial.test_group_commit import BROKEN_ROLE, BrokenRole, with_role
from tests.registry.conftest import ACCOUNT, CACHE, REGION, Clock, target

TENANTS = [f"team{i:02d}" for i in range(6)]
CONFIG = config_mod.from_mapping(
    {
        "tenants": [
            {
                "name": name,
                "registries": [
                    {
                        "registry_id": ACCOUNT,
                        "regions": [REGION],
                        "operations": ["PutReplicationRules", "GetReplicationRules"],
                        "owned_repository_prefixes": [f"{name}/"],
                        "owned_statement_sid_prefix": name.capitalize(),
                        "replication_destinations": [
                            {"registry_id": ACCOUNT, "regions": ["eu-west-1"]}
                        ],
                    }
                ],
            }
            for name in TENANTS
        ]
    },
    environ={},
)
WHO = {name: target(name, prefixes=(f"{name}/",), sid_prefix=name.capitalize()) for name in TENANTS}


def rules(*filters: str) -> list[pb.ReplicationRule]:
    return [
        pb.ReplicationRule(
            destinations=[pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT)],
            repository_filters=[
                pb.RepositoryFilter(filter=f, filter_type="PREFIX_MATCH") for f in filters
            ],
        )
    ]


def ctx(name: str, *, within: float = math.inf) -> WriteContext:
    deadline = math.inf if math.isinf(within) else asyncio.get_running_loop().time() + within
    return WriteContext(identity=f"api_key:{name}", rpc="PutReplicationRules", deadline=deadline)


@dataclass
class Lists:
    """The Redis lists every replica shares, with the faults a test injects."""

    requests: dict[CacheKey, list[bytes]] = field(default_factory=dict)
    answers: dict[str, list[bytes]] = field(default_factory=dict)
    given: list[bytes] = field(default_factory=list)
    # The n-th request given: its LREM answers this many seconds late (Redis latency).
    slow_withdraw: dict[int, float] = field(default_factory=dict)
    # Next give: RPUSH runs, its reply is lost (a socket timeout); pushed at once, or only
    # when `wake()` is called (a paused Redis runs the queued command when it resumes).
    lose_give_reply: bool = False
    push_on_wake: bool = False
    _deferred: list[tuple[CacheKey, bytes]] = field(default_factory=list)
    applied: dict[str, float] = field(default_factory=dict)

    def wake(self) -> None:
        for key, raw in self._deferred:
            self.requests.setdefault(key, []).append(raw)
        self._deferred.clear()


class MemoryHandOff:
    def __init__(self, lists: Lists, replica: str) -> None:
        self._lists = lists
        self._replica = replica

    @property
    def replica(self) -> str:
        return self._replica

    async def give(self, key: CacheKey, raw: bytes) -> None:
        self._lists.given.append(raw)
        if self._lists.lose_give_reply:
            self._lists.lose_give_reply = False
            if self._lists.push_on_wake:
                self._lists._deferred.append((key, raw))
            else:
                self._lists.requests.setdefault(key, []).append(raw)
            raise HandOffAway("TimeoutError")
        self._lists.requests.setdefault(key, []).append(raw)

    async def take(self, key: CacheKey, count: int) -> list[bytes]:
        waiting = self._lists.requests.setdefault(key, [])
        taken, waiting[:] = waiting[:count], waiting[count:]
        return taken

    async def put_back(self, key: CacheKey, raws: list[bytes]) -> None:
        waiting = self._lists.requests.setdefault(key, [])
        waiting[:0] = raws

    async def withdraw(self, key: CacheKey, raw: bytes) -> bool:
        delay = self._lists.slow_withdraw.get(self._lists.given.index(raw), 0.0)
        if delay:
            await asyncio.sleep(delay)
        waiting = self._lists.requests.setdefault(key, [])
        if raw in waiting:
            waiting.remove(raw)
            return True
        return False

    async def answer(self, key: CacheKey, replica: str, raw: bytes) -> None:
        self._lists.answers.setdefault(replica, []).append(raw)

    async def wait(self, key: CacheKey, request_id: str, within: float) -> bytes | None:
        give_up_at = time.monotonic() + within
        while True:
            mine = self._lists.answers.setdefault(self._replica, [])
            for raw in mine:
                if f'"id":"{request_id}"'.encode() in raw:
                    mine.remove(raw)
                    return raw
            if time.monotonic() >= give_up_at:
                return None
            await asyncio.sleep(0.01)

    def forget(self, request_id: str) -> None:
        return None

    async def applied(self, key: CacheKey, queued_at: Mapping[str, float]) -> None:
        for tenant, stamp in queued_at.items():
            self._lists.applied[tenant] = max(self._lists.applied.get(tenant, 0.0), stamp)

    async def last_applied(self, key: CacheKey, tenants: list[str]) -> dict[str, float]:
        return {t: self._lists.applied.get(t, 0.0) for t in tenants}


class ElsewhereLocks:
    """The in-process lock, plus "held by another replica" as the test says (the Redis key)."""

    def __init__(self, *, elsewhere: bool) -> None:
        self.inner = RegistryLocks(call_mod.time_left, max_wait_seconds=60.0)
        self.elsewhere = elsewhere
        self.unavailable = False  # Redis away: the lock cannot be granted

    @asynccontextmanager
    async def hold(
        self, registry_id: str, region: str, *, within: float | None = None
    ) -> AsyncIterator[HeldLock]:
        if self.unavailable:
            raise Unavailable("nothing was written", reason="WRITE_LOCK_UNAVAILABLE")
        async with self.inner.hold(registry_id, region, within=within) as held:
            yield held

    async def held(self, registry_id: str, region: str) -> bool:
        return self.elsewhere or await self.inner.held(registry_id, region)

    async def held_elsewhere(self, registry_id: str, region: str) -> bool:
        return self.elsewhere and not await self.inner.held(registry_id, region)

    async def writing(self, registry_id: str, region: str, resource: str) -> bool:
        return await self.inner.writing(registry_id, region, resource)


@dataclass
class Replica:
    ops: RegistryOperations
    slices: SliceOperations

    def put(self, who: Target, filters: list[pb.ReplicationRule], c: WriteContext) -> Any:
        return self.slices.put_rules(who, filters, "", False, context=c)


def replica(
    ecr: MemoryEcr,
    lists: Lists,
    locks: ElsewhereLocks,
    name: str,
    shared_now: Callable[[], Awaitable[float]] | None = None,
) -> Replica:
    cache = ReadCache(CACHE, MemoryStore(100), clock=Clock(), jitter=lambda: 1.0)
    ops = RegistryOperations(
        ecr,
        locks,
        cache,
        max_writes_per_tenant=4,
        max_writes_per_batch=50,
        handoff=MemoryHandOff(lists, name),
        shared_now=shared_now,
    )
    tenancy = build_tenancy(CONFIG, {})
    return Replica(
        ops, SliceOperations(ops, ContentRules(), RequestValidator(), tenancy=lambda: tenancy)
    )


def task(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    return asyncio.get_running_loop().create_task(coro)


async def handed(lists: Lists, count: int) -> None:
    for _ in range(500):
        if len(lists.given) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(lists.given)} requests handed, expected {count}")


async def leaders_done(rep: Replica) -> None:
    batches = rep.ops._batches
    assert batches is not None
    for _ in range(500):
        if not batches._leaders:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the leader is still running")


def stored(ecr: MemoryEcr, name: str) -> set[str]:
    owner = slices.Ownership.of(WHO[name])
    found = owner.rules_in(ecr.replication(ACCOUNT, REGION))
    return {f.filter for r in found for f in r.repository_filters}


# --- 1. writes back from a hand-over are batched across credentials -------------------------


async def test_writes_back_from_a_hand_over_keep_their_own_credentials() -> None:
    """group_commit.py: "only writes of the same affinity go together ... a write is never
    sent with another tenant's role". `_hand_over` takes a new batch every POLL_SECONDS, so
    team01 (a broken role) and team02 (the default role) are handed separately; when nobody
    takes them (the lock frees) both come back and `_one_per_tenant` puts them in ONE batch,
    written with the first one's credentials: either team02's valid write fails on team01's
    broken role, or team01's write is put with team02's role."""
    lists, locks, ecr = Lists(), ElsewhereLocks(elsewhere=True), BrokenRole()
    a = replica(ecr, lists, locks, "a")
    bad = task(a.put(with_role(WHO["team01"], BROKEN_ROLE), rules("team01/api"), ctx("team01")))
    await handed(lists, 1)
    good = task(a.put(WHO["team02"], rules("team02/api"), ctx("team02")))
    await handed(lists, 2)
    locks.elsewhere = False  # the holder let the lock go, having taken neither
    answers: tuple[Any, Any] = await asyncio.gather(bad, good, return_exceptions=True)
    bad_answer, good_answer = answers
    outcome = (type(bad_answer).__name__, type(good_answer).__name__)
    assert isinstance(bad_answer, FailedPrecondition), outcome  # team01's own role: refused
    assert not isinstance(good_answer, BaseException), outcome  # team02's: unharmed


# --- 2. one tenant's writes applied out of order --------------------------------------------


async def test_a_tenant_s_writes_back_from_a_hand_over_stay_in_arrival_order() -> None:
    """A tenant's writes "stay serial, each judged on what the one before left", in arrival
    order. `_hand_over` hands team01's second write while its first is still handed; each
    `_hand_one` withdraws on its own poll, and `back` is in the order they came back (one
    LREM answered late is enough): the later write is applied first and the earlier one
    overwrites it, though both callers were answered OK."""
    lists, locks, ecr = Lists(), ElsewhereLocks(elsewhere=True), MemoryEcr()
    lists.slow_withdraw = {0: 0.5}  # the first request's LREM answers 0.5 s late
    a = replica(ecr, lists, locks, "a")
    first = task(a.put(WHO["team01"], rules("team01/v1"), ctx("team01")))
    await handed(lists, 1)
    second = task(a.put(WHO["team01"], rules("team01/v2"), ctx("team01")))
    await asyncio.sleep(0.5)
    # A tenant has one write handed at a time: its second waits here, behind the first.
    assert len(lists.given) == 1
    locks.elsewhere = False
    await asyncio.gather(first, second)
    assert stored(ecr, "team01") == {"team01/v2"}  # the last write the tenant made stands


# --- 3. a give whose reply is lost: "nothing was written", then applied --------------------


async def test_a_request_whose_give_reply_was_lost_is_not_applied_after_nothing_written() -> None:
    """`_hand_one` treats HandOffAway from `give` as "not handed" (returns True). But a
    socket timeout (Redis paused, a slow network) does not mean the RPUSH did not run: a
    paused Redis runs it when it resumes. The caller's replica then fails the write with
    WRITE_LOCK_UNAVAILABLE ("nothing was written"), and the lock holder later takes the
    request from the list and applies it."""
    lists, ecr = Lists(), MemoryEcr()
    lists.lose_give_reply = lists.push_on_wake = True
    locks_a, locks_b = ElsewhereLocks(elsewhere=True), ElsewhereLocks(elsewhere=False)
    a, b = replica(ecr, lists, locks_a, "a"), replica(ecr, lists, locks_b, "b")
    locks_a.unavailable = True  # Redis paused: A's lock cannot be had either
    error = None
    try:
        await a.put(WHO["team01"], rules("team01/api"), ctx("team01", within=3))
    except GatewayError as exc:
        error = exc
    # Its request may be in the list: never told "nothing was written", but that the
    # outcome is unknown (and, below, not applied after it was told so).
    assert error is not None and error.reason == "WRITE_OUTCOME_UNKNOWN", error
    lists.wake()  # Redis resumes: the queued RPUSH runs
    await b.put(WHO["team02"], rules("team02/api"), ctx("team02"))  # B's next batch
    await leaders_done(b)
    assert stored(ecr, "team01") == set()  # team01 was told nothing was written


# --- 4. a write back from a hand-over cannot leave at its deadline --------------------------


async def test_a_write_back_from_a_hand_over_is_answered_within_its_deadline() -> None:
    """A writer waiting for the lock answers WRITE_LOCK_BUSY when its deadline leaves no time
    (group_commit.py `patience`). A write that came back from a hand-over is already taken
    (takes.take() in `_hand_over`) before the leader waits for the lock with no deadline of
    its own (max_wait, 60 s): when another writer takes the lock between the poll that saw
    it free and this leader, the caller can no longer leave and is held until that writer
    lets go (up to 60 s), far past its deadline (here the in-memory ECR, which never yields,
    even lets the write through past it)."""
    lists, locks, ecr = Lists(), ElsewhereLocks(elsewhere=True), MemoryEcr()
    a = replica(ecr, lists, locks, "a")
    loop = asyncio.get_running_loop()
    started = loop.time()
    write = task(a.put(WHO["team01"], rules("team01/api"), ctx("team01", within=1.5)))
    await handed(lists, 1)
    # Another writer takes the lock right as the holder lets it go (the poll sees it free).
    other_has_it = asyncio.Event()

    async def other_writer() -> None:
        async with locks.inner.hold_within(ACCOUNT, REGION, 1.0):
            other_has_it.set()
            await asyncio.sleep(3.0)  # its whole read-modify-write

    other = task(other_writer())
    await other_has_it.wait()
    locks.elsewhere = False
    locks.held = lambda *_: _false()  # type: ignore[method-assign]
    try:
        answer = await write
    except GatewayError as exc:
        answer = exc
    elapsed = loop.time() - started
    await other
    assert elapsed < 1.5, (round(elapsed, 2), answer)
    assert getattr(answer, "reason", None) == "WRITE_LOCK_BUSY", answer


async def _false() -> bool:
    return False


# --- 6. a request left in the list by a replica that died, applied over a later write -------


async def test_a_dead_replica_s_request_is_not_applied_over_its_tenant_s_later_write() -> None:
    """Replica A handed team01's v1 and was killed (SIGKILL) before anyone took it: its caller
    saw the connection drop and wrote v2 on replica B, the lock free. B's batch takes v2 from
    its own queue, takes v1 from the list (`_adopt`), puts it back (same tenant: "the next
    batch"), applies v2, then adopts v1 and applies it AFTER v2: the tenant's later write,
    answered OK, is silently overwritten by its earlier one."""
    lists, ecr = Lists(), MemoryEcr()
    b = replica(ecr, lists, ElsewhereLocks(elsewhere=False), "b")
    dead = Handed(
        id="dead-1",
        replica="a-killed",
        tenant="team01",
        rpc="PutReplicationRules",
        body=pb.PutReplicationRulesRequest(
            registry_id=ACCOUNT, region=REGION, rules=rules("team01/v1")
        ).SerializeToString(deterministic=True),
        identity="api_key:team01",
        request_id=None,
        patience_until=time.time() + 20,  # its caller's 20 s deadline, well within
        deadline=time.time() + 20,
    )
    lists.requests[CacheKey(ACCOUNT, REGION, "registry")] = [dead.encode()]
    later = await b.put(WHO["team01"], rules("team01/v2"), ctx("team01"))
    assert list(later.response.rules)  # answered OK, v2
    await leaders_done(b)  # B's leader goes on after answering v2
    assert stored(ecr, "team01") == {"team01/v2"}
