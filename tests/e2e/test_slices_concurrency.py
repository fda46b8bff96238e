"""Two tenants replacing their slices of one registry at once, through two replicas (one in
this process, one a subprocess) sharing Redis: neither loses or touches the other's part."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.helpers import KEY, metadata
from tests.support.moto_writes import behave_like_ecr
from tests.support.processes import gateway_process
from tests.support.slices_support import (
    BILLING_KEY,
    aws_rule,
    rule,
    seed_policy,
    seed_rules,
    shared_config,
    statement,
    stored_rules,
    stored_sids,
)

RULE_WRITES = 50  # per tenant, as the issue asks
STATEMENT_WRITES = 20  # per tenant: the same lock and merge, a different document


def replica_config(aws: str, redis_url: str, redis_prefix: str, audit: Path) -> dict[str, Any]:
    raw = shared_config(aws)
    raw["cache"] = {"backend": "redis", "redis_url": redis_url, "key_prefix": redis_prefix}
    raw["audit"] = {"path": str(audit)}
    return raw


async def replace_rules(stubs: list[Any], key: str, prefix: str) -> None:
    """Replace the tenant's rules RULE_WRITES times, alternating replicas."""
    for i in range(RULE_WRITES):
        # Two rules, so a lost update would show as a mix of versions too.
        rules = [rule(f"{prefix}/v{i}/a"), rule(f"{prefix}/v{i}/b")]
        await stubs[i % 2].PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=rules), metadata=metadata(key), timeout=20
        )


async def replace_statements(stubs: list[Any], key: str, sid: str) -> None:
    """Replace the tenant's statements STATEMENT_WRITES times, alternating replicas."""
    for i in range(STATEMENT_WRITES):
        statements = json.dumps([statement(f"{sid}V{i}")])
        await stubs[(i + 1) % 2].PutPolicyStatements(
            pb.PutPolicyStatementsRequest(statements_json=statements),
            metadata=metadata(key),
            timeout=20,
        )


async def test_two_tenants_through_two_replicas_keep_both_latest_slices(
    gateway_factory: GatewayFactory,
    aws: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    behave_like_ecr(monkeypatch)  # the subprocess reaches this process's moto: patched too
    seed_rules(aws_rule(), aws_rule("shared/base"))  # nobody's rules, kept throughout
    seed_policy(statement("Shared"))
    audits = [tmp_path / "audit-here.jsonl", tmp_path / "audit-there.jsonl"]
    here = await gateway_factory(replica_config(aws, redis_url, redis_prefix, audits[0]))
    there_config = replica_config(aws, redis_url, redis_prefix, audits[1])
    async with gateway_process(there_config, tmp_path / "there.yaml") as (there_port,):
        channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in (here.port, there_port)
        ]
        stubs = [pb_grpc.RegistryConfigServiceStub(channel) for channel in channels]
        try:
            await asyncio.gather(
                replace_rules(stubs, KEY, "payments"),
                replace_rules(stubs[::-1], BILLING_KEY, "billing"),
                replace_statements(stubs, KEY, "Payments"),
                replace_statements(stubs[::-1], BILLING_KEY, "Billing"),
            )
            # Every replica reads the same final slices (read-your-writes through Redis).
            for stub in stubs:
                got = await stub.GetReplicationRules(
                    pb.GetReplicationRulesRequest(), metadata=metadata(BILLING_KEY)
                )
                last = RULE_WRITES - 1
                # Its canonical form: one rule per destination set.
                assert list(got.rules) == [rule(f"billing/v{last}/a", f"billing/v{last}/b")]
        finally:
            for channel in channels:
                await channel.close()
    last = RULE_WRITES - 1
    # Packed: the filters of one destination set in one rule, sorted; nobody's kept.
    assert stored_rules() == [
        aws_rule(
            f"billing/v{last}/a",
            f"billing/v{last}/b",
            f"payments/v{last}/a",
            f"payments/v{last}/b",
            "shared/base",
        ),
        aws_rule(),
    ]
    sids = stored_sids()
    assert sids is not None and sids[0] == "Shared"
    last_statement = STATEMENT_WRITES - 1
    assert sorted(sids[1:]) == [f"BillingV{last_statement}", f"PaymentsV{last_statement}"]
    # One audit line per write, split over the two replicas' trails.
    lines = [json.loads(line) for path in audits for line in path.read_text().splitlines()]
    assert all(line["outcome"] == "OK" for line in lines)
    assert Counter((line["tenant"], line["rpc"]) for line in lines) == {
        ("payments", "PutReplicationRules"): RULE_WRITES,
        ("billing", "PutReplicationRules"): RULE_WRITES,
        ("payments", "PutPolicyStatements"): STATEMENT_WRITES,
        ("billing", "PutPolicyStatements"): STATEMENT_WRITES,
    }
    assert all(path.read_text() for path in audits)  # both replicas took writes
