"""Entries in Redis, shared by every replica, with versioned in-process copies.

Each key has a version in Redis that every write replaces. A replica keeps an in-process
copy tagged with the version it saw and uses it only while Redis still holds that version
(one GET per read), so a write on any replica is read back by every replica at once
(read-your-writes) while a cached read costs one small round trip. A value in Redis carries
the version it was stored under and counts only while that version is current, so a slow
read-through load can never put back a value older than a write.

A version is a random number, never a counter: Redis may lose a key (a restart without
persistence, FLUSHALL, an eviction under `maxmemory`), and a counter would start again at
a number some replica's in-process copy still carries, which it would then serve as fresh
(issue 26). A version lost is created anew (at random) by the next read that finds none,
before it loads, so a load begun before the loss cannot store what it read either.

Times in Redis are on Redis's clock (TIME, in the scripts): an entry one replica stores is
fresh for as long on every replica, whatever their own clocks say. In-process entries keep
this process's clock, converted on the way in and out.

Redis unavailable: reads fall back to the in-process copies (within their TTL) and AWS;
the cache being away never fails a read.
"""

from __future__ import annotations

import logging
import secrets
import struct
import time
from collections.abc import Callable

import redis.asyncio as redis
from cachetools import LRUCache
from google.protobuf.message import Message

from service.gen.v1 import registry_pb2 as pb
from service.state.cache.base import CacheKey, Entry
from service.state.redis_keys import RedisClient, RedisKeys

log = logging.getLogger("registry_gateway.cache")

# version, fresh_until, stale_until (Redis's clock), has value. The Lua side packs the same
# 25 bytes as '>i8ddB'.
_HEADER = struct.Struct("!qdd?")
_MESSAGES: dict[str, type[Message]] = {
    "registry": pb.DescribeRegistryResponse,
    "policy": pb.GetRegistryPolicyResponse,
}
# The version outlives any value, so that a replacement is never forgotten while values exist.
_VERSION_TTL_SECONDS = 7 * 24 * 3600
# Versions are drawn from [1, 2**53): exact in Lua's numbers (doubles) and in the header's
# int64; two draws agree once in 2**53, and "0" (no version seen) is never one.
_VERSION_LIMIT = 2**53

# KEYS: version, value. ARGV: a new version, its TTL. The current version, created (ARGV[1])
# when Redis has none, Redis's clock (seconds, microseconds), and the value (when there was
# a version to store it under).
_READ = """
local clock = redis.call('TIME')
local version = redis.call('GET', KEYS[1])
if not version then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return {ARGV[1], clock[1], clock[2]}
end
return {version, clock[1], clock[2], redis.call('GET', KEYS[2])}
"""
# KEYS: version, value. ARGV: mode, version, fresh for (s), stale for (s), has value (0/1),
# the serialized value, its PX, the version's TTL.
# mode "load": store the loaded value only if its version is still the one the load began
# under (a write since, or Redis losing the key, replaced it: the value may be older).
# mode "write": a write's read-back: it becomes the current version and value in one step.
_STORE = """
if ARGV[1] == 'write' then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[8])
elseif redis.call('GET', KEYS[1]) ~= ARGV[2] then
  return 0
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local header = struct.pack('>i8ddB', tonumber(ARGV[2]), now + tonumber(ARGV[3]),
  now + tonumber(ARGV[4]), tonumber(ARGV[5]))
redis.call('SET', KEYS[2], header .. ARGV[6], 'PX', ARGV[7])
return 1
"""


def _new_version() -> int:
    return secrets.randbelow(_VERSION_LIMIT - 1) + 1


