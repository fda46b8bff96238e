"""GetConfigurationHistory through the real gateway on moto, over gRPC and Connect (HTTP/JSON).

A registry shared by `payments` (every RPC: the full view), `billing` (its slice: the slice
view), `platform` (the five ECR RPCs, not the history) and `readonly` (DescribeRegistry and
the history: the replication history whole, the policy's refused). After a full write and
slice writes of two tenants, the history pages newest first; billing sees only its slice,
only where it changed, and nobody else's name; the others are refused; forged page tokens
are INVALID_ARGUMENT; with Redis down the history answers UNAVAILABLE, not "no history".
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest

from service.app.server import Gateway
from service.ecr import etags
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from service.registry.model import slices
from service.registry.rpcs.history_view import page_token
from service.state.cache.base import CacheKey
from tests.conftest import GatewayFactory
from tests.http.conftest import Connect, with_http
from tests.http.conftest import connect as connect  # the fixture: gRPC, then Connect
from tests.http.support import Answer, Transport
from tests.support.helpers import ACCOUNT, KEY, OTHER_ACCOUNT, OTHER_KEY, metadata, rich_error
from tests.support.moto_writes import behave_like_ecr
from tests.support.slices_support import (
    ADMIN_KEY,
    BILLING_FAR,
    BILLING_KEY,
    BILLING_SECRETS,
    EU,
    billing_statement,
    isolation_config,
    rule,
    statement,
)

RPC = "GetConfigurationHistory"
OK = grpc.StatusCode.OK
REPLICATION = pb.HISTORY_RESOURCE_REPLICATION
POLICY = pb.HISTORY_RESOURCE_POLICY
UNOWNED = pb.ReplicationRule(destinations=[EU])  # no filter: nobody's slice
PAYMENTS_RULE = rule("payments/api")
BILLING_RULES = [rule("billing/ledger", to=BILLING_FAR), rule("invoices/2024")]
# Billing's rules read back in their canonical form: one rule per destination set, sorted.
BILLING_CANONICAL = [rule("invoices/2024"), rule("billing/ledger", to=BILLING_FAR)]


def history_config(aws: str) -> dict[str, Any]:
    """isolation_config (payments, readonly, billing, platform) with the history granted to
    billing (its slice) and readonly (DescribeRegistry only: no view of the policy)."""
    raw = isolation_config(aws)
    by_name = {t["name"]: t for t in raw["tenants"]}
    assert RPC in by_name["payments"]["registries"][0]["operations"]
    by_name["billing"]["registries"][0]["operations"].append(RPC)
    by_name["readonly"]["registries"][0]["operations"] = ["DescribeRegistry", RPC]
    assert RPC not in by_name["platform"]["registries"][0]["operations"]
    return with_http(raw)


@pytest.fixture
async def gateway(
    gateway_factory: GatewayFactory, aws: str, monkeypatch: pytest.MonkeyPatch
) -> Gateway:
    behave_like_ecr(monkeypatch)
    return await gateway_factory(history_config(aws))


@pytest.fixture
async def transport(connect: Connect, gateway: Gateway) -> Transport:
    """gRPC, then Connect over HTTP/JSON, to the same gateway."""
    return await connect(gateway)


@pytest.fixture
async def stub(gateway: Gateway) -> AsyncIterator[pb_grpc.RegistryConfigServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        yield pb_grpc.RegistryConfigServiceStub(channel)


async def ok(transport: Transport, rpc: str, request: Any, key: str) -> Any:
    answer = await transport.call(rpc, request, key=key)
    assert answer.code == OK, (rpc, answer)
    return answer.response


async def history(
    transport: Transport,
    key: str,
    resource: pb.HistoryResource.ValueType = REPLICATION,
    **fields: Any,
) -> Answer:
    request = pb.GetConfigurationHistoryRequest(resource=resource, **fields)
    return await transport.call(RPC, request, key=key)


async def write_replication(transport: Transport) -> None:
    """A full write (platform), then slice writes of payments and billing."""
    await ok(
        transport,
        "PutReplicationConfiguration",
        pb.PutReplicationConfigurationRequest(
            replication_configuration=pb.ReplicationConfiguration(rules=[UNOWNED])
        ),
        ADMIN_KEY,
    )
    await ok(
        transport,
        "PutReplicationRules",
        pb.PutReplicationRulesRequest(rules=[PAYMENTS_RULE]),
        KEY,
    )
    await ok(
        transport,
        "PutReplicationRules",
        pb.PutReplicationRulesRequest(rules=BILLING_RULES),
        BILLING_KEY,
    )


async def test_the_full_history_pages_newest_first(transport: Transport) -> None:
    await write_replication(transport)
    first = await history(transport, KEY, page_size=2)
    assert first.code == OK, first
    assert not first.response.slice_view and first.response.registry_id == ACCOUNT
    assert first.meta.get("x-cache") is None  # not cached, so no cache outcome to tell
    newest, before = first.response.versions
    assert (newest.tenant, newest.rpc) == ("billing", "PutReplicationRules")
    # Packed: payments/api and invoices/2024 go to one destination set; UNOWNED carried after.
    assert list(newest.replication_configuration.rules) == [
        rule("invoices/2024", "payments/api"),
        rule("billing/ledger", to=BILLING_FAR),
        UNOWNED,
    ]
    assert (before.tenant, before.rpc) == ("payments", "PutReplicationRules")
    assert before.identity.startswith("api_key:sha256:")
    assert list(before.replication_configuration.rules) == [PAYMENTS_RULE, UNOWNED]
    assert {v.origin for v in first.response.versions} == {pb.CHANGE_ORIGIN_GATEWAY}
    assert newest.recorded_at.ToNanoseconds() >= before.recorded_at.ToNanoseconds()
    # The newest version is what DescribeRegistry answers now.
    described = await ok(transport, "DescribeRegistry", pb.DescribeRegistryRequest(), KEY)
    assert newest.etag == described.etag
    assert first.response.next_page_token

    second = await history(transport, KEY, page_size=2, page_token=first.response.next_page_token)
    assert second.code == OK, second
    full_write, baseline = second.response.versions
    assert (full_write.tenant, full_write.rpc) == ("platform", "PutReplicationConfiguration")
    assert list(full_write.replication_configuration.rules) == [UNOWNED]
    # Where the history begins: the empty configuration the first write read.
    assert baseline.origin == pb.CHANGE_ORIGIN_BASELINE and baseline.tenant == ""
    assert list(baseline.replication_configuration.rules) == []
    assert second.response.next_page_token == ""


async def test_a_slice_tenant_sees_only_its_slice_and_its_own_name(transport: Transport) -> None:
    await write_replication(transport)
    answer = await history(transport, BILLING_KEY)
    assert answer.code == OK, answer
    assert answer.response.slice_view
    versions = answer.response.versions
    # Only where billing's slice changed (its write), and where its history begins (the
    # baseline): platform's and payments' writes left it as it was, so they are not listed.
    assert [v.tenant for v in versions] == ["billing", ""]
    assert versions[1].origin == pb.CHANGE_ORIGIN_BASELINE
    assert versions[0].rpc == "PutReplicationRules" and versions[0].identity
    assert [list(v.replication_configuration.rules) for v in versions] == [BILLING_CANONICAL, []]
    # Each etag is the slice's, as GetReplicationRules answers it.
    rules = await ok(transport, "GetReplicationRules", pb.GetReplicationRulesRequest(), BILLING_KEY)
    assert versions[0].etag == rules.etag == slices.rules_etag(BILLING_CANONICAL)
    assert versions[1].etag == slices.rules_etag([])
    # Nothing of the others: their names, their rules, their identities.
    shown = str(answer.response)
    for other in ("payments", "platform"):
        assert other not in shown, other
    assert all(len(v.replication_configuration.rules) <= 2 for v in versions)
    assert len({v.identity for v in versions}) == 2  # billing's own, and empty


async def test_a_slice_tenant_sees_nothing_of_when_or_how_often_another_tenant_writes(
    transport: Transport,
) -> None:
    """Review of issue 17: after 3 writes by payments, billing's history gained 3 versions
    with the same billing slice, each with its time: payments' activity, to the second."""
    await ok(
        transport,
        "PutReplicationRules",
        pb.PutReplicationRulesRequest(rules=BILLING_RULES),
        BILLING_KEY,
    )
    before = await history(transport, BILLING_KEY, page_size=50)
    assert before.code == OK, before
    for i in range(3):  # nothing of billing's changes
        await ok(
            transport,
            "PutReplicationRules",
            pb.PutReplicationRulesRequest(rules=[rule(f"payments/v{i}")]),
            KEY,
        )
    after = await history(transport, BILLING_KEY, page_size=50)
    assert after.code == OK, after
    # The same answer, times included: payments' writes do not show at all.
    assert after.response == before.response
    assert [v.tenant for v in after.response.versions] == ["billing", ""]
    # Page by page too, and the token carries no count of everyone's versions.
    first = await history(transport, BILLING_KEY, page_size=1)
    assert first.response.next_page_token == page_token(
        CacheKey(ACCOUNT, "us-east-1", "registry"), 1
    )
    second = await history(
        transport, BILLING_KEY, page_size=1, page_token=first.response.next_page_token
    )
    assert [*first.response.versions, *second.response.versions] == list(after.response.versions)
    assert second.response.next_page_token == ""
    # The full view still shows every version (5: baseline, billing, payments' three).
    full = await history(transport, KEY, page_size=50)
    assert [v.tenant for v in full.response.versions] == [*["payments"] * 3, "billing", ""]


