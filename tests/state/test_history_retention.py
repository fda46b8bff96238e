"""The history's retention, in memory and on a real Redis (issue 21, finding 9): documents
stored in pieces, byte for byte; each author keeps its newest versions; the author holding
the most bytes gives them up first; a version missing only another tenant's own pieces
still shows a slice reader its slice. Issue 22: rules are packed, one rule holding several
tenants' filters, so a rule is stored as its parts (each filter a piece); versions stored
before that (a piece per rule) are still read."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import pytest
import redis.asyncio as redis

from service.auth.targets import Target
from service.gen.v1 import registry_pb2 as pb
from service.registry.model import packing, slices
from service.registry.rpcs.history_view import HistoryView, parse_query
from service.registry.writes import resources
from service.state.cache import CacheKey
from service.state.history import (
    HistoryStore,
    MemoryHistory,
    Origin,
    RedisHistory,
    Version,
    _record,
)
from tests.registry.conftest import ACCOUNT, REGION, target

REGISTRY = CacheKey(ACCOUNT, REGION, "registry")
POLICY = CacheKey(ACCOUNT, REGION, "policy")
PAYMENTS = target()
BILLING = target("billing", prefixes=("billing/",), sid_prefix="Billing")
MIB = 1 << 20

Factory = Callable[[int, int], HistoryStore]


@pytest.fixture(params=["memory", "redis"])
def stores(request: pytest.FixtureRequest) -> Factory:
    if request.param == "memory":
        return lambda versions, size: MemoryHistory(versions, size)
    client: redis.Redis = request.getfixturevalue("redis_client")
    prefix: str = request.getfixturevalue("redis_prefix")
    return lambda versions, size: RedisHistory(client, prefix, versions, size)


def rule(name: str, filters: int = 1, pad: int = 0) -> pb.ReplicationRule:
    return pb.ReplicationRule(
        destinations=[pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT)],
        repository_filters=[
            pb.RepositoryFilter(filter=f"{name}f{i}" + "a" * pad, filter_type="PREFIX_MATCH")
            for i in range(filters)
        ],
    )


def rules(*names: str, big: tuple[str, ...] = ()) -> bytes:
    """A replication configuration, serialized as it is recorded: a rule of ~60 KB per name
    in `big` (100 filters of 600 characters), then a small rule per name in `names`."""
    configuration = pb.ReplicationConfiguration(
        rules=[*(rule(name, 100, 600) for name in big), *(rule(name) for name in names)]
    )
    return configuration.SerializeToString(deterministic=True)


OWNERS = {
    "payments": slices.Ownership("payments", ("payments/",), "Payments"),
    "billing": slices.Ownership("billing", ("billing/",), "Billing"),
}


class Writer:
    """Appends versions on the head, as the gateway's recording does: a write's own pieces
    told by its tenant's ownership (service/registry/writes/settlement.py)."""

    def __init__(self, store: HistoryStore, key: CacheKey = REGISTRY) -> None:
        self.store = store
        self.key = key
        self.n = 0

    async def write(self, document: bytes, tenant: str | None, rpc: str = "Put") -> Version:
        self.n += 1
        head = await self.store.head(self.key)
        origin: Origin = "gateway" if tenant else "out-of-band"
        version = Version(0, 1000.0 + self.n, origin, f"e{self.n}", document, tenant, "id", rpc)
        kind = resources.kind_of(self.key)
        owner = OWNERS.get(tenant or "")
        stored = await self.store.append(
            self.key,
            version,
            if_head_etag=None if head is None else head.etag,
            mine=None if owner is None else kind.owned_pieces(owner),
        )
        assert stored is not None
        return stored

    async def baseline(self) -> None:
        """The empty state the gateway's fresh read observes before its first write."""
        version = Version(0, 1000.0, "baseline", "e0", b"")
        assert await self.store.append(self.key, version, if_head_etag=None) is not None


async def stored_bytes(client: redis.Redis, prefix: str, key: CacheKey) -> int:
    """What a Redis history holds: its records and its pieces (rules' parts included)."""
    base = f"{prefix}history:{key}"
    records = await client.lrange(f"{base}:versions", 0, -1)
    pieces = [*await client.hvals(f"{base}:pieces"), *await client.hvals(f"{base}:parts")]
    return sum(map(len, records)) + sum(map(len, pieces))


async def within_bound(store: HistoryStore, request: pytest.FixtureRequest) -> None:
    if isinstance(store, RedisHistory):
        client: redis.Redis = request.getfixturevalue("redis_client")
        prefix: str = request.getfixturevalue("redis_prefix")
        assert await stored_bytes(client, prefix, REGISTRY) <= MIB


