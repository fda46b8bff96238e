"""A second hostile review of the hand-over of slice writes between replicas (the redesign:
`Takes.give_back`, one handed write per tenant, `patience_until`, `HandOff.applied`). Reuses
the first review's in-memory lists and replicas (tests/registry/test_handoff_review.py).
Each test states an invariant the redesign broke (its docstring says how), held since the
fix."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from service.auth.targets import Target
from service.aws.memory import MemoryEcr
from service.errors import Unavailable
from service.gen.v1 import registry_pb2 as pb
from service.registry.writes import handing
from service.registry.writes.handoff import Handed
from service.state.cache import CacheKey
from tests.registry.conftest import ACCOUNT, REGION
from tests.registry.test_handoff_review import (
    WHO,
    ElsewhereLocks,
    Lists,
    ctx,
    handed,
    leaders_done,
    replica,
    rules,
    stored,
    task,
)


async def _false(*_: object) -> bool:
    return False


# --- 1. a cancelled caller whose write comes back is held past its deadline -----------------


async def test_a_cancelled_caller_whose_write_comes_back_leaves_by_its_deadline() -> None:
    """group_commit.py: until taken "its caller may leave (its deadline, its cancellation)
    and it leaves the queue, nothing of it written". A caller cancelled while its write is
    handed waits in `submit`'s second, unbounded `asyncio.wait({answer})` (taken: answered
    whatever). `_hand_one` then takes the request back (nobody took it) and `give_back`
    queues it again UNTAKEN, its patience not yet out: nothing bounds that wait any more
    (the patience timer was the first wait's). The leader waits for the lock with no
    deadline of its own (max_wait, 60 s): the cancelled call, and its slot in the tenant's
    writes in flight, are held until the other writer lets go, past the caller's deadline."""
    lists, locks, ecr = Lists(), ElsewhereLocks(elsewhere=True), MemoryEcr()
    a = replica(ecr, lists, locks, "a")
    loop = asyncio.get_running_loop()
    write = task(a.put(WHO["team01"], rules("team01/api"), ctx("team01", within=2.0)))
    await handed(lists, 1)
    other_has_it = asyncio.Event()

    async def other_writer() -> None:  # another writer here takes the lock for 4 s
        async with locks.inner.hold_within(ACCOUNT, REGION, 1.0):
            other_has_it.set()
            await asyncio.sleep(4.0)

    other = task(other_writer())
    await other_has_it.wait()
    write.cancel()  # the client went away while its write was handed
    cancelled_at = loop.time()
    locks.elsewhere = False
    locks.held = _false  # type: ignore[method-assign,assignment]  # the hand-over comes back untaken
    done, _ = await asyncio.wait({write}, timeout=2.5)  # past its 2 s deadline
    held_for = round(loop.time() - cancelled_at, 2)
    batches = a.ops._batches
    assert batches is not None
    back_untaken = batches.waiting(CacheKey(ACCOUNT, REGION, "registry"))
    await other
    await asyncio.gather(write, return_exceptions=True)
    assert done, f"cancelled, still held {held_for} s later; queued untaken: {back_untaken}"


# --- 2. the `applied` marker compares two replicas' wall clocks -----------------------------


def _dead_request(queued_at: float) -> bytes:
    return Handed(
        id="dead-1",
        replica="a-killed",
        tenant="team01",
        rpc="PutReplicationRules",
        body=pb.PutReplicationRulesRequest(
            registry_id=ACCOUNT, region=REGION, rules=rules("team01/v1")
        ).SerializeToString(deterministic=True),
        identity="api_key:team01",
        request_id=None,
        patience_until=time.time() + 1.5,  # within its take-by window
        deadline=time.time() + 20,
        queued_at=queued_at,
    ).encode()


class SkewedTime:
    """The `time` module with a clock `skew` seconds ahead (one replica's own clock)."""

    def __init__(self, skew: float) -> None:
        self._skew = skew

    def time(self) -> float:
        return time.time() + self._skew

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def shared(skew: float) -> Callable[[], Awaitable[float]]:
    """A replica's reading of the clock every replica shares (Redis's TIME, service/state/
    clock.py), its own clock `skew` seconds off: what `shared_now` gives the operations."""

    async def now() -> float:
        return (time.time() + skew) - skew  # its own clock, less the offset it measured

    return now


async def test_a_dead_replica_s_request_is_not_applied_over_a_later_write_with_clock_skew() -> None:
    """handoff.py: a request is "never applied after a later write of its tenant". The first
    version stamped `queued_at` with each replica's own wall clock: A (0.2 s ahead, within
    the NTP "fraction of a second") queued team01's v1, handed it and was killed; its caller
    wrote v2 on B at once. B applied v2, then adopted v1, whose A-clock stamp was later, and
    applied it over v2. Stamps are now on the shared clock (`shared_now`): v1's is earlier."""
    lists, ecr = Lists(), MemoryEcr()
    b = replica(ecr, lists, ElsewhereLocks(elsewhere=False), "b", shared_now=shared(-0.3))
    # A's stamp, on the shared clock, a moment before v2 (A's own clock, 0.2 s ahead, is
    # what the first version stamped: `time.time() + 0.2`).
    lists.requests[CacheKey(ACCOUNT, REGION, "registry")] = [_dead_request(time.time() - 0.05)]
    later = await b.put(WHO["team01"], rules("team01/v2"), ctx("team01"))
    assert list(later.response.rules)  # answered OK, v2
    await leaders_done(b)
    assert stored(ecr, "team01") == {"team01/v2"}


# --- 3. a write taken and never answered stalls every write of the replica ------------------


async def test_a_holder_that_dies_with_a_write_does_not_stall_the_others() -> None:
    """handoff.py: a handed write that comes back "waits for the lock there as any write
    does". But `_hand_over` returns only once EVERY write it handed is settled: team01's,
    taken by replica B which then died (its answer never comes), is waited for until its
    caller's deadline (here 5 s; 15 s without one). Meanwhile team02's write comes back
    (nobody holds the lock any more) and sits untaken in A's queue, the lock free, until
    its caller's patience runs out: WRITE_LOCK_BUSY ("another write held its write lock
    until your deadline") though nobody held it; every write queued on A meanwhile too."""
    lists, locks, ecr = Lists(), ElsewhereLocks(elsewhere=True), MemoryEcr()
    a = replica(ecr, lists, locks, "a")
    key = CacheKey(ACCOUNT, REGION, "registry")
    first = task(a.put(WHO["team01"], rules("team01/api"), ctx("team01", within=5.0)))
    await handed(lists, 1)
    lists.requests[key].clear()  # B takes team01's write ... and is killed (no answer)
    await asyncio.sleep(0.3)
    locks.elsewhere = False  # B's lock expires: free
    second = task(a.put(WHO["team02"], rules("team02/api"), ctx("team02", within=2.5)))
    answer = (await asyncio.gather(second, return_exceptions=True))[0]
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert not isinstance(answer, BaseException), repr(answer)
    assert stored(ecr, "team02") == {"team02/api"}


# --- 4. a write applied whose read-back failed is not recorded as applied ------------------


class ReadBackFails(MemoryEcr):
    """The put lands; the read-backs after it fail (AWS throttling), `reads_failing` of them."""

    reads_failing = 0

    async def put_replication_configuration(
        self,
        target: Target,
        configuration: pb.ReplicationConfiguration,
        *,
        finish_once_sent: bool = False,
    ) -> pb.ReplicationConfiguration:
        answer = await super().put_replication_configuration(
            target, configuration, finish_once_sent=finish_once_sent
        )
        self.reads_failing = READS_FAILING
        return answer

    async def describe_registry(
        self, target: Target, *, shared: bool = False
    ) -> pb.DescribeRegistryResponse:
        if self.reads_failing > 0:
            self.reads_failing -= 1
            raise Unavailable("throttled", reason="AWS_THROTTLED")
        return await super().describe_registry(target, shared=shared)


READS_FAILING = 1


async def test_a_write_whose_read_back_failed_is_still_recorded_as_applied() -> None:
    """`_record_applied` records a tenant's write as applied only when its caller was
    answered OK. team01's v2 is put (AWS took it), then its read-back fails: its caller is
    answered an error, and v2 is not recorded, though it stands in AWS. The request v1 of
    team01 that replica A (killed) left in the list, queued BEFORE v2 with in-sync clocks,
    is then adopted in B's next batch (`last_applied`: 0) and applied over v2."""
    lists, ecr = Lists(), ReadBackFails()
    b = replica(ecr, lists, ElsewhereLocks(elsewhere=False), "b")
    lists.requests[CacheKey(ACCOUNT, REGION, "registry")] = [_dead_request(time.time() - 0.05)]
    v2 = await asyncio.gather(
        b.put(WHO["team01"], rules("team01/v2"), ctx("team01")), return_exceptions=True
    )
    await leaders_done(b)
    assert stored(ecr, "team01") == {"team01/v2"}, v2  # v1 (older) never applied over v2


async def test_a_tenant_s_later_write_is_not_refused_as_superseded_with_clock_skew() -> None:
    """The other side: replica B (its own clock 0.3 s ahead of A's) applied team01's v1;
    0.1 s later team01 writes v2 on replica A, which hands it to B. With wall-clock stamps
    v2's was before v1's and B refused the tenant's LATER write as superseded; on the shared
    clock v1's stamp is B's reading of it, not B's own clock."""
    lists, ecr = Lists(), MemoryEcr()
    skew = 0.3

    async def b_shared() -> float:
        return time.time()  # B's own clock (time.time() + skew) less its measured offset

    b = replica(ecr, lists, ElsewhereLocks(elsewhere=False), "b", shared_now=b_shared)
    # B's own clock 0.3 s ahead while it writes v1: its stamp must not come from it.
    handing.time = SkewedTime(skew)  # type: ignore[attr-defined,assignment]
    try:
        await b.put(WHO["team01"], rules("team01/v1"), ctx("team01"))  # v1, stamped by B
        await leaders_done(b)
    finally:
        handing.time = time  # type: ignore[attr-defined]
    assert lists.applied["team01"] <= time.time() < lists.applied["team01"] + skew
    await asyncio.sleep(0.1)
    v2 = Handed(
        id="v2",
        replica="a",
        tenant="team01",
        rpc="PutReplicationRules",
        body=pb.PutReplicationRulesRequest(
            registry_id=ACCOUNT, region=REGION, rules=rules("team01/v2")
        ).SerializeToString(deterministic=True),
        identity="api_key:team01",
        request_id=None,
        patience_until=time.time() + 1.5,
        deadline=time.time() + 20,
        queued_at=time.time(),  # A's reading of the shared clock: now
    )
    lists.requests[CacheKey(ACCOUNT, REGION, "registry")] = [v2.encode()]
    await b.put(WHO["team02"], rules("team02/api"), ctx("team02"))  # B's batch adopts v2
    await leaders_done(b)
    answers = b"".join(lists.answers.get("a", []))
    assert b"WRITE_NOT_APPLIED" not in answers, answers[:200]
    assert stored(ecr, "team01") == {"team01/v2"}
