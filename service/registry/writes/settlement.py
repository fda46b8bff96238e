"""The settlement of a write once it is sent to AWS: the put, its read-back, the write-through
to the cache, the verdict on whether the write held, and its record in the history (or its
report as overwritten). `RegistryOperations` (service/registry/writes/operations.py) holds the
registry's lock around it and answers the caller from the verdict; what happens between the
AWS call and that answer, and when a write counts as held, is decided here alone. It is
written once for every resource (`Write`, `WriteSettlement.write`): what differs between a
replication configuration and a policy is their description (resources.py `ResourceKind`).

Put, read-back, write-through and record are one unit that a caller's leaving (its deadline)
does not cut (`_sent`): a write that reached AWS is always recorded, so no later read takes
it for a change made around the gateway. A read-back that still answers the state before
the write (AWS's reads may lag its writes) is read again a few times before it counts as
another writer's; one that answers neither that state nor the write's is another writer's
at once. A read-back that fails after the write records what AWS answered the write.

All of it runs under the registry's lock, and no longer than the lock stays valid: the
read-back (retries included) must end LOCK_MARGIN_SECONDS before the lock expires
(`HeldLock.remaining`), and the lock must still be owned (`HeldLock.owned`) before the
write-through and the record. Otherwise (a read-back AWS answers slowly after the caller
left, Redis lost the lock) another replica may be writing already: nothing is written
through nor recorded (the caller's `_writing` in operations.py forgets the key), a warning
is logged, and the caller, if still there, hears WRITE_LOCK_LOST (`locks.lock_lost`).

The read-back is compared, by meaning (service/registry/model/read_back.py), with what the write
wrote: when it holds, the write's version is recorded ("gateway") through the drift
detector (service/registry/writes/drift.py); when it does not, another writer's state stands: the
cache keeps the read-back (it is the truth), the drift detector reports it (`overwritten`),
and the caller answers WriteOverwritten (ABORTED, built by `overwritten`).

A slice write (service/registry/rpcs/slice_operations.py, `CallerSlice`) holds when the caller's
slice holds: a change to another tenant's part between the write and its read-back is not
the caller's to hear (it is answered OK) but the operators': it is reported as drift.

A group write (slice writes applied together under one lock, service/registry/writes/
group_commit.py) is one `Write` whose `writers` made `proposed` one after the other: one put,
one read-back, and a verdict per writer on its own slice (`Settled.verdicts`); its record is
one version per writer, in order, each its own author, the last the read-back
(`_settle_group`). AWS failing the put fails the whole group: the caller of each writer is
answered the error (operations.py), nothing is recorded.

A write sent to AWS that got no answer (`UpstreamNoAnswer`: botocore's read timeout, a
connection dropped after sending; service/aws/errors.py) has an unknown outcome, so it is
settled by its read-back alone: what holds what was written is the caller's write (recorded
as such, answered OK, never taken for drift); what still holds the state before it, after
the read-back's retries, was not applied (UNAVAILABLE `WRITE_NOT_APPLIED`: retry); another
writer's state is WRITE_OVERWRITTEN as above; and a read-back that fails too leaves the
outcome unknown (UNAVAILABLE `WRITE_OUTCOME_UNKNOWN`: read again before retrying), with
nothing recorded. A connection that failed before sending is answered as it is
(UPSTREAM_UNREACHABLE): nothing reached AWS.

Who writes (for the record) and the caller's deadline (for the read-back past it) come in as
data, the `WriteContext` (service/registry/writes/context.py) the servicer builds; nothing
here reads the call in flight.

At shutdown (service/app/server.py), once the grace period is over, no new write is sent
(`stop_writes`: a write reaching this point answers UNAVAILABLE `SHUTTING_DOWN`, nothing
written), and the gateway waits for the settlements in flight (`settled`) before it closes
the AWS clients, Redis and the audit trail, so a write sent before is still read back,
recorded and answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from service.auth.targets import Target
from service.aws.port import EcrPort
from service.errors import (
    DeadlineExceeded,
    GatewayError,
    Unavailable,
    UpstreamNoAnswer,
    WriteOverwritten,
)
from service.registry.model.slices import Ownership
from service.registry.writes.context import WriteContext
from service.registry.writes.drift import DriftDetector
from service.registry.writes.resources import ResourceKind, key_of
from service.state.cache import CacheKey, ReadCache
from service.state.locks import HeldLock, lock_lost

T = TypeVar("T")
V = TypeVar("V")  # a value as read from AWS (resources.py ResourceKind)
D = TypeVar("D")  # a document as written: pb.ReplicationConfiguration, or a policy's text

# A read-back that still answers the state before the write is read again after these many
# seconds (1 s in all) before it counts as another writer's: AWS's reads may lag its writes.
READ_BACK_RETRY_SECONDS = (0.1, 0.3, 0.6)
# The read-back must end this long before the lock expires: what follows it (the ownership
# check, the write-through, the record) is a few Redis calls.
LOCK_MARGIN_SECONDS = 1.0
# A write without an answer whose read-back says it was not applied, or says nothing: how
# long the caller waits before retrying (as for AWS unavailable).
RETRY_AFTER_SECONDS = 1.0

log = logging.getLogger("registry_gateway.settlement")


class _LockRunOut(Exception):
    """The read-back would outlast the registry's lock."""


