"""Entries in Redis, shared by every replica, with versioned in-process copies.

Each key has a version in Redis that every write bumps. A replica keeps an in-process copy
tagged with the version it saw and uses it only while Redis still holds that version (one
GET per read), so a write on any replica is read back by every replica at once
(read-your-writes) while a cached read costs one small round trip. A value in Redis carries
the version it was stored under and counts only while that version is current, so a slow
read-through load can never put back a value older than a write.

Redis unavailable: reads fall back to the in-process copies (within their TTL) and AWS;
the cache being away never fails a read.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable

import redis.asyncio as redis
from cachetools import LRUCache
from google.protobuf.message import Message

from service.gen.v1 import registry_pb2 as pb
from service.state.cache.base import CacheKey, Entry

log = logging.getLogger("registry_gateway.cache")

_HEADER = struct.Struct("!qdd?")  # version, fresh_until, stale_until, has value
_MESSAGES: dict[str, type[Message]] = {
    "registry": pb.DescribeRegistryResponse,
    "policy": pb.GetRegistryPolicyResponse,
}
# The version outlives any value, so that a bump is never forgotten while values exist.
_VERSION_TTL_SECONDS = 7 * 24 * 3600

# A load stores its value only if no write bumped the version since the load began.
_PUT_IF_VERSION = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""
# A write bumps the version and stores the value it read back, in one step.
_PUT_WRITTEN = """
local version = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local value = struct.pack('>i8', version) .. ARGV[1]
redis.call('SET', KEYS[2], value, 'PX', ARGV[2])
return version
"""


class RedisStore:
    """Entries in Redis (shared) plus in-process copies checked against a per-key version."""

    def __init__(
        self,
        client: redis.Redis,
        key_prefix: str,
        max_local_entries: int,
        *,
        on_availability: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._prefix = f"{key_prefix}cache:"
        self._local: LRUCache[CacheKey, tuple[int, Entry]] = LRUCache(maxsize=max_local_entries)
        self._seen: dict[CacheKey, int] = {}
        self._put_if_version = client.register_script(_PUT_IF_VERSION)
        self._put_written = client.register_script(_PUT_WRITTEN)
        self._on_availability = on_availability
        self._available: bool | None = None
        self._clock = clock

    def _keys(self, key: CacheKey) -> tuple[str, str]:
        base = f"{self._prefix}{key}"
        return f"{base}:version", f"{base}:value"

    async def get(self, key: CacheKey) -> Entry | None:
        """The entry current in Redis, from the in-process copy when its version still holds."""
        version_key, value_key = self._keys(key)
        local = self._local.get(key)
        try:
            if local is not None:
                version = int(await self._redis.get(version_key) or 0)
                if version == local[0]:
                    self._up()
                    return local[1]
            raw_version, raw = await self._redis.mget([version_key, value_key])
        except (redis.RedisError, OSError) as exc:
            self._down(exc)
            return local[1] if local is not None else None
        self._up()
        version = int(raw_version or 0)
        self._seen[key] = version
        entry = self._decode(key, raw if isinstance(raw, bytes) else None, version)
        if entry is None:
            self._local.pop(key, None)
            return None
        self._local[key] = (version, entry)
        return entry

    async def put(self, key: CacheKey, entry: Entry) -> None:
        """Store a loaded value, unless a write bumped the version since the load began."""
        version = self._seen.get(key, 0)
        version_key, value_key = self._keys(key)
        data = _HEADER.pack(version, entry.fresh_until, entry.stale_until, entry.value is not None)
        payload = data + (entry.value.SerializeToString() if entry.value is not None else b"")
        self._local[key] = (version, entry)
        try:
            await self._put_if_version(
                keys=[version_key, value_key], args=[version, payload, self._px(entry)]
            )
        except (redis.RedisError, OSError) as exc:
            self._down(exc)
            return
        self._up()

    async def put_written(self, key: CacheKey, entry: Entry) -> None:
        """Write-through: bump the version (every replica's copy is now old) and store."""
        version_key, value_key = self._keys(key)
        # The version goes in front of this, inside the script (struct.pack in Lua).
        rest = _HEADER.pack(0, entry.fresh_until, entry.stale_until, entry.value is not None)[8:]
        payload = rest + (entry.value.SerializeToString() if entry.value is not None else b"")
        try:
            version = int(
                await self._put_written(
                    keys=[version_key, value_key],
                    args=[payload, self._px(entry), _VERSION_TTL_SECONDS],
                )
            )
        except (redis.RedisError, OSError) as exc:
            self._down(exc)
            self._local.pop(key, None)
            return
        self._up()
        self._seen[key] = version
        self._local[key] = (version, entry)

    async def invalidate(self, key: CacheKey) -> None:
        """Bump the version and drop the value: no replica serves the old one again."""
        version_key, value_key = self._keys(key)
        self._local.pop(key, None)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(version_key)
                pipe.expire(version_key, _VERSION_TTL_SECONDS)
                pipe.delete(value_key)
                await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._down(exc)
            return
        self._up()

    def _decode(self, key: CacheKey, raw: bytes | None, version: int) -> Entry | None:
        if raw is None or len(raw) < _HEADER.size:
            return None
        stored_version, fresh_until, stale_until, has_value = _HEADER.unpack_from(raw)
        if stored_version != version:
            return None  # stored before the latest write: not the current value
        value = None
        if has_value:
            value = _MESSAGES[key.resource]()
            value.ParseFromString(raw[_HEADER.size :])
        return Entry(value, fresh_until, stale_until)

    def _px(self, entry: Entry) -> int:
        return max(1, int((entry.stale_until - self._clock()) * 1000))

    def _up(self) -> None:
        if self._available is not True:
            if self._available is False:
                log.warning("Redis cache is reachable again")
            self._available = True
            if self._on_availability is not None:
                self._on_availability(True)

    def _down(self, exc: BaseException) -> None:
        if self._available is not False:
            # Once per outage, not per call: a line per read would flood the log.
            log.warning(
                "Redis cache unavailable; serving from AWS and in-process copies",
                extra={"error_type": type(exc).__name__},
            )
            self._available = False
            if self._on_availability is not None:
                self._on_availability(False)
