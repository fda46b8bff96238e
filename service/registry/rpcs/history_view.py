"""GetConfigurationHistory's domain side: a page of a resource's recorded versions, as the
caller may see them.

The versions are what service/state/history.py recorded (baselines, the gateway's own
writes, changes made around it); this module only reads them, newest first:

- **full view** (the tenant may call the resource's full read RPC): each document whole, the
  whole resource's etag, and who wrote it (tenant, identity, RPC) as recorded;
- **slice view** (service/auth/history.py decides which): only the versions where the
  caller's slice changed (its slice etag differs from the next older version's; the oldest
  version kept is listed as where its history begins, as CHANGE_ORIGIN_BASELINE with no time
  and no author, since which version is oldest moves with everyone's writes), each with the
  caller's rules or
  statements (service/registry/model/slices.py's ownership), the etag of that slice (what
  GetReplicationRules / GetPolicyStatements answered then), and who wrote it only when the
  caller itself did. Versions in which only other tenants' parts changed are not listed at
  all, so their timing and number (how often another tenant writes) do not show.

A version kept without its document (larger than `history.max_bytes`, or some of its pieces
given up to stay within it: service/state/history.py) is marked `document_omitted`: the full
view shows its etag, the slice view no slice and no etag, unless every piece it lacks is
another tenant's own statement or repository filter (introduced by that tenant's slice
write): then the caller's slice is whole in it and shown as in any other version. Rules are
packed (service/registry/model/packing.py), one rule holding the filters of several slices,
so a rule is stored as its parts (each filter a piece, its destinations a shared one): a
caller's slice needs only its own filters and the shared parts. A lacking rule stored whole
(a version recorded before rules were split) is never taken for another's alone.

Page tokens are opaque to callers: the urlsafe base64 of a format byte, a position, and a
digest binding them to (registry, region, resource). In the full view the position is the
sequence number the next page continues below (stable while versions are added). In the
slice view it is how many of the caller's listed versions came before: the sequence number
counts every tenant's writes, so it would tell a slice reader how many versions exist; a
position among its own listed versions tells it nothing it was not shown (and needs no key:
an unkeyed digest is enough when nothing in the token is secret). A change of the caller's
slice between two pages repeats one version on the next page, never skips one. The digest is
not what keeps one history from another (the key read is always the one the caller was
authorized for; a token only carries a position in it): it makes a token of another
history, or a made-up one, INVALID_ARGUMENT rather than a silently odd page.

Bounded work: a slice page reads the whole history as stored (`HistoryStore.scan`: each
version's header and the pieces of the documents, each piece once; at most
`history.max_bytes`, at most 8 MiB: service/config.py) and judges each piece once, each
version by the digests of its pieces: a bounded scan per page, the price of showing nothing
of the versions that are not listed (filtering needs each version's next older one). Only
the listed versions of the page are built.

Bounded output: at most MAX_PAGE_SIZE versions, and at most `page_bytes` of them (a whole
replication configuration may be ~340 KB, so 50 of them would pass grpc's 4 MiB send limit):
a page stops early, with a next_page_token, when the next version would pass the bound; it
always holds at least one version, so paging always moves on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from service.auth.history import HistoryResource, View
from service.auth.targets import Target
from service.errors import (
    INVALID_REQUEST,
    MAX_VIOLATIONS,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
)
from service.gen.v1 import registry_pb2 as pb
from service.registry.model import packing, slices
from service.state.cache.base import CacheKey
from service.state.history import SLICE, HistoryStore, Origin, Piece, Version

RPC = "GetConfigurationHistory"
MAX_PAGE_SIZE = 50
DEFAULT_PAGE_SIZE = 10  # page_size 0, as the proto says
# A token is 36 characters; the bound leaves room for a longer format later and is the
# request byte bound's too (service/rpc/request_limits.py, "page_token").
MAX_PAGE_TOKEN_CHARS = 64
# A page's versions, serialized: a quarter of grpc's default 4 MiB send limit, so the
# response's own fields and an HTTP caller's JSON (larger than the binary form) fit too.
PAGE_BYTES = 1024 * 1024

_TOKEN_FORMAT = 1
_TOKEN_HEAD = struct.Struct(">Bq")  # format, position
_TOKEN_DIGEST_BYTES = 16
_TOKEN_DOMAIN = b"registry-gateway/history-page-token/v1\x00"

RESOURCES: dict[int, HistoryResource] = {
    pb.HISTORY_RESOURCE_REPLICATION: "registry",
    pb.HISTORY_RESOURCE_POLICY: "policy",
}
_ORIGINS: dict[Origin, pb.ChangeOrigin.ValueType] = {
    "baseline": pb.CHANGE_ORIGIN_BASELINE,
    "gateway": pb.CHANGE_ORIGIN_GATEWAY,
    "out-of-band": pb.CHANGE_ORIGIN_OUT_OF_BAND,
}
# A repeated message field's tag and length prefix: at most 1 + 5 bytes per version.
_ENTRY_OVERHEAD = 6


@dataclass(frozen=True)
class HistoryQuery:
    """A validated request: which history, how many versions, from where.

    `position`: from the page token, None for the newest versions. The full view continues
    below that sequence number; the slice view after that many of its listed versions."""

    resource: HistoryResource
    key: CacheKey
    limit: int
    position: int | None


# --- page tokens ------------------------------------------------------------------------------


def _digest(key: CacheKey, position: int) -> bytes:
    # CacheKey's text is "registry:region:resource"; none of the three holds a ':'.
    material = _TOKEN_DOMAIN + str(key).encode("ascii") + b"\x00" + str(position).encode("ascii")
    return hashlib.sha256(material).digest()[:_TOKEN_DIGEST_BYTES]


def page_token(key: CacheKey, position: int) -> str:
    """The token of the page of `key`'s history that continues at `position`: below that
    sequence number (full view), or after that many listed versions (slice view)."""
    raw = _TOKEN_HEAD.pack(_TOKEN_FORMAT, position) + _digest(key, position)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _token_position(token: str) -> int | None:
    """The position a well-formed token carries, or None (never raises)."""
    if len(token) > MAX_PAGE_TOKEN_CHARS or not token.isascii():
        return None
    padded = token + "=" * (-len(token) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded)
    except (binascii.Error, ValueError):
        return None
    # urlsafe_b64decode skips characters outside its alphabet: only the canonical form of
    # what it decoded is a token, so "ab!c" is not read as "abc".
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        return None
    if len(raw) != _TOKEN_HEAD.size + _TOKEN_DIGEST_BYTES:
        return None
    version, position = _TOKEN_HEAD.unpack_from(raw)
    if version != _TOKEN_FORMAT or position < 1:
        return None
    return int(position)


def _token_bound_to(token: str, key: CacheKey) -> int | None:
    """The position of a token of `key`'s history; None for any other token."""
    position = _token_position(token)
    if position is None:
        return None
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    return position if raw[_TOKEN_HEAD.size :] == _digest(key, position) else None


