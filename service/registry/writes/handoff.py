"""Slice writes handed over between replicas through Redis (group commit across replicas).

Each replica applies the slice writes queued on it together (group_commit.py), but replicas
take a registry's lock in turn: with two replicas, every batch of one waits for the other's
whole read-modify-write (three AWS calls), and the writes of a storm go in as many batches as
the replicas take turns. So a replica whose leader finds the lock held by *another* replica
does not wait for it: it hands its batch over, through a Redis list per (registry, region,
resource), and the replica holding the lock takes what waits there into its next batch
(operations.py `RegistryOperations._commit`).

What travels is the caller's request, never a decision: the replica that applies it judges it
again with its own tenant config (ownership, destinations, shares, validation, the etag
precondition: the change is rebuilt from the request by the slice RPCs' side, service/
registry/rpcs/slice_operations.py `SliceOperations.rejudge`), so what another replica decided
with an older config is never trusted. Entries are not signed: Redis is trusted as it is for
the cache (docs/security-and-isolation.md). Each caller's answer comes back on
its replica's reply list, read by one task per (replica, registry, region) (`RedisHandOff`),
with its own result (the values before and after, the etags) or its own error; its audit
line is written by its own replica, its history entry by the one that applied it.

Every hand-over ends one way, and the caller's replica knows which:
- answered: the applier's answer, as the caller's own write would have been answered;
- withdrawn (LREM removed it, so no replica took it): nothing of it was written. A request
  not taken within a second (the lock free again, or a holder that takes nothing) goes back
  to its place in its own replica's queue, untaken (group_commit.py `Takes.give_back`),
  and waits for the lock there as any write does; one whose caller's wait for the lock runs
  out first answers WRITE_LOCK_BUSY, as a writer waiting for the lock does;
- taken but never answered (the applying replica died, or its answer was lost with Redis),
  or given while Redis timed out (the request may be in the list all the same):
  WRITE_OUTCOME_UNKNOWN (UNAVAILABLE + RetryInfo) just before the caller's deadline, as a
  write whose put went unanswered; the caller reads its slice and retries with its etag.

A request is taken by no replica past `patience_until` (about a second after it was
given: its own replica takes it back by then), so one left by a replica that died is
applied within that second or never; and never after a later write of its tenant was
applied (`HandOff.last_applied`: when each tenant's latest applied write queued). A tenant
has one write handed at a time, so that its writes stay in arrival order.

Which of a tenant's writes queued first is told on the clock every replica reads alike,
Redis's TIME (service/state/clock.py, `queued_at`); deadlines and the take-by second cross
replicas as Unix times, so replicas' own clocks are assumed within a fraction of a second
(NTP), as the history's `clock_skew_seconds` already assumes: a skew there only moves when
a request is given up (taken back sooner or later, answered unknown sooner or later).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import json
import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as redis

from service.errors import (
    FieldViolation,
    GatewayError,
    QuotaViolation,
    Unavailable,
)
from service.state.cache import CacheKey
from service.state.redis_keys import RedisClient, RedisKeys

log = logging.getLogger("registry_gateway.handoff")

# How long a hand-over's lists live in Redis without being touched: far past any deadline
# (`server.max_deadline_seconds` is at most 300 s), so that a replica that died leaves nothing.
LIST_TTL_SECONDS = 900
# How often a waiting replica looks whether its request still waits with nobody to take it
# (the lock free again): what a hand-over costs at most over waiting for the lock itself.
POLL_SECONDS = 0.2
# What a request taken by another replica is given past its caller's deadline to be
# answered: a write sent is settled (read back) past the deadline, within the lock's
# renewals; past this, its outcome is unknown.
TAKEN_GRACE_SECONDS = 15.0
# Bounds on what is read back from the list (a forged or corrupt entry costs nothing).
MAX_REQUEST_BYTES = 2 * 1024 * 1024
WRITE_OUTCOME_UNKNOWN = "WRITE_OUTCOME_UNKNOWN"


class HandOffAway(Exception):
    """The lists did not answer (Redis away): the caller decides what that means.
    `maybe_sent`: the command may have run all the same (a timeout: a paused Redis runs
    what it was sent when it resumes); False only when it cannot have (a connection
    refused, the client's circuit open)."""

    def __init__(self, why: str, *, maybe_sent: bool = True) -> None:
        super().__init__(why)
        self.maybe_sent = maybe_sent


def _away(exc: BaseException) -> HandOffAway:
    # A ConnectionError is raised before the command is sent (refused, circuit open) or
    # when the connection drops after: only a timeout is taken as "maybe run". A drop after
    # sending is the residual case (docs/configuration.md).
    timed_out = isinstance(exc, redis.TimeoutError | TimeoutError)
    return HandOffAway(type(exc).__name__, maybe_sent=timed_out)


@dataclass(frozen=True)
class Handed:
    """A slice write as it travels: who asked, what, and until when."""

    id: str
    replica: str  # whose reply list the answer goes to
    tenant: str
    rpc: str  # PutReplicationRules or PutPolicyStatements
    body: bytes  # the slice RPC's request, serialized (its etag precondition included)
    identity: str | None
    request_id: str | None
    # Unix times: past `patience_until` no replica may take it (nothing of it may be
    # written: its replica takes it back, or its caller stopped waiting); `deadline` is the
    # caller's own (inf: none).
    patience_until: float
    deadline: float
    # When its caller's write queued (Unix time): a request is never applied after a later
    # write of its tenant was (`HandOff.last_applied`). 0: as old as can be.
    queued_at: float = 0.0

    def encode(self) -> bytes:
        return json.dumps(
            {
                "id": self.id,
                "replica": self.replica,
                "tenant": self.tenant,
                "rpc": self.rpc,
                "body": base64.b64encode(self.body).decode("ascii"),
                "identity": self.identity,
                "request_id": self.request_id,
                "patience_until": _finite(self.patience_until),
                "deadline": _finite(self.deadline),
                "queued_at": self.queued_at,
            },
            separators=(",", ":"),
        ).encode("utf-8")

    @classmethod
    def decode(cls, raw: bytes) -> Handed | None:
        """The request `raw` holds; None for anything else (never raises)."""
        if len(raw) > MAX_REQUEST_BYTES:
            return None
        try:
            item = json.loads(raw)
            handed = cls(
                id=str(item["id"])[:64],
                replica=str(item["replica"])[:64],
                tenant=str(item["tenant"])[:256],
                rpc=str(item["rpc"])[:64],
                body=base64.b64decode(item["body"], validate=True),
                identity=_optional(item.get("identity")),
                request_id=_optional(item.get("request_id")),
                patience_until=_unix(item["patience_until"]),
                deadline=_unix(item["deadline"]),
                queued_at=_finite_time(item.get("queued_at")),
            )
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            return None
        return handed


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value  # JSON has no infinity


def _unix(value: Any) -> float:
    if value is None:
        return math.inf
    found = float(value)
    if math.isnan(found):
        raise ValueError("not a time")
    return found


def _finite_time(value: Any) -> float:
    found = float(value or 0.0)
    if not math.isfinite(found):
        raise ValueError("not a time")
    return found


def _optional(value: Any) -> str | None:
    return None if value is None else str(value)[:512]


# --- answers ----------------------------------------------------------------------------------


def _error_classes() -> dict[str, type[GatewayError]]:
    found: dict[str, type[GatewayError]] = {}
    pending: list[type[GatewayError]] = [GatewayError]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


def error_answer(request_id: str, error: GatewayError) -> bytes:
    """A hand-over's answer that is an error: the caller's own, field by field."""
    return json.dumps(
        {
            "id": request_id,
            "error": {
                "class": type(error).__name__,
                "message": error.message,
                "reason": error.reason,
                "metadata": error.metadata,
                "fields": [[v.field, v.description] for v in error.field_violations],
                "quotas": [[q.subject, q.description] for q in error.quota_violations],
                "retry_after": error.retry_after_seconds,
                "etag_read_before": error.etag_read_before,
            },
        },
        separators=(",", ":"),
    ).encode("utf-8")


def value_answer(request_id: str, value: Mapping[str, Any]) -> bytes:
    """A hand-over's answer that is a result (`value`: JSON, built by the applier)."""
    return json.dumps({"id": request_id, "value": value}, separators=(",", ":")).encode("utf-8")


def outcome_unknown(registry_id: str, region: str) -> Unavailable:
    """A write taken by another replica whose answer never came: it may have been applied."""
    return Unavailable(
        f"the write was handed to another gateway replica holding registry {registry_id}'s "
        f"write lock in {region}, which did not answer: it may or may not have been applied; "
        "read your slice, then retry with its etag",
        reason=WRITE_OUTCOME_UNKNOWN,
        metadata={"registryId": registry_id, "region": region},
        retry_after_seconds=1.0,
    )


def not_judged(registry_id: str, region: str) -> Unavailable:
    """A handed write the replica holding the lock could not judge: nothing was written."""
    return Unavailable(
        f"the write was handed to another gateway replica holding registry {registry_id}'s "
        f"write lock in {region}, which could not judge it; nothing was written: retry",
        reason="WRITE_NOT_APPLIED",
        metadata={"registryId": registry_id, "region": region},
        retry_after_seconds=1.0,
    )


def parse_answer(raw: bytes) -> tuple[str, Mapping[str, Any] | GatewayError] | None:
    """The request id and the result or error an answer holds; None for anything else."""
    try:
        item = json.loads(raw)
        request_id = str(item["id"])
        if "value" in item:
            value = item["value"]
            if not isinstance(value, dict):
                return None
            return request_id, value
        error = item["error"]
        cls = _error_classes().get(str(error["class"]), Unavailable)
        rebuilt = cls(
            str(error["message"]),
            reason=str(error["reason"]),
            metadata={str(k): str(v) for k, v in dict(error["metadata"]).items()},
            field_violations=[FieldViolation(str(f), str(d)) for f, d in error["fields"]],
            quota_violations=[QuotaViolation(str(s), str(d)) for s, d in error["quotas"]],
            retry_after_seconds=None
            if error["retry_after"] is None
            else float(error["retry_after"]),
            etag_read_before=None
            if error["etag_read_before"] is None
            else str(error["etag_read_before"]),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return request_id, rebuilt


# --- the lists in Redis -----------------------------------------------------------------------


class HandOff(Protocol):
    """Where replicas hand slice writes to the one holding a registry's lock."""

    @property
    def replica(self) -> str:
        """This replica's name on the reply lists."""
        ...

    async def give(self, key: CacheKey, raw: bytes) -> None:
        """Queue a request for whichever replica holds the lock next."""
        ...

    async def take(self, key: CacheKey, count: int) -> list[bytes]:
        """At most `count` waiting requests, oldest first, taken (no other replica sees them)."""
        ...

    async def put_back(self, key: CacheKey, raws: list[bytes]) -> None:
        """Requests taken but not applied now, back at the head, in their order."""
        ...

    async def withdraw(self, key: CacheKey, raw: bytes) -> bool:
        """Take a request back; False when a replica has taken it already."""
        ...

    async def answer(self, key: CacheKey, replica: str, raw: bytes) -> None:
        """Send an answer to the replica that waits for it."""
        ...

    async def wait(self, key: CacheKey, request_id: str, within: float) -> bytes | None:
        """This replica's answer to `request_id`, None when none came `within` seconds."""
        ...

    def forget(self, request_id: str) -> None:
        """No longer wait for `request_id`."""
        ...

    async def applied(self, key: CacheKey, queued_at: Mapping[str, float]) -> None:
        """Record, per tenant, when its latest applied write queued (kept if later)."""
        ...

    async def last_applied(self, key: CacheKey, tenants: list[str]) -> dict[str, float]:
        """When each tenant's latest applied write queued (0: none recorded)."""
        ...


# Per key, the later of what is stored and what is given (one script: keys of one hash slot).
_KEEP_LATEST = """
for i, name in ipairs(KEYS) do
  local given = tonumber(ARGV[i + 1])
  local stored = tonumber(redis.call('GET', name) or '0')
  if given > stored then
    redis.call('SET', name, ARGV[i + 1], 'EX', ARGV[1])
  end
end
return 0
"""


class RedisHandOff:
    """The hand-over lists in Redis: one of requests per (registry, region, resource), one
    of answers per (replica, registry, region), both hash-tagged with the registry's lock on
    a cluster. Every command is bounded by the client's socket timeout; a Redis away is
    `HandOffAway`, which the callers map (the waiting replica keeps its request, or answers
    it unknown)."""

    def __init__(self, client: RedisClient, key_prefix: str) -> None:
        self._redis = client
        self._names = RedisKeys.of(client, f"{key_prefix}handoff:")
        self._replica = uuid.uuid4().hex
        self._waiting: dict[str, asyncio.Future[bytes]] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}

    @property
    def replica(self) -> str:
        return self._replica

    def _requests(self, key: CacheKey) -> str:
        return self._names.key(f"{key.registry_id}:{key.region}", "requests", key.resource)

    def _answers(self, key: CacheKey, replica: str) -> str:
        return self._names.key(f"{key.registry_id}:{key.region}", "answers", replica)

    async def give(self, key: CacheKey, raw: bytes) -> None:
        await self._push(self._requests(key), raw)

    async def take(self, key: CacheKey, count: int) -> list[bytes]:
        if count <= 0:
            return []
        try:
            taken: Any = await self._redis.lpop(self._requests(key), count)
        except (redis.RedisError, OSError) as exc:
            raise _away(exc) from None
        return [bytes(raw) for raw in taken or ()]

    async def put_back(self, key: CacheKey, raws: list[bytes]) -> None:
        if not raws:
            return
        try:
            await self._redis.lpush(self._requests(key), *reversed(raws))
        except (redis.RedisError, OSError) as exc:
            raise _away(exc) from None

    async def withdraw(self, key: CacheKey, raw: bytes) -> bool:
        try:
            # JSON, hence UTF-8: the same bytes once redis-py encodes the text.
            return bool(await self._redis.lrem(self._requests(key), 1, raw.decode("utf-8")))
        except (redis.RedisError, OSError) as exc:
            raise _away(exc) from None

    async def answer(self, key: CacheKey, replica: str, raw: bytes) -> None:
        await self._push(self._answers(key, replica), raw)

    async def _push(self, name: str, raw: bytes) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.rpush(name, raw)
                pipe.expire(name, LIST_TTL_SECONDS)
                await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            raise _away(exc) from None

    async def wait(self, key: CacheKey, request_id: str, within: float) -> bytes | None:
        future = self._waiting.get(request_id)
        if future is None:
            future = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        self._read_answers(key)
        try:
            done, _ = await asyncio.wait({future}, timeout=max(0.0, within))
        except asyncio.CancelledError:
            self._waiting.pop(request_id, None)
            raise
        if not done:
            return None  # still waited for: the next `wait` finds the same future
        self._waiting.pop(request_id, None)
        return future.result()

    async def applied(self, key: CacheKey, queued_at: Mapping[str, float]) -> None:
        if not queued_at:
            return
        tenants = sorted(queued_at)
        try:
            await self._redis.eval(
                _KEEP_LATEST,
                len(tenants),
                *(self._applied(key, t) for t in tenants),
                LIST_TTL_SECONDS,
                *(repr(queued_at[t]) for t in tenants),
            )
        except (redis.RedisError, OSError) as exc:
            raise _away(exc) from None

    async def last_applied(self, key: CacheKey, tenants: list[str]) -> dict[str, float]:
        if not tenants:
            return {}
        try:
            found: Any = await self._redis.mget([self._applied(key, t) for t in tenants])
        except (redis.RedisError, OSError) as exc:
            raise _away(exc) from None
        return {t: float(v) if v is not None else 0.0 for t, v in zip(tenants, found, strict=True)}

    def _applied(self, key: CacheKey, tenant: str) -> str:
        return self._names.key(f"{key.registry_id}:{key.region}", "applied", key.resource, tenant)

    def forget(self, request_id: str) -> None:
        """No longer wait for `request_id` (withdrawn, or given up on)."""
        future = self._waiting.pop(request_id, None)
        if future is not None and not future.done():
            future.cancel()

    def _read_answers(self, key: CacheKey) -> None:
        name = self._answers(key, self._replica)
        if name not in self._readers:
            # Its own context: the reader belongs to no caller (no deadline, no trace).
            self._readers[name] = asyncio.get_running_loop().create_task(
                self._reader(name), context=contextvars.Context()
            )

    async def _reader(self, name: str) -> None:
        """Route this replica's answers on one list to their waiters, while any waits."""
        try:
            while self._waiting:
                try:
                    # Below the client's socket timeout: a blocking pop is a command too.
                    found: Any = await self._redis.blpop([name], timeout=POLL_SECONDS)
                except (redis.RedisError, OSError):
                    await asyncio.sleep(POLL_SECONDS)  # Redis away: waiters time out alone
                    continue
                if not found:
                    continue
                parsed = parse_answer(bytes(found[1]))
                if parsed is None:
                    log.warning("an answer on %s could not be read; dropped", name)
                    continue
                future = self._waiting.get(parsed[0])
                if future is not None and not future.done():
                    future.set_result(bytes(found[1]))
        finally:
            del self._readers[name]