@dataclass(frozen=True)
class CallerSlice(Generic[D]):
    """The caller's slice of a resource, for a slice write: whether the write holds is judged
    on it alone (service/registry/rpcs/slice_operations.py builds it from slices.Ownership)."""

    part: Callable[[D], D]  # the caller's part of a document, alone
    merged: Callable[[D, D], D]  # a document with its caller's part replaced by another's
    etag: Callable[[D], str]  # the etag of the caller's part of a document (its slice etag)


@dataclass(frozen=True)
class Writer(Generic[V, D]):
    """One caller of a group write (service/registry/writes/group_commit.py): its slice
    write, applied in arrival order on the document read fresh; judged on its slice alone,
    recorded as its own version."""

    target: Target
    context: WriteContext
    caller_slice: CallerSlice[D]
    value: V  # the value once its change was applied (on those of the writers before it)


class Verdict(enum.Enum):
    """What a write's read-back says of it."""

    HOLDS = "holds"  # AWS holds what was written
    SLICE_HOLDS = "slice_holds"  # the caller's slice holds; another part changed meanwhile
    OVERWRITTEN = "overwritten"  # another writer's state stands


@dataclass(frozen=True)
class Write(Generic[V, D]):
    """One write about to be sent to AWS: its resource, what it writes over what it read
    fresh, under which lock, for whom. `RegistryOperations.update` builds it under the lock."""

    kind: ResourceKind[V, D]
    target: Target
    current: V  # read fresh from AWS under `held`
    proposed: D
    held: HeldLock  # the registry's lock
    context: WriteContext
    caller_slice: CallerSlice[D] | None = None  # a slice write: judged on that slice
    # A group write: these writers' changes, in order, make `proposed`; each is judged on
    # its own slice and recorded as its own version (`caller_slice` is then None).
    writers: tuple[Writer[V, D], ...] = ()

    @property
    def key(self) -> CacheKey:
        """The resource's cache key (its history's and write marker's too)."""
        return key_of(self.kind, self.target)


@dataclass(frozen=True)
class Settled(Generic[V, D]):
    """A write settled: its read-back, what that says of it, and what AWS answered it."""

    after: V
    verdict: Verdict
    answered: D | None  # None: AWS did not answer (settled by the read-back alone)
    verdicts: tuple[Verdict, ...] = ()  # a group write: each writer's, in order


def _judged(
    holds: Callable[[D, D, D | None], bool],
    written: D,
    after: D,
    answered: D | None,
    caller_slice: CallerSlice[D] | None,
) -> Verdict:
    if holds(written, after, answered):
        return Verdict.HOLDS
    if caller_slice is not None:
        return _slice_judged(holds, written, after, answered, caller_slice)
    return Verdict.OVERWRITTEN


def _slice_judged(
    holds: Callable[[D, D, D | None], bool],
    written: D,
    after: D,
    answered: D | None,
    caller_slice: CallerSlice[D],
) -> Verdict:
    """A write whose whole does not hold: whether the caller's slice does."""
    part = caller_slice.part
    try:
        mine = holds(part(written), part(after), None if answered is None else part(answered))
    except GatewayError:
        mine = False  # what stands has no slice to tell (a policy that is not JSON)
    return Verdict.SLICE_HOLDS if mine else Verdict.OVERWRITTEN