# --- validation -------------------------------------------------------------------------------


def _invalid(violations: Sequence[FieldViolation]) -> InvalidArgument:
    """Every problem at once, as service/registry/rpcs/validation.py answers."""
    first = violations[0]
    summary = f"{first.field}: {first.description}"
    if len(violations) > 1:
        more = len(violations) - 1
        summary += f"; and {more} more problem{'s' if more != 1 else ''}"
    return InvalidArgument(
        f"invalid {RPC} request: {summary}",
        reason=INVALID_REQUEST,
        metadata={"rpc": RPC, "violations": str(len(violations))},
        field_violations=list(violations[:MAX_VIOLATIONS]),
    )


def parse_query(request: pb.GetConfigurationHistoryRequest, target: Target) -> HistoryQuery:
    """The query of a request whose target is authorized; InvalidArgument listing every
    problem. The token is checked against the history the request names (the target's
    registry and region, its resource): a token of another history is refused."""
    problems: list[FieldViolation] = []
    resource = RESOURCES.get(request.resource)
    if resource is None:
        got = (
            "none" if request.resource == pb.HISTORY_RESOURCE_UNSPECIFIED else str(request.resource)
        )
        problems.append(
            FieldViolation(
                "resource",
                f"must be HISTORY_RESOURCE_REPLICATION or HISTORY_RESOURCE_POLICY, got {got}",
            )
        )
    if not 0 <= request.page_size <= MAX_PAGE_SIZE:
        problems.append(
            FieldViolation(
                "page_size",
                f"must be 0 to {MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE}), got {request.page_size}",
            )
        )
    key = CacheKey(target.registry_id, target.region, resource or "registry")
    position: int | None = None
    token = request.page_token
    if token:
        # The token is never echoed: it is opaque, and a caller's text of any length.
        if len(token) > MAX_PAGE_TOKEN_CHARS:
            problems.append(
                FieldViolation(
                    "page_token",
                    f"must be at most {MAX_PAGE_TOKEN_CHARS} characters, got {len(token)}: "
                    "pass a next_page_token unchanged",
                )
            )
        elif _token_position(token) is None:
            problems.append(
                FieldViolation(
                    "page_token", "is not a page token: pass a next_page_token unchanged"
                )
            )
        elif resource is not None:
            position = _token_bound_to(token, key)
            if position is None:
                problems.append(
                    FieldViolation(
                        "page_token",
                        f"is not a page token of this history (registry {target.registry_id} "
                        f"in {target.region}, {pb.HistoryResource.Name(request.resource)}): "
                        "pass the next_page_token of the same request",
                    )
                )
    if problems:
        raise _invalid(problems)
    assert resource is not None
    return HistoryQuery(resource, key, request.page_size or DEFAULT_PAGE_SIZE, position)