class RedisStore:
    """Entries in Redis (shared) plus in-process copies checked against a per-key version."""

    def __init__(
        self,
        client: RedisClient,
        key_prefix: str,
        max_local_entries: int,
        *,
        on_availability: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.time,
        new_version: Callable[[], int] = _new_version,
    ) -> None:
        self._redis = client
        # One registry and region's keys share a hash slot on a cluster (redis_keys.py).
        self._names = RedisKeys.of(client, f"{key_prefix}cache:")
        self._local: LRUCache[CacheKey, tuple[int, Entry]] = LRUCache(maxsize=max_local_entries)
        # Per key: the version the last read found; the one the load in flight began under
        # (a single flight per key: one load at a time), which its value is stored under.
        self._seen: dict[CacheKey, int] = {}
        self._loading: dict[CacheKey, int] = {}
        self._read = client.register_script(_READ)
        self._store = client.register_script(_STORE)
        self._on_availability = on_availability
        self._available: bool | None = None
        self._failing: set[str] = set()  # the groups (`_group`) whose last command failed
        self._clock = clock
        self._new_version = new_version

    def _keys(self, key: CacheKey) -> tuple[str, str]:
        group = f"{key.registry_id}:{key.region}"
        return (
            self._names.key(group, key.resource, "version"),
            self._names.key(group, key.resource, "value"),
        )

    async def get(self, key: CacheKey) -> Entry | None:
        """The entry current in Redis, from the in-process copy when its version still holds."""
        local = self._local.get(key)
        try:
            try:
                return await self._get(key, local)
            except redis.ConnectionError:
                # Once more, on a new connection: after a Redis restart each pooled connection
                # fails its first command, and the in-process copy served meanwhile would
                # predate any write made since the restart.
                return await self._get(key, local)
        except (redis.RedisError, OSError) as exc:
            self._down(key, exc)
            return local[1] if local is not None else None

    async def _get(self, key: CacheKey, local: tuple[int, Entry] | None) -> Entry | None:
        version_key, value_key = self._keys(key)
        if local is not None:
            current = await self._redis.get(version_key)
            if current is not None and int(current) == local[0]:
                self._up(key)
                self._seen[key] = local[0]
                return local[1]
        reply = await self._read(
            keys=[version_key, value_key], args=[self._new_version(), _VERSION_TTL_SECONDS]
        )
        self._up(key)
        version = int(reply[0])
        # Redis's clock less this process's: what turns the entry's times into ours.
        redis_now = int(reply[1]) + int(reply[2]) / 1_000_000
        raw = reply[3] if len(reply) > 3 and isinstance(reply[3], bytes) else None
        self._seen[key] = version
        entry = self._decode(key, raw, version, self._clock() - redis_now)
        if entry is None:
            self._local.pop(key, None)
            return None
        self._local[key] = (version, entry)
        return entry

    def begin_load(self, key: CacheKey) -> None:
        """A load begins, right after a `get`: its value is stored under the version that
        get found, whatever reads meanwhile find (a write here meanwhile refuses it too)."""
        self._loading[key] = self._seen.get(key, 0)

    async def put(self, key: CacheKey, entry: Entry) -> None:
        """Store a loaded value, unless its version was replaced since the load began (a
        write, or Redis lost the key)."""
        version = self._loading.pop(key, self._seen.get(key, 0))
        self._local[key] = (version, entry)
        await self._put("load", key, version, entry)

    async def put_written(self, key: CacheKey, entry: Entry) -> None:
        """Write-through: a new version (every replica's copy is now old) and its value."""
        version = self._new_version()
        if await self._put("write", key, version, entry):
            self._local[key] = (version, entry)
        else:
            self._local.pop(key, None)

    async def invalidate(self, key: CacheKey) -> None:
        """A new version without a value: no replica serves the old one again."""
        version_key, value_key = self._keys(key)
        self._local.pop(key, None)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(version_key, self._new_version(), ex=_VERSION_TTL_SECONDS)
                pipe.delete(value_key)
                await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._down(key, exc)
            return
        self._up(key)

    async def _put(self, mode: str, key: CacheKey, version: int, entry: Entry) -> bool:
        """Run the store script; whether Redis answered (not whether it stored)."""
        now = self._clock()
        payload = entry.value.SerializeToString() if entry.value is not None else b""
        try:
            await self._store(
                keys=list(self._keys(key)),
                args=[
                    mode,
                    version,
                    # Durations, which the script puts on Redis's clock.
                    repr(entry.fresh_until - now),
                    repr(entry.stale_until - now),
                    int(entry.value is not None),
                    payload,
                    max(1, int((entry.stale_until - now) * 1000)),
                    _VERSION_TTL_SECONDS,
                ],
            )
        except (redis.RedisError, OSError) as exc:
            self._down(key, exc)
            return False
        self._up(key)
        return True

    def _decode(self, key: CacheKey, raw: bytes | None, version: int, shift: float) -> Entry | None:
        """The stored entry on this process's clock (`shift`: ours less Redis's)."""
        if raw is None or len(raw) < _HEADER.size:
            return None
        stored_version, fresh_until, stale_until, has_value = _HEADER.unpack_from(raw)
        if stored_version != version:
            return None  # stored before the latest write: not the current value
        value = None
        if has_value:
            value = _MESSAGES[key.resource]()
            value.ParseFromString(raw[_HEADER.size :])
        return Entry(value, fresh_until + shift, stale_until + shift)

    def _group(self, key: CacheKey) -> str:
        """What fails together: one Redis as a whole; on a cluster, the node of the key's
        slot, known by the registry and region that chose it (its hash tag)."""
        return f"{key.registry_id}:{key.region}" if self._names.cluster else ""

    def _up(self, key: CacheKey) -> None:
        # Up once every group that failed has answered again: on a cluster with one node
        # down, reads of its registries and of the others' alternate, and the cache is
        # reported away once, not once per read.
        self._failing.discard(self._group(key))
        if self._failing:
            return
        if self._available is not True:
            if self._available is False:
                log.warning("Redis cache is reachable again")
            self._available = True
            if self._on_availability is not None:
                self._on_availability(True)

    def _down(self, key: CacheKey, exc: BaseException) -> None:
        self._failing.add(self._group(key))
        if self._available is not False:
            # Once per outage, not per call: a line per read would flood the log.
            log.warning(
                "Redis cache unavailable; serving from AWS and in-process copies",
                extra={"error_type": type(exc).__name__},
            )
            self._available = False
            if self._on_availability is not None:
                self._on_availability(False)