async def slice_page(
    store: HistoryStore, who: Target, resource: int = pb.HISTORY_RESOURCE_REPLICATION
) -> pb.GetConfigurationHistoryResponse:
    """Every version of `who`'s slice view, across its pages."""
    view = HistoryView(store)
    whole = pb.GetConfigurationHistoryResponse()
    token = ""
    while True:
        request = pb.GetConfigurationHistoryRequest(
            resource=resource,  # type: ignore[arg-type]
            page_size=50,
            page_token=token,
        )
        page = await view.page(who, parse_query(request, who), "slice")
        whole.versions.extend(page.versions)
        token = page.next_page_token
        if not token:
            return whole


INDENTED = (
    '{\n  "Version" : "2012-10-17",\n  "Statement" : [ {"Sid":"A"} ,\n'
    ' {"Sid":"B","X":[1,{"y":"]"}]}\t]\n}\n'
)
POLICIES = [
    "",
    "{}",
    '{"Version":"2012-10-17","Statement":[]}',
    '{"Version":"2012-10-17","Statement":[{"Sid":"A","Effect":"Allow"}]}',
    INDENTED,
    '{"Statement":{"Sid":"OnlyOne"}}',  # an object, not a list: kept whole
    '{"Statement":[{"Sid":"A"}],"Statement":[{"Sid":"B"}]}',  # twice: kept whole
    '{"Statement":[{"Sid":"Ünïcode ✓","Effect":"Allow"}, 3, "x", null]}',
    "not json at all",
    '{"Statement":[{"Sid":"A"}]} trailing',
]


async def test_documents_come_back_byte_for_byte(stores: Factory) -> None:
    store = stores(50, MIB)
    policies = Writer(store, POLICY)
    for text in POLICIES:
        stored = await policies.write(text.encode(), "payments", "PutPolicyStatements")
        assert (await store.head(POLICY)) == stored
    kept = await store.page(POLICY, before_seq=None, limit=50)
    assert [v.document.decode() for v in kept] == POLICIES[::-1]
    registry = Writer(store)
    destination = b"\x0a\x19\x0a\x09eu-west-1\x12\x0c" + ACCOUNT.encode()
    a_filter = b"\x12\x12\x0a\x02a/\x12\x0cPREFIX_MATCH"
    # Filters before destinations, an unknown field between them, a length in a longer
    # varint than needed, a rule with no filter: each comes back as it was.
    body = a_filter + destination + b"\x18\x07" + a_filter
    odd = b"\x0a" + bytes([len(body)]) + body + b"\x0a\x80\x00" + b"\x0a\x1b" + destination
    assert list(pb.ReplicationConfiguration.FromString(odd).rules[0].repository_filters)
    documents = [
        b"",
        rules("payments/a"),
        rules("billing/x", big=("payments/a",)),
        b"\x0a\xff",
        odd,
        odd + b"\x0a\x03\x12\x01",  # the last rule's body does not parse: kept whole
    ]
    for document in documents:
        await registry.write(document, "payments")
    kept = await store.page(REGISTRY, before_seq=None, limit=50)
    assert [v.document for v in kept] == documents[::-1]
    assert not any(v.document_omitted for v in kept)


async def test_each_author_keeps_its_newest_versions(stores: Factory) -> None:
    store = stores(3, MIB)
    writer = Writer(store)
    await writer.write(rules(), None)  # a change made around the gateway
    for i in range(2):
        await writer.write(rules(f"billing/{i}"), "billing")
    for i in range(10):
        await writer.write(rules("billing/1", f"payments/{i}"), "payments")
    kept = await store.page(REGISTRY, before_seq=None, limit=50)
    assert [v.tenant for v in kept] == ["payments"] * 3 + ["billing"] * 2 + [None]
    assert [v.etag for v in kept[:3]] == ["e13", "e12", "e11"]
    # Paging skips the versions no longer kept, whatever their seqs.
    older = await store.page(REGISTRY, before_seq=kept[2].seq, limit=2)
    assert [v.etag for v in older] == [kept[3].etag, kept[4].etag]


