"""The five ECR operations as the gateway performs them: reads through the cache, writes
under the registry's lock. Every write is a read-modify-write of one resource through one
generic `update`, given the resource's description (service/registry/writes/resources.py:
how it is read, put, judged, cached) and a change function; `update_replication` and
`update_policy` are its typed entry points, answering `ReplicationUpdate` / `PolicyUpdate`.
The full writes (PutRegistryPolicy, DeleteRegistryPolicy, PutReplicationConfiguration) are
here, the slice writes in service/registry/rpcs/slice_operations.py. What happens once a
write is sent to AWS (read-back, write-through, whether it held, its record) is
service/registry/writes/settlement.py's (`WriteSettlement`), so this module owns the lock,
the fresh read and the answer.

A write takes the lock, reads the current value fresh from AWS (for the caller's etag
precondition, the plan and the audit trail) and writes that read through to the cache, so
that a caller refused (ETAG_MISMATCH) and reading again sees the state it was judged against
on any replica, not an older copy until the TTL (a write that reached AWS around the cache:
a replica killed before its write-through, a change made around the gateway). It then
re-checks it still owns the lock, then (unless validate_only) hands the write to the
settlement, which calls AWS, reads back inside the lock and writes that through to the
cache, so the etag it returns is the one every replica's next read sees. A write that fails
or is abandoned after calling AWS invalidates the cache (`_writing`): its outcome is
unknown. One whose verdict is OVERWRITTEN answers WriteOverwritten and leaves the read-back
in the cache (it is the truth).

Operations return what happened and write into nothing: a read answers a `Read` (the value
and how the cache served it), a write a `WriteResult` (the response and the etags around
it). A write that fails after its fresh read says which etag it read (`etag_read_before(error)`:
the field of its GatewayError), so the audit trail records it for failed writes too,
abandoned ones included. Who writes and the caller's deadline come in as data, a
`WriteContext` (service/registry/writes/context.py): nothing here reads the call in flight.

Slice writes (a `caller_slice`, not validate_only) queue on the registry's lock and are
applied together (group commit: service/registry/writes/group_commit.py, `_commit`): under
the lock, one fresh read, each waiting change applied on its own in arrival order on the
document the ones before it left (one per tenant, at most `max_writes_per_batch`; a change
that raises fails its caller alone), one put, one read-back, a verdict per caller on its own
slice, and each caller answered its own `Update`. A batch of one is the write of one caller,
exactly as without batching; a batch AWS refuses as invalid is sent again in halves
(`_halves`), so that only the caller whose document AWS refuses hears it, at the cost of
about 2*log2(N) more puts for one bad change among N. A batch holds writes of one
affinity (the same credentials) and its AWS calls are made with its own target
(`_batch_target`, on behalf of no one tenant when it holds several): a failure of its fresh
read fails its writes alone, never those of another batch still queued.

With a drift detector (service/registry/writes/drift.py), every read from AWS is observed against
the resource's history: here cache loads and the fresh read inside a write; the read-back,
in the settlement.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from google.protobuf.message import Message

from service.auth.targets import Target
from service.aws.port import EcrPort
from service.ecr import etags
from service.errors import (
    DeadlineExceeded,
    EtagMismatch,
    GatewayError,
    InvalidArgument,
    NotFound,
    QuotaViolation,
    ResourceExhausted,
    Unavailable,
)
from service.gen.v1 import registry_pb2 as pb
from service.registry.model import plan
from service.registry.writes.context import UNATTRIBUTED, WriteContext
from service.registry.writes.drift import DriftDetector
from service.registry.writes.group_commit import GroupCommit, Queued, Takes, copied
from service.registry.writes.handing import HandedWrites
from service.registry.writes.handoff import (
    POLL_SECONDS,
    Handed,
    HandOff,
)
from service.registry.writes.resources import (
    POLICY,
    REPLICATION,
    ResourceKind,
    cache_key,
    key_of,
    kind_of,
)
from service.registry.writes.settlement import (
    CallerSlice,
    Settled,
    Verdict,
    Write,
    Writer,
    WriteSettlement,
    overwritten,
)
from service.registry.writes.slice_write import Attempt, Rejudge, SliceWrite, Update
from service.state.cache import CacheKey, Outcome, ReadCache
from service.state.locks import HeldLock, lock_busy, wait_budget

log = logging.getLogger("registry_gateway.operations")

T = TypeVar("T")
M = TypeVar("M", bound=Message)
V = TypeVar("V")  # a value as read from AWS (resources.py ResourceKind)
D = TypeVar("D")  # a document as written


class Read(NamedTuple, Generic[T]):
    """A read through the cache: what it found, and how the cache served it (`x-cache`).

    A NamedTuple, not a frozen dataclass: one is built per read (a cached one too), and a
    frozen dataclass's `__init__` sets each field through `object.__setattr__`."""

    value: T | None  # None: there is none (a registry without a policy)
    cache_outcome: Outcome | None  # None: not served by the cache (negative caching off)
    not_found: NotFound | None = None  # what a caller asking for the missing value is told

    def answer(self) -> T:
        """The value, or the NotFound a caller asking for it is answered."""
        if self.value is None:
            assert self.not_found is not None
            raise self.not_found
        return self.value


_tuple_new = tuple.__new__