async def test_payments_never_sees_billing_in_a_slice_and_both_see_the_policy_their_way(
    transport: Transport,
) -> None:
    mine = statement("PaymentsPull")
    await ok(
        transport,
        "PutPolicyStatements",
        pb.PutPolicyStatementsRequest(statements_json=json.dumps([billing_statement()])),
        BILLING_KEY,
    )
    await ok(
        transport,
        "PutPolicyStatements",
        pb.PutPolicyStatementsRequest(statements_json=json.dumps([mine])),
        KEY,
    )
    sliced = await history(transport, BILLING_KEY, POLICY)
    assert sliced.code == OK, sliced
    # payments' write left billing's statements as they were: not listed.
    by_billing, baseline = sliced.response.versions
    assert json.loads(by_billing.statements_json) == [billing_statement()]
    assert by_billing.tenant == "billing"
    assert json.loads(baseline.statements_json) == []
    assert baseline.tenant == "" and baseline.identity == "" and baseline.rpc == ""
    assert "PaymentsPull" not in str(sliced.response)
    assert all(v.policy_text == "" for v in sliced.response.versions)

    full = await history(transport, KEY, POLICY)
    assert full.code == OK, full
    newest = full.response.versions[0]
    assert newest.tenant == "payments" and newest.statements_json == ""
    sids = [s["Sid"] for s in json.loads(newest.policy_text)["Statement"]]
    assert sids == ["BillingSecretPull", "PaymentsPull"]
    assert newest.etag == etags.of_policy(newest.policy_text)


