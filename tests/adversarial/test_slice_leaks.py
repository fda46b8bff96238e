"""What a slice tenant can learn of, or do to, another through what they share (issue 21:
findings 8 and 9, and the upstream budget), against a real gateway on moto.

- `x-cache` on a slice read: the registry's one cache entry is refreshed by every tenant's
  write and forgotten by a failed one, so hit or miss told billing when payments wrote (the
  history's slice view was made to hide exactly that). Billing is now told what its own
  request decides, over gRPC and Connect, on a 200 and on a 304.
- The history: trimmed by bytes across the whole list, 8 of payments' writes of ~130 KB
  erased every version of billing's (the README promised 50). Each author now keeps its
  newest versions, documents are stored in pieces (payments' large rules once, not in every
  version), and the author holding the most bytes gives them up first.
- The upstream budget, "calls that reach AWS": writes the gateway itself refused
  (authorization, validation, ownership) spent it, and the refusal then said the tenant had
  reached AWS too often. Now only calls that go past the gateway's own checks spend it.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Any

import grpc
import httpx
import pytest

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.http.conftest import Connect, with_http
from tests.http.conftest import connect as connect  # the fixture: gRPC, then Connect
from tests.http.support import SERVICE
from tests.support.aws_proxy import CountingProxy, Fault, ecr_error
from tests.support.helpers import KEY, PARTNER_ACCOUNT, metadata
from tests.support.moto_writes import behave_like_ecr
from tests.support.slices_support import BILLING_KEY, EU, isolation_config, rule, statement

HISTORY = "GetConfigurationHistory"
TTL = 1.0
PAST_TTL = TTL * 1.1 + 0.3  # the TTL has ±10% jitter
NO_CACHE = {"cache-control": "no-cache"}

# Per resource: billing's slice read, payments' slice write, and the AWS call that write makes.
READS = {
    "rules": ("GetReplicationRules", pb.GetReplicationRulesRequest()),
    "statements": ("GetPolicyStatements", pb.GetPolicyStatementsRequest()),
}


def payments_write(resource: str, i: int) -> tuple[str, Any, str]:
    if resource == "rules":
        request: Any = pb.PutReplicationRulesRequest(rules=[rule(f"payments/w{i}")])
        return "PutReplicationRules", request, "ecr:PutReplicationConfiguration"
    statements = json.dumps([statement(f"PaymentsW{i}")])
    request = pb.PutPolicyStatementsRequest(statements_json=statements)
    return "PutPolicyStatements", request, "ecr:PutRegistryPolicy"


@pytest.fixture(autouse=True)
def like_ecr(monkeypatch: pytest.MonkeyPatch) -> None:
    behave_like_ecr(monkeypatch)


def slice_config(endpoint: str, **cache: Any) -> dict[str, Any]:
    """isolation_config (payments, readonly, billing, platform) with HTTP on and a short TTL."""
    raw = with_http(isolation_config(endpoint))
    raw["cache"] = {"ttl_seconds": TTL, **cache}
    raw["drift"] = {"check_seconds": 0}  # no background read refreshing the entry
    return raw


# --- finding 8: x-cache ------------------------------------------------------------------------


@pytest.mark.parametrize("resource", ["rules", "statements"])
async def test_x_cache_on_a_slice_read_says_nothing_of_others_writes(
    gateway_factory: GatewayFactory, proxy: CountingProxy, connect: Connect, resource: str
) -> None:
    gateway = await gateway_factory(slice_config(proxy.url))
    transport = await connect(gateway)
    rpc, request = READS[resource]

    async def told() -> str:
        answer = await transport.call(rpc, request, key=BILLING_KEY)
        assert answer.code == grpc.StatusCode.OK, answer
        return answer.meta["x-cache"]

    async def payments_writes(i: int, *, fail: bool) -> None:
        write, message, aws_call = payments_write(resource, i)
        if fail:  # reaches AWS, which fails it: the gateway forgets the entry
            proxy.fault = Fault(
                frozenset({aws_call}), status=500, body=ecr_error("ServerException")
            )
        try:
            answer = await transport.call(write, message, key=KEY)
        finally:
            proxy.fault = None
        assert (answer.code == grpc.StatusCode.OK) != fail, answer

    async def watch(busy: bool) -> list[str]:
        """What billing is told over three reads, with or without payments' writes."""
        seen = []
        await asyncio.sleep(PAST_TTL)  # whatever was cached has expired
        seen.append(await told())  # loads the entry
        if busy:
            await payments_writes(0 if resource == "rules" else 1, fail=True)
        seen.append(await told())  # within the TTL: cached, unless a write forgot it
        await asyncio.sleep(PAST_TTL)
        if busy:
            await payments_writes(2, fail=False)  # written through: a fresh entry
        seen.append(await told())  # past the TTL: a load, unless a write refreshed it
        return seen

    quiet = await watch(busy=False)
    busy = await watch(busy=True)
    assert quiet == busy == ["hit", "hit", "hit"], (quiet, busy)
    # What billing's own request decides is still said: a no-cache read went to AWS.
    fresh = await transport.call(rpc, request, key=BILLING_KEY, headers=NO_CACHE)
    assert fresh.meta["x-cache"] == "miss"
    # The whole-document reads, for the administrators, keep the cache's own outcome.
    whole = await transport.call("DescribeRegistry", pb.DescribeRegistryRequest(), key=KEY)
    assert whole.meta["x-cache"] in ("hit", "miss")