class _Etags(Protocol):
    """An update's etags: of the state it read fresh, and of the state it left."""

    @property
    def etag_before(self) -> str:
        """The etag of the state the change saw."""
        ...

    @property
    def etag_after(self) -> str | None:
        """The etag of the state read back; None: validate_only wrote nothing."""
        ...


@dataclass(frozen=True)
class WriteResult(Generic[T]):
    """What a write did: its response, and the etags around it for the audit trail."""

    response: T
    etag_before: str  # of the configuration read fresh inside the lock
    etag_after: str | None  # of the configuration read back; None: validate_only wrote nothing

    @classmethod
    def of(cls, response: T, update: _Etags) -> WriteResult[T]:
        """The result of a write that answers `response`, built from its update."""
        return cls(response, update.etag_before, update.etag_after)


@dataclass(frozen=True)
class ReplicationUpdate:
    """A read-modify-write of the replication configuration: before, asked, after (the
    typed view of an `Update` of REPLICATION that slice writes and responses read)."""

    before: pb.DescribeRegistryResponse  # read fresh from AWS inside the lock
    proposed: pb.ReplicationConfiguration
    after: pb.DescribeRegistryResponse | None  # read back after the write; None: validate_only

    @property
    def etag_before(self) -> str:
        """The etag of the configuration the change saw."""
        return self.before.etag

    @property
    def etag_after(self) -> str | None:
        """The etag of the configuration read back; None with validate_only."""
        return None if self.after is None else self.after.etag

    @classmethod
    def of(
        cls, update: Update[pb.DescribeRegistryResponse, pb.ReplicationConfiguration]
    ) -> ReplicationUpdate:
        """The typed view of a replication update."""
        return cls(update.before, update.proposed, update.after if update.done else None)


@dataclass(frozen=True)
class PolicyUpdate:
    """A read-modify-write of the registry policy: before, asked, after (None: no policy)
    (the typed view of an `Update` of POLICY)."""

    before: str | None  # read fresh from AWS inside the lock
    proposed: str | None
    after: str | None  # read back after the write (validate_only: the current one)
    done: bool  # False with validate_only
    # What AWS answered the write: the policy it took, or the one it deleted; None: no call.
    answered: str | None = None

    @property
    def etag_before(self) -> str:
        """The etag of the policy the change saw."""
        return etags.of_policy(self.before)

    @property
    def etag_after(self) -> str | None:
        """The etag of the policy read back; None with validate_only."""
        return etags.of_policy(self.after) if self.done else None

    @classmethod
    def of(cls, update: Update[str | None, str | None]) -> PolicyUpdate:
        """The typed view of a policy update."""
        answered = update.answered
        if update.sent and answered is None:
            # AWS did not answer; the read-back settled the write. A delete took the policy
            # before; a put, what now stands (AWS's form of it).
            if update.proposed is None:
                answered = update.before or ""
            else:
                answered = update.proposed if update.after is None else update.after
        return cls(update.before, update.proposed, update.after, update.done, answered)


def etag_read_before(error: BaseException) -> str | None:
    """The etag a write read inside the lock before it failed with `error`; None when it
    failed before reading (refused, lock unavailable, AWS unreachable on the read).

    A GatewayError carries it as its field (`GatewayError.etag_read_before`). An abandoned
    write fails with the caller's CancelledError, which must stay that very type
    (asyncio.timeout turns only `exc_type is CancelledError` into TimeoutError, so neither a
    subclass nor a wrapper will do), and an unexpected error is not the gateway's to type:
    on those the same attribute is set (`_update`)."""
    if isinstance(error, GatewayError):
        return error.etag_read_before
    etag = getattr(error, _ETAG_READ_BEFORE, None)
    return etag if isinstance(etag, str) else None


# The attribute an abandoned write's CancelledError carries, named as GatewayError's field.
_ETAG_READ_BEFORE = "etag_read_before"


class Locks(Protocol):
    """Per-registry write locks (in-process or in Redis)."""

    def hold(
        self, registry_id: str, region: str, *, within: float | None = None
    ) -> AbstractAsyncContextManager[HeldLock]:
        """An async context manager holding the registry's lock (waited for at most
        `within` seconds when given: else WRITE_LOCK_BUSY)."""
        ...

    async def held(self, registry_id: str, region: str) -> bool:
        """Whether anyone holds (or waits here for) the registry's lock right now."""
        ...

    async def held_elsewhere(self, registry_id: str, region: str) -> bool:
        """Whether another replica holds the registry's lock (and nobody here)."""
        ...


@dataclass(frozen=True)
class _Applied(Generic[V, D]):
    """A slice write of a batch whose change was applied: on what, and what it made."""

    queued: Queued[SliceWrite[V, D], Update[V, D]]
    before: V  # the value its change saw (the writers' before it applied)
    proposed: D  # what its change answered
    value: V  # the value once applied


def _with_etag(error: BaseException, etag: str | None) -> BaseException:
    """`error` saying the etag its write read (`etag_read_before`)."""
    if etag is not None:
        if isinstance(error, GatewayError):
            error.etag_read_before = etag
        else:
            setattr(error, _ETAG_READ_BEFORE, etag)
    return error


