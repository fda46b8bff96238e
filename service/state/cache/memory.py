"""In-process entries, bounded in number (LRU, from cachetools)."""

from __future__ import annotations

from cachetools import LRUCache

from service.state.cache.base import CacheKey, Entry


class MemoryStore:
    """Entries in this process only. Expiry is the ReadCache's (entries outlive their TTL as
    stale values for stale-if-error), so this is an LRUCache rather than a TTLCache."""

    def __init__(self, max_entries: int) -> None:
        self._entries: LRUCache[CacheKey, Entry] = LRUCache(maxsize=max_entries)
        # Writes per key, and the count a load in flight began at: a load that began before
        # a write must not put back what it read (keys: the config's, so bounded).
        self._writes: dict[CacheKey, int] = {}
        self._loading: dict[CacheKey, int] = {}

    async def get(self, key: CacheKey) -> Entry | None:
        """The entry, if any."""
        return self._entries.get(key)

    def begin_load(self, key: CacheKey) -> None:
        """A load begins: what it puts is dropped if a write comes first."""
        self._loading[key] = self._writes.get(key, 0)

    async def put(self, key: CacheKey, entry: Entry) -> None:
        """Store a loaded entry, unless a write came since its load began."""
        writes = self._writes.get(key, 0)
        if self._loading.pop(key, writes) == writes:
            self._entries[key] = entry

    async def put_written(self, key: CacheKey, entry: Entry) -> None:
        """Store the entry a write read back: it replaces any load in flight."""
        self._writes[key] = self._writes.get(key, 0) + 1
        self._entries[key] = entry

    async def invalidate(self, key: CacheKey) -> None:
        """Forget the key (and what a load in flight would put back)."""
        self._writes[key] = self._writes.get(key, 0) + 1
        self._entries.pop(key, None)
