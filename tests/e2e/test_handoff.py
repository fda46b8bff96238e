"""Slice writes handed between replicas through Redis (issue 22, group commit across
replicas; service/registry/writes/handoff.py), end to end: two real gateways sharing Redis,
moto behind a counting proxy.

A replica whose writes find the lock held by the other hands them over, and the holder
applies them in its next batch; each caller is answered by its own replica (its audit line)
with its own result. The hostile cases: a request is never trusted (a forged entry in the
list, a tenant the applying replica's config no longer allows, is refused, nothing
written); and every hand-over ends accounted for: nobody takes it and the lock stays held
(WRITE_LOCK_BUSY, nothing written), nobody takes it and the lock frees (applied by its own
replica), taken and never answered (WRITE_OUTCOME_UNKNOWN)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio

from service.app.server import Gateway
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from service.registry.writes.handoff import Handed, parse_answer
from tests.conftest import GatewayFactory, wait_until
from tests.e2e.test_group_commit import PUT, audit_lines, intent, key_of, put_rules, teams_config
from tests.support.aws_proxy import CountingProxy, Fault
from tests.support.helpers import ACCOUNT, metadata
from tests.support.moto_writes import behave_like_ecr
from tests.support.slices_support import clear_registry, filters_in, stored_rules

REGION = "us-east-1"


def handed(gateway: Gateway, outcome: str) -> float:
    value = gateway.metrics.registry.get_sample_value(
        "registry_gateway_handed_writes_total", {"outcome": outcome}
    )
    return value or 0.0


def requests_key(prefix: str, resource: str = "registry") -> str:
    return f"{prefix}handoff:{ACCOUNT}:{REGION}:requests:{resource}"


def lock_key(prefix: str) -> str:
    return f"{prefix}lock:{ACCOUNT}:{REGION}"


async def two_replicas(
    gateway_factory: GatewayFactory,
    endpoint: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    **cache: Any,
) -> tuple[Gateway, Gateway]:
    here = await gateway_factory(
        teams_config(endpoint, redis_url, redis_prefix, tmp_path / "audit-here.jsonl", **cache)
    )
    there = await gateway_factory(
        teams_config(endpoint, redis_url, redis_prefix, tmp_path / "audit-there.jsonl", **cache)
    )
    return here, there


@pytest.fixture
async def gateway(
    gateway_factory: GatewayFactory,
    proxy: CountingProxy,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Gateway:
    """One replica of the teams' config on Redis, moto behind the counting proxy, an empty
    registry; the tests below play the other replica through Redis itself."""
    behave_like_ecr(monkeypatch)
    clear_registry()
    return await gateway_factory(
        teams_config(proxy.url, redis_url, redis_prefix, tmp_path / "audit.jsonl")
    )


async def test_writes_on_a_waiting_replica_go_in_the_lock_holder_s_batch(
    gateway_factory: GatewayFactory,
    proxy: CountingProxy,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    behave_like_ecr(monkeypatch)
    clear_registry()
    # Each batch holds the lock 0.8 s+: time for the writes below to arrive, under the 1 s a
    # handed write waits to be taken.
    proxy.fault = Fault(frozenset({PUT}), late_seconds=0.8)
    here, there = await two_replicas(gateway_factory, proxy.url, redis_url, redis_prefix, tmp_path)
    first, on_there, on_here = ["team00"], ["team01", "team02", "team03"], ["team04", "team05"]
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{here.port}") as here_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{there.port}") as there_channel,
    ):
        here_stub = pb_grpc.RegistryConfigServiceStub(here_channel)
        there_stub = pb_grpc.RegistryConfigServiceStub(there_channel)
        holder = asyncio.create_task(put_rules(here_stub, first[0], intent(first[0])))
        await wait_until(lambda: proxy.count(PUT) >= 1, what="the first put at AWS")
        # While `here` holds the lock (its put is at AWS), writes arrive on both replicas.
        answers = await asyncio.gather(
            *(put_rules(there_stub, t, intent(t)) for t in on_there),
            *(put_rules(here_stub, t, intent(t)) for t in on_here),
        )
        assert (await holder)[0] == grpc.StatusCode.OK
        assert [code for code, _, _ in answers] == [grpc.StatusCode.OK] * 5
        # `there` handed its writes over, and `here` took them into its batches: usually one
        # batch with its own (2 puts in all); on a loaded machine a write may arrive after that
        # batch formed and go in the next (3). `there` never takes the lock itself.
        assert handed(there, "answered") == len(on_there)
        assert handed(here, "taken") == len(on_there)
        assert proxy.count(PUT) <= 3
        # Each caller answered its own slice, as any replica reads it back.
        for team, (_, _, response) in zip(on_there + on_here, answers, strict=True):
            assert list(response.rules) == intent(team)
            for stub in (here_stub, there_stub):
                got = await stub.GetReplicationRules(
                    pb.GetReplicationRulesRequest(), metadata=metadata(key_of(team))
                )
                assert list(got.rules) == intent(team) and got.etag == response.etag
            # Its own history entry, by its own identity, though `here` applied it.
            history = await there_stub.GetConfigurationHistory(
                pb.GetConfigurationHistoryRequest(
                    resource=pb.HISTORY_RESOURCE_REPLICATION, page_size=50
                ),
                metadata=metadata(key_of(team)),
            )
            own = [v for v in history.versions if v.tenant == team]
            assert len(own) == 1 and own[0].identity.startswith("api_key:")
    # The audit line of a handed write is its own replica's, with the etags around it.
    there_lines = [
        line
        for line in audit_lines(tmp_path / "audit-there.jsonl")
        if line.get("rpc") == "PutReplicationRules"
    ]
    assert sorted(line["tenant"] for line in there_lines) == on_there
    assert all(line["outcome"] == "OK" and line["etag_after"] for line in there_lines)
    assert filters_in(stored_rules()) == {
        f"{t}/{r}" for t in first + on_there + on_here for r in ("api", "web")
    }


async def test_a_tenant_the_applying_replica_does_not_allow_is_refused_there(
    gateway_factory: GatewayFactory,
    proxy: CountingProxy,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The applying replica judges with its own config (a reload that took team01's write
    # right away, seen there first): the request carries no decision of its replica's.
    behave_like_ecr(monkeypatch)
    clear_registry()
    proxy.fault = Fault(frozenset({PUT}), late_seconds=0.8)
    here_raw = teams_config(proxy.url, redis_url, redis_prefix, tmp_path / "audit-here.jsonl")
    for tenant in here_raw["tenants"]:
        if tenant["name"] == "team01":
            ops = tenant["registries"][0]["operations"]
            ops.remove("PutReplicationRules")
    here = await gateway_factory(here_raw)
    there = await gateway_factory(
        teams_config(proxy.url, redis_url, redis_prefix, tmp_path / "audit-there.jsonl")
    )
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{here.port}") as here_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{there.port}") as there_channel,
    ):
        here_stub = pb_grpc.RegistryConfigServiceStub(here_channel)
        there_stub = pb_grpc.RegistryConfigServiceStub(there_channel)
        holder = asyncio.create_task(put_rules(here_stub, "team00", intent("team00")))
        await wait_until(lambda: proxy.count(PUT) >= 1, what="the first put at AWS")
        second = asyncio.create_task(put_rules(here_stub, "team03", intent("team03")))
        answers = await asyncio.gather(
            put_rules(there_stub, "team01", intent("team01")),
            put_rules(there_stub, "team02", intent("team02")),
        )
        assert (await holder)[0] == (await second)[0] == grpc.StatusCode.OK
    if handed(here, "taken") == 0:
        pytest.fail("the writes were not handed over: nothing of the refusal was exercised")
    refused, allowed = answers
    assert refused[0] == grpc.StatusCode.PERMISSION_DENIED, refused
    assert allowed[0] == grpc.StatusCode.OK  # in the same batch, unharmed
    stored = filters_in(stored_rules())
    assert "team01/api" not in stored and {"team02/api", "team03/api"} <= stored


async def test_a_forged_request_in_the_list_is_judged_and_refused(
    gateway: Gateway, proxy: CountingProxy, redis_prefix: str, redis_client: redis.asyncio.Redis
) -> None:
    # Whoever writes into the list (a compromised replica, a stray script) cannot make the
    # holder write anything a tenant could not: team02 "asking" for team03's prefix is judged
    # as team02's own request, and refused.
    body = pb.PutReplicationRulesRequest(rules=intent("team03")).SerializeToString()
    forged = Handed(
        id="forged-1",
        replica="nobody",
        tenant="team02",
        rpc="PutReplicationRules",
        body=body,
        identity="api_key:forged",
        request_id=None,
        patience_until=time.time() + 30,
        deadline=time.time() + 30,
    )
    await redis_client.rpush(requests_key(redis_prefix), forged.encode(), b"not a request")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        # Any batch takes what waits in the list.
        assert (await put_rules(stub, "team00", intent("team00")))[0] == grpc.StatusCode.OK
    answer_key = f"{redis_prefix}handoff:{ACCOUNT}:{REGION}:answers:nobody"
    raw = await wait_until(lambda: redis_client.lpop(answer_key), what="the forged one's answer")
    parsed = parse_answer(raw)
    assert parsed is not None
    request_id, error = parsed
    assert request_id == "forged-1"
    assert getattr(error, "reason", None) == "RULE_NOT_OWNED"
    assert await redis_client.llen(requests_key(redis_prefix)) == 0  # garbage dropped too
    assert filters_in(stored_rules()) == {"team00/api", "team00/web"}
    assert handed(gateway, "taken") == 0


async def test_a_request_nobody_takes_while_the_lock_stays_held_writes_nothing(
    gateway: Gateway, proxy: CountingProxy, redis_prefix: str, redis_client: redis.asyncio.Redis
) -> None:
    # Another "replica" holds the lock and never takes anything.
    await redis_client.set(lock_key(redis_prefix), "elsewhere", px=30_000)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = pb_grpc.RegistryConfigServiceStub(channel)
            # Its wait for the lock (a fifth less than its deadline) ends before its replica
            # would take it back to wait for the lock itself (`UNTAKEN_SECONDS`).
            code, reason, _ = await put_rules(stub, "team00", intent("team00"), timeout=1.0)
    finally:
        await redis_client.delete(lock_key(redis_prefix))
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "WRITE_LOCK_BUSY")
    assert handed(gateway, "lock_busy") == 1
    assert await redis_client.llen(requests_key(redis_prefix)) == 0  # withdrawn
    assert proxy.count(PUT) == 0


async def test_a_request_a_holder_does_not_take_is_taken_back_and_waits_for_the_lock(
    gateway: Gateway, proxy: CountingProxy, redis_prefix: str, redis_client: redis.asyncio.Redis
) -> None:
    # A holder that takes nothing (a full-document write; a replica of an older version in a
    # rolling upgrade): the write is taken back after UNTAKEN_SECONDS and waits for the lock
    # here, as without hand-over; it is applied once the holder lets go.
    await redis_client.set(lock_key(redis_prefix), "elsewhere", px=30_000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        write = asyncio.create_task(put_rules(stub, "team00", intent("team00"), timeout=20))
        await wait_until(lambda: handed(gateway, "returned") >= 1, what="the write taken back")
        # Waiting here: for the lock, or handed again (the lock still held elsewhere).
        assert not write.done()
        await redis_client.delete(lock_key(redis_prefix))
        code, _, response = await write
    assert code == grpc.StatusCode.OK and list(response.rules) == intent("team00")
    assert filters_in(stored_rules()) == {"team00/api", "team00/web"}


async def test_a_request_nobody_takes_is_applied_by_its_own_replica_once_the_lock_frees(
    gateway: Gateway, proxy: CountingProxy, redis_prefix: str, redis_client: redis.asyncio.Redis
) -> None:
    await redis_client.set(lock_key(redis_prefix), "elsewhere", px=30_000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        write = asyncio.create_task(put_rules(stub, "team00", intent("team00"), timeout=20))
        await wait_until(
            lambda: redis_client.llen(requests_key(redis_prefix)), what="the request handed"
        )
        await redis_client.delete(lock_key(redis_prefix))  # the holder let go, took nothing
        code, _, response = await write
    assert code == grpc.StatusCode.OK and list(response.rules) == intent("team00")
    assert handed(gateway, "returned") == 1
    assert filters_in(stored_rules()) == {"team00/api", "team00/web"}


async def test_a_request_taken_and_never_answered_is_an_unknown_outcome(
    gateway: Gateway, proxy: CountingProxy, redis_prefix: str, redis_client: redis.asyncio.Redis
) -> None:
    # The replica that took it died (SIGKILL) before answering: its write may or may not
    # be at AWS. The caller's replica says so, never OK, never "not applied".
    audit = Path(gateway.config.audit.path)
    await redis_client.set(lock_key(redis_prefix), "elsewhere", px=30_000)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = pb_grpc.RegistryConfigServiceStub(channel)
            write = asyncio.create_task(put_rules(stub, "team00", intent("team00"), timeout=4))
            taken = await wait_until(
                lambda: redis_client.lpop(requests_key(redis_prefix)), what="the request"
            )
            request = Handed.decode(taken)
            assert request is not None and request.tenant == "team00"
            code, reason, _ = await write
    finally:
        await redis_client.delete(lock_key(redis_prefix))
    # Before its deadline, so that it hears so (not DEADLINE_EXCEEDED).
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "WRITE_OUTCOME_UNKNOWN")
    assert handed(gateway, "unknown") == 1
    lines = await wait_until(
        lambda: [line for line in audit_lines(audit) if line.get("rpc") == "PutReplicationRules"],
        what="the audit line",
    )
    assert [(line["outcome"], line["reason"]) for line in lines] == [
        ("UNAVAILABLE", "WRITE_OUTCOME_UNKNOWN")
    ]
    assert lines[0]["tenant"] == "team00"


async def test_redis_wiped_mid_hand_over_leaves_the_write_accounted_for(
    gateway: Gateway, proxy: CountingProxy, redis_prefix: str, redis_client: redis.asyncio.Redis
) -> None:
    # Redis loses the list (FLUSHALL, a failover to a replica that never had it) and the
    # lock with it while a write waits there to be taken. Whether some replica took it first
    # cannot be told: its caller hears so before its deadline (never OK, never "nothing
    # written"), it is audited, and no replica applies it later. (The shared test Redis is
    # wiped key by key: FLUSHALL would wipe the other tests' keys.)
    await redis_client.set(lock_key(redis_prefix), "elsewhere", px=30_000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        write = asyncio.create_task(put_rules(stub, "team00", intent("team00"), timeout=4))
        await wait_until(
            lambda: redis_client.llen(requests_key(redis_prefix)), what="the request handed"
        )
        await redis_client.delete(requests_key(redis_prefix), lock_key(redis_prefix))
        code, reason, _ = await write
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "WRITE_OUTCOME_UNKNOWN")
    assert handed(gateway, "unknown") == 1
    assert proxy.count(PUT) == 0 and filters_in(stored_rules()) == set()
    lines = await wait_until(
        lambda: [
            line
            for line in audit_lines(Path(gateway.config.audit.path))
            if line.get("rpc") == "PutReplicationRules"
        ],
        what="the audit line",
    )
    assert [line["reason"] for line in lines] == ["WRITE_OUTCOME_UNKNOWN"]
