"""A reporter that raises never fails the call it observes (issue 25): the call's answer
stands, the other reporters still run, the failure is counted and logged once per kind."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import pytest

from service.auth.tenancy import Tenancy, TenancyHolder, build_tenancy
from service.config import AuditConfig, ServerConfig, from_mapping
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from service.observability.audit import AuditLog
from service.observability.metrics import Metrics
from service.pipeline.pipeline import Pipeline
from service.pipeline.reporters import AccessLogReporter, Outcome
from tests.conftest import GatewayFactory
from tests.support.helpers import KEY, config_dict, metadata

PUT = "/ecr.registry.v1.RegistryConfigService/PutRegistryPolicy"
SECRET = "the-text-of-the-failure"


def failures(metrics: Metrics, reporter: str) -> float:
    value = metrics.registry.get_sample_value(
        "registry_gateway_reporter_failures_total", {"reporter": reporter}
    )
    return value or 0.0


@pytest.fixture
def tenancy() -> Tenancy:
    return build_tenancy(from_mapping(config_dict("http://127.0.0.1:1"), environ={}), {})


@pytest.fixture
def failing_access_log(monkeypatch: pytest.MonkeyPatch) -> None:
    def post_call(self: AccessLogReporter, outcome: Outcome) -> None:
        raise RuntimeError(SECRET)

    monkeypatch.setattr(AccessLogReporter, "post_call", post_call)


@pytest.mark.usefixtures("failing_access_log")
def test_a_reporter_that_raises_neither_fails_the_call_nor_stops_the_others(
    tenancy: Tenancy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditLog(AuditConfig(path=str(tmp_path / "audit.jsonl")))
    metrics = Metrics()
    pipeline = Pipeline(ServerConfig(), TenancyHolder(tenancy), audit=audit, metrics=metrics)
    caplog.set_level(logging.ERROR, logger="registry_gateway")
    for _ in range(2):
        outcome = pipeline.started(PUT, metadata(KEY))
        outcome.code, outcome.reason = grpc.StatusCode.OK, None
        pipeline.ended(outcome)  # the access log raises: nothing reaches the call
    audit.close()
    # The reporter after the failing one (the audit) still ran, for both calls; the call
    # was counted by the one before it; nothing is left open for the shutdown to wait on.
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [x["outcome"] for x in lines] == ["OK", "OK"]
    handled = {
        "grpc_type": "unary",
        "grpc_service": "ecr.registry.v1.RegistryConfigService",
        "grpc_method": "PutRegistryPolicy",
        "grpc_code": "OK",
    }
    assert metrics.registry.get_sample_value("grpc_server_handled_total", handled) == 2
    assert pipeline.open_calls == 0
    # Counted each time, logged once, by kind and exception type, never its text.
    assert failures(metrics, "access_log") == 2
    logged = [r for r in caplog.records if "access_log" in r.getMessage()]
    assert len(logged) == 1 and "RuntimeError" in logged[0].getMessage()
    assert SECRET not in caplog.text


@pytest.mark.usefixtures("failing_access_log")
async def test_over_grpc_a_failing_reporter_leaves_every_answer_as_it_was(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    gateway = await gateway_factory(config_dict(aws))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        call = stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata(KEY))
        response = await call
        assert response.registry_id and await call.code() == grpc.StatusCode.OK
        # Its trailers too: the request id and x-cache are sent after the reporters ran.
        trailers = dict(await call.trailing_metadata() or ())
        assert trailers.get("x-request-id") and trailers.get("x-cache")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata("nope"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert failures(gateway.metrics, "access_log") == 2
    assert gateway.pipeline.open_calls == 0