async def test_one_large_part_is_stored_once_and_costs_its_author_alone(
    stores: Factory, request: pytest.FixtureRequest
) -> None:
    store = stores(50, MIB)
    writer = Writer(store)
    big = tuple(f"payments/r{r}" for r in range(5))  # ~300 KB: three whole would fill 1 MiB
    for i in range(3):
        await writer.write(rules(f"payments/v{i}", big=big), "payments", "PutReplicationRules")
    for i in range(40):  # billing writes 40 times; each document holds payments' ~300 KB
        document = rules("payments/v2", f"billing/{i}", big=big)
        await writer.write(document, "billing", "PutReplicationRules")
    kept = await store.page(REGISTRY, before_seq=None, limit=50)
    billing = [v for v in kept if v.tenant == "billing"]
    assert len(billing) == 40 and not any(v.document_omitted for v in kept)
    assert len(billing[0].document) > 5 * 100 * 600  # whole, payments' part included
    await within_bound(store, request)


async def test_a_large_writer_gives_up_its_own_pieces_and_others_keep_their_slices(
    stores: Factory, request: pytest.FixtureRequest
) -> None:
    store = stores(50, MIB)
    writer = Writer(store)
    await writer.baseline()
    for i in range(8):  # interleaved: each of billing's versions holds payments' part of then
        part = tuple(f"payments/v{i}r{r}" for r in range(4))  # ~240 KB
        await writer.write(rules(big=part), "payments", "PutReplicationRules")
        await writer.write(rules(f"billing/{i}", big=part), "billing", "PutReplicationRules")
    kept = await store.page(REGISTRY, before_seq=None, limit=50)
    assert len(kept) == 17  # no version dropped: payments' old pieces were given up
    assert not kept[0].document_omitted  # the current state is whole
    omitted = [v for v in kept if v.document_omitted]
    assert omitted and all(v.document == b"" for v in omitted)
    assert {v.tenant for v in omitted} == {"payments", "billing"}
    # billing's versions lack only pieces payments' slice writes introduced: payments' own
    # filters (each filter is a piece, whatever rule packing puts it in), so billing's slice
    # is told in every one of them, and where its history begins (payments' first version,
    # billing's slice empty in it) too.
    view = await slice_page(store, BILLING)
    own = [v for v in view.versions if v.tenant == "billing"]
    owner = slices.Ownership("billing", ("billing/",), None)
    expected = [
        owner.rules_in(pb.ReplicationConfiguration.FromString(rules(f"billing/{i}")))
        for i in range(7, -1, -1)
    ]
    assert len(own) == 8 and not any(v.document_omitted for v in own)
    assert [list(v.replication_configuration.rules) for v in own] == expected
    assert [v.etag for v in own] == [slices.rules_etag(mine) for mine in expected]
    begins = view.versions[-1]
    assert not begins.document_omitted and begins.etag == slices.rules_etag([])
    # payments' own old versions lack its own pieces: its slice is not told in them.
    theirs = await slice_page(store, PAYMENTS)
    assert any(v.document_omitted and not v.etag for v in theirs.versions)
    await within_bound(store, request)


def packed(*prefixes: str, big: tuple[str, ...] = ()) -> bytes:
    """The configuration packing writes (one destination set: one rule per 100 filters,
    sorted) of one filter per name in `prefixes` and 100 filters of 600 characters per name
    in `big`: billing's filter shares a rule with 99 of payments'."""
    to = frozenset({(ACCOUNT, "eu-west-1")})
    meaning = {(f"{name}f0", "PREFIX_MATCH"): to for name in prefixes}
    for name in big:
        meaning.update({(f"{name}f{i}" + "a" * 600, "PREFIX_MATCH"): to for i in range(100)})
    configuration = pb.ReplicationConfiguration(rules=packing.grouped(meaning))
    return configuration.SerializeToString(deterministic=True)


async def test_another_s_filters_packed_into_a_slice_s_rules_never_erase_its_history(
    stores: Factory, request: pytest.FixtureRequest
) -> None:
    store = stores(50, MIB)
    writer = Writer(store)
    await writer.baseline()
    for i in range(8):  # payments' ~240 KB a version, in the rules billing's filter is in
        part = tuple(f"payments/v{i}r{r}" for r in range(4))
        await writer.write(packed(big=part), "payments", "PutReplicationRules")
        document = packed(f"billing/{i}", big=part)
        first = pb.ReplicationConfiguration.FromString(document).rules[0]
        assert first.repository_filters[0].filter == f"billing/{i}f0"
        assert len(first.repository_filters) == 100  # with 99 of payments'
        await writer.write(document, "billing", "PutReplicationRules")
    kept = await store.page(REGISTRY, before_seq=None, limit=50)
    assert len(kept) == 17 and any(v.document_omitted for v in kept)
    view = await slice_page(store, BILLING)
    own = [v for v in view.versions if v.tenant == "billing"]
    owner = slices.Ownership("billing", ("billing/",), None)
    expected = [
        owner.rules_in(pb.ReplicationConfiguration.FromString(packed(f"billing/{i}")))
        for i in range(7, -1, -1)
    ]
    assert [list(v.replication_configuration.rules) for v in own] == expected
    assert [v.etag for v in own] == [slices.rules_etag(mine) for mine in expected]
    assert not any(v.document_omitted for v in view.versions)
    await within_bound(store, request)