def _group_judged(
    holds: Callable[[D, D, D | None], bool],
    written: D,
    after: D,
    answered: D | None,
    writers: tuple[Writer[Any, D], ...],
) -> tuple[Verdict, tuple[Verdict, ...]]:
    """A group write's verdict (OVERWRITTEN when any writer's is), and each writer's: on its
    own slice, so another writer's part changing meanwhile is not its to hear."""
    if holds(written, after, answered):
        return Verdict.HOLDS, (Verdict.HOLDS,) * len(writers)
    each = tuple(_slice_judged(holds, written, after, answered, w.caller_slice) for w in writers)
    overall = Verdict.OVERWRITTEN if Verdict.OVERWRITTEN in each else Verdict.SLICE_HOLDS
    return overall, each


def overwritten(target: Target, current_etag: str) -> WriteOverwritten:
    """The error a write whose verdict is OVERWRITTEN answers, naming the etag that stands."""
    return WriteOverwritten(
        f"the write was sent to AWS, but another writer's state now stands in registry "
        f"{target.registry_id} in {target.region} (a change made around the gateway "
        f"between the write and its read-back, or a write whose lock was lost): read "
        f"again, check whether your change is still wanted, and reapply it",
        metadata={
            "currentEtag": current_etag,
            "registryId": target.registry_id,
            "region": target.region,
        },
    )


def not_applied(target: Target, operation: str, current_etag: str) -> Unavailable:
    """The error of a write AWS did not answer whose read-back still holds the state before
    it (after the read-back's retries): not applied, safe to retry with the same etag."""
    return Unavailable(
        f"AWS ECR did not answer {operation} in time, and a read-back of registry "
        f"{target.registry_id} in {target.region} still holds the state before it: the write "
        f"was not applied; retry",
        reason="WRITE_NOT_APPLIED",
        metadata={
            "operation": operation,
            "currentEtag": current_etag,
            "registryId": target.registry_id,
            "region": target.region,
        },
        retry_after_seconds=RETRY_AFTER_SECONDS,
    )


def shutting_down(target: Target) -> Unavailable:
    """The error of a write that reaches AWS's door once the gateway has stopped sending
    writes (shutdown, the grace period over): nothing was sent, retry on another replica."""
    return Unavailable(
        f"the gateway is stopping: the write to registry {target.registry_id} in "
        f"{target.region} was not sent to AWS; retry (another replica will answer)",
        reason="SHUTTING_DOWN",
        metadata={"registryId": target.registry_id, "region": target.region},
        retry_after_seconds=RETRY_AFTER_SECONDS,
    )


def outcome_unknown(target: Target, operation: str) -> Unavailable:
    """The error of a write AWS did not answer whose read-back failed too: it may or may not
    have been applied. UNAVAILABLE, like WRITE_LOCK_LOST, the other write of unknown
    outcome: retried with its etag it is safe (at worst ETAG_MISMATCH); clients retry
    UNAVAILABLE writes only with one."""
    return Unavailable(
        f"AWS ECR did not answer {operation}, and registry {target.registry_id} in "
        f"{target.region} could not be read back: the write may or may not have been applied; "
        f"read again before retrying",
        reason="WRITE_OUTCOME_UNKNOWN",
        metadata={
            "operation": operation,
            "registryId": target.registry_id,
            "region": target.region,
        },
        retry_after_seconds=RETRY_AFTER_SECONDS,
    )


