"""The pipeline's gates and reporters, each alone (no transport, no server)."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from service.auth.failures import AuthFailures
from service.auth.tenancy import Tenancy, build_tenancy
from service.call import Call
from service.config import AuditConfig, RateLimitConfig, from_mapping
from service.errors import ResourceExhausted
from service.observability.audit import AuditLog, WriteRecord
from service.observability.metrics import Metrics
from service.pipeline.gates import Admit, Authenticate, FailedAuthentication, past_the_cache
from service.pipeline.reporters import (
    AccessLogReporter,
    AuditReporter,
    MetricsReporter,
    Outcome,
)
from service.state.ratelimit import LocalRateLimiter, UpstreamBudget
from tests.support.helpers import KEY, config_dict, metadata

METHOD = "/ecr.registry.v1.RegistryConfigService/PutRegistryPolicy"


@pytest.fixture
def tenancy() -> Tenancy:
    return build_tenancy(from_mapping(config_dict("http://127.0.0.1:1"), environ={}), {})


def outcome(tenancy: Tenancy, code: grpc.StatusCode, **fields: object) -> Outcome:
    identity = tenancy.authenticator.authenticate(metadata(KEY))
    call = Call("r1", identity, "PutRegistryPolicy", 0.0, tenancy)
    base: dict[str, object] = {
        "method": METHOD,
        "rpc": "PutRegistryPolicy",
        "request_id": "r1",
        "identity": identity,
        "call": call,
        "record": WriteRecord(registry_id="123456789012", region="us-east-1"),
        "code": code,
        "reason": None if code == grpc.StatusCode.OK else code.name,
        "seconds": 0.001,
    }
    base.update(fields)
    return Outcome(**base)  # type: ignore[arg-type]


def test_authenticate_counts_every_failure_and_samples_past_the_budget(
    tenancy: Tenancy,
) -> None:
    metrics = Metrics()
    gate = Authenticate(metrics, AuthFailures(per_second=0.001, burst=2, log_every=3))
    verdicts = []
    for _ in range(6):
        with pytest.raises(FailedAuthentication) as caught:
            gate(tenancy, metadata("wrong"), None, lambda: "ipv4:10.0.0.9:4242")
        verdicts.append((caught.value.error.reason, caught.value.log))
    assert verdicts == [
        ("INVALID_CREDENTIALS", True),
        ("INVALID_CREDENTIALS", True),
        ("AUTH_FAILURES_RATE_LIMITED", False),
        ("AUTH_FAILURES_RATE_LIMITED", False),
        ("AUTH_FAILURES_RATE_LIMITED", True),  # one line in log_every, past the budget
        ("AUTH_FAILURES_RATE_LIMITED", False),
    ]
    sample = metrics.registry.get_sample_value(
        "registry_gateway_auth_failures_total", {"reason": "INVALID_CREDENTIALS"}
    )
    assert sample == 6
    # The same address with a valid key: authenticated, whatever its failures.
    assert gate(tenancy, metadata(KEY), None, lambda: "ipv4:10.0.0.9:4242").tenant.name == (
        "payments"
    )


async def test_admit_spends_the_upstream_budget_only_past_the_cache() -> None:
    config = RateLimitConfig(reads_per_second=0.001, writes_per_second=0.001, burst=1)
    admit = Admit(None, UpstreamBudget(0.001, 1, LocalRateLimiter(config)))

    async def call(tenant: str, is_write: bool, no_cache: bool, reaches: bool) -> None:
        # Each call in its own task (a context of its own), as each RPC runs.
        async def run() -> None:
            await admit(tenant, is_write=is_write, no_cache=no_cache)
            if reaches:
                await past_the_cache()
                await past_the_cache()  # once a call, however often it is asked

        await asyncio.get_running_loop().create_task(run(), context=contextvars.Context())

    for _ in range(5):
        await call("payments", False, False, reaches=True)  # cached reads: free
    for _ in range(5):
        await call("payments", True, False, reaches=False)  # refused before AWS: free
    await call("payments", True, False, reaches=True)  # the one call of the burst
    with pytest.raises(ResourceExhausted) as caught:
        await call("payments", False, True, reaches=True)
    assert caught.value.reason == "UPSTREAM_BUDGET_EXHAUSTED"
    await call("billing", True, False, reaches=True)  # a budget per tenant
    await past_the_cache()  # outside any admitted call: nothing to spend


def test_metrics_reporter_counts_by_code_and_denials(tenancy: Tenancy) -> None:
    metrics = Metrics()
    reporter = MetricsReporter(metrics)
    reporter.post_call(outcome(tenancy, grpc.StatusCode.OK))
    reporter.post_call(outcome(tenancy, grpc.StatusCode.PERMISSION_DENIED))
    labels = {
        "grpc_type": "unary",
        "grpc_service": "ecr.registry.v1.RegistryConfigService",
        "grpc_method": "PutRegistryPolicy",
    }
    handled = "grpc_server_handled_total"
    assert metrics.registry.get_sample_value(handled, {**labels, "grpc_code": "OK"}) == 1
    assert (
        metrics.registry.get_sample_value(handled, {**labels, "grpc_code": "PermissionDenied"}) == 1
    )
    denied = metrics.registry.get_sample_value(
        "registry_gateway_authz_denied_total", {"reason": "PERMISSION_DENIED"}
    )
    assert denied == 1


@pytest.fixture
def call_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("registry_gateway.calls")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_access_log_samples_hits_and_stays_quiet_when_told(
    tenancy: Tenancy, call_log: io.StringIO
) -> None:
    reporter = AccessLogReporter(hit_sample_rate=0.5, sample=lambda: 0.9)
    hit = outcome(tenancy, grpc.StatusCode.OK, record=None)
    assert hit.call is not None
    hit.call.cache_outcome("hit")
    reporter.post_call(hit)  # off the sample
    reporter.post_call(outcome(tenancy, grpc.StatusCode.UNAUTHENTICATED, quiet=True))
    assert call_log.getvalue() == ""
    reporter.post_call(outcome(tenancy, grpc.StatusCode.ABORTED))
    assert call_log.getvalue().count("call failed") == 1


def test_audit_reporter_writes_one_line_per_write_and_none_for_reads(
    tenancy: Tenancy, tmp_path: Path
) -> None:
    audit = AuditLog(AuditConfig(path=str(tmp_path / "audit.jsonl")))
    reporter = AuditReporter(audit)
    reporter.post_call(outcome(tenancy, grpc.StatusCode.OK, record=None))  # a read
    reporter.post_call(outcome(tenancy, grpc.StatusCode.CANCELLED))
    audit.close()
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(x["rpc"], x["outcome"], x["tenant"]) for x in lines] == [
        ("PutRegistryPolicy", "CANCELLED", "payments")
    ]