# --- versions as the caller sees them ---------------------------------------------------------


def _common(version: Version, with_author: bool) -> pb.ConfigurationVersion:
    shown = pb.ConfigurationVersion(origin=_ORIGINS[version.origin])
    shown.recorded_at.FromNanoseconds(round(version.recorded_at * 1e9))
    if with_author:
        shown.tenant = version.tenant or ""
        shown.identity = version.identity or ""
        shown.rpc = version.rpc or ""
    return shown


def _configuration(version: Version) -> pb.ReplicationConfiguration | None:
    """The recorded replication configuration; None when the version holds none."""
    if version.document_omitted:
        return None
    try:
        return pb.ReplicationConfiguration.FromString(version.document)
    except DecodeError:
        return None  # not ours to fail a page over: the etag still says which state it was


def _policy(version: Version) -> str | None:
    """The recorded policy text; "" when there was none; None when the version holds none."""
    if version.document_omitted:
        return None
    return version.document.decode("utf-8", "replace")


def full_version(version: Version, resource: HistoryResource) -> pb.ConfigurationVersion:
    """A version whole: the document, the resource's etag, and its author as recorded. A
    version kept without its document says so (`document_omitted`): its empty document is
    not "no rules" or "no policy"."""
    shown = _common(version, with_author=True)
    shown.etag = version.etag
    if version.document_omitted:
        shown.document_omitted = True
        return shown
    if resource == "registry":
        configuration = _configuration(version)
        if configuration is not None:
            shown.replication_configuration.CopyFrom(configuration)
    else:
        shown.policy_text = _policy(version) or ""
    return shown


# The caller's part of a version: its rules (pb.ReplicationRule) or statements (JSON values),
# and the digests of the pieces they came from; None when it cannot be told.
_Mine = tuple[list[Any], tuple[str, ...]] | None


