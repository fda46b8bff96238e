"""Slice writes handed between replicas (handoff.py's lists), both sides: this replica's
writes handed to the replica holding the registry's lock (`hand_over`: given, waited for,
taken back untaken, or answered), and the writes other replicas handed here, taken into this
replica's batch (`adopt`), recorded (`record_applied`) and answered (`answer_adopted`).
operations.py `RegistryOperations._commit` decides when: it owns the lock and the batches."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from service.errors import GatewayError, Unavailable
from service.registry.writes.context import WriteContext
from service.registry.writes.group_commit import Queued, Takes
from service.registry.writes.handoff import (
    POLL_SECONDS,
    TAKEN_GRACE_SECONDS,
    Handed,
    HandOff,
    HandOffAway,
    error_answer,
    not_judged,
    outcome_unknown,
    parse_answer,
    value_answer,
)
from service.registry.writes.resources import ResourceKind, key_of
from service.registry.writes.slice_write import Attempt, Rejudge, SliceWrite, Update
from service.state.cache import CacheKey
from service.state.locks import lock_busy, wait_budget

log = logging.getLogger("registry_gateway.operations")

V = TypeVar("V")  # a value as read from AWS (resources.py ResourceKind)
D = TypeVar("D")  # a document as written

Adopted = list[tuple[Handed, Queued[SliceWrite[Any, Any], Update[Any, Any]]]]


class LockView(Protocol):
    """What a hand-over asks of the registry's locks."""

    async def held(self, registry_id: str, region: str) -> bool:
        """Whether anyone holds (or waits here for) the registry's lock right now."""
        ...


# `_hand_one`'s answer for a write no replica took (nothing of it written).
_BACK = "back"


@dataclass(frozen=True)
class _Taken:
    """A handed write another replica took (or seemed to: its withdrawal found it gone)."""

    id: str
    raw: bytes  # the request as given, to withdraw it once past its take-by time
    take_by: float  # Unix time past which no replica takes it


def _taken(handed: Handed, raw: bytes) -> _Taken:
    return _Taken(handed.id, raw, handed.patience_until + TAKE_BY_MARGIN_SECONDS)


# How long a handed write waits to be taken before its replica takes it back (handoff.py),
# and past that, how long a replica may still take it (its replica's withdrawal racing).
UNTAKEN_SECONDS = 1.0
TAKE_BY_MARGIN_SECONDS = 0.5
HANDOFF_EXPIRED = "HANDOFF_EXPIRED"

# Before its caller's deadline, a handed write taken and not answered is answered
# WRITE_OUTCOME_UNKNOWN by this much: what the answer takes to reach the caller.
ANSWER_MARGIN_SECONDS = 0.25


def _expired_error(key: CacheKey) -> Unavailable:
    """What an applier answers a handed write taken past its time: its replica takes it back
    (nothing of it written) and applies it itself."""
    return Unavailable(
        "taken by the replica holding the lock past its time; nothing was written",
        reason=HANDOFF_EXPIRED,
        metadata={"registryId": key.registry_id, "region": key.region},
        retry_after_seconds=0.1,
    )


def _expired(raw: bytes) -> bool:
    parsed = parse_answer(raw)
    return (
        parsed is not None
        and isinstance(parsed[1], GatewayError)
        and parsed[1].reason == HANDOFF_EXPIRED
    )


def _superseded(key: CacheKey, tenant: str) -> Unavailable:
    return Unavailable(
        f"a later write of tenant {tenant[:64]} went into a write to AWS before this one "
        f"reached the replica holding registry {key.registry_id}'s write lock in {key.region}; "
        "nothing of this one was written: read your slice before writing again",
        reason="WRITE_NOT_APPLIED",
        metadata={"registryId": key.registry_id, "region": key.region},
        retry_after_seconds=1.0,
    )


