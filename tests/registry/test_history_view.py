"""GetConfigurationHistory's domain side on the memory history store: the full and the slice
view (only the versions where the caller's slice changed), paging newest first, page tokens
bound to one history, validation, and the bounds."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from service.auth.targets import Target
from service.ecr import etags
from service.errors import InvalidArgument
from service.gen.v1 import registry_pb2 as pb
from service.registry.model import slices
from service.registry.rpcs.history_view import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_PAGE_TOKEN_CHARS,
    HistoryView,
    page_token,
    parse_query,
)
from service.rpc.request_limits import _STRING_BYTES
from service.state.cache.base import CacheKey, Resource
from service.state.history import MemoryHistory, Origin, Version
from tests.registry.conftest import ACCOUNT, REGION, target

PAYMENTS = target()
BILLING = target("billing", prefixes=("billing/",), sid_prefix="Billing")
REPLICATION = pb.HISTORY_RESOURCE_REPLICATION
POLICY = pb.HISTORY_RESOURCE_POLICY
REGISTRY_KEY = CacheKey(ACCOUNT, REGION, "registry")
POLICY_KEY = CacheKey(ACCOUNT, REGION, "policy")
ARN = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/"


def rule(*filters: str, region: str = "eu-west-1") -> pb.ReplicationRule:
    return pb.ReplicationRule(
        destinations=[pb.ReplicationDestination(region=region, registry_id=ACCOUNT)],
        repository_filters=[
            pb.RepositoryFilter(filter=f, filter_type="PREFIX_MATCH") for f in filters
        ],
    )


def statement(sid: str, prefix: str) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::210987654321:root"},
        "Action": ["ecr:ReplicateImage"],
        "Resource": f"{ARN}{prefix}*",
    }


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def configuration(*rules: pb.ReplicationRule) -> pb.ReplicationConfiguration:
    return pb.ReplicationConfiguration(rules=rules)


class Recorder:
    """Appends versions to a memory history as the gateway's recording code would."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.store = MemoryHistory(1000, max_bytes)
        self.now = 1_700_000_000.0

    async def add(
        self,
        key: CacheKey,
        document: bytes,
        *,
        origin: Origin = "gateway",
        tenant: str | None = None,
        identity: str | None = None,
        rpc: str | None = None,
        etag: str | None = None,
    ) -> Version:
        self.now += 1
        head = await self.store.head(key)
        version = Version(
            seq=0,
            recorded_at=self.now,
            origin=origin,
            etag=etag if etag is not None else etags.of_json(document.hex()),
            document=document,
            tenant=tenant,
            identity=identity,
            rpc=rpc,
        )
        stored = await self.store.append(
            key, version, if_head_etag=None if head is None else head.etag
        )
        assert stored is not None
        return stored

    async def rules(self, *rules: pb.ReplicationRule, **who: Any) -> Version:
        return await self.add(REGISTRY_KEY, configuration(*rules).SerializeToString(), **who)

    async def policy(self, text: str | None, **who: Any) -> Version:
        etag = etags.of_policy(text)
        return await self.add(POLICY_KEY, (text or "").encode(), etag=etag, **who)


def request(
    resource: int = REPLICATION, page_size: int = 0, page_token: str = ""
) -> pb.GetConfigurationHistoryRequest:
    return pb.GetConfigurationHistoryRequest(
        resource=resource,  # type: ignore[arg-type]  # an unknown value on purpose, at times
        page_size=page_size,
        page_token=page_token,
    )


async def page(
    view: HistoryView, who: Target, req: pb.GetConfigurationHistoryRequest, kind: str = "full"
) -> pb.GetConfigurationHistoryResponse:
    query = parse_query(req, who)
    return await view.page(who, query, "full" if kind == "full" else "slice")


def violations(exc: pytest.ExceptionInfo[InvalidArgument]) -> dict[str, str]:
    return {v.field: v.description for v in exc.value.field_violations}