def get_url(rpc: str) -> str:
    """Connect's GET form of a read (the message in the query)."""
    query = urllib.parse.urlencode({"encoding": "json", "message": "{}"})
    return f"/{SERVICE}/{rpc}?{query}"


async def test_a_304_of_a_slice_read_says_nothing_of_others_writes(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    gateway = await gateway_factory(slice_config(proxy.url))
    billing = {"authorization": f"Bearer {BILLING_KEY}"}
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}", timeout=30) as http,
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
    ):
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        first = await http.get(get_url("GetReplicationRules"), headers=billing)
        assert first.status_code == 200, first.text
        etag = first.headers["etag"]  # billing's slice's etag
        assert etag == f'"{json.loads(first.text)["etag"]}"'

        async def again() -> httpx.Response:
            answer = await http.get(
                get_url("GetReplicationRules"), headers={**billing, "if-none-match": etag}
            )
            assert answer.status_code == 304, answer.text  # billing's slice did not change
            return answer

        quiet = await again()
        proxy.fault = Fault(
            frozenset({"ecr:PutReplicationConfiguration"}),
            status=500,
            body=ecr_error("ServerException"),
        )
        try:
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.PutReplicationRules(
                    pb.PutReplicationRulesRequest(rules=[rule("payments/x")]),
                    metadata=metadata(KEY),
                )
        finally:
            proxy.fault = None
        after_failed = await again()
        await stub.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=[rule("payments/y")]), metadata=metadata(KEY)
        )
        after_written = await again()
    shown = [
        {k: v for k, v in r.headers.items() if k not in ("date", "x-request-id")}
        for r in (quiet, after_failed, after_written)
    ]
    assert shown[0] == shown[1] == shown[2], shown
    assert shown[0]["x-cache"] == "hit" and shown[0]["etag"] == etag


async def test_whether_anyone_has_a_policy_does_not_show_in_x_cache(
    gateway_factory: GatewayFactory, aws: str, connect: Connect
) -> None:
    # "No policy" not cached: such a read was answered without x-cache, and with one once
    # any tenant had a statement.
    gateway = await gateway_factory(slice_config(aws, negative_ttl_seconds=0))
    transport = await connect(gateway)
    rpc, request = READS["statements"]
    before = await transport.call(rpc, request, key=BILLING_KEY)
    write, message, _ = payments_write("statements", 0)
    assert (await transport.call(write, message, key=KEY)).code == grpc.StatusCode.OK
    await asyncio.sleep(PAST_TTL)
    after = await transport.call(rpc, request, key=BILLING_KEY)
    assert before.response.etag == after.response.etag  # billing's slice: none, both times
    assert before.meta.get("x-cache") == after.meta.get("x-cache") == "hit"


# --- the upstream budget -----------------------------------------------------------------------


