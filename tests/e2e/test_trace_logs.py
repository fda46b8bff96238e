"""Logs joined to traces: every line written inside a traced call carries its trace_id and
span_id, in both formats; tracing turned on by the OTEL_* variables alone; audit lines on
stdout marked as such."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service.config import AuditConfig, LogsConfig
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from service.observability.audit import AuditLog, WriteRecord
from service.observability.logs import configure_logging
from tests.conftest import GatewayFactory, wait_until
from tests.support.helpers import KEY, POLICY, config_dict, describe_status, metadata

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
PUT = "ecr.registry.v1.RegistryConfigService/PutRegistryPolicy"


@pytest.fixture(params=["json", "text"])
def log_stream(request: pytest.FixtureRequest) -> Iterator[tuple[str, io.StringIO]]:
    stream = io.StringIO()
    configure_logging(LogsConfig(format=request.param, hit_sample_rate=1.0), stream)
    yield request.param, stream
    logging.getLogger("registry_gateway").handlers.clear()
    logging.getLogger("registry_gateway").propagate = True


def parse(kind: str, line: str) -> dict[str, Any]:
    if kind == "json":
        parsed: dict[str, Any] = json.loads(line)
        return parsed
    # The text format's key=value fields (values here are all bare tokens).
    return dict(re.findall(r' ([a-z_]+)=([^\s"]+)', line)) | {"line": line}


async def put_policy(port: int, *extra: tuple[str, str]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        await stub.PutRegistryPolicy(
            pb.PutRegistryPolicyRequest(policy_text=POLICY), metadata=(*metadata(), *extra)
        )


async def test_every_line_of_a_traced_call_carries_its_trace_and_span(
    gateway_factory: GatewayFactory, aws: str, log_stream: tuple[str, io.StringIO]
) -> None:
    kind, stream = log_stream
    exporter = InMemorySpanExporter()
    raw = config_dict(aws)
    raw["tracing"] = {"otlp_endpoint": "http://127.0.0.1:4317"}
    gateway = await gateway_factory(raw, span_exporter=exporter)
    await put_policy(gateway.port, ("traceparent", TRACEPARENT))  # continues the caller's
    await describe_status(gateway.port)  # starts a trace of its own
    await describe_status(gateway.port, "not-a-key")  # refused, still traced

    def call_lines() -> list[dict[str, Any]] | None:
        lines = [parse(kind, line) for line in stream.getvalue().splitlines()]
        calls = [line for line in lines if line.get("rpc")]
        return lines if len(calls) >= 3 else None

    lines = await wait_until(call_lines, what="the three call lines")
    gateway.tracing.flush()
    servers = {
        format(s.context.span_id, "016x"): s
        for s in exporter.get_finished_spans()
        if s.kind == SpanKind.SERVER
    }
    calls = [line for line in lines if line.get("rpc")]
    assert [c["rpc"] for c in calls] == [
        "PutRegistryPolicy",
        "DescribeRegistry",
        "DescribeRegistry",
    ]
    for call in calls:
        # Each call's line names its own server span, in its own trace.
        span = servers[call["span_id"]]
        assert call["trace_id"] == format(span.context.trace_id, "032x")
        assert span.name.endswith("/" + call["rpc"])
    assert calls[0]["trace_id"] == TRACE_ID
    assert len({c["trace_id"] for c in calls}) == 3
    # Lines written outside any call (start-up) carry no trace.
    serving = [line for line in lines if "serving plaintext" in str(line.get("message", line))]
    assert serving and all("trace_id" not in line for line in serving)


async def test_untraced_calls_log_no_trace_fields(
    gateway_factory: GatewayFactory, log_stream: tuple[str, io.StringIO]
) -> None:
    kind, stream = log_stream
    gateway = await gateway_factory()
    await describe_status(gateway.port)

    def call_line() -> dict[str, Any] | None:
        lines = [parse(kind, line) for line in stream.getvalue().splitlines()]
        return next((line for line in lines if line.get("rpc")), None)

    line = await wait_until(call_line, what="the call line")
    assert "trace_id" not in line and "span_id" not in line


async def test_the_otel_variables_alone_turn_tracing_on(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    exporter = InMemorySpanExporter()
    gateway = await gateway_factory(
        config_dict(aws),  # no `tracing:` section
        environ={
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
            "OTEL_SERVICE_NAME": "gateway-from-env",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
        },
        span_exporter=exporter,
    )
    assert gateway.tracing.enabled
    await put_policy(gateway.port, ("traceparent", TRACEPARENT))
    gateway.tracing.flush()
    put = next(s for s in exporter.get_finished_spans() if s.name == PUT)
    assert format(put.context.trace_id, "032x") == TRACE_ID
    assert put.resource.attributes["service.name"] == "gateway-from-env"
    assert put.resource.attributes["deployment.environment"] == "test"


def write_one(audit: AuditLog) -> None:
    audit.write(
        request_id="r-1",
        tenant="payments",
        identity="api_key:sha256:0123456789ab",
        rpc="PutRegistryPolicy",
        outcome="OK",
        reason=None,
        record=WriteRecord(registry_id="123456789012", region="us-east-1"),
    )


def test_audit_lines_on_stdout_are_marked_and_those_in_a_file_unchanged(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stdout = io.StringIO()
    monkeypatch.setattr("sys.stdout", stdout)
    write_one(AuditLog(AuditConfig()))  # path "-": stdout
    line = stdout.getvalue()
    assert line.startswith('{"log":"audit",')
    assert json.loads(line)["log"] == "audit"

    path = tmp_path / "audit.jsonl"
    audit = AuditLog(AuditConfig(path=str(path)))
    write_one(audit)
    audit.close()
    assert "log" not in json.loads(path.read_text())


async def test_calls_over_http_join_their_trace_too(
    gateway_factory: GatewayFactory, aws: str, log_stream: tuple[str, io.StringIO]
) -> None:
    kind, stream = log_stream
    exporter = InMemorySpanExporter()
    raw = config_dict(aws)
    raw["tracing"] = {"otlp_endpoint": "http://127.0.0.1:4317"}
    raw["http"] = {"listen": "127.0.0.1:0"}
    gateway = await gateway_factory(raw, span_exporter=exporter)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gateway.http_port}", timeout=30
    ) as client:
        reply = await client.post(
            "/ecr.registry.v1.RegistryConfigService/DescribeRegistry",
            json={},
            headers={"authorization": f"Bearer {KEY}", "traceparent": TRACEPARENT},
        )
    assert reply.status_code == 200, reply.text

    def call_line() -> dict[str, Any] | None:
        lines = [parse(kind, line) for line in stream.getvalue().splitlines()]
        return next((line for line in lines if line.get("rpc")), None)

    line = await wait_until(call_line, what="the call line")
    gateway.tracing.flush()
    server = next(s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER)
    assert line["trace_id"] == TRACE_ID == format(server.context.trace_id, "032x")
    assert line["span_id"] == format(server.context.span_id, "016x")
