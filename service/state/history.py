"""The recent versions of each (registry, region, resource), as the gateway saw them.

A version is appended when the gateway first sees a resource ("baseline"), after each of its
own writes ("gateway"), and when it reads a state no write through it explains
("out-of-band": drift, or a write overwritten by another writer). Appends are
compare-and-append on the head's etag, atomic across replicas (a Lua script on Redis), so
that of several replicas seeing one change, exactly one records (and reports) it.

Bounds per key: at most `max_versions` versions and `max_bytes` bytes of encoded versions,
the oldest dropped first; the newest is always kept. A version whose encoding alone exceeds
`max_bytes` is kept without its document (`document_omitted`): its etag, time and author still
say what happened, which is what drift detection needs.

Redis unavailable: drift detection's calls do not fail: `head` answers None and `append`
None (nothing recorded), so drift detection pauses until Redis answers again; the outage is
logged once. `page`, which GetConfigurationHistory reads, raises `Unavailable`
(`HISTORY_UNAVAILABLE`, with RetryInfo): an empty answer would look like "no history".
"""

from __future__ import annotations

import json
import logging
import struct
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import redis.asyncio as redis

from service.errors import Unavailable
from service.state.cache.base import CacheKey

log = logging.getLogger("registry_gateway.history")

Origin = Literal["baseline", "gateway", "out-of-band"]
ORIGINS: tuple[Origin, ...] = ("baseline", "gateway", "out-of-band")

# Bounded parsing of a stored version: the header is a small JSON object; anything longer
# than this before its end is not one of ours.
_MAX_HEADER = 2048
_TEXT_LIMIT = 256  # tenant, identity, rpc, etag: ours, but bounded all the same
_SEQ = struct.Struct(">q")
HISTORY_UNAVAILABLE = "HISTORY_UNAVAILABLE"
RETRY_AFTER_SECONDS = 1.0


@dataclass(frozen=True)
class Version:
    """One recorded state of a resource."""

    seq: int  # assigned by the store on append: increasing per key, never reused
    recorded_at: float  # unix seconds
    origin: Origin
    etag: str  # the whole resource's etag: DescribeRegistryResponse.etag, or of_policy(text)
    # "registry": pb.ReplicationConfiguration serialized; "policy": the text utf-8, b"" if none
    document: bytes
    tenant: str | None = None  # origin "gateway"
    identity: str | None = None  # origin "gateway": the identity as the audit line names it
    rpc: str | None = None  # origin "gateway"
    # The version alone was larger than `history.max_bytes`: kept without its document.
    document_omitted: bool = False


class HistoryStore(Protocol):
    """Where versions live: in this process, or in Redis shared by every replica."""

    async def head(self, key: CacheKey) -> Version | None:
        """The newest version; None when there is none (or the store is unavailable)."""
        ...

    async def append(
        self, key: CacheKey, version: Version, *, if_head_etag: str | None
    ) -> Version | None:
        """Append unless the head's etag is not `if_head_etag` (None: the history must be
        empty) — compare-and-append, atomic across replicas (a Lua script on Redis). Returns
        the stored Version (with its seq) or None when the condition failed."""
        ...

    async def page(self, key: CacheKey, *, before_seq: int | None, limit: int) -> list[Version]:
        """Newest first; only versions with seq < before_seq when given. Raises
        `Unavailable` (HISTORY_UNAVAILABLE) when the store cannot be read."""
        ...


# --- encoding: 8-byte seq, a JSON header, a newline, the document ---------------------------


def _header(version: Version) -> bytes:
    fields: dict[str, Any] = {
        "t": version.recorded_at,
        "o": version.origin,
        "e": version.etag,
        "tn": version.tenant,
        "id": version.identity,
        "r": version.rpc,
        "x": version.document_omitted,
    }
    return json.dumps(fields, separators=(",", ":")).encode("utf-8") + b"\n"


def _encode(version: Version) -> bytes:
    """The stored form without its seq (the store puts the seq in front)."""
    return _header(version) + version.document


def _fitted(version: Version, max_bytes: int) -> Version:
    """`version` as it can be kept: without its document when it alone exceeds the bound."""
    if _SEQ.size + len(_encode(version)) <= max_bytes:
        return version
    return replace(version, document=b"", document_omitted=True)