class RegistryOperations:
    """Reads and writes of registry configuration through the cache and the ECR port."""

    def __init__(
        self,
        ecr: EcrPort,
        locks: Locks,
        cache: ReadCache,
        *,
        max_writes_per_tenant: int = 4,
        max_writes_per_batch: int = 1,
        drift: DriftDetector | None = None,
        handoff: HandOff | None = None,
        count_handed: Callable[[str], None] = lambda outcome: None,
        shared_now: Callable[[], Awaitable[float]] | None = None,
    ) -> None:
        self._ecr = ecr
        self._locks = locks
        self._cache = cache
        self._drift = drift  # None: no history, no drift detection (unit tests)
        self._settlement = WriteSettlement(ecr, cache, drift=drift)
        self._max_writes_per_tenant = max_writes_per_tenant
        self._in_flight: dict[tuple[str, str, str], int] = {}
        # Slice writes queued on a registry's lock, applied together (group_commit.py);
        # None (one write per batch): each takes the lock alone.
        self._batches: GroupCommit[CacheKey, SliceWrite[Any, Any], Update[Any, Any]] | None = (
            GroupCommit(self._commit, max_batch=max_writes_per_batch)
            if max_writes_per_batch > 1
            else None
        )
        # Slice writes handed to the replica holding the lock (handing.py, handoff.py), once
        # the slice RPCs' side says how to judge a handed request again (`serve_handed`).
        self._handed = (
            HandedWrites(
                handoff,
                locks,
                max_batch=max_writes_per_batch,
                count_handed=count_handed,
                shared_now=shared_now,
            )
            if handoff is not None and self._batches is not None
            else None
        )

    def serve_handed(self, rejudge: Rejudge) -> None:
        """Take slice writes other replicas hand over, judged again by `rejudge`; and hand
        this replica's over while another holds the lock (with a `handoff` only)."""
        if self._handed is not None:
            self._handed.serve(rejudge)

    def _handing(self) -> HandedWrites | None:
        """The hand-over, when this replica hands writes over and takes others'."""
        handed = self._handed
        return handed if handed is not None and handed.serving else None

    async def stop_handing(self) -> None:
        """At shutdown, before Redis closes (handing.py `HandedWrites.stop`)."""
        if self._handed is not None:
            await self._handed.stop()

    @property
    def settlement(self) -> WriteSettlement:
        """The writes sent to AWS: the shutdown stops new ones and waits for these."""
        return self._settlement

    # --- reads -------------------------------------------------------------------------------

    # The two reads return `_read`'s own coroutine, not one more around it (every cached
    # read runs one of them); awaited as before.
    def describe_registry(
        self, target: Target, *, fresh: bool = False
    ) -> Coroutine[Any, Any, Read[pb.DescribeRegistryResponse]]:
        """DescribeRegistry of the target through the cache, with the configuration's etag."""
        return self._read(REPLICATION, target, fresh, pb.DescribeRegistryResponse)

    def get_registry_policy(
        self, target: Target, *, fresh: bool = False
    ) -> Coroutine[Any, Any, Read[pb.GetRegistryPolicyResponse]]:
        """GetRegistryPolicy of the target through the cache; no policy (cached too) is a
        Read without a value, whose `answer()` is NotFound."""
        return self._read(POLICY, target, fresh, pb.GetRegistryPolicyResponse)

    async def _read(
        self, kind: ResourceKind[Any, Any], target: Target, fresh: bool, answer: type[M]
    ) -> Read[M]:
        outcomes: list[Outcome] = []
        try:
            value = await self._cache.get_or_load(
                # `key_of`, written out (every read runs it).
                cache_key(target.registry_id, target.region, kind.stored_as),
                # A cache load is shared: see `shared` in service/aws/port.py. A partial,
                # not a closure made per read.
                functools.partial(self._load, kind, target),
                fresh=fresh,
                on_outcome=outcomes.append,
            )
        except NotFound as exc:
            # Served from the cache (a negative entry) or not (negative caching off).
            return Read(None, outcomes[0] if outcomes else None, exc)
        assert isinstance(value, answer)
        # `Read(value, outcomes[0])`, built as the tuple it is (no frame of NamedTuple's
        # generated `__new__`: this is every cached read's result).
        return _tuple_new(Read, (value, outcomes[0], None))

    async def _load(self, kind: ResourceKind[V, D], target: Target) -> Message:
        started = self._started()
        value, missing = await kind.read(self._ecr, target, shared=True)
        await self._observe(key_of(kind, target), value, started)
        entry = kind.entry(target, value)
        if entry is None:
            assert missing is not None
            raise missing  # kept by the cache as a negative entry
        return entry

    # --- drift: what every read from AWS is compared with --------------------------------------

    def _started(self) -> float:
        return self._drift.clock() if self._drift is not None else 0.0

    async def _observe(
        self, key: CacheKey, value: object, started: float, *, under_lock: bool = False
    ) -> None:
        if self._drift is not None:
            await self._drift.observe(key, value, started=started, under_lock=under_lock)

    # --- the full writes ---------------------------------------------------------------------

    async def put_registry_policy(
        self,
        target: Target,
        policy_text: str,
        etag: str,
        validate_only: bool,
        *,
        context: WriteContext = UNATTRIBUTED,
    ) -> WriteResult[pb.PutRegistryPolicyResponse]:
        """Set the registry policy if `etag` (when given; "absent": none yet) still holds."""

        def replace(current: str | None) -> str:
            check_etag(etag, etags.of_policy(current), target)
            return policy_text

        update = await self.update_policy(target, replace, validate_only, context=context)
        if not update.done:
            return WriteResult.of(
                pb.PutRegistryPolicyResponse(
                    registry_id=target.registry_id,
                    policy_text=policy_text,
                    etag=update.etag_before,
                    changes=plan.policy_changes(update.before, policy_text),
                ),
                update,
            )
        return WriteResult.of(
            pb.PutRegistryPolicyResponse(
                registry_id=target.registry_id,
                policy_text=policy_text if update.answered is None else update.answered,
                etag=etags.of_policy(update.after),
            ),
            update,
        )

    async def delete_registry_policy(
        self,
        target: Target,
        etag: str,
        validate_only: bool,
        *,
        context: WriteContext = UNATTRIBUTED,
    ) -> WriteResult[pb.DeleteRegistryPolicyResponse]:
        """Delete the registry policy if `etag` (when given) still holds; NotFound if none."""

        def remove(current: str | None) -> None:
            check_etag(etag, etags.of_policy(current), target)
            if current is None:
                raise NotFound(
                    "the registry has no registry policy", reason="REGISTRY_POLICY_NOT_FOUND"
                )

        update = await self.update_policy(target, remove, validate_only, context=context)
        if not update.done:
            return WriteResult.of(
                pb.DeleteRegistryPolicyResponse(
                    registry_id=target.registry_id,
                    policy_text=update.before or "",
                    etag=update.etag_before,
                    changes=plan.policy_changes(update.before, None),
                ),
                update,
            )
        return WriteResult.of(
            pb.DeleteRegistryPolicyResponse(
                registry_id=target.registry_id,
                policy_text=update.answered or "",
                etag=etags.of_policy(update.after),
            ),
            update,
        )

    async def put_replication_configuration(
        self,
        target: Target,
        configuration: pb.ReplicationConfiguration,
        etag: str,
        validate_only: bool,
        *,
        context: WriteContext = UNATTRIBUTED,
    ) -> WriteResult[pb.PutReplicationConfigurationResponse]:
        """Replace the replication configuration if `etag` (when given) still holds."""

        def replace(current: pb.DescribeRegistryResponse) -> pb.ReplicationConfiguration:
            check_etag(etag, current.etag, target)
            return configuration

        update = await self.update_replication(target, replace, validate_only, context=context)
        if update.after is None:
            return WriteResult.of(
                pb.PutReplicationConfigurationResponse(
                    replication_configuration=configuration,
                    etag=update.before.etag,
                    registry_id=update.before.registry_id or target.registry_id,
                    changes=plan.replication_changes(
                        update.before.replication_configuration, configuration
                    ),
                ),
                update,
            )
        return WriteResult.of(
            pb.PutReplicationConfigurationResponse(
                replication_configuration=update.after.replication_configuration,
                etag=update.after.etag,
                registry_id=update.after.registry_id or target.registry_id,
            ),
            update,
        )

    # --- the read-modify-write: one, generic; a typed entry point per resource -------------

    async def update_replication(
        self,
        target: Target,
        change: Callable[[pb.DescribeRegistryResponse], pb.ReplicationConfiguration],
        validate_only: bool,
        *,
        caller_slice: CallerSlice[pb.ReplicationConfiguration] | None = None,
        context: WriteContext = UNATTRIBUTED,
        request: bytes | None = None,
    ) -> ReplicationUpdate:
        """Read-modify-write of the replication configuration (`update` of REPLICATION).

        `change` sees DescribeRegistry's answer read fresh from AWS inside the lock and
        answers the configuration to write. With validate_only nothing is written and
        `after` is None."""
        update = await self.update(
            REPLICATION,
            target,
            change,
            validate_only,
            caller_slice=caller_slice,
            context=context,
            request=request,
        )
        return ReplicationUpdate.of(update)

    async def update_policy(
        self,
        target: Target,
        change: Callable[[str | None], str | None],
        validate_only: bool,
        *,
        caller_slice: CallerSlice[str | None] | None = None,
        context: WriteContext = UNATTRIBUTED,
        request: bytes | None = None,
    ) -> PolicyUpdate:
        """Read-modify-write of the registry policy (`update` of POLICY).

        `change` sees the policy read fresh from AWS inside the lock (None: there is none)
        and answers the one to write, None to have none (DeleteRegistryPolicy, or nothing
        when there is none already). With validate_only, `after` is the current policy."""
        update = await self.update(
            POLICY,
            target,
            change,
            validate_only,
            caller_slice=caller_slice,
            context=context,
            request=request,
        )
        return PolicyUpdate.of(update)

    async def update(
        self,
        kind: ResourceKind[V, D],
        target: Target,
        change: Callable[[V], D],
        validate_only: bool,
        *,
        caller_slice: CallerSlice[D] | None = None,
        context: WriteContext = UNATTRIBUTED,
        request: bytes | None = None,
    ) -> Update[V, D]:
        """Read-modify-write of one resource of the target under the registry's lock.

        `change` sees the value read fresh from AWS inside the lock and answers the document
        to write, or raises (etag, quota, validation) to write nothing. With validate_only
        nothing is written (`done` False). `caller_slice` (a slice write): the write holds
        when that slice holds, and WriteOverwritten names that slice's etag rather than the
        whole's. `context`: who writes, and the caller's deadline. `request`: a slice
        write's request, serialized, for another replica to judge again (handoff.py).
        """
        if caller_slice is not None and not validate_only and self._batches is not None:
            return await self._queued(kind, target, change, caller_slice, context, request)
        async with self._update(target, context) as (held, attempt):
            current = await self._fresh(kind, target)
            etag_before = attempt.etag_before = kind.etag(current)
            proposed = change(current)
            if validate_only or kind.nothing_to_send(current, proposed):
                # Nothing written: what stands is what was read.
                return Update(
                    current,
                    proposed,
                    after=current,
                    done=not validate_only,
                    sent=False,
                    answered=None,
                    etag_before=etag_before,
                    etag_after=None if validate_only else etag_before,
                )
            return await self._send(
                Write(kind, target, current, proposed, held, context, caller_slice)
            )

    async def _fresh(self, kind: ResourceKind[V, D], target: Target) -> V:
        """The value read fresh from AWS under the lock, observed for drift and written
        through to the cache (what the write is judged against)."""
        key = key_of(kind, target)
        started = self._started()
        current, _ = await kind.read(self._ecr, target)
        await self._observe(key, current, started, under_lock=True)
        await self._cache.put(key, kind.entry(target, current))
        return current

    async def _send(self, write: Write[V, D]) -> Update[V, D]:
        """One caller's write sent to AWS and settled; its update, or WriteOverwritten."""
        kind, target, caller_slice = write.kind, write.target, write.caller_slice
        async with self._writing(write.key, write.held):
            settled = await self._settlement.write(write)
        after = settled.after
        if settled.verdict is Verdict.OVERWRITTEN:
            # Outside `_writing`: the cache keeps the read-back, the truth.
            raise overwritten(
                target,
                kind.etag(after)
                if caller_slice is None
                else caller_slice.etag(kind.document(after)),
            )
        return Update(
            write.current,
            write.proposed,
            after=after,
            done=True,
            sent=True,
            answered=settled.answered,
            etag_before=kind.etag(write.current),
            etag_after=kind.etag(after),
        )

    # --- slice writes applied together (group commit) --------------------------------------

    async def _queued(
        self,
        kind: ResourceKind[V, D],
        target: Target,
        change: Callable[[V], D],
        caller_slice: CallerSlice[D],
        context: WriteContext,
        request: bytes | None = None,
    ) -> Update[V, D]:
        """A slice write queued on the registry's lock, applied by the queue's leader with
        the others waiting (`_commit`); counted in the tenant's writes in flight while it
        waits. Until its change is applied, its caller's leaving takes it out of the queue
        (nothing of it written); a caller still waiting when its deadline leaves no time for
        the lock answers WRITE_LOCK_BUSY, as a writer waiting for the lock does."""
        assert self._batches is not None
        attempt = Attempt()
        registry = target.registry
        try:
            with self._counted(target):
                update = await self._batches.submit(
                    key_of(kind, target),
                    SliceWrite(
                        target,
                        change,
                        caller_slice,
                        context,
                        attempt,
                        request,
                        await self._handed.now() if self._handed is not None else 0.0,
                    ),
                    tenant=target.tenant,
                    # A batch is written with its first writer's credentials: the same ones.
                    affinity=(registry.role_arn, registry.external_id_env),
                    patience=wait_budget(context.time_left(), math.inf),
                    tired=lambda: lock_busy(target.registry_id, target.region),
                )
        except GatewayError:
            raise  # its etag_read_before set by the leader, on its own copy
        except BaseException as exc:
            # Left after its change was taken (the write went on), or failed unexpectedly.
            _with_etag(exc, attempt.etag_before)
            raise
        return update

    async def _commit(
        self, key: CacheKey, takes: Takes[SliceWrite[Any, Any], Update[Any, Any]]
    ) -> None:
        """The queue's leader (group_commit.py): under the registry's lock, the batch taken
        first (writes of one affinity: the same credentials), then one fresh read with the
        batch's own target (`_batch_target`), so that a failure of it fails that batch's
        writes alone and none other still queued; then each change applied on its own in
        arrival order on the document the ones before it left (its etag, share and validation
        are in its change: one that raises fails its caller alone and leaves the document as
        it was); one put, one read-back, and each caller answered on its own slice.

        Across replicas (handoff.py): while another replica holds the lock, the batch is
        handed to it rather than waiting for the lock, and what it does not take comes back
        here; holding the lock, the batch takes the writes other replicas handed over too."""
        kind: ResourceKind[Any, Any] = kind_of(key)
        handed = self._handing()
        if handed is None:
            async with self._locks.hold(key.registry_id, key.region) as held:
                if takes.first is None:
                    return  # every writer left while the lock was awaited
                await self._commit_batch(kind, key, held, takes.take())
            return
        # Across replicas: while another replica holds the lock, hand the writes to it; else
        # try the lock briefly (another may take it first: then hand over to that one). A
        # hand-over that came back (nobody took it) is followed by a try of the lock, so a
        # holder that takes nothing never starves this replica's writes.
        came_back = False
        while takes.first is not None:
            if not takes.takeable(handed.exclusions(key)):
                # Only writes of tenants whose earlier write another replica took wait: they
                # go once it is answered (their order).
                await asyncio.sleep(POLL_SECONDS)
                continue
            if not came_back and await self._locks.held_elsewhere(key.registry_id, key.region):
                came_back = await handed.hand_over(kind, key, takes)
                continue
            came_back = False
            entered = False
            try:
                async with self._locks.hold(
                    key.registry_id, key.region, within=LOCK_TRY_SECONDS
                ) as held:
                    entered = True
                    await self._under_lock(handed, kind, key, held, takes)
                return
            except Unavailable as busy:
                if entered or busy.reason != "WRITE_LOCK_BUSY":
                    raise

    async def _under_lock(
        self,
        handed: HandedWrites,
        kind: ResourceKind[Any, Any],
        key: CacheKey,
        held: HeldLock,
        takes: Takes[SliceWrite[Any, Any], Update[Any, Any]],
    ) -> None:
        """Holding the lock: this replica's batch with the writes handed over, then the next
        batches while writes keep coming (at most MAX_HELD_BATCHES more)."""
        batch = takes.take(exclude=handed.exclusions(key))
        adopted = await handed.adopt(key, batch)
        if not batch and not adopted:
            return  # every writer left while the lock was awaited
        await self._commit_adopted(handed, kind, key, held, batch, adopted)
        # Writes handed over meanwhile (or more than one batch of them): while the lock is
        # held here nobody else takes them, and their replicas take them back only once it
        # is free; so the next batches, with this replica's own writes waiting, go while
        # the lock is held.
        for _ in range(MAX_HELD_BATCHES):
            batch = takes.take(exclude=handed.exclusions(key)) if takes.first is not None else []
            adopted = await handed.adopt(key, batch)
            if not batch and not adopted:
                break
            await self._commit_adopted(handed, kind, key, held, batch, adopted)

    async def _commit_adopted(
        self,
        handed: HandedWrites,
        kind: ResourceKind[V, D],
        key: CacheKey,
        held: HeldLock,
        batch: list[Queued[SliceWrite[V, D], Update[V, D]]],
        adopted: list[tuple[Handed, Queued[SliceWrite[V, D], Update[V, D]]]],
    ) -> None:
        """A batch with the handed writes it took; each of those answered to its replica.
        The writes it applied are recorded per tenant (when each queued), so that no older
        write of the same tenant still waiting in the list is applied after them."""
        writes = [*batch, *(q for _, q in adopted)]
        try:
            await self._commit_batch(kind, key, held, writes)
        except BaseException as exc:
            for _, queued in adopted:
                queued.failed(copied(exc))
            raise
        finally:
            await handed.record_applied(key, writes)
            if adopted:
                await handed.answer_adopted(kind, key, adopted)

    async def _commit_batch(
        self,
        kind: ResourceKind[V, D],
        key: CacheKey,
        held: HeldLock,
        batch: list[Queued[SliceWrite[V, D], Update[V, D]]],
    ) -> None:
        """One batch under the lock: its fresh read (bounded by its writers' latest
        deadline), then its changes applied and sent (`_batch`)."""
        target = _batch_target(batch)
        # Bounded by the latest deadline of the batch's writes, as a caller's fresh read
        # is by its own: past it, every one of them has left.
        latest = max(queued.payload.context.deadline for queued in batch)
        bound = asyncio.timeout_at(None if math.isinf(latest) else latest)
        try:
            async with bound:
                current = await self._fresh(kind, target)
        except TimeoutError:
            if not bound.expired():
                raise
            raise DeadlineExceeded(
                f"deadline exceeded waiting for AWS ECR's {kind.name} of registry "
                f"{key.registry_id} in {key.region}",
            ) from None
        await self._batch(kind, held, target, current, batch)

    # --- slice writes handed between replicas (handoff.py) ------------------------------------

    async def _batch(
        self,
        kind: ResourceKind[V, D],
        held: HeldLock,
        target: Target,
        current: V,
        batch: list[Queued[SliceWrite[V, D], Update[V, D]]],
    ) -> V | None:
        """Each change of `batch` applied in order on `current`, the result sent as one
        write and each caller answered; what stands after it (None: not known)."""
        applied: list[_Applied[V, D]] = []
        running = current
        for queued in batch:
            item = queued.payload
            etag = item.attempt.etag_before = kind.etag(running)
            try:
                proposed = item.change(running)
            except Exception as exc:  # its own refusal (etag, share, validation): its alone
                queued.failed(_with_etag(exc, etag))
                continue
            item.attempt.proposed = True
            value = kind.with_document(running, proposed)
            applied.append(_Applied(queued, running, proposed, value))
            running = value
            # Each change is pure work (merge, validation): the loop serves others between.
            await asyncio.sleep(0)
        if not applied:
            return current
        return await self._apply(kind, held, target, current, applied)

    async def _apply(
        self,
        kind: ResourceKind[V, D],
        held: HeldLock,
        target: Target,
        current: V,
        applied: list[_Applied[V, D]],
    ) -> V | None:
        """The changes applied, sent as one write; each caller answered. What stands after
        it (None: not known, the next write reads it fresh)."""
        if len(applied) == 1:
            # Alone: the write of one caller, as without batching (its context, its verdict).
            one = applied[0]
            item = one.queued.payload
            write = Write(
                kind, item.target, current, one.proposed, held, item.context, item.caller_slice
            )
            try:
                if kind.nothing_to_send(current, one.proposed):
                    one.queued.answered(_unsent(kind, one, one.proposed, current))
                    return current
                update = await _within_latest([one.queued], self._send(write))
            except Exception as exc:
                one.queued.failed(_with_etag(exc, item.attempt.etag_before))
                # AWS refusing the document applied nothing: what was read still stands.
                return current if _refused(exc) else None
            one.queued.answered(update)
            return update.after
        proposed = applied[-1].proposed
        if kind.nothing_to_send(current, proposed):
            for one in applied:
                one.queued.answered(_unsent(kind, one, proposed, current))
            return current
        writers = tuple(
            Writer(
                one.queued.payload.target,
                one.queued.payload.context,
                one.queued.payload.caller_slice,
                one.value,
            )
            for one in applied
        )
        # The latest of its callers' deadlines: the put is made within it as AWS sees it
        # (`_within_latest`), and the settlement's reads outlive it as any write's do.
        deadline = max(one.queued.payload.context.deadline for one in applied)
        context = WriteContext(deadline=deadline, outlive=applied[0].queued.payload.context.outlive)
        write = Write(kind, target, current, proposed, held, context, writers=writers)

        async def send() -> Settled[V, D]:
            async with self._writing(write.key, held):
                return await self._settlement.write(write)

        try:
            settled = await _within_latest([one.queued for one in applied], send())
        except Exception as exc:
            if _refused(exc):
                # AWS refused the combined document (nothing applied): whose change it
                # cannot take is not known, and one caller's must not fail the others'.
                # The batch is sent again in halves, each change applied anew on what the
                # half before left, until the document AWS refuses is one caller's alone:
                # one bad change among N costs about 2*log2(N) more puts, not N.
                return await self._halves(kind, held, target, current, applied)
            for one in applied:
                one.queued.failed(_with_etag(copied(exc), kind.etag(one.before)))
            return None
        after = settled.after
        for one, verdict in zip(applied, settled.verdicts, strict=True):
            item = one.queued.payload
            if verdict is Verdict.OVERWRITTEN:
                error = overwritten(item.target, item.caller_slice.etag(kind.document(after)))
                one.queued.failed(_with_etag(error, kind.etag(one.before)))
                continue
            one.queued.answered(
                Update(
                    one.before,
                    proposed,
                    after=after,
                    done=True,
                    sent=True,
                    answered=settled.answered,
                    etag_before=kind.etag(one.before),
                    etag_after=kind.etag(after),
                )
            )
        return after

    async def _halves(
        self,
        kind: ResourceKind[V, D],
        held: HeldLock,
        target: Target,
        current: V,
        applied: list[_Applied[V, D]],
    ) -> V | None:
        """A batch AWS refused, sent again as two batches, in order, each applied anew on
        what the one before left (read fresh again when that is not known), so that AWS's
        refusal ends up failing only the callers whose own change it refuses."""
        middle = len(applied) // 2
        running: V | None = current
        halves = (applied[:middle], applied[middle:])
        for i, half in enumerate(halves):
            batch = [one.queued for one in half]
            if running is None:
                try:
                    running = await self._fresh(kind, target)
                except Exception as error:
                    for queued in [q for h in halves[i:] for q in (one.queued for one in h)]:
                        queued.failed(_with_etag(copied(error), None))
                    return None
            running = await self._batch(kind, held, target, running, batch)
        return running

    @asynccontextmanager
    async def _update(
        self, target: Target, context: WriteContext
    ) -> AsyncIterator[tuple[HeldLock, Attempt]]:
        """The registry's lock for one read-modify-write; a failure (once the write has
        read the current value) says the etag it read (`GatewayError.etag_read_before`)."""
        attempt = Attempt()
        try:
            async with self._hold(target) as held:
                yield held, attempt
        except GatewayError as exc:
            if attempt.etag_before is not None:
                exc.etag_read_before = attempt.etag_before
            raise
        except BaseException as exc:
            # A cancelled (abandoned) write, or one failed unexpectedly, is audited with its
            # etag too (see `etag_read_before` for why this is an attribute, not a field).
            if attempt.etag_before is not None:
                setattr(exc, _ETAG_READ_BEFORE, attempt.etag_before)
            raise

    @asynccontextmanager
    async def _hold(self, target: Target) -> AsyncIterator[HeldLock]:
        """The registry's write lock, for at most `max_writes_per_tenant` writes of one tenant
        at once (waiting or holding): the lock is a queue every tenant of the registry waits
        in, and one tenant's flood of writes must not push another's past its deadline."""
        with self._counted(target):
            async with self._locks.hold(target.registry_id, target.region) as held:
                yield held

    @contextlib.contextmanager
    def _counted(self, target: Target) -> Iterator[None]:
        """One of the tenant's writes in flight on the registry (waiting for the lock, queued
        for a batch, or writing); WRITES_IN_FLIGHT past `max_writes_per_tenant`."""
        key = (target.tenant, target.registry_id, target.region)
        if self._in_flight.get(key, 0) >= self._max_writes_per_tenant:
            raise ResourceExhausted(
                f"tenant {target.tenant} already has {self._max_writes_per_tenant} writes in "
                f"flight on registry {target.registry_id} in {target.region}; they run one "
                "at a time: retry when one has finished",
                reason="WRITES_IN_FLIGHT",
                metadata={
                    "tenant": target.tenant,
                    "registryId": target.registry_id,
                    "region": target.region,
                },
                retry_after_seconds=0.5,
                quota_violations=(
                    QuotaViolation(
                        subject=f"tenant:{target.tenant}",
                        description=f"writes in flight per registry: {self._max_writes_per_tenant}",
                    ),
                ),
            )
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        try:
            yield
        finally:
            left = self._in_flight[key] - 1
            if left:
                self._in_flight[key] = left
            else:
                del self._in_flight[key]

    @asynccontextmanager
    async def _writing(self, key: CacheKey, held: HeldLock) -> AsyncIterator[None]:
        """Around the AWS write: lock ownership checked first; on failure, the key forgotten.
        Meanwhile a write of the resource is marked in flight (`HeldLock.writing`): the drift
        detector skips unlocked reads of this resource, not of the registry's other one."""
        await held.ensure_owned()
        async with held.writing(key.resource):
            try:
                yield
            except BaseException:
                # AWS may or may not have applied it: no replica may serve the old value as
                # current. BaseException: a cancelled (abandoned) write counts too. Shielded:
                # a second cancellation (the gateway's timer, then grpc's deadline) must not
                # cut the invalidation, or the fresh read written through before the put
                # would stay served as current.
                invalidation = asyncio.ensure_future(self._cache.invalidate(key))
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(invalidation)
                raise


