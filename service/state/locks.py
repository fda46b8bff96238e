"""Per-registry write locks: writers to one registry go one at a time.

In one process an asyncio lock suffices. Across replicas the lock lives in Redis (redis-py's
Lock: SET NX PX with a token, released by a compare-and-delete script, so only its owner
releases it). Its expiry exceeds the longest allowed deadline, and a writer re-checks that
it still owns the lock just before the AWS call.

A write also marks, for as long as it settles (put, read-back, write-through, record), that a
write of its resource is in flight (`writing`): the drift detector skips unlocked reads of
that resource meanwhile (service/registry/drift.py), not of the registry's other one. In
Redis the marker is `{prefix}lock:writing:{registry}:{region}:{resource}`, set with the
lock's remaining validity as expiry and deleted by its owner. A held lock also says how long
it stays valid (`remaining`) and whether it is still owned (`owned`): the settlement of a
write is bounded by the one and checks the other before it records anything
(service/registry/settlement.py).

The window that remains, which no lock closes: AWS has no conditional write and cannot check
a fencing token, so a writer whose lock expired between that check and AWS applying its
call, or a writer outside the gateway (console, Terraform), can still interleave. The etag
precondition, checked against a fresh read inside the lock, narrows it to that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import redis.asyncio as redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError

from service.errors import DeadlineExceeded, Unavailable

LOCK_RETRY_AFTER_SECONDS = 1.0


def lock_lost(registry_id: str, *, sent: bool = False) -> Unavailable:
    """The error of a writer that lost its lock: before its write (`sent` False: nothing was
    written), or while settling one it sent (its outcome unknown: nothing recorded)."""
    if sent:
        what = (
            f"lost the write lock of registry {registry_id} while settling a write sent to "
            "AWS; its outcome is unknown: read again before retrying"
        )
    else:
        what = f"lost the write lock of registry {registry_id}; nothing was written"
    return Unavailable(what, reason="WRITE_LOCK_LOST", retry_after_seconds=LOCK_RETRY_AFTER_SECONDS)


class HeldLock(Protocol):
    """A lock being held, which a writer re-checks just before it calls AWS."""

    async def ensure_owned(self) -> None:
        """Raise Unavailable (`lock_lost`) when the lock was lost (expired, maybe taken)."""
        ...

    async def owned(self) -> bool:
        """Whether the lock is still ours (never raises: Redis away is False)."""
        ...

    def remaining(self) -> float:
        """Seconds the lock stays valid at least (math.inf: it does not expire)."""
        ...

    def writing(self, resource: str) -> AbstractAsyncContextManager[None]:
        """Mark, for the duration of the block, a write of `resource` in flight."""
        ...


class _Marks:
    """Writes in flight in this process, per (registry, region, resource)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str], int] = {}

    @contextlib.contextmanager
    def mark(self, key: tuple[str, str, str]) -> Iterator[None]:
        self._counts[key] = self._counts.get(key, 0) + 1
        try:
            yield
        finally:
            left = self._counts[key] - 1
            if left:
                self._counts[key] = left
            else:
                del self._counts[key]

    def __contains__(self, key: tuple[str, str, str]) -> bool:
        return key in self._counts


class _LocalHold:
    def __init__(self, marks: _Marks, registry_id: str, region: str) -> None:
        self._marks = marks
        self._registry_id = registry_id
        self._region = region

    async def ensure_owned(self) -> None:
        return None

    async def owned(self) -> bool:
        return True

    def remaining(self) -> float:
        return math.inf

    @asynccontextmanager
    async def writing(self, resource: str) -> AsyncIterator[None]:
        with self._marks.mark((self._registry_id, self._region, resource)):
            yield


class RegistryLocks:
    """One asyncio lock per (registry, region), within this process."""

    def __init__(self) -> None:
        # Bounded by the configured registries x regions, so never evicted.
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._marks = _Marks()

    @asynccontextmanager
    async def hold(self, registry_id: str, region: str) -> AsyncIterator[HeldLock]:
        """Hold the registry's lock for the duration of the block."""
        lock = self._locks.setdefault((registry_id, region), asyncio.Lock())
        async with lock:
            yield _LocalHold(self._marks, registry_id, region)

    async def held(self, registry_id: str, region: str) -> bool:
        """Whether a writer holds (or is being granted) the registry's lock right now."""
        lock = self._locks.get((registry_id, region))
        return lock is not None and lock.locked()

    async def writing(self, registry_id: str, region: str, resource: str) -> bool:
        """Whether a write of the resource is in flight (`HeldLock.writing`) right now."""
        return (registry_id, region, resource) in self._marks


class _TimedLock(Lock):
    """redis-py's Lock, noting when its last acquisition attempt began: the lock's expiry
    runs from no earlier than that moment."""

    attempted_at = 0.0

    async def do_acquire(self, token: str | bytes) -> bool:
        self.attempted_at = time.monotonic()
        return await super().do_acquire(token)