# --- the full view ------------------------------------------------------------------------


async def test_full_view_shows_every_version_whole_newest_first() -> None:
    recorder = Recorder()
    baseline = await recorder.rules(rule("billing/a"), origin="baseline")
    written = await recorder.rules(
        rule("billing/a"),
        rule("payments/api"),
        tenant="payments",
        identity="api_key:sha256:0123456789ab",
        rpc="PutReplicationRules",
    )
    drifted = await recorder.rules(origin="out-of-band")
    answer = await page(HistoryView(recorder.store), PAYMENTS, request())

    assert answer.registry_id == ACCOUNT and not answer.slice_view
    assert answer.next_page_token == ""
    assert [v.etag for v in answer.versions] == [drifted.etag, written.etag, baseline.etag]
    assert [v.origin for v in answer.versions] == [
        pb.CHANGE_ORIGIN_OUT_OF_BAND,
        pb.CHANGE_ORIGIN_GATEWAY,
        pb.CHANGE_ORIGIN_BASELINE,
    ]
    newest, middle, oldest = answer.versions
    assert list(newest.replication_configuration.rules) == []
    assert list(middle.replication_configuration.rules) == [rule("billing/a"), rule("payments/api")]
    assert (middle.tenant, middle.identity, middle.rpc) == (
        "payments",
        "api_key:sha256:0123456789ab",
        "PutReplicationRules",
    )
    assert (oldest.tenant, oldest.identity, oldest.rpc) == ("", "", "")
    assert middle.recorded_at.ToNanoseconds() == int(written.recorded_at * 1e9)
    assert oldest.policy_text == "" and oldest.statements_json == ""


async def test_full_view_of_the_policy_shows_the_text_and_absent() -> None:
    recorder = Recorder()
    text = policy(statement("PaymentsPull", "payments/"), statement("BillingPull", "billing/"))
    await recorder.policy(text, tenant="billing", identity="jwt:ci", rpc="PutPolicyStatements")
    await recorder.policy(None, origin="out-of-band")
    answer = await page(HistoryView(recorder.store), PAYMENTS, request(POLICY))
    deleted, written = answer.versions
    assert (deleted.policy_text, deleted.etag) == ("", etags.ABSENT)
    assert (written.policy_text, written.etag) == (text, etags.of_policy(text))
    # A full view is for those who may read the whole document: it names every writer.
    assert (written.tenant, written.identity) == ("billing", "jwt:ci")
    assert not written.HasField("replication_configuration")


async def test_a_version_kept_without_its_document_still_says_what_and_who() -> None:
    recorder = Recorder(max_bytes=1024)
    big = configuration(*(rule(f"payments/{'x' * 200}{i}") for i in range(5)))
    stored = await recorder.add(
        REGISTRY_KEY, big.SerializeToString(), tenant="payments", rpc="PutReplicationRules"
    )
    assert stored.document_omitted
    view = HistoryView(recorder.store)
    full = (await page(view, PAYMENTS, request())).versions[0]
    assert full.etag == stored.etag and full.tenant == "payments"
    assert not full.HasField("replication_configuration")
    # Said so: an empty document here is not "no rules" (a restore would delete them all).
    assert full.document_omitted
    # The caller's slice of an unknown document is unknown: no rules, and no slice etag.
    mine = (await page(view, PAYMENTS, request(), "slice")).versions[0]
    assert list(mine.replication_configuration.rules) == [] and mine.etag == ""
    assert mine.document_omitted