async def test_who_is_refused(transport: Transport) -> None:
    await write_replication(transport)
    # A tenant whose entry does not list the RPC: the target check, as for any RPC.
    platform = await history(transport, ADMIN_KEY)
    assert platform.code == grpc.StatusCode.PERMISSION_DENIED, platform
    assert platform.info.reason == "TARGET_NOT_ALLOWED"
    assert platform.info.metadata["rpc"] == RPC
    # Listed, and DescribeRegistry: the replication history whole; but no policy read RPC.
    replication = await history(transport, OTHER_KEY)
    assert replication.code == OK and not replication.response.slice_view
    denied = await history(transport, OTHER_KEY, POLICY)
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED, denied
    assert denied.info.reason == "HISTORY_VIEW_NOT_ALLOWED"
    assert denied.info.metadata["resource"] == "HISTORY_RESOURCE_POLICY"
    assert "GetRegistryPolicy" in denied.message and "GetPolicyStatements" in denied.message
    for secret in (*BILLING_SECRETS, "billing", "payments"):
        assert secret not in denied.message + str(dict(denied.info.metadata)), secret
    # Another registry: refused like any unknown one.
    foreign = await history(transport, KEY, registry_id=OTHER_ACCOUNT)
    assert foreign.code == grpc.StatusCode.PERMISSION_DENIED
    assert foreign.info.reason == "TARGET_NOT_ALLOWED"
    # A stranger: no credentials, or a key nobody holds.
    for key in (None, "not-a-key"):
        stranger = await transport.call(
            RPC, pb.GetConfigurationHistoryRequest(resource=REPLICATION), key=key
        )
        assert stranger.code == grpc.StatusCode.UNAUTHENTICATED, stranger
        assert stranger.response is None