# Deletes a write-in-flight marker only if it is still the one this writer set.
_UNMARK = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class _RedisHold:
    def __init__(
        self,
        lock: _TimedLock,
        registry_id: str,
        region: str,
        *,
        valid_until: float,
        marker: Callable[[str], str],
        marks: _Marks,
    ) -> None:
        self._lock = lock
        self._registry_id = registry_id
        self._region = region
        self._valid_until = valid_until  # time.monotonic()
        self._marker = marker
        self._marks = marks

    async def ensure_owned(self) -> None:
        if not await self.owned():
            raise lock_lost(self._registry_id)

    async def owned(self) -> bool:
        if self.remaining() <= 0:
            return False
        try:
            return bool(await self._lock.owned())
        except (redis.RedisError, OSError):
            return False

    def remaining(self) -> float:
        return self._valid_until - time.monotonic()

    @asynccontextmanager
    async def writing(self, resource: str) -> AsyncIterator[None]:
        key = self._marker(resource)
        token = uuid.uuid4().hex
        client = self._lock.redis
        with self._marks.mark((self._registry_id, self._region, resource)):
            with contextlib.suppress(redis.RedisError, OSError):
                # Redis away: readers asking it skip anyway (`RedisRegistryLocks.writing`).
                ttl = max(1, math.ceil(self.remaining() * 1000))
                await client.set(key, token, px=ttl)
            try:
                yield
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    await client.eval(_UNMARK, 1, key, token)


class RedisRegistryLocks:
    """Per-registry locks in Redis, shared by every replica (and an asyncio lock in front,
    so that one process's writers queue locally instead of polling Redis)."""

    def __init__(
        self,
        client: redis.Redis,
        key_prefix: str,
        expiry_seconds: float,
        time_left: Callable[[], float],
    ) -> None:
        self._redis = client
        self._prefix = f"{key_prefix}lock:"
        self._expiry = expiry_seconds
        self._time_left = time_left
        self._local = RegistryLocks()
        self._marks = _Marks()

    def _key(self, registry_id: str, region: str) -> str:
        return f"{self._prefix}{registry_id}:{region}"

    def _marker(self, registry_id: str, region: str, resource: str) -> str:
        return f"{self._prefix}writing:{registry_id}:{region}:{resource}"

    async def writing(self, registry_id: str, region: str, resource: str) -> bool:
        """Whether any replica has a write of the resource in flight right now (its marker
        exists in Redis, or this process has one). Redis away: True, as for `held`."""
        if (registry_id, region, resource) in self._marks:
            return True
        try:
            return bool(await self._redis.exists(self._marker(registry_id, region, resource)))
        except (redis.RedisError, OSError):
            return True

    async def held(self, registry_id: str, region: str) -> bool:
        """Whether any replica holds the registry's lock right now (its key exists in Redis;
        a writer of this process waiting for it counts too). Redis away: True, since a
        caller asking this would rather skip than act on a write it cannot see."""
        if await self._local.held(registry_id, region):
            return True
        try:
            return bool(await self._redis.exists(self._key(registry_id, region)))
        except (redis.RedisError, OSError):
            return True

    @asynccontextmanager
    async def hold(self, registry_id: str, region: str) -> AsyncIterator[HeldLock]:
        """Hold the registry's lock across replicas; Unavailable when Redis cannot grant it.

        Writes fail rather than go unlocked while Redis is away: a lost update is worse
        than a retry.
        """
        async with self._local.hold(registry_id, region):
            lock = self._redis.lock(
                self._key(registry_id, region),
                timeout=self._expiry,
                sleep=0.05,
                blocking_timeout=max(0.0, min(self._time_left(), self._expiry)),
                lock_class=_TimedLock,
            )
            assert isinstance(lock, _TimedLock)
            try:
                acquired = await lock.acquire()
            except (redis.RedisError, OSError):
                raise Unavailable(
                    "the shared write lock (Redis) is unavailable; nothing was written",
                    reason="WRITE_LOCK_UNAVAILABLE",
                    retry_after_seconds=LOCK_RETRY_AFTER_SECONDS,
                ) from None
            if not acquired:
                raise DeadlineExceeded(
                    f"deadline exceeded waiting for the write lock of registry {registry_id}"
                )
            hold = _RedisHold(
                lock,
                registry_id,
                region,
                valid_until=lock.attempted_at + self._expiry,
                marker=lambda resource: self._marker(registry_id, region, resource),
                marks=self._marks,
            )
            try:
                yield hold
            finally:
                # Expired or Redis away: it is no longer ours to release.
                with contextlib.suppress(LockError, redis.RedisError, OSError):
                    await lock.release()