async def test_a_policy_kept_without_its_text_is_not_shown_as_no_policy() -> None:
    recorder = Recorder(max_bytes=1024)
    text = policy(*(statement(f"PaymentsPull{i}", "payments/") for i in range(10)))
    stored = await recorder.policy(text, tenant="payments")
    assert stored.document_omitted
    kept = await recorder.policy(None, origin="out-of-band")
    assert not kept.document_omitted
    answer = await page(HistoryView(recorder.store), PAYMENTS, request(POLICY))
    deleted, omitted = answer.versions
    assert (omitted.etag, omitted.policy_text, omitted.document_omitted) == (
        etags.of_policy(text),
        "",
        True,
    )
    # The version that really had no policy is not marked: "" there means "no policy".
    assert (deleted.etag, deleted.policy_text, deleted.document_omitted) == (
        etags.ABSENT,
        "",
        False,
    )
    sliced = await page(HistoryView(recorder.store), PAYMENTS, request(POLICY), "slice")
    assert [(v.etag, v.statements_json, v.document_omitted) for v in sliced.versions] == [
        (slices.statements_etag([]), "[]", False),
        ("", "", True),
    ]


# --- the slice view -----------------------------------------------------------------------


async def test_slice_view_shows_only_the_callers_rules_and_its_own_authorship() -> None:
    recorder = Recorder()
    secret = rule("billing/ledger", region="ap-southeast-2")
    await recorder.rules(origin="baseline")
    await recorder.rules(
        rule("payments/api"),
        tenant="payments",
        identity="api_key:sha256:aaaa",
        rpc="PutReplicationRules",
    )
    await recorder.rules(
        rule("payments/api"),
        secret,
        tenant="billing",
        identity="spiffe://corp.example/ns/billing/sa/deployer",
        rpc="PutReplicationRules",
    )
    drifted = await recorder.rules(rule("payments/api", region="us-west-2"), origin="out-of-band")
    answer = await page(HistoryView(recorder.store), PAYMENTS, request(), "slice")
    assert answer.slice_view and answer.next_page_token == ""
    # billing's write left payments' slice as it was: it is not listed at all.
    by_others, by_payments, baseline = answer.versions
    assert list(by_others.replication_configuration.rules) == [
        rule("payments/api", region="us-west-2")
    ]
    assert list(by_payments.replication_configuration.rules) == [rule("payments/api")]
    assert list(baseline.replication_configuration.rules) == []
    # The slice's etag, as GetReplicationRules answered it.
    assert by_payments.etag == slices.rules_etag([rule("payments/api")])
    assert (by_payments.tenant, by_payments.identity, by_payments.rpc) == (
        "payments",
        "api_key:sha256:aaaa",
        "PutReplicationRules",
    )
    # Changed around the gateway: listed (it is payments' slice), with its own time.
    assert by_others.origin == pb.CHANGE_ORIGIN_OUT_OF_BAND
    assert by_others.recorded_at.ToNanoseconds() == int(drifted.recorded_at * 1e9)
    assert (by_others.tenant, by_others.identity, by_others.rpc) == ("", "", "")
    shown = str(answer)
    for hidden in ("billing", "ledger", "ap-southeast-2", "spiffe"):
        assert hidden not in shown, hidden


async def test_slice_view_shows_nothing_of_when_or_how_often_others_write() -> None:
    """Review of issue 17: billing's history gained one version per payments write (same
    billing slice, each with its time): payments' activity, to the second."""
    recorder = Recorder()
    await recorder.rules(origin="baseline")
    await recorder.rules(rule("billing/a"), tenant="billing", rpc="PutReplicationRules")
    view = HistoryView(recorder.store)
    before = await page(view, BILLING, request(page_size=MAX_PAGE_SIZE), "slice")
    for i in range(3):
        await recorder.rules(rule("billing/a"), rule(f"payments/v{i}"), tenant="payments")
    after = await page(view, BILLING, request(page_size=MAX_PAGE_SIZE), "slice")
    assert after == before
    assert [v.tenant for v in after.versions] == ["billing", ""]
    # Paging the same: page by page, still nothing of payments' three versions.
    first = await page(view, BILLING, request(page_size=1), "slice")
    second = await page(
        view, BILLING, request(page_size=1, page_token=first.next_page_token), "slice"
    )
    assert [*first.versions, *second.versions] == list(before.versions)
    assert second.next_page_token == ""