class WriteSettlement:
    """A write sent to AWS, settled: put, read back, write through, judge, record."""

    def __init__(
        self, ecr: EcrPort, cache: ReadCache, *, drift: DriftDetector | None = None
    ) -> None:
        self._ecr = ecr
        self._cache = cache
        self._drift = drift  # None: no history, no drift detection (unit tests)
        # Settlements running (each a task its caller's leaving does not cancel), and
        # whether new writes are still sent (False once the shutdown's grace period is over).
        self._settling: set[asyncio.Future[Any]] = set()
        self._sending = True

    @property
    def in_flight(self) -> int:
        """How many writes sent to AWS are being settled right now."""
        return sum(1 for task in self._settling if not task.done())

    def stop_writes(self) -> None:
        """Send no more writes to AWS (shutdown): each one that gets this far is refused
        (`shutting_down`); those already sent settle as usual."""
        self._sending = False

    async def settled(self) -> None:
        """Until every settlement running (and any that starts meanwhile) has ended; the
        caller bounds the wait (the shutdown)."""
        while pending := {task for task in self._settling if not task.done()}:
            await asyncio.wait(pending)

    async def write(self, write: Write[V, D]) -> Settled[V, D]:
        """Put `write.proposed` over `write.current` (read fresh under `write.held`, the
        registry's lock) as one unit a caller's leaving does not cut: the read-back, its
        verdict, and what AWS answered the write."""
        return await self._sent(write.target, self._write(write))

    async def _write(self, write: Write[V, D]) -> Settled[V, D]:
        """Put, read back, write through, record: one unit (run by `_sent`)."""
        kind, target, held, proposed = write.kind, write.target, write.held, write.proposed
        caller_slice = write.caller_slice
        answered: D | None = None  # None: AWS did not answer (the write was sent)
        with contextlib.suppress(UpstreamNoAnswer):  # sent: settled by the read-back alone
            answered = await kind.put(self._ecr, target, proposed)
        # AWS's own form of what it took, which the read-back may hold instead of `proposed`.
        form = None if answered is None else kind.taken(proposed, answered)
        etag_before = kind.etag(write.current)

        async def read() -> V:
            value, _ = await kind.read(self._ecr, target)
            return value

        def verdict(after: V) -> Verdict:
            if write.writers:
                whole, _ = _group_judged(
                    kind.holds, proposed, kind.document(after), form, write.writers
                )
                return whole
            return _judged(kind.holds, proposed, kind.document(after), form, caller_slice)

        try:
            after, judged = await _within(
                held,
                _read_back(
                    read,
                    verdict,
                    unchanged=lambda after: kind.etag(after) == etag_before,
                    context=write.context,
                ),
            )
        except _LockRunOut:
            raise _lost(target, "its read-back would outlast the lock") from None
        except Exception:
            if not await held.owned():
                raise _lost(target, "the lock was lost during its read-back") from None
            if answered is None:
                raise _unknown(target, kind.operation(proposed)) from None
            taken = proposed if form is None else form
            await self._record_answered(write, kind.with_document(write.current, taken))
            raise
        if not await held.owned():
            raise _lost(target, "the lock was lost during its read-back")
        if answered is None:
            unchanged = kind.etag(after) == etag_before
            _unanswered(target, kind.operation(proposed), judged, unchanged, etag_before)
        await self._cache.put(write.key, kind.entry(target, after))

        def expected() -> V:
            # The others' parts as written, the caller's as read back.
            assert caller_slice is not None
            mine = caller_slice.part(kind.document(after))
            return kind.with_document(after, caller_slice.merged(proposed, mine))

        if write.writers:
            _, verdicts = _group_judged(
                kind.holds, proposed, kind.document(after), form, write.writers
            )
            await self._settle_group(write, verdicts, after=after)
            return Settled(after, judged, answered, verdicts)
        await self._settle(write, judged, after=after, expected=expected)
        return Settled(after, judged, answered)

    async def _sent(self, target: Target, settling: Coroutine[Any, Any, T]) -> T:
        """A write sent to AWS is not abandoned half-way: if the caller leaves (its deadline
        passed, or the server cut the call at shutdown), the write, with its read-back and
        its record, still finishes, under the registry lock, before the cancellation goes
        on; the caller's `_writing` (operations.py) then forgets the key, and the audit line
        says CANCELLED (outcome unknown to the caller). Once `stop_writes` was called,
        nothing is sent (SHUTTING_DOWN)."""
        if not self._sending:
            settling.close()
            raise shutting_down(target)
        task = asyncio.ensure_future(settling)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: the caller has left, and `_writing` forgets the key
            raise

    # --- drift: recording the write, or reporting it overwritten -------------------------------

    async def _settle(
        self, write: Write[V, D], verdict: Verdict, *, after: V, expected: Callable[[], V]
    ) -> None:
        """After a write's read-back, written through to the cache: record the write's
        version, or report that another writer's state stands (`overwritten`).

        SLICE_HOLDS: the write is recorded as it left the resource (`expected`: the others'
        parts as written, the caller's as read back), then the read-back observed against it,
        so the other part's change is reported once as drift (`out_of_band_change`)."""
        if self._drift is None:
            return
        # Who writes, as the history and the audit name it (`context`: from the servicer).
        target, context, key = write.target, write.context, write.key
        tenant, who, rpc = target.tenant, context.identity, context.rpc
        etag_before = write.kind.etag(write.current)
        if verdict is Verdict.OVERWRITTEN:
            await self._drift.overwritten(
                key,
                write.proposed,
                after,
                etag_before=etag_before,
                tenant=tenant,
                identity=who,
                rpc=rpc,
                request_id=context.request_id,
            )
            return
        recorded = after if verdict is Verdict.HOLDS else expected()
        await self._drift.record_write(
            key,
            recorded,
            tenant=tenant,
            identity=who,
            rpc=rpc,
            etag_before=etag_before,
            mine=write.kind.owned_pieces(Ownership.of(target)),
        )
        if verdict is Verdict.SLICE_HOLDS:
            await self._drift.observe(key, after, started=self._drift.clock(), under_lock=True)

    async def _settle_group(
        self, write: Write[V, D], verdicts: tuple[Verdict, ...], *, after: V
    ) -> None:
        """After a group write's read-back, written through to the cache: one version per
        writer, in order, each its own (its tenant, identity and rpc), as the writes
        serialized one after the other would have left them: each writer's history entry
        is its own write, so each tenant sees the version where its slice changed. The
        last is the read-back AWS holds when the whole holds.

        Otherwise (another writer changed something between the put and the read-back) the
        versions are the ones written, then what stands: reported as overwritten, once per
        writer whose slice did not hold (which hears WRITE_OVERWRITTEN), else as drift
        (`out_of_band_change`, once)."""
        if self._drift is None:
            return
        kind, key = write.kind, write.key
        holds = all(verdict is Verdict.HOLDS for verdict in verdicts)
        etag = kind.etag(write.current)
        for i, writer in enumerate(write.writers):
            value = after if holds and i == len(write.writers) - 1 else writer.value
            await self._drift.record_write(
                key,
                value,
                tenant=writer.target.tenant,
                identity=writer.context.identity,
                rpc=writer.context.rpc,
                etag_before=etag,
                mine=kind.owned_pieces(Ownership.of(writer.target)),
            )
            etag = kind.etag(value)
        if holds:
            return
        lost = [w for w, v in zip(write.writers, verdicts, strict=True) if v is Verdict.OVERWRITTEN]
        for writer in lost:
            await self._drift.overwritten(
                key,
                write.proposed,
                after,
                etag_before=etag,
                tenant=writer.target.tenant,
                identity=writer.context.identity,
                rpc=writer.context.rpc,
                request_id=writer.context.request_id,
            )
        if not lost:
            await self._drift.observe(key, after, started=self._drift.clock(), under_lock=True)

    async def _record_answered(self, write: Write[V, D], answered: V) -> None:
        """A write reached AWS but its read-back failed: record what AWS answered the write
        as its version (the cache forgets the key), so that the next read does not report
        the gateway's own write as a change made around it (drift.py compares by meaning
        with a head the gateway wrote)."""
        if self._drift is None:
            return
        if write.writers:
            # A group write: its writers' versions in order, the last what AWS answered.
            etag = write.kind.etag(write.current)
            last = len(write.writers) - 1
            for i, writer in enumerate(write.writers):
                value = answered if i == last else writer.value
                await self._drift.record_write(
                    write.key,
                    value,
                    tenant=writer.target.tenant,
                    identity=writer.context.identity,
                    rpc=writer.context.rpc,
                    etag_before=etag,
                    mine=write.kind.owned_pieces(Ownership.of(writer.target)),
                )
                etag = write.kind.etag(value)
            return
        await self._drift.record_write(
            write.key,
            answered,
            tenant=write.target.tenant,
            identity=write.context.identity,
            rpc=write.context.rpc,
            etag_before=write.kind.etag(write.current),
            mine=write.kind.owned_pieces(Ownership.of(write.target)),
        )