class _Slicer:
    """The caller's slice of versions stored as pieces (service/state/history.py), each
    piece judged once a page: a piece is shared by every version that holds it."""

    def __init__(self, resource: HistoryResource, owner: slices.Ownership) -> None:
        self.resource = resource
        self._owner = owner
        self._owned: dict[str, list[Any] | None] = {}
        self._filters: dict[str, list[pb.RepositoryFilter]] = {}
        self._etags: dict[tuple[str, ...], str] = {}

    def mine(self, version: Version) -> _Mine:
        """The caller's part of `version`; None when it cannot be told: a piece it lacks
        may have been the caller's, or a document that is not one the caller's slice can
        be read from (written around the gateway)."""
        found: list[Any] = []
        digests: list[str] = []
        for piece in version.pieces or ():
            if piece.kind == "text":
                continue
            if piece.kind == "rule":
                if piece.digest not in self._owned:
                    self._owned[piece.digest] = self._rule(piece)
                owned = self._owned[piece.digest]
                if owned is None:
                    return None
                if owned:
                    found.extend(owned)
                    digests.append(piece.digest)
                continue
            if piece.data is None:
                if piece.kind == "element" and self._anothers(piece):
                    continue
                return None
            owned = self._owned.get(piece.digest)
            if piece.digest not in self._owned:
                owned = self._owned[piece.digest] = self._judge(piece)
            if owned is None:
                return None
            if owned:
                found.extend(owned)
                digests.append(piece.digest)
        if self.resource == "registry":
            # Packed rules hold filters of several slices: the caller's canonical rules are
            # of its filters across every rule.
            found = packing.canonical(found)
        return found, tuple(digests)

    def etag(self, mine: tuple[list[Any], tuple[str, ...]]) -> str:
        """The etag of the caller's slice (what its slice read answered then)."""
        items, digests = mine
        etag = self._etags.get(digests)
        if etag is None:
            etag = self._etags[digests] = (
                slices.rules_etag(items)
                if self.resource == "registry"
                else slices.statements_etag(items)
            )
        return etag

    def _anothers(self, piece: Piece) -> bool:
        """A statement or a repository filter another tenant's slice write introduced: its
        own part, never the caller's (an owned statement names its owner's Sid prefix; a
        slice write holds only filters inside its writer's prefixes, which no other tenant
        owns: service/config/tenancy_checks.py). Not so for a rule stored whole (versions
        recorded before rules were split): rules are packed
        (service/registry/model/packing.py), so a rule another tenant's write introduced
        may hold the caller's filters too."""
        if piece.kind == "element" and self.resource == "registry":
            return False
        by = piece.introduced_by
        return by.startswith(SLICE) and by[len(SLICE) :] != self._owner.tenant

    def _rule(self, piece: Piece) -> list[Any] | None:
        """The caller's part of a rule stored as its parts: its own filters with the rule's
        destinations; None when it cannot be told (the rule's layout or shared parts are
        gone, or a filter it lacks may have been the caller's)."""
        if piece.data is None:
            return None
        shared = b""
        filters: list[pb.RepositoryFilter] = []
        for part in piece.parts:
            if part.kind == "shared":
                if part.data is None:
                    return None
                shared += part.data
                continue
            if part.data is None:
                if self._anothers(part):
                    continue
                return None
            owned = self._filters.get(part.digest)
            if owned is None:
                try:
                    owned = list(pb.ReplicationRule.FromString(part.data).repository_filters)
                except DecodeError:
                    return None
                owned = self._filters[part.digest] = [
                    f for f in owned if self._owner.owns_filter(f.filter)
                ]
            filters.extend(owned)
        try:
            structure = pb.ReplicationRule.FromString(shared)
        except DecodeError:
            return None
        if structure.repository_filters:
            # A filter outside the filter parts (a field the gateway's serialization never
            # writes so): it may be the caller's, and is not judged as one.
            return None
        if not filters:
            return []
        return [pb.ReplicationRule(destinations=structure.destinations, repository_filters=filters)]

    def _judge(self, piece: Piece) -> list[Any] | None:
        """The caller's rules or statements in one piece; None when it cannot be read."""
        data = piece.data or b""
        if self.resource == "registry":
            try:
                configuration = pb.ReplicationConfiguration.FromString(data)
            except DecodeError:
                return None  # not ours to fail a page over: the etag still says which state
            return self._owner.rules_in(configuration)
        text = data.decode("utf-8", "replace")
        if piece.kind == "element":
            try:
                statement = json.loads(text)
            except ValueError:
                return None
            return [statement] if self._owner.owns_statement(statement) else []
        try:
            return self._owner.statements_in(text or None)
        except (FailedPrecondition, TypeError):
            # A policy that is not a JSON object (POLICY_NOT_MERGEABLE), or whose Statement
            # is neither a list nor an object: written around the gateway. Nobody's slice
            # can be told in it; the full view shows it to the administrators.
            return None


def _state(slicer: _Slicer, version: Version, mine: _Mine) -> tuple[str, bool]:
    """What a slice view knows of the caller's slice in a version: its etag ("" when it
    cannot be told), and whether it was not told because the document is not whole."""
    if mine is None:
        return "", version.document_omitted
    return slicer.etag(mine), False


