"""One clock for the times replicas compare: Redis's (TIME).

The drift detector records when each version was seen and compares those times with the
start of another replica's read (service/registry/writes/drift.py). On each replica's own clock, a
replica 30 s ahead takes a read that lagged another's write for a change made around the
gateway, and writes history times out of order (issue 26). Every replica on one Redis can
read the same clock: Redis's `TIME`.

What is measured is the offset of Redis's clock from this process's (one `TIME` per
operation, its round trip halved), so callers keep stamping the start of a read on their
own clock, synchronously, and the detector moves both onto Redis's clock when it compares.
Redis unavailable or slow: the last offset measured (0 before the first), and Redis is
left alone for a second, so an outage adds no wait to each read; with Redis away the
history answers nothing anyway, so nothing is compared meanwhile.

On a Redis Cluster "Redis's clock" is each node's own: the cluster client would send a bare
TIME to any node. Every replica reads the node that owns one agreed key's slot instead (a
script naming the key runs there), so they still share one clock; a failover moves it to
the promoted node, as it does with Sentinel.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as redis

from service.state.redis_keys import RedisClient, RedisKeys, is_cluster

# Runs on the node that owns KEYS[1]'s slot, which it does not touch.
_TIME = "return redis.call('TIME')"


class SharedClock(Protocol):
    """A clock every replica reads alike, as an offset from a replica's own."""

    async def offset(self, local: Callable[[], float]) -> float:
        """The shared clock less `local` (seconds), as measured now or last known."""
        ...


class RedisClock:
    """Redis's clock (TIME), shared by every replica on that Redis."""

    def __init__(
        self,
        client: RedisClient,
        *,
        key_prefix: str = "registry-gateway:",
        timeout_seconds: float = 0.25,
        retry_after_seconds: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = client
        # A cluster's clock: the node of this key's slot (one node for every replica).
        self._cluster_time = (
            (client.register_script(_TIME), RedisKeys.of(client, key_prefix).key("clock"))
            if is_cluster(client)
            else None
        )
        self._timeout_seconds = timeout_seconds
        self._retry_after_seconds = retry_after_seconds
        self._monotonic = monotonic
        self._offset = 0.0
        self._skip_until: float | None = None

    async def offset(self, local: Callable[[], float]) -> float:
        """Redis's clock less `local`: measured by one TIME, else the last measured."""
        if self._skip_until is not None and self._monotonic() < self._skip_until:
            return self._offset
        try:
            # Bounded: a paused Redis must not hold the read that asks for the time.
            async with asyncio.timeout(self._timeout_seconds):
                sent = local()
                seconds, microseconds = await self._time()
                received = local()
        except (redis.RedisError, OSError):  # TimeoutError is an OSError
            self._skip_until = self._monotonic() + self._retry_after_seconds
            return self._offset
        self._skip_until = None
        self._offset = seconds + microseconds / 1_000_000 - (sent + received) / 2
        return self._offset

    async def _time(self) -> tuple[int, int]:
        if self._cluster_time is None:
            seconds, microseconds = await self._redis.time()
            return int(seconds), int(microseconds)
        script, key = self._cluster_time
        reply = await script(keys=[key])
        return int(reply[0]), int(reply[1])