def _text(value: Any) -> str | None:
    return value[:_TEXT_LIMIT] if isinstance(value, str) else None


def _decode(raw: bytes) -> Version | None:
    """A stored version, or None for anything that is not one (never raises)."""
    if len(raw) < _SEQ.size:
        return None
    (seq,) = _SEQ.unpack_from(raw)
    end = raw.find(b"\n", _SEQ.size, _SEQ.size + _MAX_HEADER)
    if end < 0:
        return None
    try:
        fields = json.loads(raw[_SEQ.size : end])
    except ValueError:
        return None
    if not isinstance(fields, dict):
        return None
    origin, etag, at = fields.get("o"), fields.get("e"), fields.get("t")
    if origin not in ORIGINS or not isinstance(etag, str) or not isinstance(at, int | float):
        return None
    return Version(
        seq=seq,
        recorded_at=float(at),
        origin=origin,
        etag=etag[:_TEXT_LIMIT],
        document=raw[end + 1 :],
        tenant=_text(fields.get("tn")),
        identity=_text(fields.get("id")),
        rpc=_text(fields.get("r")),
        document_omitted=fields.get("x") is True,
    )


# --- in this process --------------------------------------------------------------------------


@dataclass
class _Versions:
    items: deque[Version]  # newest first
    seq: int = 0
    size: int = 0


class MemoryHistory:
    """Versions in this process (one replica, or tests)."""

    def __init__(self, max_versions: int, max_bytes: int) -> None:
        self._max_versions = max_versions
        self._max_bytes = max_bytes
        # Keys are (registry, region, resource) a tenant is authorized for: bounded by config.
        self._keys: dict[CacheKey, _Versions] = {}

    async def head(self, key: CacheKey) -> Version | None:
        """The newest version, if any."""
        versions = self._keys.get(key)
        return versions.items[0] if versions and versions.items else None

    async def append(
        self, key: CacheKey, version: Version, *, if_head_etag: str | None
    ) -> Version | None:
        """Compare-and-append (one event loop: no await between compare and append)."""
        versions = self._keys.setdefault(key, _Versions(deque()))
        head = versions.items[0] if versions.items else None
        if (head.etag if head is not None else None) != if_head_etag:
            return None
        versions.seq += 1
        stored = replace(_fitted(version, self._max_bytes), seq=versions.seq)
        versions.items.appendleft(stored)
        versions.size += _SEQ.size + len(_encode(stored))
        while len(versions.items) > 1 and (
            len(versions.items) > self._max_versions or versions.size > self._max_bytes
        ):
            oldest = versions.items.pop()
            versions.size -= _SEQ.size + len(_encode(oldest))
        return stored

    async def page(self, key: CacheKey, *, before_seq: int | None, limit: int) -> list[Version]:
        """Newest first, older than `before_seq` when given."""
        versions = self._keys.get(key)
        if versions is None or limit <= 0:
            return []
        older = (v for v in versions.items if before_seq is None or v.seq < before_seq)
        return [v for _, v in zip(range(limit), older, strict=False)]


# --- in Redis, shared by every replica ---------------------------------------------------------

# KEYS: list (newest first), seq counter, head etag. ARGV: mode ("empty" or "etag"), the
# expected head etag, the version without its seq, its etag, max versions, max bytes.
# The head's etag has a key of its own so the comparison needs no parsing in Lua.
_APPEND = """
local head = redis.call('GET', KEYS[3])
if ARGV[1] == 'empty' then
  if head then return 0 end
elseif head ~= ARGV[2] then
  return 0
end
local seq = redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[1], struct.pack('>i8', seq) .. ARGV[3])
redis.call('SET', KEYS[3], ARGV[4])
local max_versions = tonumber(ARGV[5])
redis.call('LTRIM', KEYS[1], 0, max_versions - 1)
local max_bytes = tonumber(ARGV[6])
local total = 0
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for i, item in ipairs(items) do
  total = total + #item
  if total > max_bytes and i > 1 then
    redis.call('LTRIM', KEYS[1], 0, i - 2)
    break
  end
end
return seq
"""
# KEYS: list. ARGV: before_seq ("" for none), limit. Seqs in the list are consecutive from
# the head down (each append pushes the next one; trimming drops only the oldest), so the
# index of a seq is the head's seq minus it.
_PAGE = """
local head = redis.call('LINDEX', KEYS[1], 0)
if not head then return {} end
local start = 0
if ARGV[1] ~= '' then
  local top = struct.unpack('>i8', head)
  start = top - tonumber(ARGV[1]) + 1
  if start < 0 then start = 0 end
end
return redis.call('LRANGE', KEYS[1], start, start + tonumber(ARGV[2]) - 1)
"""


