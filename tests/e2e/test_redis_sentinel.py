"""Redis Sentinel under a write storm (issue 23): two tenants replace their slices of one
registry through two replicas (one in this process, one a `registry-gateway serve`
subprocess) while the primary is SIGKILLed; the sentinels (down-after-milliseconds 1000)
promote the replica and both gateways find it by themselves.

Measured (printed; README figures in docs/operations.md): the time from the kill to the
first successful write, how long reads failed, and that every acknowledged write is either
in AWS's final state or reported (`overwritten` / `out_of_band_change` in an audit trail),
never silently lost. Failed writes fail as UNAVAILABLE (retryable), never INTERNAL."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory, wait_until
from tests.support.helpers import KEY, metadata, rich_error
from tests.support.moto_writes import behave_like_ecr
from tests.support.processes import gateway_process
from tests.support.redis_sentinel import MASTER_NAME, SentinelSet, sentinel_set
from tests.support.slices_support import (
    BILLING_KEY,
    aws_rule,
    rule,
    seed_rules,
    shared_config,
    stored_rules,
)

TENANTS = {"payments": KEY, "billing": BILLING_KEY}
WRITES_BEFORE_KILL = 5  # per tenant: the storm is under way when the primary dies
WRITES_AFTER_RECOVERY = 5  # per tenant, begun after the kill


@dataclass
class Storm:
    """What each call of the storm saw, on the event loop's clock."""

    kill_at: float | None = None
    # tenant -> [(version, started, ended, code)]
    writes: dict[str, list[tuple[int, float, float, grpc.StatusCode]]] = field(
        default_factory=lambda: {t: [] for t in TENANTS}
    )
    reads: list[tuple[float, float, grpc.StatusCode]] = field(default_factory=list)
    # The reason (ErrorInfo) of each refused write, and whether it carried RetryInfo.
    refusals: list[tuple[str, bool]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def ok_after_kill(self, tenant: str) -> int:
        assert self.kill_at is not None
        return sum(
            1
            for _, started, _, code in self.writes[tenant]
            if started > self.kill_at and code == grpc.StatusCode.OK
        )


def replica_config(aws: str, servers: SentinelSet, audit: Path) -> dict[str, Any]:
    raw = shared_config(aws)
    raw["cache"] = {
        "backend": "redis",
        "redis_sentinel": {"master_name": MASTER_NAME, "nodes": servers.sentinel_nodes},
        "key_prefix": "sentinel-test:",
    }
    raw["audit"] = {"path": str(audit)}
    return raw


async def write_storm(storm: Storm, stubs: list[Any], tenant: str) -> None:
    """Replace the tenant's rules again and again, alternating replicas, until told to stop."""
    loop = asyncio.get_running_loop()
    version = 0
    while not storm.stop.is_set():
        rules = [rule(f"{tenant}/v{version}/a"), rule(f"{tenant}/v{version}/b")]
        started = loop.time()
        try:
            await stubs[version % 2].PutReplicationRules(
                pb.PutReplicationRulesRequest(rules=rules),
                metadata=metadata(TENANTS[tenant]),
                timeout=20,
            )
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            details = rich_error(exc)
            storm.refusals.append((details.info.reason, details.retry_info is not None))
            await asyncio.sleep(0.05)  # as a client honouring RetryInfo would, briefly
        storm.writes[tenant].append((version, started, loop.time(), code))
        version += 1


async def read_storm(storm: Storm, stubs: list[Any]) -> None:
    """Read (cached) through both replicas until told to stop."""
    loop = asyncio.get_running_loop()
    n = 0
    while not storm.stop.is_set():
        started = loop.time()
        try:
            await stubs[n % 2].GetReplicationRules(
                pb.GetReplicationRulesRequest(), metadata=metadata(KEY), timeout=20
            )
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        storm.reads.append((started, loop.time(), code))
        n += 1
        await asyncio.sleep(0.02)


def tenant_versions(rules: list[dict[str, Any]], tenant: str) -> set[int]:
    found = set()
    for r in rules:
        for f in r.get("repositoryFilters", []):
            if f["filter"].startswith(f"{tenant}/v"):
                found.add(int(f["filter"].split("/")[1][1:]))
    return found


async def test_primary_killed_mid_storm_loses_no_acknowledged_write_silently(
    gateway_factory: GatewayFactory,
    aws: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    behave_like_ecr(monkeypatch)  # the subprocess reaches this process's moto: patched too
    seed_rules(aws_rule())  # nobody's rule, kept throughout
    loop = asyncio.get_running_loop()
    audits = [tmp_path / "audit-here.jsonl", tmp_path / "audit-there.jsonl"]
    with sentinel_set(tmp_path) as servers:
        here = await gateway_factory(replica_config(aws, servers, audits[0]))
        there_config = replica_config(aws, servers, audits[1])
        async with gateway_process(there_config, tmp_path / "there.yaml") as (there_port,):
            channels = [
                grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in (here.port, there_port)
            ]
            stubs = [pb_grpc.RegistryConfigServiceStub(channel) for channel in channels]
            storm = Storm()
            tasks = [
                *(asyncio.create_task(write_storm(storm, stubs, t)) for t in TENANTS),
                asyncio.create_task(read_storm(storm, stubs)),
            ]
            try:
                await wait_until(
                    lambda: all(
                        sum(1 for w in storm.writes[t] if w[3] == grpc.StatusCode.OK)
                        >= WRITES_BEFORE_KILL
                        for t in TENANTS
                    ),
                    timeout=60,
                    what="the storm to be under way",
                )
                killed = await asyncio.to_thread(servers.kill_primary)
                storm.kill_at = loop.time()
                assert killed == servers.primary_port
                await wait_until(
                    lambda: all(storm.ok_after_kill(t) >= WRITES_AFTER_RECOVERY for t in TENANTS),
                    timeout=120,
                    interval=0.1,
                    what="writes to succeed again after the failover",
                )
            finally:
                storm.stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                for channel in channels:
                    await channel.close()
            assert servers.agreed_primary() == servers.replica_port  # the sentinels promoted it

    kill_at = storm.kill_at
    assert kill_at is not None
    # --- figures -------------------------------------------------------------------------------
    first_write = min(
        ended
        for t in TENANTS
        for _, started, ended, code in storm.writes[t]
        if started > kill_at and code == grpc.StatusCode.OK
    )
    failed_reads = [r for r in storm.reads if r[2] != grpc.StatusCode.OK]
    failed_writes = [w for t in TENANTS for w in storm.writes[t] if w[3] != grpc.StatusCode.OK]
    read_outage = (
        max(r[1] for r in failed_reads) - min(r[0] for r in failed_reads) if failed_reads else 0.0
    )
    print(
        f"\nsentinel failover under a write storm: first successful write "
        f"{first_write - kill_at:.1f} s after SIGKILL; "
        f"{len(failed_writes)} of {sum(map(len, storm.writes.values()))} writes failed "
        f"({sorted({w[3].name for w in failed_writes})}); "
        f"{len(failed_reads)} of {len(storm.reads)} reads failed over {read_outage:.1f} s"
    )
    # Failed writes are retryable refusals, never a bug's answer nor a hang to the deadline.
    assert {w[3] for w in failed_writes} <= {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
    }, failed_writes
    assert all(retry for _, retry in storm.refusals), storm.refusals
    print(f"refusal reasons: {sorted(set(reason for reason, _ in storm.refusals))}")
    # --- nothing lost silently -------------------------------------------------------------------
    lines = [json.loads(line) for path in audits for line in path.read_text().splitlines()]
    reported = [
        line for line in lines if line.get("event") in ("overwritten", "out_of_band_change")
    ]
    final = stored_rules()
    assert final[-1] == aws_rule()  # nobody's rule survived every merge (carried last)
    for tenant in TENANTS:
        acknowledged = [w[0] for w in storm.writes[tenant] if w[3] == grpc.StatusCode.OK]
        last_ok = max(acknowledged)
        # Each tenant writes one call at a time: its final slice is its last acknowledged
        # write, or a later one whose answer was a failure (applied, then Redis failed),
        # unless something else replaced it, which an audit line must then report.
        in_aws = tenant_versions(final, tenant)
        unknown = {w[0] for w in storm.writes[tenant] if w[0] > last_ok}
        assert in_aws and (in_aws <= {last_ok} | unknown or reported), (
            tenant,
            in_aws,
            last_ok,
            reported,
        )
        assert len(in_aws) == 1, (tenant, in_aws)  # never a mix of two writes
