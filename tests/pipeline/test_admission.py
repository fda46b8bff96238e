"""The one admission both transports run (`Pipeline.admit_call`, `Pipeline.fail_call`):
what a caller holds after it is admitted or refused, and what a failure answers; and the
call's span, owned by the pipeline from `started` to `ended`."""

from __future__ import annotations

import asyncio
import contextvars

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.auth.tenancy import Tenancy, TenancyHolder, build_tenancy
from service.call import current_call
from service.config import ServerConfig, TracingConfig, from_mapping
from service.errors import InvalidArgument, ResourceExhausted
from service.observability.tracing import Tracing
from service.pipeline.gates import FailedAuthentication
from service.pipeline.pipeline import Pipeline
from service.pipeline.reporters import AccessLogReporter, Outcome
from service.pipeline.slots import CallSlots
from service.state.ratelimit import RateKind
from tests.support.helpers import KEY, config_dict, metadata

DESCRIBE = "/ecr.registry.v1.RegistryConfigService/DescribeRegistry"
SECRET = "the-text-of-the-failure"


class _NoTokens:
    async def acquire(self, tenant: str, kind: RateKind) -> None:
        raise ResourceExhausted(f"{tenant} is over its {kind} rate", reason="RATE_LIMITED")


def _peer() -> str:
    return "ipv4:192.0.2.7:5555"


@pytest.fixture
def failing_access_log(monkeypatch: pytest.MonkeyPatch) -> None:
    def post_call(self: AccessLogReporter, outcome: Outcome) -> None:
        raise RuntimeError(SECRET)

    monkeypatch.setattr(AccessLogReporter, "post_call", post_call)


@pytest.fixture
def tenancy() -> Tenancy:
    return build_tenancy(from_mapping(config_dict("http://127.0.0.1:1"), environ={}), {})


def test_an_admitted_call_is_current_and_holds_its_tenants_slot(tenancy: Tenancy) -> None:
    pipeline = Pipeline(ServerConfig(), TenancyHolder(tenancy))
    slots = CallSlots(10, 1, 1)

    async def admitted() -> None:
        outcome = pipeline.started(DESCRIBE, metadata(KEY))
        call = await pipeline.admit_call(outcome, slots, metadata(KEY), None, _peer, 12.5)
        assert current_call() is call is outcome.call
        assert (call.rpc, call.deadline, call.tenant.name) == ("DescribeRegistry", 12.5, "payments")
        assert slots.in_flight == 1
        # The tenant's one slot is held: its next call is refused, and holds nothing.
        second = pipeline.started(DESCRIBE, metadata(KEY))
        with pytest.raises(ResourceExhausted):
            await pipeline.admit_call(second, slots, metadata(KEY), None, _peer, 12.5)
        assert slots.in_flight == 1 and second.call is None

    asyncio.run(admitted())


def test_a_refused_call_holds_no_slot(tenancy: Tenancy) -> None:
    slots = CallSlots(10, 5, 1)
    limited = Pipeline(ServerConfig(), TenancyHolder(tenancy), rate_limiter=_NoTokens())

    async def refused() -> None:
        # A stranger: refused at the gate, named by address only.
        outcome = limited.started(DESCRIBE, metadata("not-a-key"))
        with pytest.raises(FailedAuthentication) as failed:
            await limited.admit_call(outcome, slots, metadata("not-a-key"), None, _peer, 1.0)
        error = limited.fail_call(outcome, failed.value, _peer)
        assert (outcome.code, outcome.peer) == (grpc.StatusCode.UNAUTHENTICATED, _peer())
        assert error.code == grpc.StatusCode.UNAUTHENTICATED
        # Rate-limited after its slot was taken: the slot is given back.
        outcome = limited.started(DESCRIBE, metadata(KEY))
        with pytest.raises(ResourceExhausted):
            await limited.admit_call(outcome, slots, metadata(KEY), None, _peer, 1.0)
        # What the transport found wrong is answered once the caller is known.
        found = InvalidArgument("bad protocol header", reason="BAD_HEADER")
        outcome = limited.started(DESCRIBE, metadata(KEY))
        with pytest.raises(InvalidArgument):
            await limited.admit_call(outcome, slots, metadata(KEY), None, _peer, 1.0, found)
        assert outcome.identity is not None and outcome.call is None
        assert slots.in_flight == 0

    asyncio.run(refused())


def test_an_unexpected_failure_answers_internal_with_the_request_id_only(
    tenancy: Tenancy,
) -> None:
    pipeline = Pipeline(ServerConfig(), TenancyHolder(tenancy))
    outcome = pipeline.started(DESCRIBE, metadata(KEY))
    error = pipeline.fail_call(outcome, RuntimeError(SECRET), _peer)
    assert (error.code, outcome.code, outcome.reason) == (
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.INTERNAL,
        "INTERNAL",
    )
    assert outcome.error_type == "RuntimeError" and outcome.peer is None
    assert SECRET not in error.message and outcome.request_id in error.message


@pytest.mark.usefixtures("failing_access_log")
def test_the_pipeline_owns_the_calls_span_from_started_to_ended(tenancy: Tenancy) -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(TracingConfig(otlp_endpoint="http://127.0.0.1:1"), exporter, environ={})
    pipeline = Pipeline(ServerConfig(), TenancyHolder(tenancy), tracing=tracing)

    def call() -> None:
        outcome = pipeline.started(DESCRIBE, metadata(KEY))
        assert outcome.span is not None and outcome.span.is_recording()
        outcome.code, outcome.reason = grpc.StatusCode.PERMISSION_DENIED, "TARGET_NOT_ALLOWED"
        # Closed by `ended` with the real code, though a reporter after it raises.
        pipeline.ended(outcome)

    # In a context of its own, as a served call's task has: the span's id, kept in a context
    # variable for the call's log lines, must not outlive the test (it would mark every
    # later test's log lines with a trace).
    contextvars.Context().run(call)
    tracing.flush()
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert span.attributes["registry_gateway.reason"] == "TARGET_NOT_ALLOWED"
    assert pipeline.open_calls == 0
    tracing.shutdown()
