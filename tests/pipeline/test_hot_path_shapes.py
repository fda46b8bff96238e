"""What the cached read's hot path writes out by hand is what the general forms give
(bench/findings.md, "Fourth pass"): the `Outcome` that `Pipeline.started` builds field by
field, the method's metrics reporting a call in the MetricsReporter's place (once, with its
denials), the cache's plain counts, and a message wait counted from the time its caller
passes in."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest

from service.auth.tenancy import Tenancy, TenancyHolder, build_tenancy
from service.call import Call, current_call
from service.config import ServerConfig, from_mapping
from service.errors import Cancelled, PermissionDenied
from service.observability.audit import WriteRecord
from service.observability.metrics import Metrics
from service.pipeline.pipeline import Pipeline
from service.pipeline.reporters import Outcome
from service.pipeline.slots import CallSlots
from service.rpc.messages import TimeToMessage
from tests.support.helpers import KEY, config_dict, metadata

SERVICE = "ecr.registry.v1.RegistryConfigService"
DESCRIBE = f"/{SERVICE}/DescribeRegistry"
PUT_POLICY = f"/{SERVICE}/PutRegistryPolicy"
LABELS = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "DescribeRegistry"}


@pytest.fixture
def pipeline() -> Pipeline:
    tenancy: Tenancy = build_tenancy(
        from_mapping(config_dict("http://127.0.0.1:1"), environ={}), {}
    )
    return Pipeline(ServerConfig(), TenancyHolder(tenancy), metrics=Metrics())


@pytest.mark.parametrize("method", [DESCRIBE, PUT_POLICY])
def test_a_started_outcome_is_the_dataclass_with_its_defaults(
    pipeline: Pipeline, method: str
) -> None:
    outcome = pipeline.started(method, (("x-request-id", "req-1"), *metadata(KEY)))
    plan = pipeline.plan(method)
    record = WriteRecord() if plan.is_write else None
    expected = Outcome(
        method,
        plan.rpc,
        "req-1",
        None,
        None,
        record,
        grpc.StatusCode.CANCELLED,
        "CANCELLED",
        0.0,
        started=outcome.started,
        plan=plan,
    )
    # Every field readable (none left unset) and equal to the general constructor's.
    for field in dataclasses.fields(Outcome):
        assert getattr(outcome, field.name) == getattr(expected, field.name), field.name
    assert outcome == expected
    assert outcome.started > 0
    pipeline.ended(outcome)


def test_a_started_outcome_takes_a_fresh_request_id_each_call(pipeline: Pipeline) -> None:
    ids = {pipeline.started(DESCRIBE, metadata(KEY)).request_id for _ in range(600)}
    # 600 calls span more than one batch of pre-cut ids: none repeats, all 32 hex digits.
    assert len(ids) == 600
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_the_method_metrics_report_each_call_once_with_its_denials(pipeline: Pipeline) -> None:
    registry = pipeline.metrics.registry
    ok = pipeline.started(DESCRIBE, metadata(KEY))
    ok.code, ok.reason = grpc.StatusCode.OK, None
    pipeline.ended(ok)
    denied = pipeline.started(DESCRIBE, metadata(KEY))
    pipeline.fail_call(denied, PermissionDenied("not yours", reason="TARGET_DENIED"), str)
    pipeline.ended(denied)

    def handled(code: str) -> float | None:
        return registry.get_sample_value("grpc_server_handled_total", {**LABELS, "grpc_code": code})

    assert registry.get_sample_value("grpc_server_started_total", LABELS) == 2
    assert (handled("OK"), handled("PermissionDenied")) == (1, 1)
    assert registry.get_sample_value("grpc_server_handling_seconds_count", LABELS) == 2
    assert (
        registry.get_sample_value(
            "registry_gateway_authz_denied_total", {"reason": "TARGET_DENIED"}
        )
        == 1
    )
    # The method's metrics stand first among its reporters, under the metrics' name.
    assert pipeline.plan(DESCRIBE).reporters[0].name == "metrics"


def test_cache_counts_start_at_one_and_keep_their_created_time() -> None:
    metrics = Metrics()
    metrics.count_cache("hit")
    created = metrics.registry.get_sample_value(
        "registry_gateway_cache_requests_created", {"result": "hit"}
    )
    metrics.count_cache("hit")
    metrics.count_cache("miss")
    sample = metrics.registry.get_sample_value
    assert sample("registry_gateway_cache_requests_total", {"result": "hit"}) == 2
    assert sample("registry_gateway_cache_requests_total", {"result": "miss"}) == 1
    assert sample("registry_gateway_cache_requests_created", {"result": "hit"}) == created


@pytest.mark.parametrize("no_cache", [False, True])
def test_an_admitted_read_is_the_call_its_constructor_makes(
    pipeline: Pipeline, no_cache: bool
) -> None:
    sent = (*metadata(KEY), *((("cache-control", "no-cache"),) if no_cache else ()))

    async def admitted() -> None:
        outcome = pipeline.started(DESCRIBE, sent)
        call = await pipeline.admit_call(outcome, CallSlots(10, 10, 10), sent, None, str, 9.5)
        assert outcome.identity is not None
        expected = Call(
            outcome.request_id,
            outcome.identity,
            "DescribeRegistry",
            9.5,
            pipeline.tenancy.current,
            None,
            no_cache,
        )
        for field in dataclasses.fields(Call):
            assert getattr(call, field.name) == getattr(expected, field.name), field.name
        assert call == expected and current_call() is call is outcome.call
        # Its lists are its own, not shared with another call's.
        other = pipeline.started(DESCRIBE, sent)
        second = await pipeline.admit_call(other, CallSlots(10, 10, 10), sent, None, str, 9.5)
        call.cache_outcome("hit")
        assert second.trailers == [] and second.cache_result == []

    asyncio.run(admitted())


class _Silent:
    """A caller that sent its headers and then nothing."""

    async def read(self) -> bytes:
        await asyncio.sleep(30)
        raise AssertionError("the read was not cancelled")


def test_a_message_wait_counts_from_the_time_passed_in() -> None:
    async def wait() -> float:
        loop = asyncio.get_running_loop()
        messages = TimeToMessage(1.0)
        began = loop.time()
        with pytest.raises(Cancelled) as refused:
            # Headers seen 0.9 s ago: 0.1 s of the limit is left, not the whole second.
            await messages.read(_Silent(), True, True, began - 0.9)
        assert refused.value.reason == "REQUEST_MESSAGE_TIMEOUT"
        return loop.time() - began

    assert asyncio.run(wait()) < 0.6