async def test_forged_page_tokens_are_invalid_argument(transport: Transport) -> None:
    await write_replication(transport)
    real = (await history(transport, KEY, page_size=1)).response.next_page_token
    assert real
    forged = {
        "another registry's": page_token(CacheKey(OTHER_ACCOUNT, "us-east-1", "registry"), 3),
        "another region's": page_token(CacheKey(ACCOUNT, "eu-west-1", "registry"), 3),
        "garbage": "garbage!",
        "too long": "A" * 200,
    }
    for what, token in forged.items():
        answer = await history(transport, KEY, page_token=token)
        assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, (what, answer)
        assert answer.info.reason == "INVALID_REQUEST" and answer.fields == ["page_token"], what
    # The policy's history does not take the replication history's token.
    crossed = await history(transport, KEY, POLICY, page_token=real)
    assert crossed.code == grpc.StatusCode.INVALID_ARGUMENT and crossed.fields == ["page_token"]
    # Huge: refused unread, past the request's byte bound.
    huge = await history(transport, KEY, page_token="A" * 100_000)
    assert huge.code == grpc.StatusCode.INVALID_ARGUMENT
    assert huge.info.reason == "REQUEST_TOO_LARGE"
    # Every violation at once.
    unspecified = pb.HISTORY_RESOURCE_UNSPECIFIED
    everything = await history(transport, KEY, unspecified, page_size=51, page_token="garbage!")
    assert everything.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(everything.fields) == ["page_size", "page_token", "resource"]


async def test_with_the_generated_stub(stub: Any) -> None:
    request = pb.GetConfigurationHistoryRequest(resource=REPLICATION)
    empty = await stub.GetConfigurationHistory(request, metadata=metadata(KEY))
    assert list(empty.versions) == [] and empty.next_page_token == ""
    await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(rules=[PAYMENTS_RULE]), metadata=metadata(KEY)
    )
    answer = await stub.GetConfigurationHistory(request, metadata=metadata(KEY))
    assert [v.origin for v in answer.versions] == [
        pb.CHANGE_ORIGIN_GATEWAY,
        pb.CHANGE_ORIGIN_BASELINE,
    ]
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.GetConfigurationHistory(
            pb.GetConfigurationHistoryRequest(), metadata=metadata(BILLING_KEY)
        )
    error = rich_error(exc.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.bad_request.field_violations] == ["resource"]  # type: ignore[union-attr]