# What AWS answers a document it will not take (service/aws/errors.py): nothing applied.
AWS_REFUSALS = frozenset({"AWS_INVALID_PARAMETER", "AWS_PARAM_VALIDATION"})

# How long a leader that hands writes over tries the lock itself, when no other replica
# held it a moment ago, before it looks again who holds it.
LOCK_TRY_SECONDS = 0.5

# How many more batches (this replica's writes and those handed over) one holder of the lock
# applies while the writes keep coming, before it lets the lock go to another replica.
MAX_HELD_BATCHES = 8

# The tenant a group write's AWS calls are made for (upstream's per-tenant bulkhead,
# service/aws/resilience.py): no one tenant of the batch, so that none of them, by keeping
# its own share of the AWS call slots full, fails the others' writes. Its slots are the
# batches' alone; they run one at a time per registry, under its lock.
GROUP_WRITE = "(group write)"


def _refused(error: BaseException) -> bool:
    """Whether AWS refused the document (nothing applied)."""
    return isinstance(error, InvalidArgument) and error.reason in AWS_REFUSALS


async def _within_latest(
    writers: list[Queued[SliceWrite[V, D], Update[V, D]]], send: Coroutine[Any, Any, T]
) -> T:
    """`send` (a batch's put and its settlement) run in a copy of the context of the writer
    whose deadline is the latest, as it queued (group_commit.py `Queued.context`): the leader
    runs outside every call, and AWS's client sees a deadline only through the call's
    context (service/call.py `time_left`). So the put is bounded as a caller's own is: what
    precedes sending it (the AWS call slots, the client) by that deadline, past which every
    caller of the batch has left (nothing is sent: DEADLINE_EXCEEDED); once sent, it is not
    abandoned (`finish_once_sent`), and its read-back outlives the deadline."""
    latest = max(writers, key=lambda queued: queued.payload.context.deadline)
    return await asyncio.get_running_loop().create_task(send, context=latest.context.copy())


