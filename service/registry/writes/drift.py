"""Changes made around the gateway: drift, and writes another writer overwrote.

Every read of a resource from AWS (a cache load, the fresh read inside a write, the
read-back after one) is `observe`d against the head of its history (service/state/history.py).
Nothing here is written per resource: the key's resource description (resources.py
`kind_of`) gives its etag, the document the history stores, the comparison by meaning, the
diff, and the name audit lines and metrics use.

- no history yet: the state is the baseline (no event);
- the head's etag: nothing happened;
- another etag: no write through the gateway explains it, since a gateway write appends its
  version under the registry's lock, before any other reader can see its result. That is
  drift: an "out-of-band" version is compare-and-appended on the head's etag, and only the
  replica whose append succeeded reports it (one audit line `out_of_band_change`, one
  count), so one change is reported once across replicas sharing Redis.

A cache load is not under the lock: it may have begun before a gateway write and return the
state before it. A load that began before the head was recorded (less a second for the clock
skew of replicas) is skipped, and so is a load answering the version before a head recorded
moments ago (an eventually consistent read); the next read sees any real change. These times
are compared across replicas, so with Redis they are on Redis's clock (service/state/clock.py:
one TIME per observation), never on one replica's against another's. A load that
finds a write of the same resource in flight (`locks.writing`, any replica: from just before
its put until its record) is skipped too: it may have seen a write that has reached AWS but
is not recorded yet (the write records it; a change another writer made meanwhile is caught
by the write's read-back, or by the next read once the write is settled). A load of the
registry's other resource is not skipped: that write cannot explain it, so writes of one
resource, however many, never hide a change made around the gateway to the other. Reads
under the lock are never skipped: no gateway write can race them.

A state that differs from a head the gateway wrote only in form (rules by identity in
another order, a policy equal by meaning: service/registry/model/read_back.py) is the gateway's
write as AWS stores it (recorded from what AWS answered, when its read-back failed): it is
recorded again in that form under the same author, and not reported.

Nothing here raises into a read or a write: a failure is logged and the call goes on. With
Redis away the history answers nothing and records nothing: drift detection pauses (and
nothing is reported) until it is back; overwritten writes are still detected and reported,
as they compare the write with its read-back, not with the history.

The report's diff matches rules by their filters and destinations and statements by Sid
(service/registry/model/plan.py), at most MAX_DIFF entries, each a short description: which
destinations and filters a rule has, the effect and actions of a statement, never a
policy's principals, resources or text. Each entry names the tenants whose slice
(service/registry/model/slices.py Ownership) holds the rule or statement, from the config current
when it is reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from service.config import GatewayConfig, registry_regions
from service.gen.v1 import registry_pb2 as pb
from service.registry.model.slices import Ownership
from service.registry.writes.resources import Changed, kind_of
from service.state.cache import CacheKey
from service.state.clock import SharedClock
from service.state.history import HistoryStore, Mine, Version

log = logging.getLogger("registry_gateway.drift")

# Replicas' clocks may differ by this much (the default of `drift.clock_skew_seconds`): a load
# that began this close before the head was recorded may still hold the state before it.
SKEW_SECONDS = 1.0
# A load answering the version before a head this recent is taken for a stale read.
STALE_READ_SECONDS = 10.0
MAX_DIFF = 20
OUT_OF_BAND = "out_of_band_change"
OVERWRITTEN = "overwritten"

# A resource's value as read from AWS, and a document as a write wrote it: of the kind of
# resource the key names (service/registry/writes/resources.py `kind_of`), which alone knows
# their types. The methods below take any resource.
Observed = object
Document = object


class Audit(Protocol):
    """The audit trail's event lines (service/observability/audit.py AuditLog)."""

    def event(self, event: str, /, **fields: object) -> None:
        """Append one event line."""
        ...


class WritesInFlight(Protocol):
    """The registries' write locks (service/state/locks.py), asked whether a write of one
    resource is in flight."""

    async def writing(self, registry_id: str, region: str, resource: str) -> bool:
        """Whether a write of the resource is being settled right now (any replica)."""
        ...


# (event, registry_id, region, resource): Metrics.count_change.
Count = Callable[[str, str, str, str], None]


