"""GetConfigurationHistory's domain side: a page of a resource's recorded versions, as the
caller may see them.

The versions are what service/state/history.py recorded (baselines, the gateway's own
writes, changes made around it); this module only reads them, newest first:

- **full view** (the tenant may call the resource's full read RPC): each document whole, the
  whole resource's etag, and who wrote it (tenant, identity, RPC) as recorded;
- **slice view** (service/auth/history.py decides which): only the caller's rules or
  statements of each version (service/registry/slices.py's ownership), the etag of that
  slice (what GetReplicationRules / GetPolicyStatements answered then), and who wrote it
  only when the caller itself did: another tenant's name and identity are not its to see.

Page tokens are opaque to callers: the urlsafe base64 of a format byte, the sequence number
the next page continues below, and a digest binding them to (registry, region, resource). The
digest is not what keeps one history from another (the key read is always the one the caller
was authorized for; a token only carries a position in it): it makes a token of another
history, or a made-up one, INVALID_ARGUMENT rather than a silently odd page.

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
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from service.auth.history import HistoryResource, View
from service.auth.targets import Target
from service.errors import FailedPrecondition, FieldViolation, InvalidArgument
from service.gen.v1 import registry_pb2 as pb
from service.registry import slices
from service.registry.validation import MAX_VIOLATIONS
from service.registry.validation import REASON as INVALID_REQUEST
from service.state.cache.base import CacheKey
from service.state.history import HistoryStore, Origin, Version

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
_TOKEN_HEAD = struct.Struct(">Bq")  # format, seq
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
    """A validated request: which history, how many versions, from where."""

    resource: HistoryResource
    key: CacheKey
    limit: int
    before_seq: int | None


# --- page tokens ------------------------------------------------------------------------------


def _digest(key: CacheKey, seq: int) -> bytes:
    # CacheKey's text is "registry:region:resource"; none of the three holds a ':'.
    material = _TOKEN_DOMAIN + str(key).encode("ascii") + b"\x00" + str(seq).encode("ascii")
    return hashlib.sha256(material).digest()[:_TOKEN_DIGEST_BYTES]


def page_token(key: CacheKey, before_seq: int) -> str:
    """The token of the page of `key`'s history holding the versions older than `before_seq`."""
    raw = _TOKEN_HEAD.pack(_TOKEN_FORMAT, before_seq) + _digest(key, before_seq)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _token_seq(token: str) -> int | None:
    """The sequence number a well-formed token carries, or None (never raises)."""
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
    version, seq = _TOKEN_HEAD.unpack_from(raw)
    if version != _TOKEN_FORMAT or seq < 1:
        return None
    return int(seq)


def _token_bound_to(token: str, key: CacheKey) -> int | None:
    """The seq of a token of `key`'s history; None for any other token."""
    seq = _token_seq(token)
    if seq is None:
        return None
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    return seq if raw[_TOKEN_HEAD.size :] == _digest(key, seq) else None


# --- validation -------------------------------------------------------------------------------


def _invalid(violations: Sequence[FieldViolation]) -> InvalidArgument:
    """Every problem at once, as service/registry/validation.py answers."""
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
    before_seq: int | None = None
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
        elif _token_seq(token) is None:
            problems.append(
                FieldViolation(
                    "page_token", "is not a page token: pass a next_page_token unchanged"
                )
            )
        elif resource is not None:
            before_seq = _token_bound_to(token, key)
            if before_seq is None:
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
    return HistoryQuery(resource, key, request.page_size or DEFAULT_PAGE_SIZE, before_seq)


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
    """A version whole: the document, the resource's etag, and its author as recorded."""
    shown = _common(version, with_author=True)
    shown.etag = version.etag
    if resource == "registry":
        configuration = _configuration(version)
        if configuration is not None:
            shown.replication_configuration.CopyFrom(configuration)
    else:
        shown.policy_text = _policy(version) or ""
    return shown


def slice_version(
    version: Version, resource: HistoryResource, target: Target, owner: slices.Ownership
) -> pb.ConfigurationVersion:
    """The caller's slice of a version, its etag, and its author only when the caller wrote
    it. A version whose document was not kept (or cannot be read) shows no slice and no
    etag: which part was the caller's is not known."""
    shown = _common(version, with_author=version.tenant == target.tenant)
    if resource == "registry":
        configuration = _configuration(version)
        if configuration is None:
            return shown
        mine = owner.rules_in(configuration)
        shown.replication_configuration.rules.extend(mine)
        shown.etag = slices.rules_etag(mine)
        return shown
    text = _policy(version)
    if text is None:
        return shown
    try:
        statements = owner.statements_in(text or None)
    except (FailedPrecondition, TypeError):
        # A policy that is not a JSON object (POLICY_NOT_MERGEABLE), or whose Statement is
        # neither a list nor an object: written around the gateway. Nobody's slice can be
        # told in it; the full view shows it to the administrators.
        return shown
    shown.statements_json = json.dumps(statements)
    shown.etag = slices.statements_etag(statements)
    return shown


class HistoryView:
    """Pages of recorded versions, from the history store, as each caller may see them."""

    def __init__(self, store: HistoryStore, *, page_bytes: int = PAGE_BYTES) -> None:
        self._store = store
        self._page_bytes = page_bytes

    async def page(
        self, target: Target, query: HistoryQuery, view: View
    ) -> pb.GetConfigurationHistoryResponse:
        """Up to `query.limit` versions older than the token's position, newest first, within
        the page's byte bound; next_page_token when older ones remain."""
        # One more than asked: whether an older version exists decides the token.
        versions = await self._store.page(
            query.key, before_seq=query.before_seq, limit=query.limit + 1
        )
        owner = slices.Ownership.of(target)
        response = pb.GetConfigurationHistoryResponse(
            registry_id=target.registry_id, slice_view=view == "slice"
        )
        size = 0
        for i, version in enumerate(versions):
            if i == query.limit:
                response.next_page_token = page_token(query.key, versions[i - 1].seq)
                break
            shown = (
                full_version(version, query.resource)
                if view == "full"
                else slice_version(version, query.resource, target, owner)
            )
            size += shown.ByteSize() + _ENTRY_OVERHEAD
            if size > self._page_bytes and response.versions:
                response.next_page_token = page_token(query.key, versions[i - 1].seq)
                break
            response.versions.append(shown)
        return response