async def test_a_slice_write_recorded_first_never_makes_another_s_filters_its_own(
    stores: Factory,
) -> None:
    store = stores(50, MIB)
    writer = Writer(store)
    # billing's write is the first the history records (no baseline: the history was lost):
    # its document holds payments' ~240 KB of filters too.
    first = tuple(f"payments/p0r{r}" for r in range(4))
    await writer.write(packed("billing/a", big=first), "billing", "PutReplicationRules")
    await writer.write(packed("billing/a", "payments/small"), "payments", "PutReplicationRules")
    for i in range(4):  # billing's own large parts: billing gives up its oldest pieces
        part = tuple(f"billing/v{i}r{r}" for r in range(4))
        document = packed(f"billing/b{i}", "payments/small", big=part)
        await writer.write(document, "billing", "PutReplicationRules")
    kept = await store.page(REGISTRY, before_seq=None, limit=50)
    assert kept[-1].document_omitted  # the first version lacks payments' filters
    view = await slice_page(store, PAYMENTS)
    owner = slices.Ownership("payments", ("payments/",), None)
    # payments' slice in it is not told (no slice, no etag), never told as empty.
    begins = view.versions[-1]
    assert begins.document_omitted and not begins.etag
    truth = owner.rules_in(pb.ReplicationConfiguration.FromString(packed("payments/small")))
    assert [list(v.replication_configuration.rules) for v in view.versions[:-1]] == [truth]


async def test_a_slice_write_never_makes_another_s_filters_new_to_the_history_its_own(
    stores: Factory,
) -> None:
    # The history holds the state before (a baseline), but not payments' filters: they came
    # around the gateway and no read observed them (or were recorded by a replica before
    # rules were split). billing's slice write's document holds them: they are new pieces
    # of billing's write, yet payments' part, never billing's.
    store = stores(50, MIB)
    writer = Writer(store)
    await writer.baseline()
    unseen = tuple(f"payments/p0r{r}" for r in range(4))  # ~240 KB
    await writer.write(packed("billing/a", big=unseen), "billing", "PutReplicationRules")
    await writer.write(packed("billing/a", "payments/small"), "payments", "PutReplicationRules")
    for i in range(4):  # billing's own large parts: billing gives up its oldest pieces
        part = tuple(f"billing/v{i}r{r}" for r in range(4))
        document = packed(f"billing/b{i}", "payments/small", big=part)
        await writer.write(document, "billing", "PutReplicationRules")
    kept = {v.recorded_at: v for v in await store.page(REGISTRY, before_seq=None, limit=50)}
    assert kept[1001.0].document_omitted  # payments' unseen filters given up (billing paid)
    view = await slice_page(store, PAYMENTS)
    told = {v.recorded_at.seconds: v for v in view.versions}
    # In billing's first write payments' slice is not told (no slice, no etag): a version
    # missing payments' filters is never shown as payments' slice without them.
    assert 1001 in told
    assert told[1001].document_omitted and not told[1001].etag
    assert not told[1001].replication_configuration.rules
    # billing's own slice is told in its newest write: its own pieces are its.
    own = await slice_page(store, BILLING)
    newest = own.versions[0]
    assert newest.tenant == "billing" and not newest.document_omitted
    assert newest.replication_configuration.rules[0].repository_filters[0].filter == "billing/b3f0"


async def test_pieces_a_whole_document_write_introduced_leave_every_slice_untold(
    stores: Factory,
) -> None:
    store = stores(50, MIB)
    writer = Writer(store)
    for i in range(6):  # an administrator's whole writes: its pieces may be anyone's
        part = tuple(f"billing/v{i}r{r}" for r in range(4))
        await writer.write(rules(big=part), "platform", "PutReplicationConfiguration")
        await writer.write(rules(f"billing/own{i}", big=part), "billing", "PutReplicationRules")
    view = await slice_page(store, BILLING)
    assert any(v.document_omitted and not v.etag for v in view.versions)