class DriftDetector:
    """Observes reads from AWS against the history; records gateway writes; reports."""

    def __init__(
        self,
        history: HistoryStore,
        audit: Audit,
        count: Count,
        clock: Callable[[], float] = time.time,
        *,
        config: Callable[[], GatewayConfig],
        skew_seconds: float = SKEW_SECONDS,
        locks: WritesInFlight | None = None,
        shared_clock: SharedClock | None = None,
    ) -> None:
        self._skew_seconds = skew_seconds
        # Times other replicas compare (recorded_at, a read's start) are on this clock when
        # there is one (Redis's: service/state/clock.py), else on `clock` (one replica).
        self._shared_clock = shared_clock
        self._locks = locks  # None: no write lock to consult (unit tests without writes)
        self._history = history
        self._audit = audit
        self._count = count
        self.clock = clock  # the callers' `started` is on this clock, this replica's own
        self._config = config

    # --- reads --------------------------------------------------------------------------

    async def observe(
        self, key: CacheKey, value: Observed, *, started: float, under_lock: bool = False
    ) -> None:
        """Compare a read from AWS, begun at `started`, with the history; report drift.

        `under_lock`: the read was made holding the registry's write lock (the fresh read
        inside a write, the read-back), so no gateway write can have raced it."""
        try:
            await self._observe(key, value, started, under_lock)
        except Exception as exc:  # never into the read or write that observed
            log.error(
                "drift detection failed for %s", key, extra={"error_type": type(exc).__name__}
            )

    async def _observe(
        self, key: CacheKey, value: Observed, started: float, under_lock: bool
    ) -> None:
        etag, document = _snapshot(key, value)
        shift = await self._shift()
        started += shift  # on the clock every replica's recorded_at is on
        head = await self._history.head(key)
        version = Version(0, self.clock() + shift, "baseline", etag, document)
        if head is None:
            await self._history.append(key, version, if_head_etag=None)
            return
        if head.etag == etag:
            return
        if not under_lock:
            if head.recorded_at >= started - self._skew_seconds:
                return  # may hold the state before the head: the next read will tell
            if self._locks is not None and await self._locks.writing(
                key.registry_id, key.region, key.resource
            ):
                return  # may see a write of this resource not recorded yet: the write records it
            if self.clock() + shift - head.recorded_at < STALE_READ_SECONDS:
                recent = await self._history.page(key, before_seq=head.seq, limit=1)
                if recent and recent[0].etag == etag:
                    return  # the version just replaced: an eventually consistent read
        if head.origin == "gateway" and _same_meaning(key, head, value):
            # The gateway's own write, in the form AWS stores it: no change to report.
            await self._history.append(
                key,
                replace(
                    version,
                    origin="gateway",
                    tenant=head.tenant,
                    identity=head.identity,
                    rpc=head.rpc,
                ),
                if_head_etag=head.etag,
            )
            return
        stored = await self._history.append(
            key, replace(version, origin="out-of-band"), if_head_etag=head.etag
        )
        if stored is None:
            return  # another replica recorded (and reports) it, or the history is away
        self._report(
            OUT_OF_BAND,
            key,
            before=_document(key, head),
            after=_value_document(key, value),
            etag_before=head.etag,
            etag_after=etag,
            seq=stored.seq,
        )

    # --- the clock replicas share ------------------------------------------------------

    async def _shift(self) -> float:
        """The shared clock less `clock` (0 without a shared clock)."""
        if self._shared_clock is None:
            return 0.0
        return await self._shared_clock.offset(self.clock)

    async def _now(self) -> float:
        return self.clock() + await self._shift()

    # --- writes -------------------------------------------------------------------------

    async def record_write(
        self,
        key: CacheKey,
        value: Observed,
        *,
        tenant: str,
        identity: str | None,
        rpc: str | None,
        etag_before: str | None = None,
        mine: Mine | None = None,
    ) -> None:
        """After a gateway write's read-back: append its version ("gateway").

        `etag_before`: the etag read fresh inside the lock, which `observe` has made the
        head; the append is conditional on it. A write that changed nothing adds none.
        `mine`: a slice write's own pieces (service/state/history.py `Mine`)."""
        try:
            etag, document = _snapshot(key, value)
            if etag == etag_before:
                return
            version = Version(
                0, await self._now(), "gateway", etag, document, tenant, identity, rpc
            )
            await self._append_after(key, version, etag_before, mine)
        except Exception as exc:
            log.error(
                "recording a write failed for %s", key, extra={"error_type": type(exc).__name__}
            )

    async def overwritten(
        self,
        key: CacheKey,
        written: Document,
        value: Observed,
        *,
        etag_before: str,
        tenant: str,
        identity: str | None,
        rpc: str | None,
        request_id: str | None,
    ) -> None:
        """A write's read-back holds another writer's state: record it as "out-of-band",
        report it (audit `overwritten`, count). Not conditional on being first: this
        replica made the write, and only it can know."""
        try:
            etag, document = _snapshot(key, value)
            version = Version(0, await self._now(), "out-of-band", etag, document)
            await self._append_after(key, version, etag_before)
            self._report(
                OVERWRITTEN,
                key,
                before=written,
                after=_value_document(key, value),
                etag_before=etag_before,
                etag_after=etag,
                request_id=request_id,
                tenant=tenant,
                identity=identity,
                rpc=rpc,
            )
        except Exception as exc:
            log.error(
                "reporting an overwritten write failed for %s",
                key,
                extra={"error_type": type(exc).__name__},
            )

    async def _append_after(
        self, key: CacheKey, version: Version, etag_before: str | None, mine: Mine | None = None
    ) -> None:
        """Append on the etag read inside the lock; when the history's head is not that one
        (the fresh read could not be recorded: the history was away), append after whatever
        head stands, so that the next read does not take this state for drift."""
        stored = None
        if etag_before is not None:
            stored = await self._history.append(key, version, if_head_etag=etag_before, mine=mine)
        if stored is None:
            head = await self._history.head(key)
            if head is None or head.etag != version.etag:
                await self._history.append(
                    key, version, if_head_etag=None if head is None else head.etag, mine=mine
                )

    # --- the report ---------------------------------------------------------------------

    def _report(
        self,
        event: str,
        key: CacheKey,
        *,
        before: Document | _Omitted,
        after: Document,
        etag_before: str,
        etag_after: str,
        **fields: Any,
    ) -> None:
        try:
            self._report_line(event, key, before, after, etag_before, etag_after, fields)
        except Exception as exc:  # recorded already: never into the read or write
            log.error(
                "reporting %s failed for %s",
                event,
                key,
                extra={"error_type": type(exc).__name__},
            )

    def _report_line(
        self,
        event: str,
        key: CacheKey,
        before: Document | _Omitted,
        after: Document,
        etag_before: str,
        etag_after: str,
        fields: dict[str, Any],
    ) -> None:
        resource = kind_of(key).name  # as audit lines and metrics name it
        changes, unknown = _diff(key, before, after)
        owners = _owning(_owners(self._config(), key), before, after)
        entries: list[dict[str, Any]] = []
        touched: set[str] = set()
        for change, owned in changes:
            tenants = sorted({owner.tenant for owner in owners if owned(owner)})
            touched.update(tenants)
            entries.append(
                {
                    "action": change.action,
                    "path": change.path,
                    "description": change.description,
                    "tenants": tenants,
                }
            )
        line: dict[str, Any] = {
            "registry_id": key.registry_id,
            "region": key.region,
            "resource": resource,
            "etag_before": etag_before,
            "etag_after": etag_after,
            **fields,
            "tenants": sorted(touched),
            "diff": entries[:MAX_DIFF],
            "diff_left_out": max(0, len(entries) - MAX_DIFF),
        }
        if unknown:
            line["diff_unavailable"] = "the previous version was kept without its document"
        self._audit.event(event, **line)
        self._count(event, key.registry_id, key.region, resource)
        log.warning(
            "%s of %s on registry %s in %s",
            "change made around the gateway" if event == OUT_OF_BAND else "write overwritten",
            resource,
            key.registry_id,
            key.region,
            extra={"event": event, "etag_before": etag_before, "etag_after": etag_after},
        )