def _batch_target(batch: list[Queued[SliceWrite[V, D], Update[V, D]]]) -> Target:
    """The target a batch's AWS calls are made with: its writer's own when it holds one
    (charged to that tenant, as without batching); else the first's registry entry (every
    writer of a batch has the same credentials: group_commit.py `affinity`) on behalf of
    no one tenant (`GROUP_WRITE`), so that an error of it names none of them."""
    first = batch[0].payload.target
    if len({queued.tenant for queued in batch}) == 1:
        return first
    return dataclasses.replace(first, tenant=GROUP_WRITE)


def _unsent(
    kind: ResourceKind[V, D], applied: _Applied[V, D], proposed: D, current: V
) -> Update[V, D]:
    """The update of a write whose batch needed no AWS call: what stands is what was read."""
    etag = kind.etag(current)
    return Update(
        applied.before,
        proposed,
        after=current,
        done=True,
        sent=False,
        answered=None,
        etag_before=kind.etag(applied.before),
        etag_after=etag,
    )


def check_etag(expected: str, current: str, target: Target, what: str = "") -> None:
    """EtagMismatch (ABORTED) when the caller's precondition `expected` (if any) fails.

    `what` names a slice ("the rules of tenant payments") when the etag is of one.
    """
    if expected and expected != current:
        raise EtagMismatch(
            f"etag {expected[:64]!r} does not match the current etag {current!r} of "
            f"{what + ' in ' if what else ''}registry "
            f"{target.registry_id} in {target.region}; read again, reapply your change, retry",
            metadata={
                "currentEtag": current,
                "registryId": target.registry_id,
                "region": target.region,
            },
        )
