"""OpenTelemetry spans: none when off; with tracing on, an RPC span carrying the real gRPC
code (not OK for an abort), AWS call spans, and the caller's trace continued."""

from __future__ import annotations

import grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.helpers import POLICY, config_dict, describe_status, metadata

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def test_off_by_default(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory()
    assert not gateway.tracing.enabled


async def test_spans_carry_the_real_code_and_continue_the_callers_trace(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    exporter = InMemorySpanExporter()
    raw = config_dict(aws)
    raw["tracing"] = {"otlp_endpoint": "http://127.0.0.1:4317"}
    gateway = await gateway_factory(raw, span_exporter=exporter)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        await stub.PutRegistryPolicy(
            pb.PutRegistryPolicyRequest(policy_text=POLICY),
            metadata=(*metadata(), ("traceparent", TRACEPARENT)),
        )
    assert await describe_status(gateway.port, "not-a-key") == grpc.StatusCode.UNAUTHENTICATED
    gateway.tracing.flush()
    spans = exporter.get_finished_spans()
    servers = {s.name: s for s in spans if s.kind == SpanKind.SERVER}

    put = servers["ecr.registry.v1.RegistryConfigService/PutRegistryPolicy"]
    assert format(put.context.trace_id, "032x") == TRACE_ID
    assert put.attributes is not None and put.attributes["rpc.grpc.status_code"] == 0
    aws_calls = [s for s in spans if s.kind == SpanKind.CLIENT and s.parent is not None]
    assert {s.name for s in aws_calls} >= {"ECR.put_registry_policy", "ECR.get_registry_policy"}
    assert all(s.parent.span_id == put.context.span_id for s in aws_calls if s.parent)

    refused = servers["ecr.registry.v1.RegistryConfigService/DescribeRegistry"]
    assert refused.status.status_code == StatusCode.ERROR
    assert refused.attributes is not None
    assert refused.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
