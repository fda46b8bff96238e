"""Per-registry write locks: writers to one registry go one at a time.

In one process an asyncio lock suffices. Across replicas the lock lives in Redis (redis-py's
Lock: SET NX PX with a token, released by a compare-and-delete script, so only its owner
releases it). Its expiry is short (`cache.lock_ttl_seconds`, 10 s by default) and a watchdog
renews it every third of that while its writer holds it, as Redisson's does: a live writer
keeps its lock as long as its write lasts, up to the longest a write may take
(`max_hold_seconds`: the server's longest deadline + 5 s, so a writer stuck alive cannot hold
its registry for ever), and the lock of a replica that died frees within the TTL. A writer
re-checks that it still owns the lock just before the AWS call, and the settlement of a
write checks it again before it records anything.

What a Redis fault costs here, bounded:
- A writer waits for a lock until a margin before its deadline (`wait_budget`), then answers
  UNAVAILABLE `WRITE_LOCK_BUSY` with RetryInfo (nothing written), never DEADLINE_EXCEEDED.
- A renewal that fails is retried every RETRY_SECONDS while the lock is still valid; one that
  finds the key gone or another's (expired, wiped, taken) marks the lock lost at once: the
  writer's next check answers WRITE_LOCK_LOST rather than write or record under it.
- A release (or an acquisition whose answer never came: Redis may apply it once it answers)
  that fails is retried in the background until Redis answers it, so the lock frees as soon
  as Redis is back rather than at its expiry.
- A Redis that does not answer is waited for once per command at most, and not again until
  it answers (service/state/redis_circuit.py).

A write also marks, for as long as it settles (put, read-back, write-through, record), that a
write of its resource is in flight (`writing`): the drift detector skips unlocked reads of
that resource meanwhile (service/registry/writes/drift.py), not of the registry's other one. In
Redis the marker is `<prefix>lock:writing:<registry>:<region>:<resource>` (the lock
`<prefix>lock:<registry>:<region>`; on a Redis Cluster `<registry>:<region>` is a hash tag,
service/state/redis_keys.py), set with the lock's TTL, renewed with the lock and deleted by
its owner. A held lock also says how long it stays valid (`remaining`, moved on by each
renewal) and whether it is still owned (`owned`): the settlement of a write is bounded by the
one and checks the other before it records anything (service/registry/writes/settlement.py).

The window that remains, which no lock closes: AWS has no conditional write and cannot check
a fencing token, so a writer whose lock expired between that check and AWS applying its
call, or a writer outside the gateway (console, Terraform), can still interleave. The etag
precondition, checked against a fresh read inside the lock, narrows it to that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, LockNotOwnedError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.errors import Unavailable
from service.state.redis_keys import RedisClient, RedisKeys

log = logging.getLogger("registry_gateway.locks")

LOCK_RETRY_AFTER_SECONDS = 1.0
# A writer stops waiting for a lock this long before its deadline (at most a fifth of the
# time it has), so that it answers WRITE_LOCK_BUSY before the caller's deadline passes.
LOCK_WAIT_MARGIN_SECONDS = 1.0
# A renewal or a release that failed is tried again this often.
RETRY_SECONDS = 0.25
# A release Redis never answered is given up after this long (the key expires by itself).
RELEASE_GIVE_UP_SECONDS = 600.0


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


def lock_busy(registry_id: str, region: str) -> Unavailable:
    """The error of a writer whose deadline came before the lock did: nothing was written."""
    return Unavailable(
        f"another write of registry {registry_id} in {region} held its write lock until "
        "your deadline; nothing was written: retry",
        reason="WRITE_LOCK_BUSY",
        metadata={"registryId": registry_id, "region": region},
        retry_after_seconds=LOCK_RETRY_AFTER_SECONDS,
    )


def wait_budget(time_left: float, max_wait: float) -> float:
    """Seconds a writer with `time_left` of its deadline waits for a lock (outside a call,
    where time_left is infinite: `max_wait`)."""
    left = min(time_left, max_wait)
    return max(0.0, left - min(LOCK_WAIT_MARGIN_SECONDS, left / 5))


class HeldLock(Protocol):
    """A lock being held, which a writer re-checks just before it calls AWS."""

    async def ensure_owned(self) -> None:
        """Raise Unavailable (`lock_lost`) when the lock was lost (expired, maybe taken)."""
        ...

    async def owned(self) -> bool:
        """Whether the lock is still ours (never raises: Redis away is False)."""
        ...

    def remaining(self) -> float:
        """Seconds the lock stays valid at least (math.inf: it does not expire; 0: lost).
        A renewal moves it on."""
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
    """One asyncio lock per (registry, region), within this process.

    With `time_left` (the current call's), a writer waits no longer than `wait_budget` and
    then answers WRITE_LOCK_BUSY; without, it waits as long as it takes (unit tests)."""

    def __init__(
        self,
        time_left: Callable[[], float] | None = None,
        *,
        max_wait_seconds: float = 60.0,
    ) -> None:
        # Bounded by the configured registries x regions, so never evicted.
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._marks = _Marks()
        self._time_left = time_left
        self._max_wait = max_wait_seconds

    @asynccontextmanager
    async def hold(
        self, registry_id: str, region: str, *, within: float | None = None
    ) -> AsyncIterator[HeldLock]:
        """Hold the registry's lock for the duration of the block (waited for at most
        `within` seconds when given, else as the caller's deadline allows)."""
        wait = (
            within
            if within is not None
            else math.inf
            if self._time_left is None
            else wait_budget(self._time_left(), self._max_wait)
        )
        async with self.hold_within(registry_id, region, wait):
            yield _LocalHold(self._marks, registry_id, region)

    @asynccontextmanager
    async def hold_within(self, registry_id: str, region: str, wait: float) -> AsyncIterator[None]:
        """The in-process lock, waited for at most `wait` seconds (else WRITE_LOCK_BUSY)."""
        lock = self._locks.setdefault((registry_id, region), asyncio.Lock())
        bound = asyncio.timeout(None if math.isinf(wait) else wait)
        try:
            async with bound:
                await lock.acquire()
        except TimeoutError:
            if bound.expired():
                raise lock_busy(registry_id, region) from None
            raise
        try:
            yield
        finally:
            lock.release()

    async def held(self, registry_id: str, region: str) -> bool:
        """Whether a writer holds (or is being granted) the registry's lock right now."""
        lock = self._locks.get((registry_id, region))
        return lock is not None and lock.locked()

    async def held_elsewhere(self, registry_id: str, region: str) -> bool:
        """In one process there is no elsewhere."""
        return False

    async def writing(self, registry_id: str, region: str, resource: str) -> bool:
        """Whether a write of the resource is in flight (`HeldLock.writing`) right now."""
        return (registry_id, region, resource) in self._marks


class LockReplication:
    """An acquisition acknowledged by a replica before the writer goes on (`WAIT 1`), so that
    a failover right after it (Sentinel promoting the replica, or a Redis Cluster the replica
    of the lock's shard) does not forget the lock.

    Redis replicates asynchronously: a lock SET on the primary and not yet on its replica is
    gone if the primary dies then and the replica is promoted, and another replica's writer
    could take it. `WAIT` closes that window for the acquisition. When no replica
    acknowledges within `timeout_ms` (none connected: the only replica was just promoted,
    or it lags), the writer goes on under a lock held by the primary alone (availability:
    a Sentinel set that lost its replica still takes writes), a warning says so, and further
    acquisitions skip the wait for `skip_seconds` rather than each pay it; the settlement's
    etag check and read-back still judge each write (docs/operations.md)."""

    def __init__(self, timeout_ms: int = 250, skip_seconds: float = 10.0) -> None:
        self._timeout_ms = timeout_ms
        self._skip_seconds = skip_seconds
        self._skip_until = 0.0
        self.unreplicated = 0  # acquisitions no replica acknowledged in time (for tests, logs)

    async def acknowledged(self, connection: redis.Redis, name: str) -> bool:
        """WAIT on the connection that set the lock (WAIT counts that client's writes)."""
        return await self.acknowledged_by(connection.wait, name)

    async def acknowledged_by(self, wait: Callable[[int, int], Awaitable[int]], name: str) -> bool:
        """`wait(replicas, timeout_ms)`: WAIT sent on the connection that set the lock."""
        if time.monotonic() < self._skip_until:
            self.unreplicated += 1
            return False
        acked = int(await wait(1, self._timeout_ms))
        if acked >= 1:
            if self._skip_until:
                log.warning("write locks are acknowledged by a Redis replica again")
                self._skip_until = 0.0
            return True
        self.unreplicated += 1
        self._skip_until = time.monotonic() + self._skip_seconds
        log.warning(
            "write lock %s was acknowledged by no Redis replica within %d ms: held by the "
            "primary alone (a failover now could lose it); not waiting again for %.0f s",
            name,
            self._timeout_ms,
            self._skip_seconds,
        )
        return False


class _TimedLock(Lock):
    """redis-py's Lock, noting when its last acquisition attempt began: the lock's expiry
    runs from no earlier than that moment; with `replication`, an acquisition waits for a
    replica's acknowledgement (LockReplication)."""

    attempted_at = 0.0
    attempted_token: bytes | None = None
    replication: LockReplication | None = None

    async def do_acquire(self, token: str | bytes) -> bool:
        self.attempted_at = time.monotonic()
        self.attempted_token = token if isinstance(token, bytes) else token.encode()
        if self.replication is None:
            return await super().do_acquire(token)
        if isinstance(self.redis, RedisCluster):
            return await self._acquire_in_cluster(self.redis, self.replication, token)
        # One connection for SET and WAIT: WAIT waits for this client's own writes.
        assert isinstance(self.redis, redis.Redis)  # RedisRegistryLocks's client
        async with self.redis.client() as connection:
            px = int(self.timeout * 1000) if self.timeout else None
            if not await connection.set(self.name, token, nx=True, px=px):
                return False
            await self.replication.acknowledged(connection, str(self.name))
            return True

    async def _acquire_in_cluster(
        self, cluster: RedisCluster, replication: LockReplication, token: str | bytes
    ) -> bool:
        """On a cluster, WAIT is the business of the node owning the lock's slot: SET and WAIT
        go on one connection of that primary (the cluster client would send each command on
        any pooled connection, and WAIT counts only its own connection's writes). A shard
        without a replica has nobody to wait for (and no failover to lose the lock in)."""
        name = str(self.name)
        await cluster.initialize()  # the slots known (a no-op once they are)
        shard = cluster.nodes_manager.slots_cache.get(cluster.keyslot(name), [])
        if len(shard) < 2:
            return await super().do_acquire(token)
        node = shard[0]  # the primary (redis-py lists it first)
        px = int(self.timeout * 1000) if self.timeout else None
        connection = node.acquire_connection()
        try:
            await connection.send_command("SET", name, token, "NX", *(("PX", px) if px else ()))
            if await connection.read_response() is None:
                return False

            async def wait(replicas: int, timeout_ms: int) -> int:
                await connection.send_command("WAIT", replicas, timeout_ms)
                return int(await connection.read_response())

            await replication.acknowledged_by(wait, name)
            return True
        except BaseException:
            # A reply may be left unread (a cancellation, a timeout): not reused as it is.
            await connection.disconnect()
            raise
        finally:
            node.release(connection)


# Deletes a key only if it still holds this writer's token: a write-in-flight marker, or a
# lock key an acquisition may have set although its answer never came.
_DELETE_OURS = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""
# Renews a write-in-flight marker only if it is still the one this writer set.
_REMARK = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class _RedisHold:
    """A lock held in Redis, renewed by a watchdog task while the writer holds it."""

    def __init__(
        self,
        lock: _TimedLock,
        registry_id: str,
        region: str,
        *,
        ttl: float,
        max_hold: float,
        marker: Callable[[str], str],
        marks: _Marks,
    ) -> None:
        self._lock = lock
        self._registry_id = registry_id
        self._region = region
        self._ttl = ttl
        self._max_hold = max_hold
        # time.monotonic(): until when the key holds at least, and the longest it is renewed.
        self._valid_until = lock.attempted_at + ttl
        self._hold_until = lock.attempted_at + max_hold
        self._lost = False
        self._marker = marker
        self._marks = marks
        self._marked: dict[str, str] = {}  # marker key -> token, renewed with the lock
        self._watchdog: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Renew the lock every third of its TTL until `stop`. Its own context: the renewal
        belongs to no caller (no deadline, no trace of a call)."""
        self._watchdog = asyncio.get_running_loop().create_task(
            self._renew(), context=contextvars.Context()
        )

    async def stop(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            # Waited without raising its CancelledError: ours (the writer's) must go through.
            await asyncio.wait({watchdog})

    @property
    def lost(self) -> bool:
        """Known lost: the key no longer holds this writer's token, or it ran out."""
        return self._lost or self.remaining() <= 0

    async def _renew(self) -> None:
        every = self._ttl / 3
        wait = every
        while True:
            await asyncio.sleep(wait)
            if self.remaining() <= 0:
                self._lose("it ran out while Redis did not answer its renewals")
                return
            attempted = time.monotonic()
            renew_for = min(self._ttl, self._hold_until - attempted)
            if renew_for < RETRY_SECONDS:
                # As long as a write may last: not renewed further, it expires by itself.
                log.warning(
                    "write lock of registry %s in %s held for %.0f s, the longest a write may "
                    "take: not renewed further",
                    self._registry_id,
                    self._region,
                    self._max_hold,
                )
                return
            try:
                await self._lock.extend(renew_for, replace_ttl=True)
            except LockNotOwnedError:
                self._lose("its key no longer holds this writer's token (expired, wiped, taken)")
                return
            except (redis.RedisError, OSError):
                wait = min(every, RETRY_SECONDS)  # still valid for a while: try again soon
                continue
            self._valid_until = attempted + renew_for
            wait = every
            await self._renew_marks(renew_for)

    async def _renew_marks(self, seconds: float) -> None:
        client = self._lock.redis
        for key, token in list(self._marked.items()):
            with contextlib.suppress(redis.RedisError, OSError):
                await client.eval(_REMARK, 1, key, token, max(1, math.ceil(seconds * 1000)))

    def _lose(self, why: str) -> None:
        self._lost = True
        log.warning(
            "write lock of registry %s in %s lost: %s",
            self._registry_id,
            self._region,
            why,
        )

    async def ensure_owned(self) -> None:
        if not await self.owned():
            raise lock_lost(self._registry_id)

    async def owned(self) -> bool:
        if self.lost:
            return False
        try:
            return bool(await self._lock.owned())
        except (redis.RedisError, OSError):
            return False

    def remaining(self) -> float:
        if self._lost:
            return 0.0
        return self._valid_until - time.monotonic()

    @asynccontextmanager
    async def writing(self, resource: str) -> AsyncIterator[None]:
        key = self._marker(resource)
        token = uuid.uuid4().hex
        client = self._lock.redis
        with self._marks.mark((self._registry_id, self._region, resource)):
            self._marked[key] = token
            with contextlib.suppress(redis.RedisError, OSError):
                # Redis away: readers asking it skip anyway (`RedisRegistryLocks.writing`).
                ttl = max(1, math.ceil(min(self._ttl, self.remaining()) * 1000))
                await client.set(key, token, px=ttl)
            try:
                yield
            finally:
                del self._marked[key]
                with contextlib.suppress(redis.RedisError, OSError):
                    await client.eval(_DELETE_OURS, 1, key, token)


class RedisRegistryLocks:
    """Per-registry locks in Redis, shared by every replica (and an asyncio lock in front,
    so that one process's writers queue locally instead of polling Redis)."""

    def __init__(
        self,
        client: RedisClient,
        key_prefix: str,
        ttl_seconds: float,
        time_left: Callable[[], float],
        *,
        max_wait_seconds: float = 60.0,
        max_hold_seconds: float = math.inf,
        spawn: Callable[[Coroutine[Any, Any, None]], None] | None = None,
        replication: LockReplication | None = None,
    ) -> None:
        self._redis = client
        self._replication = replication
        # A registry and region's lock and markers are hash-tagged alike on a cluster.
        self._names = RedisKeys.of(client, f"{key_prefix}lock:")
        self._marker_names = RedisKeys.of(client, f"{key_prefix}lock:writing:")
        self._ttl = min(ttl_seconds, max_hold_seconds)
        # The longest a writer keeps its lock by renewals: what a write may take at most, so
        # that a writer stuck alive cannot hold its registry for ever (settlement.py ends
        # a write's settlement before its lock runs out).
        self._max_hold = max_hold_seconds
        self._time_left = time_left
        self._max_wait = max_wait_seconds
        self._local = RegistryLocks()
        self._marks = _Marks()
        # Runs the releases Redis did not answer yet in the background (the server's, which
        # it cancels at shutdown; else tasks of this object's own, `aclose`).
        self._spawn = spawn or self._in_background
        self._releasing: set[asyncio.Task[None]] = set()

    def _key(self, registry_id: str, region: str) -> str:
        return self._names.key(f"{registry_id}:{region}")

    def _marker(self, registry_id: str, region: str, resource: str) -> str:
        return self._marker_names.key(f"{registry_id}:{region}", resource)

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

    async def held_elsewhere(self, registry_id: str, region: str) -> bool:
        """Whether another replica holds the registry's lock, and no writer of this process
        holds or waits for it (a slice write is then handed over: service/registry/writes/
        handoff.py). Redis away: False (the lock, taken here, says so)."""
        if await self._local.held(registry_id, region):
            return False
        try:
            return bool(await self._redis.exists(self._key(registry_id, region)))
        except (redis.RedisError, OSError):
            return False

    @asynccontextmanager
    async def hold(
        self, registry_id: str, region: str, *, within: float | None = None
    ) -> AsyncIterator[HeldLock]:
        """Hold the registry's lock across replicas, renewed while held.

        Unavailable when Redis cannot grant it (WRITE_LOCK_UNAVAILABLE): writes fail rather
        than go unlocked while Redis is away, since a lost update is worse than a retry; or
        when another writer holds it until this one's wait runs out (WRITE_LOCK_BUSY): at
        most `within` seconds when given, else as the caller's deadline allows.
        """
        loop = asyncio.get_running_loop()
        wait = wait_budget(self._time_left(), self._max_wait) if within is None else within
        give_up_at = loop.time() + wait
        async with self._local.hold_within(registry_id, region, give_up_at - loop.time()):
            lock = self._redis.lock(
                self._key(registry_id, region),
                timeout=self._ttl,
                sleep=0.05,
                blocking_timeout=max(0.0, give_up_at - loop.time()),
                lock_class=_TimedLock,
                thread_local=False,  # used by the writer's task and its watchdog's
            )
            assert isinstance(lock, _TimedLock)
            lock.replication = self._replication
            try:
                acquired = await lock.acquire()
            except (redis.RedisError, OSError) as exc:
                if isinstance(exc, RedisTimeoutError | TimeoutError) and lock.attempted_token:
                    # Its SET was sent but not answered: a paused Redis applies it when it
                    # wakes, and nobody would release that lock. Forget it once Redis answers.
                    self._spawn(self._forget(self._key(registry_id, region), lock.attempted_token))
                raise Unavailable(
                    "the shared write lock (Redis) is unavailable; nothing was written",
                    reason="WRITE_LOCK_UNAVAILABLE",
                    retry_after_seconds=LOCK_RETRY_AFTER_SECONDS,
                ) from None
            if not acquired:
                raise lock_busy(registry_id, region)
            hold = _RedisHold(
                lock,
                registry_id,
                region,
                ttl=self._ttl,
                max_hold=self._max_hold,
                marker=lambda resource: self._marker(registry_id, region, resource),
                marks=self._marks,
            )
            hold.start()
            try:
                yield hold
            finally:
                await hold.stop()
                await self._release(lock)

    async def _release(self, lock: _TimedLock) -> None:
        """Release now, or (Redis not answering) in the background until Redis answers: the
        lock frees as soon as Redis is back, not at its expiry."""
        try:
            await lock.release()
        except LockError:
            return  # not ours any more (expired, wiped, taken): nothing to release
        except (redis.RedisError, OSError):
            self._spawn(self._release_later(lock))

    async def _release_later(self, lock: _TimedLock) -> None:
        give_up_at = time.monotonic() + RELEASE_GIVE_UP_SECONDS
        while time.monotonic() < give_up_at:
            await asyncio.sleep(RETRY_SECONDS)
            try:
                await lock.release()
            except LockError:
                return
            except (redis.RedisError, OSError):
                continue
            log.info("write lock %s released once Redis answered", lock.name)
            return

    async def _forget(self, name: str, token: bytes) -> None:
        give_up_at = time.monotonic() + RELEASE_GIVE_UP_SECONDS
        while time.monotonic() < give_up_at:
            await asyncio.sleep(RETRY_SECONDS)
            try:
                await self._redis.eval(_DELETE_OURS, 1, name, token)
            except (redis.RedisError, OSError):
                continue
            return

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work, context=contextvars.Context())
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def aclose(self) -> None:
        """Stop the releases still waiting for Redis (at shutdown: the keys expire)."""
        for task in list(self._releasing):
            task.cancel()
        await asyncio.gather(*self._releasing, return_exceptions=True)
