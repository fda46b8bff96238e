"""Replicas whose clocks are 30 s apart, on one Redis (issue 26 #6): drift detection compares
a version's `recorded_at` with the start of another replica's read, so those times must be on
one clock, Redis's. A read lagging a write on the other replica is not reported as a change
made around the gateway, the history's head stays the write, and its time is Redis's.

The skew is injected into one replica: its drift detector's clock, which stamps the start of
each of its reads from AWS and (before the fix) every version it recorded. Far past the
documented `drift.clock_skew_seconds` (1 s, the default, kept here)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from moto.ecr.exceptions import RegistryPolicyNotFoundException
from moto.ecr.models import ECRBackend

from service.app.server import Gateway
from service.ecr import etags
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.e2e.test_drift import POLICY as POLICY_KEY
from tests.e2e.test_drift import counted, events
from tests.support.helpers import POLICY, config_dict, metadata

SKEW = 30.0
NO_CACHE = ("cache-control", "no-cache")


@pytest.fixture
def lagging_policy_read(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Once armed (`left`), GetRegistryPolicy answers the policy as it was before the last
    put: a read lagging a write, as ECR's eventually consistent reads can."""
    lag: dict[str, Any] = {"left": 0, "previous": None}
    put, get = ECRBackend.put_registry_policy, ECRBackend.get_registry_policy

    def put_remembering(self: ECRBackend, policy_text: str) -> Any:
        lag["previous"] = self.registry_policy
        return put(self, policy_text)

    def get_lagging(self: ECRBackend) -> Any:
        if lag["left"]:
            lag["left"] -= 1
            if lag["previous"] is None:
                raise RegistryPolicyNotFoundException(self.account_id)
            return {"registryId": self.account_id, "policyText": lag["previous"]}
        return get(self)

    monkeypatch.setattr(ECRBackend, "put_registry_policy", put_remembering)
    monkeypatch.setattr(ECRBackend, "get_registry_policy", get_lagging)
    return lag


def skewed(gateway: Gateway, seconds: float) -> None:
    """The replica's own clock is `seconds` off (what its drift detector reads)."""
    if seconds:
        gateway.drift.clock = lambda: time.time() + seconds


async def read_fresh(port: int) -> str | None:
    """A no-cache GetRegistryPolicy (a load from AWS): the text, None when there is none."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        try:
            answer = await stub.GetRegistryPolicy(
                pb.GetRegistryPolicyRequest(), metadata=(*metadata(), NO_CACHE), timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            return None
    return str(answer.policy_text)


@pytest.mark.parametrize(
    ("writer_skew", "reader_skew"),
    [(0.0, SKEW), (-SKEW, 0.0)],
    ids=["reader-ahead", "writer-behind"],
)
async def test_a_read_lagging_another_replicas_write_is_not_drift(
    gateway_factory: GatewayFactory,
    aws: str,
    tmp_path: Path,
    redis_url: str,
    redis_prefix: str,
    lagging_policy_read: dict[str, Any],
    writer_skew: float,
    reader_skew: float,
) -> None:
    replicas = []
    for name in ("writer", "reader"):
        raw = config_dict(aws)
        raw["cache"] = {"backend": "redis", "redis_url": redis_url, "key_prefix": redis_prefix}
        raw["audit"] = {"path": str(tmp_path / f"{name}.jsonl")}
        raw["drift"] = {"check_seconds": 0}  # clock_skew_seconds: the default, 1 s
        replicas.append(await gateway_factory(raw))
    writer, reader = replicas
    skewed(writer, writer_skew)
    skewed(reader, reader_skew)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{writer.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        # Its fresh read inside the lock records "no policy" as the baseline.
        written = await stub.PutRegistryPolicy(
            pb.PutRegistryPolicyRequest(policy_text=POLICY), metadata=metadata(), timeout=30
        )
    lagging_policy_read["left"] = 1
    assert await read_fresh(reader.port) is None  # AWS answered the state before the write
    assert await read_fresh(reader.port) == POLICY  # and then the write

    found = [e for name in ("writer", "reader") for e in events(tmp_path / f"{name}.jsonl")]
    assert found == [], [(e["event"], e["etag_before"], e["etag_after"]) for e in found]
    assert sum(counted(r, "drift", "policy") for r in replicas) == 0
    [head, baseline] = await reader.history.page(POLICY_KEY, before_seq=None, limit=5)
    assert (head.origin, head.tenant, head.etag) == ("gateway", "payments", written.etag)
    assert (baseline.origin, baseline.etag) == ("baseline", etags.of_policy(None))
    # Recorded on Redis's clock, not the writer's own (30 s off in one case). Bounds far wider
    # than a slow machine needs, far narrower than the skew.
    assert abs(head.recorded_at - time.time()) < SKEW / 3