def _unanswered(
    target: Target, operation: str, verdict: Verdict, unchanged: bool, etag_before: str
) -> None:
    """The read-back of a write AWS did not answer: raise WRITE_NOT_APPLIED when it still
    holds the state before the write (the retries of `_read_back` spent); otherwise log
    what it showed and let the settlement go on (held: the caller's write, recorded as
    such; another writer's state: WRITE_OVERWRITTEN)."""
    fields = {"tenant": target.tenant, "operation": operation}
    if verdict is Verdict.OVERWRITTEN and unchanged:
        log.warning(
            "AWS did not answer %s on registry %s in %s; its read-back holds the state "
            "before it: not applied",
            operation,
            target.registry_id,
            target.region,
            extra=fields,
        )
        raise not_applied(target, operation, etag_before)
    log.warning(
        "AWS did not answer %s on registry %s in %s; its read-back %s",
        operation,
        target.registry_id,
        target.region,
        "holds another writer's state"
        if verdict is Verdict.OVERWRITTEN
        else "holds the write: recorded as the caller's",
        extra=fields,
    )


def _unknown(target: Target, operation: str) -> GatewayError:
    """A write AWS did not answer whose read-back failed: nothing recorded (the caller's
    `_writing` forgets the key); WRITE_OUTCOME_UNKNOWN."""
    log.warning(
        "AWS did not answer %s on registry %s in %s and its read-back failed: outcome "
        "unknown, not recorded (if it was applied, the next read reports it as drift)",
        operation,
        target.registry_id,
        target.region,
        extra={"tenant": target.tenant, "operation": operation},
    )
    return outcome_unknown(target, operation)


