"""Writes that queue on a registry's lock, applied together (group commit).

With real AWS one read-modify-write is three calls (the fresh read, the put, the read-back)
under the registry's lock; hundreds of teams writing their slices one after the other would
pass any deadline. So slice writes of one (registry, region, resource) queue here, and one
leader applies every change waiting in one read-modify-write (service/registry/writes/
operations.py `RegistryOperations._commit`: one fresh read, each change on its own in arrival
order, one put, one read-back, a verdict and an answer per caller).

This module is the queue alone, of any payload and answer (no AWS, no lock of its own):

- the leader is a task of its own context, like a cache load: it belongs to no caller, so no
  caller's departure cuts a batch half-way; each caller waits for its own answer. Each
  queued write keeps a copy of its caller's context (`Queued.context`), so that the commit
  can make the batch's put within the latest of its callers' deadlines as AWS sees them
  (service/call.py `time_left`): bounded before sending, never abandoned once sent;
- a write is *taken* when the leader applies its change (`Takes.take`); until then its caller
  may leave (its deadline, its cancellation) and it leaves the queue, nothing of it written;
  one taken is answered whatever its caller does (as a write sent to AWS today), and a
  caller that left meanwhile still waits for that answer before its cancellation goes on;
- a batch holds at most one write per tenant (the next waits for the next batch, in order:
  a tenant's writes stay serial, each judged on what the one before left) and at most
  `max_batch`; only writes of the same `affinity` go together (the credentials the batch
  writes with: a write is never sent with another tenant's role);
- a caller waits to be taken no longer than its `patience` (what its deadline leaves for a
  lock, service/state/locks.py `wait_budget`), then answers `tired()` (WRITE_LOCK_BUSY);
- a failure of the leader before it takes a batch (the registry's lock unavailable or busy:
  every writer of the registry would meet it) fails every write still queued, each with its
  own copy of the error; once it has taken one (the commit takes it before any AWS call, so
  that the fresh read is made with the batch's own credentials), only the writes it took and
  did not answer: another batch's failure (another tenant's credentials) is never another
  write's; the leader goes on while writes are queued.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import math
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)  # what writes queue on: (registry, region, resource)
P = TypeVar("P")  # what a queued write carries (its change, its caller)
R = TypeVar("R")  # what a queued write is answered


@dataclass(eq=False)
class Queued(Generic[P, R]):
    """One write waiting in (or taken from) a queue."""

    payload: P
    tenant: str
    affinity: Hashable  # only writes of one affinity go in one batch
    answer: asyncio.Future[R]
    # The caller's context as it queued (a copy): what bounds, through it, the AWS calls of
    # the caller's batch that precede sending its write (operations.py `_in_context`).
    context: contextvars.Context = field(default_factory=contextvars.Context)
    taken: bool = False
    seq: int = 0  # its place in arrival order
    # loop.time() past which its caller no longer waits to be taken, and what it is then
    # answered (`GroupCommit.submit`): a write given back untaken (`Takes.give_back`) after
    # it is answered so.
    patience_until: float = math.inf
    tired: Callable[[], BaseException] | None = None
    left: bool = False  # its caller was cancelled while it was taken

    def answered(self, result: R) -> None:
        """Answer the write (once)."""
        if not self.answer.done():
            self.answer.set_result(result)

    def failed(self, error: BaseException) -> None:
        """Answer the write with an error of its own (once)."""
        if not self.answer.done():
            self.answer.set_exception(error)


@dataclass
class Takes(Generic[P, R]):
    """What a leader's commit sees of its queue: whether anything waits, the first waiting,
    and the batch it takes (each write marked taken: from then on it is answered)."""

    _waiting: list[Queued[P, R]]
    _max_batch: int
    taken: list[Queued[P, R]] = field(default_factory=list)

    @property
    def waiting(self) -> tuple[Queued[P, R], ...]:
        """The writes waiting, in arrival order."""
        return tuple(self._waiting)

    @property
    def first(self) -> Queued[P, R] | None:
        """The write waiting longest, None when none waits."""
        return self._waiting[0] if self._waiting else None

    def take(self, exclude: frozenset[str] = frozenset()) -> list[Queued[P, R]]:
        """The next batch, in arrival order: at most one write per tenant (none of the
        tenants in `exclude`), of the first's affinity, at most `max_batch`; the others
        stay queued, in their order."""
        batch: list[Queued[P, R]] = []
        tenants: set[str] = set(exclude)
        rest: list[Queued[P, R]] = []
        for queued in self._waiting:
            fits = (
                len(batch) < self._max_batch
                and queued.tenant not in tenants
                and (not batch or queued.affinity == batch[0].affinity)
            )
            if fits:
                queued.taken = True
                tenants.add(queued.tenant)
                batch.append(queued)
            else:
                rest.append(queued)
        self._waiting[:] = rest
        self.taken.extend(batch)
        return batch

    def takeable(self, exclude: frozenset[str]) -> bool:
        """Whether a write waits of a tenant not in `exclude`."""
        return any(queued.tenant not in exclude for queued in self._waiting)

    def release(self, queued: Queued[P, R]) -> None:
        """A taken write answered by someone else than the commit (a task of its own): the
        leader no longer answers it if the commit does not."""
        if queued in self.taken:
            self.taken.remove(queued)

    def give_back(self, queued: Queued[P, R]) -> None:
        """A write taken but not applied (nothing of it written: operations.py hands writes
        to another replica, which may not take them), queued again at its place in arrival
        order, as if never taken; answered `tired()` at once when its caller's patience ran
        out meanwhile (its caller waits for an answer since it was taken)."""
        if queued.answer.done():
            return
        if queued in self.taken:
            self.taken.remove(queued)
        if queued.left:
            queued.answer.cancel()  # its caller is gone, and nothing of it was written
            return
        if asyncio.get_running_loop().time() >= queued.patience_until:
            queued.failed(queued.tired() if queued.tired is not None else TimeoutError())
            return
        queued.taken = False
        self._waiting.append(queued)
        self._waiting.sort(key=lambda each: each.seq)


# A leader's commit: takes the registry's lock, takes a batch, answers each write of it.
Commit = Callable[[K, Takes[P, R]], Awaitable[None]]


def copied(error: BaseException) -> BaseException:
    """An error of the caller's own, when one error fails many: each caller's answer carries
    its own fields (the etag it read), and one exception raised in many tasks would gather
    every one's traceback."""
    try:
        return copy.copy(error)
    except Exception:  # an exception that cannot be rebuilt from its args: the same one
        return error