class HandedWrites:
    """The hand-over's state on this replica: the lists, how to judge a handed request
    again (`serve`), the writes another replica took and has not answered (per key, their
    tenants: `exclusions`), and the clock writes are stamped with (`now`)."""

    def __init__(
        self,
        handoff: HandOff,
        locks: LockView,
        *,
        max_batch: int,
        count_handed: Callable[[str], None] = lambda outcome: None,
        shared_now: Callable[[], Awaitable[float]] | None = None,
    ) -> None:
        self._handoff = handoff
        self._locks = locks
        self._max_batch = max_batch
        self._rejudge: Rejudge | None = None
        self._count_handed = count_handed
        # When a slice write queued, on the clock every replica reads alike (Redis's TIME,
        # service/state/clock.py): what tells which of a tenant's writes came later across
        # replicas (`adopt`). Without one, this process's clock.
        self._shared_now = shared_now
        # Per key, the tenants with a write taken by another replica and not answered yet:
        # none of their next writes is applied or handed until it is (their order).
        self._awaiting: dict[CacheKey, Counter[str]] = {}
        self._detached: set[asyncio.Task[None]] = set()
        # Whether the lock was held, per key, as last asked (monotonic time, held): every
        # handed write polls it, and one Redis EXISTS answers all of them for a while.
        self._held_seen: dict[CacheKey, tuple[float, bool]] = {}

    async def _held(self, key: CacheKey) -> bool:
        """Whether anyone holds the registry's lock, asked at most every half poll."""
        seen = self._held_seen.get(key)
        if seen is not None and time.monotonic() - seen[0] < POLL_SECONDS / 2:
            return seen[1]
        held = await self._locks.held(key.registry_id, key.region)
        self._held_seen[key] = (time.monotonic(), held)
        return held

    def serve(self, rejudge: Rejudge) -> None:
        """Judge handed requests again with `rejudge` (the slice RPCs' side): from then on
        this replica hands its writes over and takes others'."""
        self._rejudge = rejudge

    @property
    def serving(self) -> bool:
        return self._rejudge is not None

    async def stop(self) -> None:
        """At shutdown, before Redis closes: the writes another replica took and has not
        answered are answered WRITE_OUTCOME_UNKNOWN now (their callers' calls end and are
        audited) rather than at their deadlines."""
        tasks = list(self._detached)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def now(self) -> float:
        return await self._shared_now() if self._shared_now is not None else time.time()

    def exclusions(self, key: CacheKey) -> frozenset[str]:
        """Tenants whose writes wait for an earlier one's answer from another replica."""
        awaiting = self._awaiting.get(key)
        return frozenset(t for t, n in awaiting.items() if n > 0) if awaiting else frozenset()

    async def record_applied(
        self, key: CacheKey, writes: list[Queued[SliceWrite[V, D], Update[V, D]]]
    ) -> None:
        """When the latest write of each tenant of `writes` that may be applied queued
        (handoff.py)."""
        latest: dict[str, float] = {}
        for queued in writes:
            # Recorded whatever its answer once its change went into a document sent: AWS
            # may hold it (a put answered late, a read-back that failed). Recording one AWS
            # refused only refuses an older handed write, nothing of which is written.
            if queued.payload.attempt.proposed:
                stamp = queued.payload.queued_at
                latest[queued.tenant] = max(latest.get(queued.tenant, 0.0), stamp)
        try:
            await self._handoff.applied(key, latest)
        except HandOffAway:
            log.warning("the writes applied on %s could not be recorded for hand-overs", key)

    async def hand_over(
        self,
        kind: ResourceKind[V, D],
        key: CacheKey,
        takes: Takes[SliceWrite[V, D], Update[V, D]],
    ) -> bool:
        """The writes waiting here handed to the replica holding the lock, each answered by
        it (or WRITE_LOCK_BUSY, or WRITE_OUTCOME_UNKNOWN), and those that queue here
        meanwhile too, until one comes back (nobody took it: the lock is free, or the holder
        takes nothing). One that comes back is queued again at its place, untaken (group_
        commit.py `Takes.give_back`): the lock, taken here next, applies it with the others
        in their order, their credentials and their callers' patience. A tenant has one write
        handed at a time, so that its writes stay in order. Whether one came back."""
        handing: dict[
            asyncio.Future[_Taken | str | None], Queued[SliceWrite[V, D], Update[V, D]]
        ] = {}
        came_back = False
        while True:
            if not came_back and takes.first is not None:
                busy = frozenset(queued.tenant for queued in handing.values())
                for queued in takes.take(exclude=busy | self.exclusions(key)):
                    handing[asyncio.ensure_future(self._hand_one(kind, key, queued))] = queued
            if not handing:
                return came_back
            done, _ = await asyncio.wait(
                handing, timeout=POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            for future in done:
                queued = handing.pop(future)
                if future.exception() is not None:
                    log.error(
                        "handing a write over failed on %s",
                        key,
                        extra={"error_type": type(future.exception()).__name__},
                    )
                    queued.failed(outcome_unknown(key.registry_id, key.region))
                elif future.result() == _BACK:
                    takes.give_back(queued)
                    came_back = True
                elif isinstance(taken := future.result(), _Taken):
                    # Taken by another replica: its answer is waited for on its own, so that
                    # the writes that come back meanwhile are not held behind it.
                    takes.release(queued)
                    self._await_taken(kind, key, queued, taken)

    async def _hand_one(
        self,
        kind: ResourceKind[V, D],
        key: CacheKey,
        queued: Queued[SliceWrite[V, D], Update[V, D]],
    ) -> _Taken | str | None:
        """One write handed over: None once answered; `_BACK` when no replica took it (it is
        this replica's to apply again: nothing of it was written); `_Taken` when another
        replica took it (or seemed to) and its answer is still to come (`_await_taken`)."""
        handoff = self._handoff
        item = queued.payload
        if item.request is None:
            return _BACK
        loop = asyncio.get_running_loop()
        time_left = item.context.time_left()
        patience = wait_budget(time_left, math.inf)
        now = time.time()
        # Taken by no replica past this (its own takes it back by then): a request left in
        # the list by a replica that died is applied, if at all, within a second.
        take_by = min(patience, UNTAKEN_SECONDS + TAKE_BY_MARGIN_SECONDS)
        handed = Handed(
            id=uuid.uuid4().hex,
            replica=handoff.replica,
            tenant=item.target.tenant,
            rpc=item.context.rpc or "",
            body=item.request,
            identity=item.context.identity,
            request_id=item.context.request_id,
            patience_until=now + take_by,
            deadline=now + time_left,
            queued_at=item.queued_at,
        )
        raw = handed.encode()
        try:
            await handoff.give(key, raw)
        except HandOffAway as away:
            if not away.maybe_sent:
                return _BACK  # not in the list: the lock, taken here, says what Redis does
            # It may be in the list all the same (a paused Redis runs it when it resumes):
            # handed, as far as anyone can tell.
        give_up_at = loop.time() + patience
        # Untaken this long, it is taken back and waits for the lock here as any write does:
        # a holder that takes nothing (a full-document write, a replica of an older version
        # during a rolling upgrade) costs a handed write at most this.
        untaken_until = loop.time() + UNTAKEN_SECONDS
        taken = False
        try:
            while True:
                left = give_up_at - loop.time()
                answer = await handoff.wait(key, handed.id, min(POLL_SECONDS, max(0.0, left)))
                if answer is not None:
                    if _expired(answer):
                        self._count_handed("returned")
                        return _BACK  # taken past its time: refused, nothing written
                    self._count_handed("answered")
                    self._answered(kind, queued, answer)
                    return None
                if left <= 0:
                    if await self._withdrawn(key, raw):
                        self._count_handed("lock_busy")
                        queued.failed(lock_busy(key.registry_id, key.region))
                        return None
                    taken = True
                    return _taken(handed, raw)  # taken meanwhile: its answer comes
                # Nobody holds the lock, so nobody will take it; or the holder does not take:
                # ours again, unless it was taken meanwhile.
                nobody = loop.time() >= untaken_until or not await self._held(key)
                if nobody:
                    if await self._withdrawn(key, raw):
                        self._count_handed("returned")
                        return _BACK
                    taken = True
                    return _taken(handed, raw)
        finally:
            if not taken:
                handoff.forget(handed.id)

    def _await_taken(
        self,
        kind: ResourceKind[V, D],
        key: CacheKey,
        queued: Queued[SliceWrite[V, D], Update[V, D]],
        taken: _Taken,
    ) -> None:
        """A handed write another replica took: answered as that replica answers it, before
        its caller's deadline (the caller then hears WRITE_OUTCOME_UNKNOWN, not
        DEADLINE_EXCEEDED), or without one within the time a write takes to settle; else its
        outcome is unknown. Meanwhile its tenant's next writes wait (`_exclusions`)."""
        awaiting = self._awaiting.setdefault(key, Counter())
        awaiting[queued.tenant] += 1
        task = asyncio.ensure_future(self._answer_taken(kind, key, queued, taken))
        self._detached.add(task)

        def done(_: asyncio.Task[None]) -> None:
            self._detached.discard(task)
            awaiting[queued.tenant] -= 1
            if awaiting[queued.tenant] <= 0:
                del awaiting[queued.tenant]

        task.add_done_callback(done)

    async def _answer_taken(
        self,
        kind: ResourceKind[V, D],
        key: CacheKey,
        queued: Queued[SliceWrite[V, D], Update[V, D]],
        taken: _Taken,
    ) -> None:
        handoff = self._handoff
        item = queued.payload
        loop = asyncio.get_running_loop()
        try:
            time_left = item.context.time_left()
            wait = (
                TAKEN_GRACE_SECONDS
                if math.isinf(time_left)
                else max(0.0, time_left - ANSWER_MARGIN_SECONDS)
            )
            give_up_at = loop.time() + wait
            # Past its take-by time no replica takes it: if it is still in the list (the
            # holder took it and put it back, as a batch that had no room for it does),
            # withdrawing it now proves nothing of it was written.
            past_take_by = loop.time() + max(0.0, taken.take_by - time.time())
            answer = None
            while answer is None and loop.time() < give_up_at:
                left = give_up_at - loop.time()
                answer = await handoff.wait(key, taken.id, min(POLL_SECONDS, left))
                if (
                    answer is None
                    and loop.time() >= past_take_by
                    and await self._withdrawn(key, taken.raw)
                ):
                    self._count_handed("lock_busy")
                    queued.failed(lock_busy(key.registry_id, key.region))
                    return
            if answer is not None and _expired(answer):
                # Refused past its time by the replica that took it: nothing written.
                self._count_handed("lock_busy")
                queued.failed(lock_busy(key.registry_id, key.region))
            elif answer is not None:
                self._count_handed("answered")
                self._answered(kind, queued, answer)
            else:
                self._count_handed("unknown")
                log.warning(
                    "a slice write of tenant %s handed over on registry %s in %s was taken "
                    "and not answered: outcome unknown",
                    item.target.tenant,
                    key.registry_id,
                    key.region,
                )
                queued.failed(outcome_unknown(key.registry_id, key.region))
        except BaseException:
            queued.failed(outcome_unknown(key.registry_id, key.region))
            raise
        finally:
            handoff.forget(taken.id)

    async def _withdrawn(self, key: CacheKey, raw: bytes) -> bool:
        """Whether a handed request was taken back (no replica took it). Redis not
        answering: not known, so it counts as taken (its answer is waited for)."""
        try:
            return await self._handoff.withdraw(key, raw)
        except HandOffAway:
            return False

    def _answered(
        self, kind: ResourceKind[V, D], queued: Queued[SliceWrite[V, D], Update[V, D]], raw: bytes
    ) -> None:
        """A handed write answered as the replica that applied it answered."""
        key = key_of(kind, queued.payload.target)
        parsed = parse_answer(raw)
        if parsed is None:
            queued.failed(outcome_unknown(key.registry_id, key.region))
            return
        _, result = parsed
        if isinstance(result, GatewayError):
            queued.failed(result)
            return
        try:
            before = kind.value_from(base64.b64decode(result["before"]))
            after = kind.value_from(base64.b64decode(result["after"]))
            update = Update(
                before,
                kind.document(after),
                after=after,
                done=True,
                sent=bool(result["sent"]),
                answered=None,
                etag_before=str(result["etag_before"]),
                etag_after=str(result["etag_after"]),
            )
        except (KeyError, ValueError, TypeError):
            queued.failed(outcome_unknown(key.registry_id, key.region))
            return
        queued.answered(update)

    async def adopt(
        self, key: CacheKey, batch: list[Queued[SliceWrite[Any, Any], Update[Any, Any]]]
    ) -> list[tuple[Handed, Queued[SliceWrite[Any, Any], Update[Any, Any]]]]:
        """The writes other replicas handed over, judged again here, that fit in `batch`
        (room left, one per tenant, the same credentials); the others back in the list, or
        answered at once (refused when judged again, or no longer waited for)."""
        assert self._rejudge is not None
        try:
            raws = await self._handoff.take(key, self._max_batch - len(batch))
        except HandOffAway:
            return []
        loop = asyncio.get_running_loop()
        tenants = {queued.tenant for queued in batch}
        affinity = batch[0].affinity if batch else None
        requests = [(raw, Handed.decode(raw)) for raw in raws]
        try:
            applied = await self._handoff.last_applied(
                key, sorted({h.tenant for _, h in requests if h is not None})
            )
        except HandOffAway:
            # Whether a later write of theirs went first cannot be told: not taken now.
            await self._put_back(key, raws)
            return []
        adopted: list[tuple[Handed, Queued[SliceWrite[Any, Any], Update[Any, Any]]]] = []
        back: list[bytes] = []
        refused: list[tuple[Handed, GatewayError]] = []
        now = time.time()
        for raw, handed in requests:
            if handed is None:
                log.warning("a handed-over write on %s could not be read; dropped", key)
                continue
            if handed.patience_until <= now:
                # Past its time (its replica takes it back): nothing of it is written.
                refused.append((handed, _expired_error(key)))
                continue
            if handed.queued_at < applied.get(handed.tenant, 0.0):
                # A later write of its tenant was applied first (its replica died with it
                # handed, and its caller wrote again elsewhere): never applied over it.
                refused.append((handed, _superseded(key, handed.tenant)))
                continue
            if handed.tenant in tenants:
                back.append(raw)  # a tenant's writes stay serial: the next batch
                continue
            try:
                judged = self._rejudge(key, handed)
            except GatewayError as error:
                refused.append((handed, error))
                continue
            except Exception:
                # Not judged: refused (never applied unjudged), and the batch goes on.
                log.exception("judging a handed-over write of tenant %s failed", handed.tenant)
                refused.append((handed, not_judged(key.registry_id, key.region)))
                continue
            registry = judged.target.registry
            credentials = (registry.role_arn, registry.external_id_env)
            if affinity is None:
                affinity = credentials
            if credentials != affinity:
                back.append(raw)  # written with other credentials: another batch
                continue
            tenants.add(handed.tenant)
            context = WriteContext(
                identity=handed.identity,
                rpc=handed.rpc,
                request_id=handed.request_id,
                deadline=math.inf
                if math.isinf(handed.deadline)
                else loop.time() + (handed.deadline - now),
            )
            payload: SliceWrite[Any, Any] = SliceWrite(
                judged.target,
                judged.change,
                judged.caller_slice,
                context,
                Attempt(),
                queued_at=handed.queued_at,
            )
            # Its own empty context: no call of this replica's bounds its AWS calls (its
            # caller's deadline bounds the batch's fresh read, through `context.deadline`).
            queued: Queued[SliceWrite[Any, Any], Update[Any, Any]] = Queued(
                payload, handed.tenant, affinity, loop.create_future(), contextvars.Context()
            )
            queued.taken = True
            adopted.append((handed, queued))
            self._count_handed("taken")
        await self._put_back(key, back)
        try:
            for handed, refusal in refused:
                await self._handoff.answer(key, handed.replica, error_answer(handed.id, refusal))
        except HandOffAway:
            pass  # their replicas' waits end them (taken: WRITE_OUTCOME_UNKNOWN)
        return adopted

    async def _put_back(self, key: CacheKey, raws: list[bytes]) -> None:
        try:
            await self._handoff.put_back(key, raws)
        except HandOffAway:
            # Lost with Redis: their replicas take them back (or answer them unknown).
            log.warning("%d handed-over writes on %s could not be put back", len(raws), key)

    async def answer_adopted(
        self,
        kind: ResourceKind[Any, Any],
        key: CacheKey,
        adopted: list[tuple[Handed, Queued[SliceWrite[Any, Any], Update[Any, Any]]]],
    ) -> None:
        """Each handed write's answer, to the replica that waits for it."""
        for handed, queued in adopted:
            answer = queued.answer
            if not answer.done():
                queued.failed(RuntimeError("a write taken into a batch was not answered"))
            error = answer.exception()
            if isinstance(error, GatewayError):
                raw = error_answer(handed.id, error)
            elif error is not None:
                raw = error_answer(handed.id, outcome_unknown(key.registry_id, key.region))
            else:
                update = answer.result()
                raw = value_answer(
                    handed.id,
                    {
                        "before": base64.b64encode(kind.value_bytes(update.before)).decode(),
                        "after": base64.b64encode(kind.value_bytes(update.after)).decode(),
                        "sent": update.sent,
                        "etag_before": update.etag_before,
                        "etag_after": update.etag_after,
                    },
                )
            try:
                await self._handoff.answer(key, handed.replica, raw)
            except HandOffAway:
                log.warning(
                    "the answer to a handed-over write of tenant %s could not be sent",
                    queued.tenant,
                )
