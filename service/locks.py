"""Per-registry write locks, so the gateway's own writers to one registry go one at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class RegistryLocks:
    """One asyncio lock per (registry, region), within this process."""

    def __init__(self) -> None:
        # Bounded by the configured registries x regions, so never evicted.
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    @asynccontextmanager
    async def hold(self, registry_id: str, region: str) -> AsyncIterator[None]:
        """Hold the registry's lock for the duration of the block."""
        lock = self._locks.setdefault((registry_id, region), asyncio.Lock())
        async with lock:
            yield
