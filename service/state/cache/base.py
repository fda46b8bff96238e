"""Read-through with single flight, TTL with jitter, negative caching and stale-if-error."""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

from google.protobuf.message import Message

from service.config import CacheConfig
from service.errors import DeadlineExceeded, NotFound, Unavailable

Outcome = Literal["hit", "miss", "stale"]
Resource = Literal["registry", "policy"]
OnOutcome = Callable[[Outcome], None]


class CacheKey(NamedTuple):
    """What is cached: one resource of one registry in one region.

    A tuple, not a frozen dataclass: a cached read hashes and compares its key a few times
    (the store's dict, its LRU order), and a dataclass's `__hash__` and `__eq__` run in
    Python (~100 bytecodes a hit), a tuple's in C. Immutable either way."""

    registry_id: str
    region: str
    resource: Resource

    def __str__(self) -> str:
        return f"{self.registry_id}:{self.region}:{self.resource}"


@dataclass(frozen=True)
class Entry:
    """A built response (or "not found"), with the wall-clock times it is good until."""

    value: Message | None  # None: AWS said there is none (negative entry)
    fresh_until: float
    stale_until: float


_Loaded = tuple[Entry, Outcome, NotFound | None]


# A store's synchronous read of an entry held in this process (MemoryStore.peek): the hit
# path then makes no coroutine for the store.
Peek = Callable[["CacheKey"], "Entry | None"]


class Store(Protocol):
    """Where entries live: in this process, or in Redis shared by replicas."""

    async def get(self, key: CacheKey) -> Entry | None:
        """The entry, or None (never raises because the store is unavailable)."""
        ...

    def begin_load(self, key: CacheKey) -> None:
        """A load of `key` begins, right after a `get` of it: its `put` stores nothing if a
        write (or, in Redis, a loss of the key) came in between."""
        ...

    async def put(self, key: CacheKey, entry: Entry) -> None:
        """Store an entry a read loaded (unless a write has since replaced it)."""
        ...

    async def put_written(self, key: CacheKey, entry: Entry) -> None:
        """Store the entry a write read back inside its lock; it replaces any other copy."""
        ...

    async def invalidate(self, key: CacheKey) -> None:
        """Forget the key everywhere (a failed or abandoned write)."""
        ...


def _cached_not_found() -> NotFound:
    """The answer a negative entry gives: the registry has no policy (cached)."""
    return NotFound(
        "the registry has no registry policy",
        reason="REGISTRY_POLICY_NOT_FOUND",
        metadata={"awsErrorCode": "RegistryPolicyNotFoundException", "cached": "true"},
    )


class ReadCache:
    """Reads through a Store; concurrent misses on one key share one load."""

    def __init__(
        self,
        config: CacheConfig,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = lambda: random.uniform(0.9, 1.1),  # noqa: S311
        count: Callable[[str], None] | None = None,
    ) -> None:
        self._count = count
        self._config = config
        self._store = store
        self._clock = clock
        self._jitter = jitter
        self._flights: dict[CacheKey, asyncio.Task[_Loaded]] = {}
        # A store in this process answers without an await (no coroutine per hit).
        self._peek: Peek | None = getattr(store, "peek", None)

    async def get_or_load(
        self,
        key: CacheKey,
        loader: Callable[[], Awaitable[Message]],
        *,
        fresh: bool = False,
        on_outcome: OnOutcome | None = None,
    ) -> Message:
        """The cached response, or one loaded by `loader` (NotFound is cached as negative)."""
        # A fresh read asks the store too: the version it finds is the one the load's value
        # is stored under (RedisStore), and the entry is the stale one served if AWS fails.
        peek = self._peek
        cached = peek(key) if peek is not None else await self._store.get(key)
        if not fresh and cached is not None and self._clock() < cached.fresh_until:
            # The hit, on its own path: nothing of a load (flights, shield) applies to it.
            if on_outcome is not None:
                on_outcome("hit")
            if self._count is not None:
                self._count("hit")
            value = cached.value
            if value is None:
                raise _cached_not_found()
            return value
        flight = self._flights.get(key)
        coalesced = flight is not None
        if flight is None:
            # No await since the get above: the load begins on what that get found.
            self._store.begin_load(key)
            # The load belongs to no caller: an empty context, so no caller's deadline
            # bounds it, and shielded, so a caller leaving does not cancel it.
            flight = asyncio.get_running_loop().create_task(
                self._load(key, loader, cached), context=contextvars.Context()
            )
            self._flights[key] = flight
            flight.add_done_callback(lambda _: self._flights.pop(key, None))
        entry, outcome, not_found = await asyncio.shield(flight)
        if on_outcome is not None:
            on_outcome(outcome)
        if self._count is not None:
            # "coalesced": a miss that waited for another caller's load instead of its own.
            self._count("coalesced" if outcome == "miss" and coalesced else outcome)
        if entry.value is None:
            # A miss answers AWS's own error (its request id); a stale entry, the cached fact.
            raise not_found or _cached_not_found()
        return entry.value

    async def put(self, key: CacheKey, value: Message | None) -> None:
        """Write-through: store what a write read back from AWS inside its lock."""
        await self._store.put_written(key, self._entry(value))

    async def invalidate(self, key: CacheKey) -> None:
        """Forget a key whose AWS value is unknown (a failed or abandoned write)."""
        await self._store.invalidate(key)

    async def _load(
        self, key: CacheKey, loader: Callable[[], Awaitable[Message]], previous: Entry | None
    ) -> _Loaded:
        not_found = None
        # Staleness is judged when the load began: a slow failure must not use up the window.
        started = self._clock()
        try:
            value: Message | None = await loader()
        except NotFound as exc:
            value, not_found = None, exc
            if self._config.negative_ttl_seconds == 0:
                raise
        except (Unavailable, DeadlineExceeded):
            previous = previous or await self._store.get(key)
            if previous is not None and started < previous.stale_until:
                return previous, "stale", None
            raise
        entry = self._entry(value)
        await self._store.put(key, entry)
        return entry, "miss", not_found

    def _entry(self, value: Message | None) -> Entry:
        now = self._clock()
        ttl = self._config.ttl_seconds if value is not None else self._config.negative_ttl_seconds
        fresh_until = now + ttl * self._jitter()
        return Entry(value, fresh_until, fresh_until + self._config.max_stale_seconds)