def slice_version(
    version: Version, target: Target, slicer: _Slicer, mine: _Mine
) -> pb.ConfigurationVersion:
    """The caller's slice of a version, its etag, and its author only when the caller wrote
    it. A version in which the caller's slice cannot be told (a piece it lacks may have been
    the caller's, or the document cannot be read) shows no slice and no etag."""
    shown = _common(version, with_author=version.tenant == target.tenant)
    if mine is None:
        shown.document_omitted = version.document_omitted
        return shown
    items, _ = mine
    if slicer.resource == "registry":
        shown.replication_configuration.rules.extend(items)
    else:
        shown.statements_json = json.dumps(items)
    shown.etag = slicer.etag(mine)
    return shown


def _beginning(shown: pb.ConfigurationVersion) -> pb.ConfigurationVersion:
    """The oldest version kept, as a slice reader sees it: where its history begins, with
    the caller's slice as it stood, but not when or by whom that version was written. The
    oldest kept version changes whenever anyone's write evicts one (the history is shared):
    its time and origin would tell a slice reader when other tenants write, even while its
    own slice stands still."""
    begins = pb.ConfigurationVersion()
    begins.CopyFrom(shown)
    begins.ClearField("recorded_at")
    begins.origin = pb.CHANGE_ORIGIN_BASELINE
    begins.tenant = begins.identity = begins.rpc = ""
    return begins


class HistoryView:
    """Pages of recorded versions, from the history store, as each caller may see them."""

    def __init__(self, store: HistoryStore, *, page_bytes: int = PAGE_BYTES) -> None:
        self._store = store
        self._page_bytes = page_bytes

    async def page(
        self, target: Target, query: HistoryQuery, view: View
    ) -> pb.GetConfigurationHistoryResponse:
        """Up to `query.limit` versions after the token's position, newest first, within
        the page's byte bound; next_page_token when older ones remain. `Unavailable` when
        the history store cannot be read."""
        response = pb.GetConfigurationHistoryResponse(
            registry_id=target.registry_id, slice_view=view == "slice"
        )
        if view == "full":
            await self._full_page(query, response)
        else:
            await self._slice_page(target, query, response)
        return response

    async def _full_page(
        self, query: HistoryQuery, response: pb.GetConfigurationHistoryResponse
    ) -> None:
        # One more than asked: whether an older version exists decides the token.
        versions = await self._store.page(
            query.key, before_seq=query.position, limit=query.limit + 1
        )
        shown = (full_version(version, query.resource) for version in versions[: query.limit])
        taken = self._fill(response, shown)
        if taken < len(versions):
            response.next_page_token = page_token(query.key, versions[taken - 1].seq)

    async def _slice_page(
        self, target: Target, query: HistoryQuery, response: pb.GetConfigurationHistoryResponse
    ) -> None:
        # The whole history (bounded: service/state/history.py): whether a version is listed
        # depends on the next older one, and the position counts listed versions only.
        versions = await self._store.scan(query.key)
        slicer = _Slicer(query.resource, slices.Ownership.of(target))
        mine = [slicer.mine(v) for v in versions]
        states = [_state(slicer, v, m) for v, m in zip(versions, mine, strict=True)]
        # Newest first: a version is listed when the caller's slice in it differs from the
        # next older one's; the oldest kept is listed as where the history begins.
        listed = [
            i for i in range(len(versions)) if i == len(versions) - 1 or states[i] != states[i + 1]
        ]
        start = query.position or 0
        remaining = listed[start:]

        def shown(i: int) -> pb.ConfigurationVersion:
            version = slice_version(versions[i], target, slicer, mine[i])
            return _beginning(version) if i == len(versions) - 1 else version

        taken = self._fill(response, (shown(i) for i in remaining[: query.limit]))
        if taken < len(remaining):
            response.next_page_token = page_token(query.key, start + taken)

    def _fill(
        self, response: pb.GetConfigurationHistoryResponse, shown: Iterable[pb.ConfigurationVersion]
    ) -> int:
        """Append the versions `shown` while within the page's byte bound (at least one, so
        paging always moves on); how many were taken."""
        size = 0
        for version in shown:
            size += version.ByteSize() + _ENTRY_OVERHEAD
            if size > self._page_bytes and response.versions:
                break
            response.versions.append(version)
        return len(response.versions)