class GroupCommit(Generic[K, P, R]):
    """Queues of writes per key, each drained by one leader task at a time."""

    def __init__(self, commit: Commit[K, P, R], *, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._commit = commit
        self._max_batch = max_batch
        self._queues: dict[K, list[Queued[P, R]]] = {}
        self._leaders: dict[K, asyncio.Task[None]] = {}
        self._arrivals = 0

    @property
    def max_batch(self) -> int:
        """The most writes one batch applies."""
        return self._max_batch

    def waiting(self, key: K) -> int:
        """How many writes wait on `key`, not taken yet."""
        return len(self._queues.get(key, ()))

    async def submit(
        self,
        key: K,
        payload: P,
        *,
        tenant: str,
        affinity: Hashable,
        patience: float,
        tired: Callable[[], BaseException],
    ) -> R:
        """Queue a write and wait for its answer (its result, or its error raised)."""
        loop = asyncio.get_running_loop()
        self._arrivals += 1
        queued: Queued[P, R] = Queued(
            payload,
            tenant,
            affinity,
            loop.create_future(),
            contextvars.copy_context(),
            seq=self._arrivals,
            patience_until=loop.time() + patience,
            tired=tired,
        )
        self._queues.setdefault(key, []).append(queued)
        self._lead(key)
        answer = queued.answer
        try:
            done, _ = await asyncio.wait(
                {answer}, timeout=None if math.isinf(patience) else patience
            )
            if not done:
                if not queued.taken:
                    self._leave(key, queued)
                    raise tired()
                await asyncio.wait({answer})  # taken: answered whatever its patience
        except asyncio.CancelledError:
            if not queued.taken:
                self._leave(key, queued)
                raise
            # Taken: the write goes on (the leader's); its caller hears the cancellation once
            # it is answered (or given back: `Takes.give_back`, nothing written). A second
            # cancellation cuts only this wait, never the write.
            queued.left = True
            await asyncio.wait({answer})
            if not answer.cancelled():
                answer.exception()  # retrieved: the caller has left
            raise
        return answer.result()

    def _leave(self, key: K, queued: Queued[P, R]) -> None:
        waiting = self._queues.get(key)
        if waiting is not None and queued in waiting:
            waiting.remove(queued)
        queued.answer.cancel()  # nobody waits for it

    def _lead(self, key: K) -> None:
        if key in self._leaders:
            return
        # Its own context: the leader belongs to no caller (no deadline, no call's trace).
        self._leaders[key] = asyncio.get_running_loop().create_task(
            self._leader(key), context=contextvars.Context()
        )

    async def _leader(self, key: K) -> None:
        try:
            while waiting := self._queues.get(key):
                takes = Takes(waiting, self._max_batch)
                try:
                    await self._commit(key, takes)
                except BaseException as exc:
                    # Before taking (the lock): every write still queued; after: the batch's
                    # unanswered alone.
                    failed = list(takes.taken) if takes.taken else list(waiting)
                    if not takes.taken:
                        waiting.clear()
                    for queued in failed:
                        queued.failed(copied(exc))
                    if not isinstance(exc, Exception):
                        raise  # cancelled (the loop closing): the finally answers the rest
                for queued in takes.taken:
                    # A commit answers every write it took; one it did not is not left waiting.
                    queued.failed(RuntimeError("a write taken into a batch was not answered"))
        finally:
            # No await between the empty queue seen above and this: a write queued after
            # it finds no leader and starts one.
            del self._leaders[key]
            left = self._queues.pop(key, [])
            for queued in left:
                queued.failed(RuntimeError("the write queue's leader stopped"))
