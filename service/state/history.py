"""The recent versions of each (registry, region, resource), as the gateway saw them.

A version is appended when the gateway first sees a resource ("baseline"), after each of its
own writes ("gateway"), and when it reads a state no write through it explains
("out-of-band": drift, or a write overwritten by another writer). Appends are
compare-and-append on the head's etag, atomic across replicas (a Lua script on Redis), so
that of several replicas seeing one change, exactly one records (and reports) it.

**Stored in pieces.** A registry's documents are shared by its tenants, and each version
used to hold the whole document: one tenant's large part made every version large, so a few
of its writes pushed every other tenant's versions past the byte bound. Each document is now
kept as pieces (`Piece`): each policy statement (its JSON text, exactly as AWS returned it,
with the text around the statements kept in the version itself) and each part of a
replication rule is stored once per history, under its digest, and every version that holds
it refers to it. A rule is packed with the filters of several tenants
(service/registry/model/packing.py), so it is stored as its parts: each repository filter
(its field entry) a piece, its destinations (the run of its other fields) a shared piece,
and the rule's layout (its field header and its parts' digests) a piece the version names
(`_Rule`). A version costs its own header plus the pieces no older version held. Each piece
remembers who first stored it (`introduced_by`): a slice write's new pieces are that
tenant's own part, and a filter is a piece of the tenant whose slice write first stored it,
whatever rule it is packed in. Versions stored before rules were split (a piece per rule)
are read as they were: `_whole` and `_in_pieces` read both layouts.

**Retention, per author.** Each author (the tenant of a gateway write; changes made around
the gateway and baselines count as one author, "") keeps its newest `max_versions`
versions, whoever else writes: so every tenant's own writes keep their newest versions, and
the newest `max_versions` of the whole history are kept too (none of them has that many
newer versions of its own author). Within `max_bytes` (records and pieces): while the
history is larger, the author holding the most bytes (its versions' records, and the pieces
it introduced) gives some up, oldest first — first its pieces no longer in the current state
(the versions holding them are then kept without their document, `document_omitted`, as
before; another tenant's version missing only pieces another tenant's slice write introduced
still shows that tenant its own slice), then its versions. Shared structure (rules' layouts
and destinations: what every slice in a rule is read through) is never given up on its own:
it goes with the last version holding it. A tenant's large writes thus evict its own
history first, never another's. The newest version is always kept whole. A
version whose document alone exceeds `max_bytes` is kept without it (`document_omitted`):
its etag, time and author still say what happened, which is what drift detection needs.

Redis unavailable: drift detection's calls do not fail: `head` answers None and `append`
None (nothing recorded), so drift detection pauses until Redis answers again; the outage is
logged once. `page` and `scan`, which GetConfigurationHistory reads, raise `Unavailable`
(`HISTORY_UNAVAILABLE`, with RetryInfo): an empty answer would look like "no history".
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, TypeAlias

import redis.asyncio as redis

from service.errors import Unavailable
from service.state.cache.base import CacheKey
from service.state.redis_keys import RedisClient, RedisKeys

log = logging.getLogger("registry_gateway.history")

Origin = Literal["baseline", "gateway", "out-of-band"]
PieceKind = Literal["element", "text", "whole", "rule", "filter", "shared"]
ORIGINS: tuple[Origin, ...] = ("baseline", "gateway", "out-of-band")

# Bounded parsing of a stored version: a header longer than this is not one of ours (a
# header holds the text around a policy's statements: less than the policy itself).
_MAX_HEADER = 8 * 1024 * 1024
_TEXT_LIMIT = 256  # tenant, identity, rpc, etag: ours, but bounded all the same
_SEQ = struct.Struct(">q")
_DIGEST_BYTES = 16
# What a stored piece costs besides its bytes: its digest as a hash field, twice (the piece
# and who introduced it), and Redis's own bookkeeping of each.
_PIECE_OVERHEAD = 2 * (2 * _DIGEST_BYTES) + 64
HISTORY_UNAVAILABLE = "HISTORY_UNAVAILABLE"
RETRY_AFTER_SECONDS = 1.0

# The writes that change only their author's part of a document (service/registry/rpcs/
# slice_operations.py): a piece first stored by one of them is that tenant's own.
SLICE_WRITES = frozenset({"PutReplicationRules", "PutPolicyStatements"})
SLICE = "slice:"  # introduced_by of a slice write's own pieces: "slice:<tenant>"
WHOLE = "whole:"  # of a whole-document write's, or a slice write's others: "whole:<tenant>"

# Which of a slice write's new pieces are its writer's own part (its repository filters, its
# statements), judged by the writer's ownership (service/registry/writes/resources.py): only
# those are introduced as "slice:<tenant>". A slice write's document holds every other
# tenant's part too, and some of it may be new to the history (recorded first, a change made
# around the gateway that no read observed, versions stored before rules were split): such a
# piece is anyone's, never the writer's, or another slice view would skip it when given up
# (service/registry/rpcs/history_view.py `_anothers`) and show a slice without it.
Mine: TypeAlias = Callable[[PieceKind, bytes], bool]


@dataclass(frozen=True)
class Piece:
    """One piece of a stored document, in order.

    `element`: a policy statement (its JSON text), or a replication rule stored whole (as
    versions recorded before rules were split are, or a rule that does not parse); `rule`: a
    replication rule stored as its parts (`data`: its layout); `text`: what lies between a
    policy's statements; `whole`: a document that could not be split (or was stored before
    documents were)."""

    kind: PieceKind
    data: bytes | None  # None: no longer kept (given up to stay within the bound)
    digest: str = ""  # element, whole, rule, filter, shared: the digest it is stored under
    # Who first stored it: "slice:<tenant>" (that tenant's slice write: its own part),
    # "whole:<tenant>" or "" (a whole document's write, a baseline, a change made around
    # the gateway: anyone's part).
    introduced_by: str = ""
    # A rule: its parts in order ("shared": its destinations and any other field but its
    # filters; "filter": one repository filter each). Empty when its layout is gone.
    parts: tuple[Piece, ...] = ()


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
    # The document is not whole: larger alone than `history.max_bytes`, or some of its
    # pieces were given up to stay within it. Not restorable.
    document_omitted: bool = False
    # `scan` only: the document as stored, piece by piece (`document` is then b"").
    pieces: tuple[Piece, ...] | None = field(default=None, compare=False)


class HistoryStore(Protocol):
    """Where versions live: in this process, or in Redis shared by every replica."""

    async def head(self, key: CacheKey) -> Version | None:
        """The newest version; None when there is none (or the store is unavailable)."""
        ...

    async def append(
        self,
        key: CacheKey,
        version: Version,
        *,
        if_head_etag: str | None,
        mine: Mine | None = None,
    ) -> Version | None:
        """Append unless the head's etag is not `if_head_etag` (None: the history must be
        empty) — compare-and-append, atomic across replicas (a Lua script on Redis). Returns
        the stored Version (with its seq) or None when the condition failed. `mine`: a slice
        write's own pieces (`Mine`); without it none of its pieces is told as its own."""
        ...

    async def page(self, key: CacheKey, *, before_seq: int | None, limit: int) -> list[Version]:
        """Newest first, documents whole; only versions with seq < before_seq when given.
        Raises `Unavailable` (HISTORY_UNAVAILABLE) when the store cannot be read."""
        ...

    async def scan(self, key: CacheKey) -> list[Version]:
        """Every version kept, newest first, each document as its `pieces` (a piece held by
        several versions is one object, read once). Raises `Unavailable` like `page`."""
        ...