# --- documents ------------------------------------------------------------------------------


def _snapshot(key: CacheKey, value: Observed) -> tuple[str, bytes]:
    """(etag, document) of a value read from AWS, as the history stores them."""
    kind = kind_of(key)
    return kind.etag(value), kind.serialized(kind.document(value))


def _value_document(key: CacheKey, value: Observed) -> Document:
    return kind_of(key).document(value)


def _same_meaning(key: CacheKey, head: Version, value: Observed) -> bool:
    """Whether `value` is the head's document in another form (read_back's comparison)."""
    recorded = _document(key, head)
    if isinstance(recorded, _Omitted):
        return False
    kind = kind_of(key)
    return kind.holds(recorded, kind.document(value), None)


class _Omitted:
    """A version kept without its document: no diff against it."""


def _document(key: CacheKey, version: Version) -> Document | _Omitted:
    if version.document_omitted:
        return _Omitted()
    try:
        parsed: Document = kind_of(key).parsed(version.document)
    except ValueError:
        return _Omitted()
    return parsed


def _diff(
    key: CacheKey, before: Document | _Omitted, after: Document
) -> tuple[list[Changed], bool]:
    """The changes from `before` to `after`, each with whose slices it concerns; True when
    `before` is unknown (kept without its document)."""
    if isinstance(before, _Omitted):
        return [], True
    return kind_of(key).changes(before, after), False


def _owning(
    owners: list[Ownership], before: Document | _Omitted, after: Document
) -> list[Ownership]:
    """The owners whose slice a change concerns. A packed rule holds the filters of every
    tenant replicating to its destinations, so a change to it (a filter added, the rules
    repacked) is not a change to each of them: of a replication configuration, only the
    tenants whose canonical slice (`rules_in`) differs are named. A statement belongs to one
    tenant, so a policy's changes already name only its owner."""
    if not (
        isinstance(before, pb.ReplicationConfiguration)
        and isinstance(after, pb.ReplicationConfiguration)
    ):
        return owners
    return [owner for owner in owners if owner.rules_in(before) != owner.rules_in(after)]


def _owners(config: GatewayConfig, key: CacheKey) -> list[Ownership]:
    """The slices configured on the key's registry and region."""
    owners = []
    for tenant in config.tenants:
        for registry in tenant.registries:
            if registry.registry_id == key.registry_id and key.region in registry_regions(
                config, registry
            ):
                owners.append(
                    Ownership(
                        tenant.name,
                        registry.owned_repository_prefixes,
                        registry.owned_statement_sid_prefix,
                    )
                )
    return owners