async def test_slice_pages_walk_only_the_callers_changes_and_tokens_hide_the_count() -> None:
    recorder = Recorder()
    await recorder.rules(origin="baseline")
    mine: list[Version] = []
    for i in range(7):
        # Between two of billing's changes, a varying number of others' writes.
        for j in range(i):
            await recorder.rules(rule(f"billing/v{i}"), rule(f"payments/{i}-{j}"))
        mine.append(await recorder.rules(rule(f"billing/v{i + 1}"), tenant="billing"))
    view = HistoryView(recorder.store)
    seen: list[pb.ConfigurationVersion] = []
    tokens: list[str] = []
    token = ""
    while True:
        answer = await page(view, BILLING, request(page_size=3, page_token=token), "slice")
        seen += answer.versions
        token = answer.next_page_token
        if not token:
            break
        tokens.append(token)
    assert [v.etag for v in seen] == [
        *(slices.rules_etag([rule(f"billing/v{i}")]) for i in range(7, 0, -1)),
        slices.rules_etag([]),
    ]
    assert [v.recorded_at.ToNanoseconds() for v in seen[:-1]] == [
        int(v.recorded_at * 1e9) for v in reversed(mine)
    ]
    # A token carries a position among billing's own listed versions (3, then 6), never a
    # sequence number that counts everyone's writes (billing's newest is version 29).
    assert mine[-1].seq == 29
    assert tokens == [page_token(REGISTRY_KEY, 3), page_token(REGISTRY_KEY, 6)]
    # Others writing between two pages move nothing: the next page is the same.
    await recorder.rules(rule("billing/v7"), rule("payments/late"))
    again = await page(view, BILLING, request(page_size=3, page_token=tokens[0]), "slice")
    assert [v.etag for v in again.versions] == [v.etag for v in seen[3:6]]
    # A position past the end: an empty last page.
    past = await page(view, BILLING, request(page_token=page_token(REGISTRY_KEY, 99)), "slice")
    assert list(past.versions) == [] and past.next_page_token == ""


async def test_a_slice_page_stops_within_its_byte_bound() -> None:
    recorder = Recorder()
    for i in range(4):
        await recorder.rules(*(rule(f"billing/{'x' * 250}{i}-{j}") for j in range(10)))
    view = HistoryView(recorder.store, page_bytes=10)
    seen, token = 0, ""
    for _ in range(4):
        answer = await page(
            view, BILLING, request(page_size=MAX_PAGE_SIZE, page_token=token), "slice"
        )
        assert len(answer.versions) == 1
        seen, token = seen + 1, answer.next_page_token
    assert seen == 4 and token == ""


async def test_slice_view_of_the_policy_shows_only_the_callers_statements() -> None:
    recorder = Recorder()
    mine, theirs = statement("PaymentsPull", "payments/"), statement("BillingSecret", "billing/")
    await recorder.policy(policy(theirs, mine), tenant="billing", identity="jwt:b")
    await recorder.policy(None, origin="out-of-band")
    answer = await page(HistoryView(recorder.store), PAYMENTS, request(POLICY), "slice")
    deleted, written = answer.versions
    assert json.loads(deleted.statements_json) == [] and deleted.policy_text == ""
    assert deleted.etag == slices.statements_etag([])
    assert json.loads(written.statements_json) == [mine] and written.policy_text == ""
    assert written.etag == slices.statements_etag([mine])
    assert "Billing" not in str(answer) and "jwt:b" not in str(answer)