class RedisHistory:
    """Versions in Redis under `<key_prefix>history:<registry>:<region>:<resource>:*`.

    The keys have no expiry: a history is bounded in size, and one that expired while its
    registry stood still would lose the state drift is measured against.
    """

    def __init__(self, client: redis.Redis, key_prefix: str, max_versions: int, max_bytes: int):
        self._redis = client
        self._prefix = f"{key_prefix}history:"
        self._max_versions = max_versions
        self._max_bytes = max_bytes
        self._append = client.register_script(_APPEND)
        self._page = client.register_script(_PAGE)
        self._available: bool | None = None

    def _keys(self, key: CacheKey) -> tuple[str, str, str]:
        base = f"{self._prefix}{key}"
        return f"{base}:versions", f"{base}:seq", f"{base}:head"

    async def head(self, key: CacheKey) -> Version | None:
        """The newest version; None when there is none or Redis does not answer."""
        try:
            versions = await self._read(key, before_seq=None, limit=1)
        except (redis.RedisError, OSError) as exc:
            self._down(exc)
            return None
        return versions[0] if versions else None

    async def append(
        self, key: CacheKey, version: Version, *, if_head_etag: str | None
    ) -> Version | None:
        """Compare-and-append in one script; None when the head moved or Redis is away."""
        stored = _fitted(version, self._max_bytes)
        mode = "empty" if if_head_etag is None else "etag"
        try:
            seq = int(
                await self._append(
                    keys=list(self._keys(key)),
                    args=[
                        mode,
                        if_head_etag or "",
                        _encode(stored),
                        stored.etag,
                        self._max_versions,
                        self._max_bytes,
                    ],
                )
            )
        except (redis.RedisError, OSError) as exc:
            self._down(exc)
            return None
        self._up()
        return replace(stored, seq=seq) if seq else None

    async def page(self, key: CacheKey, *, before_seq: int | None, limit: int) -> list[Version]:
        """Newest first, older than `before_seq` when given; `Unavailable`
        (HISTORY_UNAVAILABLE) when Redis does not answer."""
        try:
            return await self._read(key, before_seq=before_seq, limit=limit)
        except (redis.RedisError, OSError) as exc:
            self._down(exc)
            raise Unavailable(
                "the configuration history (Redis) is unavailable; retry later",
                reason=HISTORY_UNAVAILABLE,
                metadata={"registryId": key.registry_id, "region": key.region},
                retry_after_seconds=RETRY_AFTER_SECONDS,
            ) from None

    async def _read(self, key: CacheKey, *, before_seq: int | None, limit: int) -> list[Version]:
        """Newest first, older than `before_seq` when given; Redis's errors raised."""
        if limit <= 0:
            return []
        raw = await self._page(
            keys=[self._keys(key)[0]],
            args=["" if before_seq is None else before_seq, limit],
        )
        self._up()
        decoded = (_decode(item) for item in raw if isinstance(item, bytes))
        return [v for v in decoded if v is not None and (before_seq is None or v.seq < before_seq)][
            :limit
        ]

    def _up(self) -> None:
        if self._available is False:
            log.warning("Redis history is reachable again; drift detection resumes")
        self._available = True

    def _down(self, exc: BaseException) -> None:
        if self._available is not False:
            # Once per outage: a line per read would flood the log.
            log.warning(
                "Redis history unavailable; drift detection paused until it answers",
                extra={"error_type": type(exc).__name__},
            )
        self._available = False
