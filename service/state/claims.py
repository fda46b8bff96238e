"""Claims on a period of time: at most one holder per name per period, across replicas.

The background drift check (service/app/drift_check.py) claims each (registry, region) for
one period before reading it, so N replicas together read each key at most once a period.
In Redis a claim is `SET name NX PX period`: the first replica to ask gets it and it expires
by itself (a replica that dies mid-period holds nothing longer than the period).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from redis.exceptions import RedisError

from service.state.redis_keys import RedisClient, RedisKeys

log = logging.getLogger("registry_gateway.claims")


class PeriodClaims(Protocol):
    """Claims of a name for a period."""

    async def claim(self, name: str, seconds: float) -> bool:
        """Whether this caller holds `name` for the next `seconds` (False: someone does)."""
        ...


class MemoryClaims:
    """Claims within one process (the memory backend: one replica, nothing to share)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}

    async def claim(self, name: str, seconds: float) -> bool:
        """Whether `name` was free; it is now held for `seconds`."""
        now = self._clock()
        if self._until.get(name, 0.0) > now:
            return False
        self._until[name] = now + seconds
        return True


class RedisClaims:
    """Claims shared by every replica on one Redis."""

    def __init__(self, client: RedisClient, key_prefix: str) -> None:
        self._redis = client
        self._names = RedisKeys.of(client, f"{key_prefix}claim:")

    async def claim(self, name: str, seconds: float) -> bool:
        """Whether this replica got `name` for `seconds`. Redis unavailable: no claim — the
        work it guards waits for Redis rather than running on every replica at once."""
        try:
            got = await self._redis.set(
                self._names.key(name), b"1", nx=True, px=max(1, int(seconds * 1000))
            )
        except (RedisError, OSError) as exc:
            log.debug("claim %s not taken: Redis unavailable (%s)", name, type(exc).__name__)
            return False
        return bool(got)