# --- documents as pieces ----------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).digest()[:_DIGEST_BYTES].hex()


def _varint(data: bytes, pos: int) -> int:
    """The end of the varint at `pos` (ValueError past the end, or longer than 10 bytes)."""
    for end in range(pos, min(pos + 10, len(data))):
        if data[end] < 0x80:
            return end + 1
    raise ValueError("truncated varint")


def _fields(data: bytes) -> list[bytes] | None:
    """The top-level field entries of a serialized message, each as its bytes (tag and
    value): a configuration's rules. None when the bytes do not parse."""
    entries = []
    pos = 0
    try:
        while pos < len(data):
            start = pos
            wire = data[pos] & 0x7  # the key's low three bits, in its varint's first byte
            pos = _varint(data, pos)
            if wire == 0:
                pos = _varint(data, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                end = _varint(data, pos)
                length = 0
                for shift, byte in enumerate(data[pos:end]):
                    length |= (byte & 0x7F) << (7 * shift)
                pos = end + length
            else:
                return None
            if pos > len(data):
                return None
            entries.append(data[start:pos])
    except ValueError:
        return None
    return entries


_JSON = json.JSONDecoder()
_SPACE = frozenset(" \t\n\r")


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _SPACE:
        pos += 1
    return pos


def _statement_spans(text: str) -> list[tuple[int, int]] | None:
    """Where each statement of a policy lies in its text: a JSON object whose "Statement"
    (once) is a list. None for any other text (it is then kept whole)."""
    try:
        pos = _skip(text, 0)
        if text[pos : pos + 1] != "{":
            return None
        pos = _skip(text, pos + 1)
        spans: list[tuple[int, int]] | None = None
        if text[pos : pos + 1] == "}":
            return None
        while True:
            if text[pos : pos + 1] != '"':
                return None
            key, pos = _JSON.raw_decode(text, pos)
            pos = _skip(text, pos)
            if text[pos : pos + 1] != ":":
                return None
            pos = _skip(text, pos + 1)
            if key == "Statement":
                if spans is not None or text[pos : pos + 1] != "[":
                    return None  # twice (the last would win), or not a list
                spans, pos = _elements(text, pos)
            else:
                _, pos = _JSON.raw_decode(text, pos)
            pos = _skip(text, pos)
            if text[pos : pos + 1] == ",":
                pos = _skip(text, pos + 1)
                continue
            if text[pos : pos + 1] == "}":
                break
            return None
        if _skip(text, pos + 1) != len(text):
            return None
        return spans
    except (ValueError, IndexError):
        return None


def _elements(text: str, pos: int) -> tuple[list[tuple[int, int]], int]:
    """The spans of the values of the JSON array at `pos`, and where the array ends."""
    spans: list[tuple[int, int]] = []
    pos = _skip(text, pos + 1)
    if text[pos : pos + 1] == "]":
        return spans, pos + 1
    while True:
        _, end = _JSON.raw_decode(text, pos)
        spans.append((pos, end))
        pos = _skip(text, end)
        if text[pos : pos + 1] == ",":
            pos = _skip(text, pos + 1)
            continue
        if text[pos : pos + 1] == "]":
            return spans, pos + 1
        raise ValueError("not an array")


# A version's layout, in its header: the text around statements inline, each stored piece as
# [digest, size] (an element) or [digest, size, 1] (a document kept whole), each replication
# rule stored as its parts as ["r", digest, size] (its layout, a piece of its own: `_Rule`).
# A record with a rule item is not one a replica before rules were split reads (its
# `_layout` refuses the item, so it skips the record rather than join a rule's layout into
# the document).
_Kind: TypeAlias = Literal["element", "whole", "rule"]
_Item: TypeAlias = "str | tuple[str, int, _Kind]"
_RULE = "r"
_RULE_TAG = 0x0A  # ReplicationConfiguration.rules: field 1, length-delimited
_FILTER_TAG = 0x12  # ReplicationRule.repository_filters: field 2, length-delimited


@dataclass(frozen=True)
class _Rule:
    """A replication rule's layout, stored as a piece (JSON: the rule's field header in hex,
    then [digest, size] per filter and [digest, size, 0] per run of its other fields).

    Each repository filter is a piece of its own, so a tenant's filters are pieces it
    introduced whatever rule packing puts them in (service/registry/model/packing.py): a
    slice is read from its own filters and the rule's shared parts (its destinations), and
    another tenant giving up its filters' pieces takes nothing of it."""

    header: bytes
    parts: tuple[tuple[str, int, bool], ...]  # digest, size, shared (not a filter)

    def encode(self) -> bytes:
        items: list[Any] = [self.header.hex()]
        items += [[d, n, 0] if shared else [d, n] for d, n, shared in self.parts]
        return json.dumps(items, separators=(",", ":")).encode("ascii")

    @classmethod
    def decode(cls, data: bytes | None) -> _Rule | None:
        """The layout stored as `data`; None for anything else (never raises)."""
        if data is None:
            return None
        try:
            items = json.loads(data)
            header = bytes.fromhex(items[0])
        except (ValueError, TypeError, IndexError, KeyError, UnicodeDecodeError):
            return None
        parts: list[tuple[str, int, bool]] = []
        for item in items[1:]:
            if not (
                isinstance(item, list)
                and len(item) in (2, 3)
                and _is_digest(item[0])
                and isinstance(item[1], int)
                and item[1] >= 0
            ):
                return None
            parts.append((item[0], item[1], len(item) == 3))
        return cls(header, tuple(parts))


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 2 * _DIGEST_BYTES


def _rule_parts(entry: bytes) -> tuple[bytes, list[tuple[bytes, bool]]] | None:
    """A rule's field entry as its header and its parts (bytes, shared): each filter's field
    entry alone, each run of other fields (destinations) as one part. None when the entry is
    not a length-delimited field 1 whose value parses as fields (then stored whole)."""
    if not entry or entry[0] != _RULE_TAG:
        return None
    try:
        start = _varint(entry, 1)
    except ValueError:
        return None
    body = _fields(entry[start:])
    if body is None:
        return None
    parts: list[tuple[bytes, bool]] = []
    run = b""
    for field_entry in body:
        if field_entry[0] == _FILTER_TAG:
            if run:
                parts.append((run, True))
                run = b""
            parts.append((field_entry, False))
        else:
            run += field_entry
    if run:
        parts.append((run, True))
    return entry[:start], parts


def _split(resource: str, document: bytes) -> tuple[list[_Item], dict[str, bytes]]:
    """The layout of `document` and the pieces it refers to (digest -> bytes). The pieces
    joined in order (a rule's as its layout says) are the document, byte for byte."""
    layout: list[_Item] = []
    pieces: dict[str, bytes] = {}

    def piece(data: bytes) -> tuple[str, int]:
        digest = _digest(data)
        pieces[digest] = data
        return digest, len(data)

    def stored(data: bytes, kind: _Kind = "element") -> None:
        layout.append((*piece(data), kind))

    if not document:
        return layout, pieces
    if resource == "registry":
        entries = _fields(document)
        if entries is None:
            stored(document, "whole")
            return layout, pieces
        for entry in entries:
            split = _rule_parts(entry)
            if split is None:
                stored(entry)
                continue
            header, parts = split
            rule = _Rule(header, tuple((*piece(data), shared) for data, shared in parts))
            stored(rule.encode(), "rule")
        return layout, pieces
    try:
        text = document.decode("utf-8")
    except UnicodeDecodeError:
        stored(document, "whole")
        return layout, pieces
    spans = _statement_spans(text)
    if spans is None:
        stored(document, "whole")
        return layout, pieces
    at = 0
    for start, end in spans:
        if start > at:
            layout.append(text[at:start])
        stored(text[start:end].encode("utf-8"))
        at = end
    if at < len(text):
        layout.append(text[at:])
    return layout, pieces


# --- a version's record: 8-byte seq, a JSON header, a newline, the document if inline -------


def _header(version: Version, layout: Sequence[_Item] | None) -> bytes:
    fields: dict[str, Any] = {
        "t": version.recorded_at,
        "o": version.origin,
        "e": version.etag,
        "tn": version.tenant,
        "id": version.identity,
        "r": version.rpc,
        "x": version.document_omitted,
    }
    if layout is not None:
        fields["l"] = [_item(item) for item in layout]
    return json.dumps(fields, separators=(",", ":")).encode("utf-8") + b"\n"


def _item(item: _Item) -> str | list[str | int]:
    if isinstance(item, str):
        return item
    digest, size, kind = item
    if kind == "rule":
        return [_RULE, digest, size]
    return [digest, size, 1] if kind == "whole" else [digest, size]


def _record(version: Version, layout: Sequence[_Item] | None) -> bytes:
    """The stored form without its seq (the store puts the seq in front). A version kept
    without its document has no layout and no document."""
    if layout is None:
        return _header(version, None) + version.document
    return _header(version, layout)


def _fitted(version: Version, max_bytes: int) -> Version:
    """`version` as it can be kept: without its document when it alone exceeds the bound."""
    if _SEQ.size + len(_header(version, None)) + len(version.document) <= max_bytes:
        return version
    return replace(version, document=b"", document_omitted=True)


def _text(value: Any) -> str | None:
    return value[:_TEXT_LIMIT] if isinstance(value, str) else None


@dataclass(frozen=True)
class _Stored:
    """A record as read back: the version (its document b"" when it has a layout), its
    layout (None: the document is inline, or omitted), and the record's size."""

    version: Version
    layout: tuple[_Item, ...] | None
    size: int

    @property
    def digests(self) -> tuple[str, ...]:
        """The pieces its layout names (a rule's layout, not its parts: `_uses`)."""
        return tuple(item[0] for item in self.layout or () if not isinstance(item, str))

    @property
    def rules(self) -> tuple[str, ...]:
        """The digests of its rules' layouts."""
        return tuple(i[0] for i in self.layout or () if not isinstance(i, str) and i[2] == "rule")

    @property
    def author(self) -> str:
        """Whose versions it counts among: a gateway write's tenant; else "" (baselines and
        changes made around the gateway, one author)."""
        version = self.version
        return (version.tenant or "") if version.origin == "gateway" else ""


def _layout(value: Any) -> tuple[_Item, ...] | None:
    if not isinstance(value, list):
        return None
    items: list[_Item] = []
    for item in value:
        if isinstance(item, str):
            items.append(item)
        elif not isinstance(item, list):
            return None
        elif len(item) == 3 and item[0] == _RULE:
            if not (_is_digest(item[1]) and isinstance(item[2], int) and item[2] >= 0):
                return None
            items.append((item[1], item[2], "rule"))
        elif (
            len(item) in (2, 3)
            and _is_digest(item[0])
            and isinstance(item[1], int)
            and item[1] >= 0
        ):
            items.append((item[0], item[1], "whole" if len(item) == 3 else "element"))
        else:
            return None
    return tuple(items)


def _decode(raw: bytes) -> _Stored | None:
    """A stored record, or None for anything that is not one (never raises)."""
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
    layout = _layout(fields.get("l")) if "l" in fields else None
    if "l" in fields and layout is None:
        return None
    version = Version(
        seq=seq,
        recorded_at=float(at),
        origin=origin,
        etag=etag[:_TEXT_LIMIT],
        document=raw[end + 1 :] if layout is None else b"",
        tenant=_text(fields.get("tn")),
        identity=_text(fields.get("id")),
        rpc=_text(fields.get("r")),
        document_omitted=fields.get("x") is True,
    )
    return _Stored(version, layout, len(raw))


def _whole(stored: _Stored, parts: Mapping[str, bytes]) -> Version:
    """The version with its document whole, or `document_omitted` when a piece is gone."""
    if stored.layout is None:
        return stored.version
    chunks: list[bytes | None] = []
    for item in stored.layout:
        if isinstance(item, str):
            chunks.append(item.encode("utf-8"))
            continue
        data = parts.get(item[0])
        if item[2] != "rule" or data is None:
            chunks.append(data)
            continue
        rule = _Rule.decode(data)
        if rule is None:
            chunks.append(None)
            continue
        chunks.append(rule.header)
        chunks += [parts.get(digest) for digest, _, _ in rule.parts]
    if any(chunk is None for chunk in chunks):
        return replace(stored.version, document=b"", document_omitted=True)
    return replace(stored.version, document=b"".join(c for c in chunks if c is not None))


def _in_pieces(
    stored: _Stored, parts: Mapping[str, bytes], introduced: Mapping[str, str]
) -> Version:
    """The version with its document as pieces (`scan`); one Piece object per digest."""
    version = stored.version
    if stored.layout is None:
        # Kept inline: before documents were stored in pieces; or kept without it (a missing
        # whole piece: nobody's slice can be told in it).
        data = None if version.document_omitted else version.document
        whole = Piece("whole", data, "" if data is None else _digest(data))
        return replace(version, document=b"", pieces=(whole,))
    pieces: list[Piece] = []
    missing = False
    for item in stored.layout:
        if isinstance(item, str):
            pieces.append(Piece("text", item.encode("utf-8")))
            continue
        digest, _, kind = item
        data = parts.get(digest)
        missing = missing or data is None
        if kind != "rule":
            pieces.append(Piece(kind, data, digest, introduced.get(digest, "")))
            continue
        rule = _Rule.decode(data)
        missing = missing or rule is None
        inner: list[Piece] = []
        for part, _, shared in rule.parts if rule is not None else ():
            found = parts.get(part)
            missing = missing or found is None
            inner.append(
                Piece("shared" if shared else "filter", found, part, introduced.get(part, ""))
            )
        pieces.append(
            Piece(
                "rule",
                data if rule is not None else None,
                digest,
                introduced.get(digest, ""),
                tuple(inner),
            )
        )
    return replace(
        version, document_omitted=version.document_omitted or missing, pieces=tuple(pieces)
    )


def _introducer(version: Version) -> str:
    """What the pieces `version` stores first are recorded as introduced by."""
    if version.origin != "gateway" or not version.tenant:
        return ""
    return (SLICE if version.rpc in SLICE_WRITES else WHOLE) + version.tenant


def _payer(introduced_by: str) -> str:
    """The author a stored piece's bytes count against."""
    for prefix in (SLICE, WHOLE):
        if introduced_by.startswith(prefix):
            return introduced_by[len(prefix) :]
    return ""


# --- what to give up to stay within the bounds ------------------------------------------------


def _uses(stored: _Stored, layouts: Mapping[str, _Rule]) -> tuple[list[str], set[str]]:
    """Every piece a record's document is made of (a rule's layout and its parts), and those
    that are shared structure: rules' layouts and their runs of destinations. Structure is
    never given up on its own (a slice is read through it): it goes with the last version
    holding it."""
    used = list(stored.digests)
    structure: set[str] = set()
    for digest in stored.rules:
        structure.add(digest)
        rule = layouts.get(digest)
        for part, _, shared in rule.parts if rule is not None else ():
            used.append(part)
            if shared:
                structure.add(part)
    return used, structure


def _rule_layouts(records: Iterable[_Stored], data: Mapping[str, bytes | None]) -> dict[str, _Rule]:
    """The layouts of the records' rules found in `data` (digest -> the layout piece)."""
    found: dict[str, _Rule] = {}
    for record in records:
        for digest in record.rules:
            if digest not in found:
                rule = _Rule.decode(data.get(digest))
                if rule is not None:
                    found[digest] = rule
    return found


@dataclass
class _Trim:
    """What one append gives up: versions (by seq), pieces no version refers to any more
    (`forget`: the piece and who introduced it), and pieces given up while versions still
    refer to them (`strip`: who introduced them is kept, for the slice view)."""

    drop: set[int] = field(default_factory=set)
    forget: set[str] = field(default_factory=set)
    strip: set[str] = field(default_factory=set)


def _trim(
    records: Sequence[_Stored],
    sizes: Mapping[str, int],
    introduced: Mapping[str, str],
    layouts: Mapping[str, _Rule],
    max_versions: int,
    max_bytes: int,
) -> _Trim:
    """What to give up so that `records` (newest first; the first is the head, always kept
    whole) keep at most `max_versions` versions per author and at most `max_bytes` bytes.
    `sizes`: the pieces stored now (digest -> bytes); `introduced`: who introduced each;
    `layouts`: the records' rules' layouts (digest -> `_Rule`).

    Bytes: while over, the author holding the most removable bytes (its versions' records
    but the head's, and the pieces it introduced that the head does not hold) gives up its
    oldest piece (never shared structure: `_uses`), or, when it has none left, its oldest
    version."""
    trim = _Trim()
    kept: list[_Stored] = []
    counts: Counter[str] = Counter()
    for i, stored in enumerate(records):
        author = stored.author
        if i == 0 or counts[author] < max_versions:
            kept.append(stored)
            counts[author] += 1
        else:
            trim.drop.add(stored.version.seq)
    users: dict[str, set[int]] = defaultdict(set)
    first_held: dict[str, int] = {}
    uses: dict[int, list[str]] = {}
    structure: set[str] = set()
    for stored in kept:
        used, shared = _uses(stored, layouts)
        uses[stored.version.seq] = used
        structure |= shared
        for digest in used:
            users[digest].add(stored.version.seq)
            first_held[digest] = stored.version.seq  # oldest last: newest first
    live = {d: size + _PIECE_OVERHEAD for d, size in sizes.items() if d in users}
    # Stored, or given up but still named by who introduced it: either goes with its last
    # version.
    known = set(sizes) | set(introduced)
    trim.forget = {d for d in known if d not in users}
    total = sum(s.size for s in kept) + sum(live.values())
    if total <= max_bytes or not kept:
        return trim
    head = kept[0]
    in_head = set(uses[head.version.seq])
    charge: Counter[str] = Counter()
    versions_of: dict[str, deque[_Stored]] = defaultdict(deque)
    for stored in reversed(kept[1:]):  # oldest first
        versions_of[stored.author].append(stored)
        charge[stored.author] += stored.size
    pieces_of: dict[str, deque[str]] = defaultdict(deque)
    for digest in sorted((d for d in live if d not in in_head), key=lambda d: (first_held[d], d)):
        payer = _payer(introduced.get(digest, ""))
        if digest not in structure:
            pieces_of[payer].append(digest)
        charge[payer] += live[digest]
    while total > max_bytes:
        candidates = [
            (bytes_held, author)
            for author, bytes_held in charge.items()
            if bytes_held > 0 and (pieces_of[author] or versions_of[author])
        ]
        if not candidates:
            break
        _, author = max(candidates)
        pieces = pieces_of[author]
        while pieces and pieces[0] not in live:
            pieces.popleft()  # forgotten meanwhile, with the last version holding it
        if pieces:
            digest = pieces.popleft()
            total -= live[digest]
            charge[author] -= live.pop(digest)
            trim.strip.add(digest)
            continue
        stored = versions_of[author].popleft()
        trim.drop.add(stored.version.seq)
        total -= stored.size
        charge[author] -= stored.size
        for digest in uses[stored.version.seq]:
            holders = users[digest]
            holders.discard(stored.version.seq)
            if holders:
                continue
            trim.strip.discard(digest)
            if digest in known:
                trim.forget.add(digest)
            if digest in live:
                total -= live[digest]
                charge[_payer(introduced.get(digest, ""))] -= live.pop(digest)
    return trim


@dataclass(frozen=True)
class _Prepared:
    """An append, ready to store: the version as kept, its record, its new pieces."""

    version: Version
    record: bytes
    new_pieces: dict[str, tuple[bytes, str]]  # digest -> (bytes, introduced_by)
    stored: _Stored  # as it will read back (seq to be set)
    # The new pieces that are rules' layouts and parts (Redis keeps them in hashes of their
    # own: `RedisHistory`).
    parts: frozenset[str] = frozenset()


def _prepare(key: CacheKey, version: Version, max_bytes: int, mine: Mine | None) -> _Prepared:
    """`version` ready to append. A slice write's new pieces are introduced as its own only
    where `mine` says they are its writer's part; every other new piece (and all of them
    without `mine`) as a whole document's, still charged to its author: the write's document
    holds the whole state, and a piece new to the history may be another tenant's."""
    fitted = _fitted(version, max_bytes)
    if fitted.document_omitted:
        record = _record(fitted, None)
        return _Prepared(fitted, record, {}, _Stored(fitted, None, _SEQ.size + len(record)))
    layout, pieces = _split(key.resource, fitted.document)
    record = _record(fitted, layout)
    own = _introducer(fitted)
    anyones = WHOLE + own[len(SLICE) :] if own.startswith(SLICE) else own
    stored = _Stored(replace(fitted, document=b""), tuple(layout), _SEQ.size + len(record))
    rules = _rule_layouts([stored], pieces)
    parts = {digest for rule in rules.values() for digest, _, _ in rule.parts}
    kinds: dict[str, PieceKind] = {item[0]: item[2] for item in layout if not isinstance(item, str)}
    for rule in rules.values():
        kinds.update({d: "shared" if shared else "filter" for d, _, shared in rule.parts})

    def introducer(digest: str, data: bytes) -> str:
        if own == anyones or mine is None:
            return anyones
        return own if mine(kinds.get(digest, "whole"), data) else anyones

    return _Prepared(
        fitted,
        record,
        {digest: (data, introducer(digest, data)) for digest, data in pieces.items()},
        stored,
        frozenset(rules) | frozenset(parts),
    )


def _plan(
    prepared: _Prepared,
    seq: int,
    records: Sequence[_Stored],
    sizes: Mapping[str, int],
    introduced: Mapping[str, str],
    layouts: Mapping[str, _Rule],
    max_versions: int,
    max_bytes: int,
) -> _Trim:
    """The trim of the history once `prepared` is appended as `seq` on `records`."""
    new = replace(prepared.stored, version=replace(prepared.stored.version, seq=seq))
    with_new_sizes = dict(sizes)
    with_new_intro = dict(introduced)
    for digest, (data, by) in prepared.new_pieces.items():
        with_new_sizes.setdefault(digest, len(data))
        with_new_intro.setdefault(digest, by)
    with_new_layouts = dict(layouts)
    news = {digest: data for digest, (data, _) in prepared.new_pieces.items()}
    with_new_layouts.update(_rule_layouts([new], news))
    return _trim(
        [new, *records], with_new_sizes, with_new_intro, with_new_layouts, max_versions, max_bytes
    )


# --- in this process --------------------------------------------------------------------------


@dataclass
class _Versions:
    records: list[_Stored] = field(default_factory=list)  # newest first
    pieces: dict[str, bytes] = field(default_factory=dict)
    introduced: dict[str, str] = field(default_factory=dict)
    seq: int = 0


class MemoryHistory:
    """Versions in this process (one replica, or tests)."""

    def __init__(self, max_versions: int, max_bytes: int) -> None:
        self._max_versions = max_versions
        self._max_bytes = max_bytes
        # Keys are (registry, region, resource) a tenant is authorized for: bounded by config.
        self._keys: dict[CacheKey, _Versions] = {}

    async def head(self, key: CacheKey) -> Version | None:
        """The newest version, if any."""
        found = await self.page(key, before_seq=None, limit=1)
        return found[0] if found else None

    async def append(
        self,
        key: CacheKey,
        version: Version,
        *,
        if_head_etag: str | None,
        mine: Mine | None = None,
    ) -> Version | None:
        """Compare-and-append (one event loop: no await between compare and append)."""
        versions = self._keys.setdefault(key, _Versions())
        head = versions.records[0].version if versions.records else None
        if (head.etag if head is not None else None) != if_head_etag:
            return None
        prepared = _prepare(key, version, self._max_bytes, mine)
        seq = versions.seq + 1
        trim = _plan(
            prepared,
            seq,
            versions.records,
            {d: len(data) for d, data in versions.pieces.items()},
            versions.introduced,
            _rule_layouts(versions.records, versions.pieces),
            self._max_versions,
            self._max_bytes,
        )
        versions.seq = seq
        stored = replace(prepared.stored, version=replace(prepared.stored.version, seq=seq))
        versions.records.insert(0, stored)
        for digest, (data, by) in prepared.new_pieces.items():
            versions.pieces.setdefault(digest, data)
            versions.introduced.setdefault(digest, by)
        versions.records = [r for r in versions.records if r.version.seq not in trim.drop]
        for digest in trim.strip | trim.forget:
            versions.pieces.pop(digest, None)
        for digest in trim.forget:
            versions.introduced.pop(digest, None)
        return replace(prepared.version, seq=seq)

    async def page(self, key: CacheKey, *, before_seq: int | None, limit: int) -> list[Version]:
        """Newest first, older than `before_seq` when given."""
        versions = self._keys.get(key)
        if versions is None or limit <= 0:
            return []
        older = (r for r in versions.records if before_seq is None or r.version.seq < before_seq)
        return [_whole(r, versions.pieces) for _, r in zip(range(limit), older, strict=False)]

    async def scan(self, key: CacheKey) -> list[Version]:
        """Every version, newest first, as pieces."""
        versions = self._keys.get(key)
        if versions is None:
            return []
        return [_in_pieces(r, versions.pieces, versions.introduced) for r in versions.records]


# --- in Redis, shared by every replica ---------------------------------------------------------

# Lua shared by the scripts: the rules' layouts a record's header names (["r", digest, size]
# items: `_Rule`), and HMGET by batches (unpack() has a bound on how many values it passes).
_LUA_PARTS = """
local function rules_of(item, into, seen)
  if #item < 8 then return end
  local nl = string.find(item, '\\n', 9, true)
  if not nl then return end
  local ok, header = pcall(cjson.decode, string.sub(item, 9, nl - 1))
  if not ok or type(header) ~= 'table' or type(header['l']) ~= 'table' then return end
  for _, piece in ipairs(header['l']) do
    if type(piece) == 'table' and piece[1] == 'r' and type(piece[2]) == 'string'
        and not seen[piece[2]] then
      seen[piece[2]] = true
      table.insert(into, piece[2])
    end
  end
end
local function fetch(hash, names)
  local found = {}
  for first = 1, #names, 1000 do
    local batch = {}
    for j = first, math.min(first + 999, #names) do table.insert(batch, names[j]) end
    for _, value in ipairs(redis.call('HMGET', hash, unpack(batch))) do
      table.insert(found, value)
    end
  end
  return found
end
"""
# KEYS: list (newest first), seq counter, head etag, pieces (hash), introduced (hash), and
# the same two hashes of rules' layouts and parts. What an append's trim is computed from:
# the seq, every record, the pieces stored, who introduced each, and the layouts of the
# records' rules (their digests, then their data).
_STATE = (
    _LUA_PARTS
    + """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local rules, seen = {}, {}
for _, item in ipairs(items) do rules_of(item, rules, seen) end
return {
  redis.call('GET', KEYS[2]) or '0',
  items,
  redis.call('HKEYS', KEYS[4]),
  redis.call('HGETALL', KEYS[5]),
  rules,
  fetch(KEYS[6], rules),
  redis.call('HKEYS', KEYS[6]),
  redis.call('HGETALL', KEYS[7]),
}
"""
)
# KEYS: as _STATE. ARGV: mode ("empty" or "etag"), the expected head etag, the seq the trim
# was computed at, the record without its seq, its etag, then counted lists: the new pieces
# (digest, bytes, introduced by, "1" for a rule's layout or part), the seqs to drop, the
# pieces to strip, the pieces to forget (from either pair of hashes). The head's etag has a
# key of its own so the comparison needs no parsing in Lua. The trim applies only when no
# append came between (the seq is the one it was computed at); otherwise the later append's
# trim covers this one.
_APPEND = """
local head = redis.call('GET', KEYS[3])
if ARGV[1] == 'empty' then
  if head then return 0 end
elseif head ~= ARGV[2] then
  return 0
end
local before = redis.call('GET', KEYS[2]) or '0'
local seq = redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[1], struct.pack('>i8', seq) .. ARGV[4])
redis.call('SET', KEYS[3], ARGV[5])
local i = 6
local n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  local at = ARGV[i + 3] == '1' and 6 or 4
  redis.call('HSETNX', KEYS[at], ARGV[i], ARGV[i + 1])
  redis.call('HSETNX', KEYS[at + 1], ARGV[i], ARGV[i + 2])
  i = i + 4
end
if before ~= ARGV[3] then return seq end
n = tonumber(ARGV[i])
i = i + 1
if n > 0 then
  local drop = {}
  for _ = 1, n do
    drop[ARGV[i]] = true
    i = i + 1
  end
  local items = redis.call('LRANGE', KEYS[1], 0, -1)
  for index, item in ipairs(items) do
    if #item >= 8 and drop[string.format('%d', struct.unpack('>i8', item))] then
      redis.call('LSET', KEYS[1], index - 1, '')
    end
  end
  redis.call('LREM', KEYS[1], 0, '')
end
n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  redis.call('HDEL', KEYS[4], ARGV[i])
  redis.call('HDEL', KEYS[6], ARGV[i])
  i = i + 1
end
n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  redis.call('HDEL', KEYS[4], ARGV[i])
  redis.call('HDEL', KEYS[5], ARGV[i])
  redis.call('HDEL', KEYS[6], ARGV[i])
  redis.call('HDEL', KEYS[7], ARGV[i])
  i = i + 1
end
return seq
"""
# KEYS: list, pieces, introduced, parts, parts' introduced. ARGV: before_seq ("" for none),
# limit (-1: all), whether to return who introduced the pieces. The records newest first,
# the digests they refer to (their rules' parts too, named in the rules' layouts), those
# pieces (false: given up) and who introduced them: one consistent read.
_PAGE = (
    _LUA_PARTS
    + """
local before = ARGV[1]
local limit = tonumber(ARGV[2])
local items
if before == '' and limit >= 0 then
  items = redis.call('LRANGE', KEYS[1], 0, limit - 1)
else
  items = redis.call('LRANGE', KEYS[1], 0, -1)
end
local out, digests, seen, rules, rule_seen = {}, {}, {}, {}, {}
local bound = before ~= '' and tonumber(before) or nil
for _, item in ipairs(items) do
  if limit >= 0 and #out >= limit then break end
  if #item >= 8 and (bound == nil or struct.unpack('>i8', item) < bound) then
    table.insert(out, item)
    local nl = string.find(item, '\\n', 9, true)
    if nl then
      local ok, header = pcall(cjson.decode, string.sub(item, 9, nl - 1))
      if ok and type(header) == 'table' and type(header['l']) == 'table' then
        for _, piece in ipairs(header['l']) do
          if type(piece) == 'table' then
            local name = piece[1]
            if name == 'r' then name = piece[2] end
            if type(name) == 'string' and not seen[name] then
              seen[name] = true
              table.insert(digests, name)
            end
          end
        end
      end
      rules_of(item, rules, rule_seen)
    end
  end
end
for _, data in ipairs(fetch(KEYS[4], rules)) do
  if data then
    local ok, layout = pcall(cjson.decode, data)
    if ok and type(layout) == 'table' then
      for j = 2, #layout do
        local part = layout[j]
        if type(part) == 'table' and type(part[1]) == 'string' and not seen[part[1]] then
          seen[part[1]] = true
          table.insert(digests, part[1])
        end
      end
    end
  end
end
local function either(a, b)
  local found, other = fetch(a, digests), fetch(b, digests)
  for j = 1, #digests do
    if not found[j] then found[j] = other[j] end
  end
  return found
end
local pieces, introduced = either(KEYS[2], KEYS[4]), {}
if ARGV[3] == '1' then introduced = either(KEYS[3], KEYS[5]) end
return {out, digests, pieces, introduced}
"""
)


class RedisHistory:
    """Versions in Redis under `<key_prefix>history:<registry>:<region>:<resource>:*`:
    `versions` (the records, newest first), `seq`, `head` (its etag), `pieces` and
    `introduced` (hashes by digest), and `parts` and `parts_by`: the same of rules' layouts
    and parts. Those have hashes of their own for a rolling upgrade: a replica from before
    rules were split skips a record naming a rule's layout (`_layout`) and, trimming, forgets
    every piece of `pieces` no record it reads names; it never reads `parts`, so its appends
    leave the newer versions whole. On a Redis Cluster `<registry>:<region>` is a hash tag
    (service/state/redis_keys.py): the scripts read and write all seven keys at once.

    The keys have no expiry: a history is bounded in size, and one that expired while its
    registry stood still would lose the state drift is measured against.
    """

    def __init__(self, client: RedisClient, key_prefix: str, max_versions: int, max_bytes: int):
        self._redis = client
        self._names = RedisKeys.of(client, f"{key_prefix}history:")
        self._max_versions = max_versions
        self._max_bytes = max_bytes
        self._state = client.register_script(_STATE)
        self._append = client.register_script(_APPEND)
        self._page = client.register_script(_PAGE)
        self._available: bool | None = None
        self._failing: set[str] = set()  # the groups (`_group`) whose last command failed

    def _keys(self, key: CacheKey) -> list[str]:
        group = f"{key.registry_id}:{key.region}"
        return [
            self._names.key(group, key.resource, name)
            for name in ("versions", "seq", "head", "pieces", "introduced", "parts", "parts_by")
        ]

    async def head(self, key: CacheKey) -> Version | None:
        """The newest version; None when there is none or Redis does not answer."""
        try:
            versions = await self._read(key, before_seq=None, limit=1)
        except (redis.RedisError, OSError) as exc:
            self._down(key, exc)
            return None
        return versions[0] if versions else None

    async def append(
        self,
        key: CacheKey,
        version: Version,
        *,
        if_head_etag: str | None,
        mine: Mine | None = None,
    ) -> Version | None:
        """Compare-and-append in one script, trimmed as read just before; None when the head
        moved or Redis is away."""
        prepared = _prepare(key, version, self._max_bytes, mine)
        keys = self._keys(key)
        mode = "empty" if if_head_etag is None else "etag"
        try:
            state = await self._state(keys=keys)
            seq_now, raw, stored_digests, introduced_flat, rule_names, rule_data = state[:6]
            part_digests, parts_by_flat = state[6:]
            records = [r for r in (_decode(item) for item in raw) if r is not None]
            layouts = _rule_layouts(records, _found(rule_names, rule_data))
            sizes = _sizes(records, [*stored_digests, *part_digests], layouts)
            introduced = {**_pairs(introduced_flat), **_pairs(parts_by_flat)}
            seq = int(seq_now)
            trim = _plan(
                prepared,
                seq + 1,
                records,
                sizes,
                introduced,
                layouts,
                self._max_versions,
                self._max_bytes,
            )
            args: list[Any] = [
                mode,
                if_head_etag or "",
                seq,
                prepared.record,
                prepared.version.etag,
            ]
            args.append(len(prepared.new_pieces))
            for digest, (data, by) in prepared.new_pieces.items():
                args += [digest, data, by, "1" if digest in prepared.parts else "0"]
            for group in (sorted(trim.drop), sorted(trim.strip), sorted(trim.forget)):
                args.append(len(group))
                args += group
            stored_seq = int(await self._append(keys=keys, args=args))
        except (redis.RedisError, OSError) as exc:
            self._down(key, exc)
            return None
        self._up(key)
        return replace(prepared.version, seq=stored_seq) if stored_seq else None

    async def page(self, key: CacheKey, *, before_seq: int | None, limit: int) -> list[Version]:
        """Newest first, older than `before_seq` when given; `Unavailable`
        (HISTORY_UNAVAILABLE) when Redis does not answer."""
        try:
            return await self._read(key, before_seq=before_seq, limit=limit)
        except (redis.RedisError, OSError) as exc:
            raise self._unavailable(key, exc) from None

    async def scan(self, key: CacheKey) -> list[Version]:
        """Every version, newest first, as pieces; `Unavailable` like `page`."""
        try:
            records, pieces, introduced = await self._fetch(key, None, -1, introduced=True)
        except (redis.RedisError, OSError) as exc:
            raise self._unavailable(key, exc) from None
        return [_in_pieces(r, pieces, introduced) for r in records]

    def _unavailable(self, key: CacheKey, exc: BaseException) -> Unavailable:
        self._down(key, exc)
        return Unavailable(
            "the configuration history (Redis) is unavailable; retry later",
            reason=HISTORY_UNAVAILABLE,
            metadata={"registryId": key.registry_id, "region": key.region},
            retry_after_seconds=RETRY_AFTER_SECONDS,
        )

    async def _read(self, key: CacheKey, *, before_seq: int | None, limit: int) -> list[Version]:
        """Newest first, documents whole, older than `before_seq` when given; Redis's
        errors raised."""
        if limit <= 0:
            return []
        records, pieces, _ = await self._fetch(key, before_seq, limit, introduced=False)
        return [_whole(r, pieces) for r in records]

    async def _fetch(
        self, key: CacheKey, before_seq: int | None, limit: int, *, introduced: bool
    ) -> tuple[list[_Stored], dict[str, bytes], dict[str, str]]:
        keys = self._keys(key)
        raw, digests, found, by = await self._page(
            keys=[keys[0], keys[3], keys[4], keys[5], keys[6]],
            args=["" if before_seq is None else before_seq, limit, "1" if introduced else "0"],
        )
        self._up(key)
        records = [
            r
            for r in (_decode(item) for item in raw if isinstance(item, bytes))
            if r is not None and (before_seq is None or r.version.seq < before_seq)
        ]
        names = [d.decode("ascii", "replace") if isinstance(d, bytes) else str(d) for d in digests]
        pieces = {n: p for n, p in zip(names, found, strict=False) if isinstance(p, bytes)}
        who = {
            n: b.decode("utf-8", "replace")
            for n, b in zip(names, by or [], strict=False)
            if isinstance(b, bytes)
        }
        return records[: limit if limit >= 0 else None], pieces, who

    def _up(self, key: CacheKey) -> None:
        # Once every registry that failed answers again: on a cluster with one node down,
        # its registries and the others' alternate (as in cache/redis_store.py).
        self._failing.discard(self._group(key))
        if self._failing:
            return
        if self._available is False:
            log.warning("Redis history is reachable again; drift detection resumes")
        self._available = True

    def _group(self, key: CacheKey) -> str:
        """What fails together: one Redis; on a cluster, the node of the key's hash tag."""
        return f"{key.registry_id}:{key.region}" if self._names.cluster else ""

    def _down(self, key: CacheKey, exc: BaseException) -> None:
        self._failing.add(self._group(key))
        if self._available is not False:
            # Once per outage: a line per read would flood the log.
            log.warning(
                "Redis history unavailable; drift detection paused until it answers",
                extra={"error_type": type(exc).__name__},
            )
        self._available = False


def _found(names: Sequence[Any], values: Sequence[Any]) -> dict[str, bytes | None]:
    """HMGET's answer by digest (None: not stored)."""
    return {
        _name(n): (v if isinstance(v, bytes) else None) for n, v in zip(names, values, strict=False)
    }


def _name(value: Any) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _sizes(
    records: Iterable[_Stored], stored: Iterable[Any], layouts: Mapping[str, _Rule]
) -> dict[str, int]:
    """The size of each piece stored (from the layouts that refer to it)."""
    known: dict[str, int] = {}
    for record in records:
        for item in record.layout or ():
            if not isinstance(item, str):
                known[item[0]] = item[1]
    for rule in layouts.values():
        for digest, size, _ in rule.parts:
            known[digest] = size
    names = (d.decode("ascii", "replace") if isinstance(d, bytes) else str(d) for d in stored)
    return {name: known.get(name, 0) for name in names}


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    """HGETALL's flat answer as a dict of text."""

    def text(value: Any) -> str:
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    return {text(k): text(v) for k, v in zip(flat[::2], flat[1::2], strict=False)}