async def test_two_replicas_on_redis_page_one_history(
    gateway_factory: GatewayFactory,
    aws: str,
    redis_url: str,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With Redis, every replica records into and pages one history: a token one replica
    handed out continues on the other."""
    behave_like_ecr(monkeypatch)
    raw = history_config(aws)
    raw["cache"] = {"backend": "redis", "redis_url": redis_url, "key_prefix": redis_prefix}
    replicas = [await gateway_factory(raw), await gateway_factory(raw)]
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{replicas[0].port}") as one,
        grpc.aio.insecure_channel(f"127.0.0.1:{replicas[1].port}") as two,
    ):
        first, second = (
            pb_grpc.RegistryConfigServiceStub(one),
            pb_grpc.RegistryConfigServiceStub(two),
        )
        await first.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=[PAYMENTS_RULE]), metadata=metadata(KEY)
        )
        await second.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=BILLING_RULES), metadata=metadata(BILLING_KEY)
        )
        request = pb.GetConfigurationHistoryRequest(resource=REPLICATION, page_size=1)
        newest = await first.GetConfigurationHistory(request, metadata=metadata(KEY))
        assert [v.tenant for v in newest.versions] == ["billing"]
        request.page_token = newest.next_page_token
        older = await second.GetConfigurationHistory(request, metadata=metadata(KEY))
        assert [v.tenant for v in older.versions] == ["payments"]
        assert older.next_page_token  # the baseline is older still
        sliced = await second.GetConfigurationHistory(
            pb.GetConfigurationHistoryRequest(resource=REPLICATION), metadata=metadata(BILLING_KEY)
        )
        assert [v.tenant for v in sliced.versions] == ["billing", ""]


async def test_json_that_is_not_the_request_is_invalid_argument(gateway: Gateway) -> None:
    """Over HTTP, an enum or a number that is not one is refused before the servicer."""
    url = f"http://127.0.0.1:{gateway.http_port}/ecr.registry.v1.RegistryConfigService/{RPC}"
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    async with httpx.AsyncClient(timeout=30) as client:
        for body in (
            '{"resource": "HISTORY_RESOURCE_EVERYTHING"}',
            '{"resource": "HISTORY_RESOURCE_POLICY", "pageSize": 1.5}',
            '{"resource": "HISTORY_RESOURCE_POLICY", "pageToken": 5}',
            '{"resource": "HISTORY_RESOURCE_POLICY", "registry": "x"}',
        ):
            reply = await client.post(url, content=body, headers=headers)
            assert reply.status_code == 400, (body, reply.text)
            assert reply.json()["code"] == "invalid_argument", body
        # A numeric enum value the contract does not define reaches validation.
        reply = await client.post(url, content='{"resource": 9}', headers=headers)
        assert reply.status_code == 400 and "got 9" in reply.text, reply.text
        # Reads take Connect's GET form too; the history has no etag, so no ETag.
        reply = await client.get(
            url,
            params={"encoding": "json", "message": '{"resource": "HISTORY_RESOURCE_POLICY"}'},
            headers={"authorization": f"Bearer {KEY}"},
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["versions"] == [] and "etag" not in reply.headers


def _a_port_nothing_listens_on() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_with_redis_down_the_history_is_unavailable_not_empty(
    gateway_factory: GatewayFactory, aws: str, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of issue 17: with Redis down the RPC answered OK and empty, which an operator
    cannot tell from "no history". Reads of the registry itself keep working."""
    behave_like_ecr(monkeypatch)
    raw = history_config(aws)
    down = f"redis://127.0.0.1:{_a_port_nothing_listens_on()}/0"
    raw["cache"] = {"backend": "redis", "redis_url": down, "key_prefix": "history-down:"}
    transport = await connect(await gateway_factory(raw))
    await ok(transport, "DescribeRegistry", pb.DescribeRegistryRequest(), KEY)
    for key in (KEY, BILLING_KEY):  # the full view and the slice view
        for resource in (REPLICATION, POLICY):
            answer = await history(transport, key, resource)
            assert answer.code == grpc.StatusCode.UNAVAILABLE, (key, answer)
            assert answer.info.reason == "HISTORY_UNAVAILABLE"
            assert answer.retry_info is not None
            assert answer.retry_info.retry_delay.ToTimedelta().total_seconds() > 0
            assert answer.response is None
