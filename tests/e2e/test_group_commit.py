"""Slice writes queued on a registry's lock go together (group commit), end to end: a real
gateway on Redis, moto behind a counting proxy. Many tenants writing at once make fewer
PutReplicationConfiguration calls than writes; each reads back exactly its intent and has
its own audit line and history entry; one bad change fails only its caller; AWS failing the
put fails every caller of the batch with an accounted outcome; a caller that leaves before
its change is taken writes nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.auth.api_keys import hash_key
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.aws_proxy import CountingProxy, Fault, ecr_error
from tests.support.helpers import ACCOUNT, config_dict, metadata, rich_error, settled_text
from tests.support.moto_writes import behave_like_ecr
from tests.support.slices_support import (
    SLICE_READS,
    SLICE_WRITES,
    clear_registry,
    filters_in,
    rule,
    stored_rules,
)

TEAMS = [f"team{i:02d}" for i in range(12)]
PUT = "ecr:PutReplicationConfiguration"


def key_of(team: str) -> str:
    return f"test-key-{team}"


def teams_config(
    endpoint: str, redis_url: str, redis_prefix: str, audit: Path, **cache: Any
) -> dict[str, Any]:
    """config_dict plus one tenant per team, each owning `<team>/` of the shared registry."""
    raw = config_dict(endpoint)
    raw["cache"] = {
        "backend": "redis",
        "redis_url": redis_url,
        "key_prefix": redis_prefix,
        **cache,
    }
    raw["audit"] = {"path": str(audit)}
    raw["tenants"] += [
        {
            "name": team,
            "api_keys": [hash_key(key_of(team))],
            "registries": [
                {
                    "registry_id": ACCOUNT,
                    "regions": ["us-east-1"],
                    "operations": [*SLICE_READS, *SLICE_WRITES, "GetConfigurationHistory"],
                    "owned_repository_prefixes": [f"{team}/"],
                    "owned_statement_sid_prefix": team.capitalize(),
                    "replication_destinations": [
                        {"registry_id": ACCOUNT, "regions": ["eu-west-1"]},
                    ],
                }
            ],
        }
        for team in TEAMS
    ]
    return raw


def intent(team: str) -> list[pb.ReplicationRule]:
    return [rule(f"{team}/api", f"{team}/web")]


async def put_rules(
    stub: Any, team: str, rules: list[pb.ReplicationRule], etag: str = "", timeout: float = 20
) -> tuple[grpc.StatusCode, str | None, Any]:
    """(code, reason, response) of one PutReplicationRules."""
    try:
        response = await stub.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=rules, etag=etag),
            metadata=metadata(key_of(team)),
            timeout=timeout,
        )
    except grpc.aio.AioRpcError as exc:
        reason = rich_error(exc).info.reason if exc.trailing_metadata() else None
        return exc.code(), reason, None
    return grpc.StatusCode.OK, None, response


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in settled_text(path).splitlines() if line]


@pytest.fixture
def slow_puts(proxy: CountingProxy) -> CountingProxy:
    """Each put answered 0.4 s after moto applied it: the writes after the first queue."""
    proxy.fault = Fault(frozenset({PUT}), late_seconds=0.4)
    return proxy


async def test_many_tenants_at_once_make_fewer_puts_and_each_keeps_its_own_write(
    gateway_factory: GatewayFactory,
    slow_puts: CountingProxy,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    behave_like_ecr(monkeypatch)
    clear_registry()
    audit = tmp_path / "audit.jsonl"
    gateway = await gateway_factory(teams_config(slow_puts.url, redis_url, redis_prefix, audit))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        answers = await asyncio.gather(*(put_rules(stub, t, intent(t)) for t in TEAMS))
        assert [code for code, _, _ in answers] == [grpc.StatusCode.OK] * len(TEAMS)
        # 12 writes; the first alone while the others queue, then one batch.
        assert slow_puts.count(PUT) < len(TEAMS) / 2
        for team, (_, _, response) in zip(TEAMS, answers, strict=True):
            got = await stub.GetReplicationRules(
                pb.GetReplicationRulesRequest(), metadata=metadata(key_of(team))
            )
            assert list(got.rules) == list(response.rules) == intent(team)
            assert got.etag == response.etag
            # Its own history entry: the version its write made, authored by it.
            history = await stub.GetConfigurationHistory(
                pb.GetConfigurationHistoryRequest(
                    resource=pb.HISTORY_RESOURCE_REPLICATION, page_size=50
                ),
                metadata=metadata(key_of(team)),
            )
            assert history.slice_view
            own = [v for v in history.versions if v.tenant == team]
            assert len(own) == 1 and list(own[0].replication_configuration.rules) == intent(team)
            # Nothing of another tenant's slice, nor who wrote it.
            assert {v.tenant for v in history.versions} <= {team, ""}
            assert all(
                filters_in(v.replication_configuration.rules) <= {f"{team}/api", f"{team}/web"}
                for v in history.versions
            )
    # Packed in AWS: one rule (one destination set) holding every team's filters.
    [stored] = stored_rules()
    assert filters_in([stored]) == {f"{t}/{r}" for t in TEAMS for r in ("api", "web")}
    lines = [line for line in audit_lines(audit) if line.get("rpc") == "PutReplicationRules"]
    assert sorted(line["tenant"] for line in lines) == sorted(TEAMS)
    assert all(line["outcome"] == "OK" and line["etag_after"] for line in lines)


async def test_one_stale_etag_fails_only_its_caller_and_a_put_failing_fails_the_batch(
    gateway_factory: GatewayFactory,
    slow_puts: CountingProxy,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    behave_like_ecr(monkeypatch)
    clear_registry()
    audit = tmp_path / "audit.jsonl"
    gateway = await gateway_factory(teams_config(slow_puts.url, redis_url, redis_prefix, audit))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        first = asyncio.create_task(put_rules(stub, "team00", intent("team00")))
        await asyncio.sleep(0.2)  # its put sent: the next ones queue
        batch = [put_rules(stub, t, intent(t)) for t in TEAMS[1:5]]
        stale = put_rules(stub, "team05", intent("team05"), etag="sha256:" + "0" * 64)
        answers = await asyncio.gather(first, *batch, stale)
        assert [a[0] for a in answers[:5]] == [grpc.StatusCode.OK] * 5
        assert answers[5][:2] == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
        assert slow_puts.count(PUT) == 2
        assert "team05/api" not in filters_in(stored_rules())

        # AWS failing the put: every caller of the batch answers UNAVAILABLE, none written.
        slow_puts.fault = Fault(frozenset({PUT}), status=500, body=ecr_error("ServerException"))
        blocked = asyncio.create_task(put_rules(stub, "team06", intent("team06")))
        failing = [put_rules(stub, t, intent(t)) for t in TEAMS[7:10]]
        answers = await asyncio.gather(blocked, *failing)
        assert {(code, reason) for code, reason, _ in answers} == {
            (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
        }
        stored = filters_in(stored_rules())
        assert not stored & {f"{t}/api" for t in TEAMS[6:10]}
        slow_puts.fault = None
        for team in TEAMS[6:10]:
            got = await stub.GetReplicationRules(
                pb.GetReplicationRulesRequest(), metadata=metadata(key_of(team))
            )
            assert list(got.rules) == []
    lines = {
        line["tenant"]: line
        for line in audit_lines(audit)
        if line.get("rpc") == "PutReplicationRules"
    }
    assert lines["team05"]["reason"] == "ETAG_MISMATCH" and lines["team05"]["etag_before"]
    for team in TEAMS[6:10]:
        # Accounted: its own line, the etag it read, no etag after.
        assert lines[team]["outcome"] == "UNAVAILABLE" and lines[team]["etag_before"]
        assert not lines[team]["etag_after"]


async def test_a_caller_leaving_before_its_change_is_taken_writes_nothing(
    gateway_factory: GatewayFactory,
    proxy: CountingProxy,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    behave_like_ecr(monkeypatch)
    clear_registry()
    # The first write's put is held until released: the lock stays taken meanwhile.
    proxy.fault = Fault(frozenset({PUT}), late_seconds=60)
    gateway = await gateway_factory(
        teams_config(proxy.url, redis_url, redis_prefix, tmp_path / "audit.jsonl")
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        first = asyncio.create_task(put_rules(stub, "team00", intent("team00")))
        await asyncio.sleep(0.3)
        # Its deadline passes while it waits in the queue.
        leaving = await put_rules(stub, "team01", intent("team01"), timeout=1.0)
        assert leaving[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        proxy.fault = None
        proxy.released.set()
        assert (await first)[0] == grpc.StatusCode.OK
        await asyncio.sleep(0.3)
        assert proxy.count(PUT) == 1
        assert "team01/api" not in filters_in(stored_rules())
