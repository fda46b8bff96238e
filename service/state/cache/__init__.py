"""The read cache: single-flight read-through, TTL, negative entries, stale-if-error.

One interface (`ReadCache`) over two stores: in-process (`MemoryStore`) and Redis shared by
every replica (`RedisStore`, with versioned in-process copies for read-your-writes).
"""

from service.state.cache.base import CacheKey, Entry, Outcome, ReadCache, Store
from service.state.cache.memory import MemoryStore
from service.state.cache.redis_store import RedisStore

__all__ = ["CacheKey", "Entry", "MemoryStore", "Outcome", "ReadCache", "RedisStore", "Store"]