async def test_slice_view_of_a_policy_nobody_can_slice_shows_nothing_of_it() -> None:
    recorder = Recorder()
    # Written around the gateway: not a JSON object, so no statement is anyone's.
    await recorder.policy(policy(statement("PaymentsPull", "payments/")), tenant="payments")
    await recorder.policy('["BillingSecret"]', origin="out-of-band")
    await recorder.policy('{"Statement": 7}', origin="out-of-band")
    answer = await page(HistoryView(recorder.store), PAYMENTS, request(POLICY), "slice")
    # Listed where the slice could no longer be told; the next unreadable one is no change.
    assert [(v.statements_json, v.etag) for v in answer.versions][:1] == [("", "")]
    # The oldest kept (payments' own write) is where its history begins: its slice, as it stood.
    assert len(answer.versions) == 2
    assert json.loads(answer.versions[1].statements_json)[0]["Sid"] == "PaymentsPull"
    assert "BillingSecret" not in str(answer)


async def test_where_a_slice_history_begins_says_nothing_of_when_or_who() -> None:
    recorder = Recorder()
    await recorder.policy(policy(statement("PaymentsPull", "payments/")), tenant="payments")
    await recorder.policy(
        policy(statement("PaymentsPull", "payments/"), statement("BillingPull", "billing/")),
        tenant="billing",
    )
    answer = await page(HistoryView(recorder.store), PAYMENTS, request(POLICY), "slice")
    [begins] = answer.versions  # billing's write changed nothing of payments' slice
    assert begins.origin == pb.CHANGE_ORIGIN_BASELINE
    assert not begins.HasField("recorded_at")
    assert (begins.tenant, begins.identity, begins.rpc) == ("", "", "")
    assert json.loads(begins.statements_json)[0]["Sid"] == "PaymentsPull"


# --- paging -------------------------------------------------------------------------------


async def test_pages_go_newest_first_and_the_last_has_no_token() -> None:
    recorder = Recorder()
    written = [await recorder.rules(rule(f"payments/r{i}"), tenant="payments") for i in range(12)]
    view = HistoryView(recorder.store)
    seen: list[str] = []
    tokens: list[str] = []
    token = ""
    while True:
        answer = await page(view, PAYMENTS, request(page_size=5, page_token=token))
        seen += [v.etag for v in answer.versions]
        token = answer.next_page_token
        if not token:
            break
        tokens.append(token)
    assert seen == [v.etag for v in reversed(written)]
    assert len(tokens) == 2 and all(len(t) <= MAX_PAGE_TOKEN_CHARS for t in tokens)
    default = await page(view, PAYMENTS, request())
    assert len(default.versions) == DEFAULT_PAGE_SIZE and default.next_page_token


async def test_a_page_that_ends_the_history_exactly_has_no_token() -> None:
    recorder = Recorder()
    for i in range(4):
        await recorder.rules(rule(f"payments/r{i}"))
    view = HistoryView(recorder.store)
    first = await page(view, PAYMENTS, request(page_size=2))
    second = await page(view, PAYMENTS, request(page_size=2, page_token=first.next_page_token))
    assert len(second.versions) == 2 and second.next_page_token == ""
    empty = await page(view, PAYMENTS, request(POLICY))
    assert list(empty.versions) == [] and empty.next_page_token == ""


async def test_a_page_stops_within_its_byte_bound_and_always_moves_on() -> None:
    recorder = Recorder()
    large = [rule(f"payments/{'x' * 250}{i}") for i in range(10)]
    for i in range(6):
        await recorder.rules(*large, rule(f"payments/v{i}"))
    one = len(
        (await page(HistoryView(recorder.store), PAYMENTS, request(page_size=1)))
        .versions[0]
        .SerializeToString()
    )
    view = HistoryView(recorder.store, page_bytes=int(one * 2.5))
    answer = await page(view, PAYMENTS, request(page_size=MAX_PAGE_SIZE))
    assert len(answer.versions) == 2 and answer.next_page_token
    assert answer.ByteSize() <= one * 2.5 + 200
    # A bound smaller than one version still answers one: paging never stalls.
    tiny = HistoryView(recorder.store, page_bytes=10)
    seen, token = 0, ""
    for _ in range(6):
        answer = await page(tiny, PAYMENTS, request(page_size=MAX_PAGE_SIZE, page_token=token))
        assert len(answer.versions) == 1
        seen, token = seen + 1, answer.next_page_token
    assert seen == 6 and token == ""