def _lost(target: Target, why: str) -> GatewayError:
    """A write sent to AWS whose settlement cannot finish under its lock: nothing is written
    through nor recorded (the caller's `_writing` forgets the key); WRITE_LOCK_LOST."""
    log.warning(
        "write to registry %s in %s not recorded: %s; another writer may have written since",
        target.registry_id,
        target.region,
        why,
        extra={"tenant": target.tenant},
    )
    return lock_lost(target.registry_id, sent=True)


async def _within(held: HeldLock, settling: Coroutine[Any, Any, T]) -> T:
    """`settling`, ended LOCK_MARGIN_SECONDS before the lock expires (`_LockRunOut`). The
    lock's watchdog renews it meanwhile (service/state/locks.py), so its expiry is asked
    again each time the bound is reached, rather than once."""
    left = held.remaining()
    if math.isinf(left):
        return await settling
    if left - LOCK_MARGIN_SECONDS <= 0:
        settling.close()
        raise _LockRunOut
    task = asyncio.ensure_future(settling)
    try:
        while (left := held.remaining() - LOCK_MARGIN_SECONDS) > 0:
            done, _ = await asyncio.wait({task}, timeout=left)
            if done:
                return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieved: the lock ran out first
    raise _LockRunOut


async def _read_back(
    read: Callable[[], Coroutine[Any, Any, T]],
    verdict: Callable[[T], Verdict],
    *,
    unchanged: Callable[[T], bool],
    context: WriteContext,
) -> tuple[T, Verdict]:
    """The read-back of a write, and what it says of the write. A read-back that does not
    hold and still answers the state before the write (`unchanged`) may be a read that lags
    the write: read again after READ_BACK_RETRY_SECONDS before it counts as another
    writer's. The whole second is spent even past the caller's deadline (the caller then
    hears DEADLINE_EXCEEDED, never a false WRITE_OVERWRITTEN)."""
    delays = iter(READ_BACK_RETRY_SECONDS)
    while True:
        after = await _finished(read, context)
        judged = verdict(after)
        if judged is not Verdict.OVERWRITTEN or not unchanged(after):
            return after, judged
        delay = next(delays, None)
        if delay is None:
            return after, judged
        await asyncio.sleep(delay)


async def _finished(read: Callable[[], Coroutine[Any, Any, T]], context: WriteContext) -> T:
    """A read that belongs to a write already sent: within the caller's deadline while it
    waits, and once that has passed, outside it (`WriteContext.outlive`: bounded by the AWS
    client's own timeouts, like a cache load), so the write's outcome is still known."""
    left = context.time_left()
    if left > 0:
        # Bounded here too, not only by the AWS client's view of the call: a group write's
        # leader runs outside every call (group_commit.py), its context the group's deadline.
        bound = asyncio.timeout(None if math.isinf(left) else left)
        try:
            async with bound:
                return await read()
        except DeadlineExceeded:
            if context.time_left() > 0:
                raise
        except TimeoutError:
            if not bound.expired():
                raise
    return await context.outlive(read)
