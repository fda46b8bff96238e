"""In-process entries, bounded in number (LRU, from cachetools)."""

from __future__ import annotations

from cachetools import LRUCache

from service.state.cache.base import CacheKey, Entry


class MemoryStore:
    """Entries in this process only. Expiry is the ReadCache's (entries outlive their TTL as
    stale values for stale-if-error), so this is an LRUCache rather than a TTLCache."""

    def __init__(self, max_entries: int) -> None:
        self._entries: LRUCache[CacheKey, Entry] = LRUCache(maxsize=max_entries)

    async def get(self, key: CacheKey) -> Entry | None:
        """The entry, if any."""
        return self._entries.get(key)

    async def put(self, key: CacheKey, entry: Entry) -> None:
        """Store the entry."""
        self._entries[key] = entry

    async def put_written(self, key: CacheKey, entry: Entry) -> None:
        """Store the entry a write read back (one process: the same as put)."""
        self._entries[key] = entry

    async def invalidate(self, key: CacheKey) -> None:
        """Forget the key."""
        self._entries.pop(key, None)
