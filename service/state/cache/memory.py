"""In-process entries, bounded in number (least recently used out first)."""

from __future__ import annotations

from collections import OrderedDict

from service.state.cache.base import CacheKey, Entry


class MemoryStore:
    """Entries in this process only. Expiry is the ReadCache's (entries outlive their TTL as
    stale values for stale-if-error), so entries leave only when the store is full, the
    least recently used first.

    An OrderedDict rather than cachetools' LRUCache: a hit is the hot path of the gateway,
    and LRUCache's `get` runs three Python methods for what is here two C calls."""

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[CacheKey, Entry] = OrderedDict()
        # Writes per key, and the count a load in flight began at: a load that began before
        # a write must not put back what it read (keys: the config's, so bounded).
        self._writes: dict[CacheKey, int] = {}
        self._loading: dict[CacheKey, int] = {}

    def peek(self, key: CacheKey) -> Entry | None:
        """The entry, if any (marked used), without a coroutine: ReadCache's hit path."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    async def get(self, key: CacheKey) -> Entry | None:
        """The entry, if any."""
        return self.peek(key)

    def begin_load(self, key: CacheKey) -> None:
        """A load begins: what it puts is dropped if a write comes first."""
        self._loading[key] = self._writes.get(key, 0)

    async def put(self, key: CacheKey, entry: Entry) -> None:
        """Store a loaded entry, unless a write came since its load began."""
        writes = self._writes.get(key, 0)
        if self._loading.pop(key, writes) == writes:
            self._store(key, entry)

    async def put_written(self, key: CacheKey, entry: Entry) -> None:
        """Store the entry a write read back: it replaces any load in flight."""
        self._writes[key] = self._writes.get(key, 0) + 1
        self._store(key, entry)

    async def invalidate(self, key: CacheKey) -> None:
        """Forget the key (and what a load in flight would put back)."""
        self._writes[key] = self._writes.get(key, 0) + 1
        self._entries.pop(key, None)

    def _store(self, key: CacheKey, entry: Entry) -> None:
        entries = self._entries
        entries[key] = entry
        entries.move_to_end(key)
        if len(entries) > self._max_entries:
            entries.popitem(last=False)