# --- tokens and validation ----------------------------------------------------------------


def test_every_violation_is_named_at_once() -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_query(request(0, page_size=51, page_token="garbage!"), PAYMENTS)
    assert exc.value.reason == "INVALID_REQUEST"
    assert exc.value.metadata == {"rpc": "GetConfigurationHistory", "violations": "3"}
    found = violations(exc)
    assert set(found) == {"resource", "page_size", "page_token"}
    assert "HISTORY_RESOURCE_REPLICATION" in found["resource"]
    assert "0 to 50" in found["page_size"]
    assert "garbage" not in str(exc.value)  # a token is never echoed


@pytest.mark.parametrize("size", [-1, MAX_PAGE_SIZE + 1, 2**31 - 1])
def test_page_size_outside_0_to_50(size: int) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_query(request(page_size=size), PAYMENTS)
    assert set(violations(exc)) == {"page_size"}


def test_an_unknown_resource_value_is_refused() -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_query(request(7), PAYMENTS)
    assert "got 7" in violations(exc)["resource"]


def test_defaults_and_bounds_that_pass() -> None:
    assert parse_query(request(), PAYMENTS).limit == DEFAULT_PAGE_SIZE
    query = parse_query(request(POLICY, page_size=MAX_PAGE_SIZE), PAYMENTS)
    assert (query.resource, query.limit, query.position) == ("policy", 50, None)
    assert query.key == POLICY_KEY


def _key(
    registry: str = ACCOUNT, region: str = REGION, resource: Resource = "registry"
) -> CacheKey:
    return CacheKey(registry, region, resource)


def test_a_token_carries_its_position_in_its_own_history_only() -> None:
    token = page_token(REGISTRY_KEY, 42)
    assert parse_query(request(page_token=token), PAYMENTS).position == 42
    other_histories = {
        "another registry": page_token(_key("111111111111"), 42),
        "another region": page_token(_key(region="eu-west-1"), 42),
        "another resource": page_token(_key(resource="policy"), 42),
    }
    for what, foreign in other_histories.items():
        with pytest.raises(InvalidArgument) as exc:
            parse_query(request(page_token=foreign), PAYMENTS)
        assert "not a page token of this history" in violations(exc)["page_token"], what
    # The same token, for the policy's history, is refused too: it names the registry's.
    with pytest.raises(InvalidArgument):
        parse_query(request(POLICY, page_token=token), PAYMENTS)


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "forged",
    [
        "garbage",
        "!!!!",
        "é" * 8,
        "a" * (MAX_PAGE_TOKEN_CHARS + 1),
        "x" * 100_000,
        # A real token with a character outside the alphabet (skipped by a lax decoder).
        page_token(REGISTRY_KEY, 3)[:10] + "." + page_token(REGISTRY_KEY, 3)[10:],
        # Padded: not the form the gateway hands out.
        page_token(REGISTRY_KEY, 3) + "==",
        # Another format byte, a seq below 1, a digest cut short.
        _encode(b"\x02" + _raw(page_token(REGISTRY_KEY, 3))[1:]),
        _encode(_raw(page_token(REGISTRY_KEY, 0))),
        _encode(_raw(page_token(REGISTRY_KEY, 3))[:-1]),
        # A seq changed without its digest: positions cannot be made up.
        _encode(b"\x01" + (99).to_bytes(8, "big") + _raw(page_token(REGISTRY_KEY, 3))[9:]),
    ],
)
def test_forged_tokens_are_invalid_argument(forged: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_query(request(page_token=forged), PAYMENTS)
    assert set(violations(exc)) == {"page_token"}
    assert forged[:20] not in str(exc.value) or forged[:20] == "a" * 20


def test_the_token_bound_is_the_request_byte_bound() -> None:
    assert _STRING_BYTES["page_token"] == MAX_PAGE_TOKEN_CHARS