async def call(
    stub: pb_grpc.RegistryConfigServiceAsyncStub, rpc: str, request: Any, **headers: str
) -> tuple[grpc.StatusCode, str]:
    """(code, message) of one call of payments'."""
    try:
        await getattr(stub, rpc)(request, metadata=(*metadata(KEY), *headers.items()))
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_writes_refused_before_aws_do_not_spend_the_budget_of_calls_past_the_cache(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    raw = isolation_config(proxy.url)
    raw["aws"].update(tenant_upstream_per_second=0.01, tenant_upstream_burst=3)
    gateway = await gateway_factory(raw)
    refused = [
        # not its repositories (ownership), then not JSON (validation)
        ("PutReplicationRules", pb.PutReplicationRulesRequest(rules=[rule("billing/x")]), {}),
        ("PutPolicyStatements", pb.PutPolicyStatementsRequest(statements_json="[{"), {}),
        # a region it may not touch (authorization), fresh or not
        (
            "PutRegistryPolicy",
            pb.PutRegistryPolicyRequest(policy_text="{}", region="ap-south-1"),
            {},
        ),
        ("DescribeRegistry", pb.DescribeRegistryRequest(region="ap-south-1"), NO_CACHE),
        # a made-up page token
        (
            HISTORY,
            pb.GetConfigurationHistoryRequest(
                resource=pb.HISTORY_RESOURCE_REPLICATION, page_token="x" * 20
            ),
            {},
        ),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        before = sum(proxy.counts.values())
        for _ in range(4):
            for rpc, request, headers in refused:
                code, message = await call(stub, rpc, request, **headers)
                assert code in (
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ), (rpc, code, message)
        assert sum(proxy.counts.values()) == before  # none of them reached AWS
        # The burst of 3 is whole: three calls past the cache, each of another kind.
        reaching = [
            (
                "PutReplicationRules",
                pb.PutReplicationRulesRequest(
                    rules=[rule("payments/a", to=EU)], validate_only=True
                ),
                {},
            ),
            ("DescribeRegistry", pb.DescribeRegistryRequest(), NO_CACHE),
            (
                HISTORY,
                pb.GetConfigurationHistoryRequest(resource=pb.HISTORY_RESOURCE_REPLICATION),
                {},
            ),
        ]
        for rpc, request, headers in reaching:
            assert await call(stub, rpc, request, **headers) == (grpc.StatusCode.OK, ""), rpc
        code, message = await call(
            stub, "DescribeRegistry", pb.DescribeRegistryRequest(), **NO_CACHE
        )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "budget of calls past the cache" in message


async def test_every_write_that_reaches_aws_still_spends_the_budget(
    gateway_factory: GatewayFactory, proxy: CountingProxy
) -> None:
    # The other half: the spend moved from the gate to where each call leaves the gateway,
    # and no write may have been left out (each of the five reads AWS fresh, dry run or not).
    raw = isolation_config(proxy.url)
    raw["aws"].update(tenant_upstream_per_second=0.01, tenant_upstream_burst=5)
    gateway = await gateway_factory(raw)
    statements = json.dumps([statement("PaymentsA")])
    writes = [
        ("PutReplicationRules", pb.PutReplicationRulesRequest(rules=[rule("payments/a")])),
        ("PutPolicyStatements", pb.PutPolicyStatementsRequest(statements_json=statements)),
        (
            "PutReplicationConfiguration",
            pb.PutReplicationConfigurationRequest(
                replication_configuration=pb.ReplicationConfiguration(rules=[rule("payments/b")])
            ),
        ),
        (
            "PutRegistryPolicy",
            pb.PutRegistryPolicyRequest(
                policy_text=json.dumps({"Version": "2012-10-17", "Statement": [statement("X")]})
            ),
        ),
        ("DeleteRegistryPolicy", pb.DeleteRegistryPolicyRequest()),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        for rpc, request in writes:
            dry_run = type(request)()
            dry_run.CopyFrom(request)
            dry_run.validate_only = True  # type: ignore[attr-defined]
            code, message = await call(stub, rpc, dry_run)
            assert code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND), (rpc, message)
        for rpc, request in writes:
            code, _ = await call(stub, rpc, request)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, rpc


# --- finding 9: the history ---------------------------------------------------------------------


PARTNER = pb.ReplicationDestination(region="us-west-2", registry_id=PARTNER_ACCOUNT)


def big_rules(i: int, count: int, to: pb.ReplicationDestination) -> list[pb.ReplicationRule]:
    """payments' rules of about 27 KB each: 100 filters of 250 characters."""
    return [
        rule(*(f"payments/v{i}r{r}f{f:03d}" + "a" * 230 for f in range(100)), to=to)
        for r in range(count)
    ]


@pytest.mark.parametrize(
    ("backend", "shared_set"),
    [
        ("memory", False),
        ("redis", False),
        # One destination set: packing puts billing's filter in payments' large rules, and
        # the history stores each filter as a piece of its own (service/state/history.py).
        ("memory", True),
        ("redis", True),
    ],
)
async def test_another_tenants_large_writes_never_erase_a_slices_history(
    gateway_factory: GatewayFactory,
    aws: str,
    backend: str,
    shared_set: bool,
    redis_url: str,
    redis_prefix: str,
) -> None:
    raw = isolation_config(aws)
    billing = next(t for t in raw["tenants"] if t["name"] == "billing")
    billing["registries"][0]["operations"].append(HISTORY)
    # One catalog set each (packing: one rule per destination set), so payments' share of
    # filters is large: billing to EU, payments to PARTNER (or EU too: the same set).
    payments_to = EU if shared_set else PARTNER
    for tenant, to in (("billing", EU), ("payments", payments_to)):
        entry = next(t for t in raw["tenants"] if t["name"] == tenant)["registries"][0]
        entry["destination_sets"] = [[{"registry_id": to.registry_id, "regions": [to.region]}]]
    raw["drift"] = {"check_seconds": 0}
    if backend == "redis":
        raw["cache"] = {
            "backend": "redis",
            "redis_url": redis_url,
            "key_prefix": redis_prefix,
        }
    gateway = await gateway_factory(raw)
    assert gateway.config.history.max_bytes == 1 << 20  # the defaults: 50 versions, 1 MiB
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        share = (
            await stub.GetReplicationRules(pb.GetReplicationRulesRequest(), metadata=metadata(KEY))
        ).filters_limit // 100

        async def billing_writes(name: str) -> str:
            written = await stub.PutReplicationRules(
                pb.PutReplicationRulesRequest(rules=[rule(f"billing/{name}")]),
                metadata=metadata(BILLING_KEY),
            )
            return written.etag

        async def payments_writes(i: int) -> None:
            await stub.PutReplicationRules(
                pb.PutReplicationRulesRequest(rules=big_rules(i, share, payments_to)),
                metadata=metadata(KEY),
            )

        mine = [await billing_writes(f"a{i}") for i in range(3)]
        for i in range(10):  # ~1.3 MB of payments' rules: more than the whole bound
            await payments_writes(i)
        # billing's writes now hold payments' large rules in their documents too
        mine += [await billing_writes(f"b{i}") for i in range(12)]
        for i in range(10, 15):
            await payments_writes(i)
        view = await stub.GetConfigurationHistory(
            pb.GetConfigurationHistoryRequest(
                resource=pb.HISTORY_RESOURCE_REPLICATION, page_size=50
            ),
            metadata=metadata(BILLING_KEY),
        )
        whole = await stub.GetConfigurationHistory(
            pb.GetConfigurationHistoryRequest(
                resource=pb.HISTORY_RESOURCE_REPLICATION, page_size=50
            ),
            metadata=metadata(KEY),
        )
    assert view.slice_view
    own = [v for v in view.versions if v.tenant == "billing"]
    # Every one of billing's 15 versions, newest first, each with its slice and its etag.
    assert [v.etag for v in own] == mine[::-1]
    assert [v.replication_configuration.rules[0].repository_filters[0].filter for v in own] == [
        f"billing/{n}" for n in [*(f"a{i}" for i in range(3)), *(f"b{i}" for i in range(12))]
    ][::-1]
    assert not any(v.document_omitted for v in own)
    # payments paid for its own bytes: its newest versions are whole, its oldest gave up
    # their documents (or were dropped), and billing's versions it does not own are shown
    # whole to the administrators only while they fit.
    payments = [v for v in whole.versions if v.tenant == "payments"]
    assert payments and not payments[0].document_omitted
    assert payments[-1].document_omitted or len(payments) < 15


async def test_a_tenants_many_writes_never_push_out_another_s_versions(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    raw = isolation_config(aws)
    billing = next(t for t in raw["tenants"] if t["name"] == "billing")
    billing["registries"][0]["operations"].append(HISTORY)
    raw["history"] = {"max_versions": 5}
    raw["drift"] = {"check_seconds": 0}
    gateway = await gateway_factory(raw)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        for i in range(3):
            await stub.PutReplicationRules(
                pb.PutReplicationRulesRequest(rules=[rule(f"billing/{i}")]),
                metadata=metadata(BILLING_KEY),
            )
        for i in range(20):  # four times the bound, of payments' own
            await stub.PutReplicationRules(
                pb.PutReplicationRulesRequest(rules=[rule(f"payments/{i}")]), metadata=metadata(KEY)
            )
        view = await stub.GetConfigurationHistory(
            pb.GetConfigurationHistoryRequest(resource=pb.HISTORY_RESOURCE_REPLICATION),
            metadata=metadata(BILLING_KEY),
        )
        whole = await stub.GetConfigurationHistory(
            pb.GetConfigurationHistoryRequest(
                resource=pb.HISTORY_RESOURCE_REPLICATION, page_size=50
            ),
            metadata=metadata(KEY),
        )
    assert [v.tenant for v in view.versions if v.tenant] == ["billing"] * 3
    by_author = [v.tenant for v in whole.versions]
    assert by_author.count("payments") == 5 and by_author.count("billing") == 3
    assert [v.tenant for v in whole.versions[:5]] == ["payments"] * 5  # the newest, whole