async def test_statements_are_pieces_too(stores: Factory) -> None:
    store = stores(50, MIB)
    writer = Writer(store, POLICY)
    await writer.baseline()
    billing = 0
    for i in range(60):  # payments' 30 statements of 60 KB each: more than the bound
        if i % 2:
            billing = i
        statements = [{"Sid": f"Payments{i // 2}", "X": "q" * 60_000}, {"Sid": f"Billing{billing}"}]
        document = json.dumps({"Version": "2012-10-17", "Statement": statements}, indent=1)
        tenant = "billing" if i % 2 else "payments"
        await writer.write(document.encode(), tenant, "PutPolicyStatements")
    kept = await store.page(POLICY, before_seq=None, limit=100)
    assert len(kept) == 61 and any(v.document_omitted for v in kept)
    view = await slice_page(store, BILLING, pb.HISTORY_RESOURCE_POLICY)
    own = [v for v in view.versions if v.tenant == "billing"]
    assert len(own) == 30 and all(v.etag and not v.document_omitted for v in own)
    assert [json.loads(v.statements_json)[0]["Sid"] for v in own] == [
        f"Billing{i}" for i in range(59, 0, -2)
    ]


async def test_a_version_stored_whole_before_pieces_is_still_read(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    store = RedisHistory(redis_client, redis_prefix, 50, MIB)
    old = Version(7, 1000.0, "gateway", "old", rules("billing/a"), "billing", "id", "Put")
    base = f"{redis_prefix}history:{REGISTRY}"
    await redis_client.lpush(f"{base}:versions", (7).to_bytes(8, "big") + _record(old, None))
    await redis_client.set(f"{base}:seq", 7)
    await redis_client.set(f"{base}:head", "old")
    assert (await store.head(REGISTRY)) == old
    stored = await Writer(store).write(rules("billing/a", "payments/b"), "payments")
    assert stored.seq == 8
    view = await slice_page(store, BILLING)
    assert len(view.versions) == 1  # billing's slice did not change: where it begins
    assert len(view.versions[0].replication_configuration.rules) == 1


def old_record(seq: int, version: Version) -> tuple[bytes, dict[str, bytes]]:
    """A registry version as a replica before rules were split stored it: a piece per rule
    (its field entry), [digest, size] in the header."""
    configuration = pb.ReplicationConfiguration.FromString(version.document)
    entries = [
        pb.ReplicationConfiguration(rules=[r]).SerializeToString(deterministic=True)
        for r in configuration.rules
    ]
    assert b"".join(entries) == version.document
    pieces = {hashlib.sha256(e).digest()[:16].hex(): e for e in entries}
    header = {
        "t": version.recorded_at,
        "o": version.origin,
        "e": version.etag,
        "tn": version.tenant,
        "id": version.identity,
        "r": version.rpc,
        "x": False,
        "l": [[digest, len(entry)] for digest, entry in pieces.items()],
    }
    record = seq.to_bytes(8, "big") + json.dumps(header, separators=(",", ":")).encode() + b"\n"
    return record, pieces


async def test_versions_stored_a_piece_per_rule_are_still_read(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    base = f"{redis_prefix}history:{REGISTRY}"
    olds = [
        Version(1, 1000.0, "gateway", "o1", rules("billing/a", big=("payments/x",)), "billing"),
        Version(2, 1001.0, "gateway", "o2", rules("billing/a", "payments/b"), "payments"),
    ]
    for old in olds:
        record, pieces = old_record(old.seq, old)
        await redis_client.lpush(f"{base}:versions", record)
        await redis_client.hset(f"{base}:pieces", mapping=pieces)  # type: ignore[arg-type]
        who = {d: f"slice:{old.tenant}" for d in pieces}
        await redis_client.hset(f"{base}:introduced", mapping=who)  # type: ignore[arg-type]
    await redis_client.set(f"{base}:seq", 2)
    await redis_client.set(f"{base}:head", "o2")
    store = RedisHistory(redis_client, redis_prefix, 50, MIB)
    assert (await store.head(REGISTRY)) == olds[1]
    new = await Writer(store).write(packed("billing/b", "payments/b"), "billing")
    assert new.seq == 3
    kept = await store.page(REGISTRY, before_seq=None, limit=50)
    assert [v.document for v in kept] == [new.document, olds[1].document, olds[0].document]
    assert not any(v.document_omitted for v in kept)
    view = await slice_page(store, BILLING)
    filters = [v.replication_configuration.rules[0].repository_filters[0] for v in view.versions]
    assert [f.filter for f in filters] == ["billing/bf0", "billing/af0"]
