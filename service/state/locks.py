"""Per-registry write locks: writers to one registry go one at a time.

In one process an asyncio lock suffices. Across replicas the lock lives in Redis (redis-py's
Lock: SET NX PX with a token, released by a compare-and-delete script, so only its owner
releases it). Its expiry exceeds the longest allowed deadline, and a writer re-checks that
it still owns the lock just before the AWS call.

The window that remains, which no lock closes: AWS has no conditional write and cannot check
a fencing token, so a writer whose lock expired between that check and AWS applying its
call, or a writer outside the gateway (console, Terraform), can still interleave. The etag
precondition, checked against a fresh read inside the lock, narrows it to that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

import redis.asyncio as redis
from redis.exceptions import LockError

from service.errors import DeadlineExceeded, Unavailable

LOCK_RETRY_AFTER_SECONDS = 1.0


class HeldLock(Protocol):
    """A lock being held, which a writer re-checks just before it calls AWS."""

    async def ensure_owned(self) -> None:
        """Raise Unavailable when the lock was lost (expired and taken by another)."""
        ...


class _LocalHold:
    async def ensure_owned(self) -> None:
        return None


class RegistryLocks:
    """One asyncio lock per (registry, region), within this process."""

    def __init__(self) -> None:
        # Bounded by the configured registries x regions, so never evicted.
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    @asynccontextmanager
    async def hold(self, registry_id: str, region: str) -> AsyncIterator[HeldLock]:
        """Hold the registry's lock for the duration of the block."""
        lock = self._locks.setdefault((registry_id, region), asyncio.Lock())
        async with lock:
            yield _LocalHold()

    async def held(self, registry_id: str, region: str) -> bool:
        """Whether a writer holds (or is being granted) the registry's lock right now."""
        lock = self._locks.get((registry_id, region))
        return lock is not None and lock.locked()


class _RedisHold:
    def __init__(self, lock: redis.lock.Lock, registry_id: str) -> None:
        self._lock = lock
        self._registry_id = registry_id

    async def ensure_owned(self) -> None:
        try:
            owned = await self._lock.owned()
        except (redis.RedisError, OSError):
            owned = False
        if not owned:
            raise Unavailable(
                f"lost the write lock of registry {self._registry_id}; nothing was written",
                reason="WRITE_LOCK_LOST",
                retry_after_seconds=LOCK_RETRY_AFTER_SECONDS,
            )


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

    def _key(self, registry_id: str, region: str) -> str:
        return f"{self._prefix}{registry_id}:{region}"

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
            )
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
            try:
                yield _RedisHold(lock, registry_id)
            finally:
                # Expired or Redis away: it is no longer ours to release.
                with contextlib.suppress(LockError, redis.RedisError, OSError):
                    await lock.release()
