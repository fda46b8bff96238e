"""A slice reader learns nothing of when other tenants write, even once the history is full.

Each write evicts the oldest version of a full history, so which version is oldest moves with
everyone's writes; the slice view lists the oldest kept as where the reader's history begins,
without its time or author (found by a hostile review: it showed another tenant's write time
per poll)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.helpers import KEY, metadata
from tests.support.moto_writes import behave_like_ecr
from tests.support.slices_support import BILLING_KEY, isolation_config, rule

RPC = "GetConfigurationHistory"


def history_config(aws: str, tmp_path: Path) -> dict[str, Any]:
    raw = isolation_config(aws)
    by_name = {t["name"]: t for t in raw["tenants"]}
    by_name["billing"]["registries"][0]["operations"].append(RPC)
    raw["history"] = {"max_versions": 3}
    raw["drift"] = {"check_seconds": 0}
    return raw


async def test_a_full_history_shows_a_slice_reader_nothing_of_others_writes(
    gateway_factory: GatewayFactory, aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave_like_ecr(monkeypatch)
    gateway = await gateway_factory(history_config(aws, tmp_path))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        await stub.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=[rule("billing/x")]), metadata=metadata(BILLING_KEY)
        )

        async def view() -> pb.GetConfigurationHistoryResponse:
            return await stub.GetConfigurationHistory(
                pb.GetConfigurationHistoryRequest(
                    resource=pb.HISTORY_RESOURCE_REPLICATION, page_size=50
                ),
                metadata=metadata(BILLING_KEY),
            )

        seen = []
        for i in range(6):  # payments writes; billing's slice never changes
            await stub.PutReplicationRules(
                pb.PutReplicationRulesRequest(rules=[rule(f"payments/v{i}")]),
                metadata=metadata(KEY),
            )
            seen.append(await view())
        # billing's slice did not change in any of payments' writes, yet what billing sees
        # changes with each of them once the history is full:
        times = [tuple(v.recorded_at.ToNanoseconds() for v in r.versions) for r in seen]
        full = await stub.GetConfigurationHistory(
            pb.GetConfigurationHistoryRequest(
                resource=pb.HISTORY_RESOURCE_REPLICATION, page_size=50
            ),
            metadata=metadata(KEY),
        )
        payments_times = {
            v.recorded_at.ToNanoseconds() for v in full.versions if v.tenant == "payments"
        }
        leaked = {t for ts in times for t in ts} & payments_times
        assert len(set(times[2:])) == 1, f"billing's view changes with payments' writes: {times}"
        assert not leaked, f"billing saw the recorded_at of payments' writes: {sorted(leaked)}"
