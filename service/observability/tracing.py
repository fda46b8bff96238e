"""OpenTelemetry spans for each RPC and each AWS call, exported only when configured.

Off (no `tracing:` section) it costs nothing: `span()` answers a shared null context and no
OpenTelemetry object is made. On, spans go to the OTLP endpoint in batches. The RPC span's
status is recorded here from the real gRPC code: OpenTelemetry's own aio server
instrumentation records `abort_with_status` as OK.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import grpc
from opentelemetry import propagate
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from service.config import TracingConfig

_NULL = contextlib.nullcontext(None)


class Tracing:
    """The gateway's tracer, or nothing when tracing is off."""

    def __init__(self, config: TracingConfig | None, exporter: SpanExporter | None = None) -> None:
        self._provider: TracerProvider | None = None
        self._tracer: Any = None
        if config is None:
            return
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint, insecure=config.insecure)
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBasedTraceIdRatio(config.sample_ratio),
        )
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("registry-gateway")

    @property
    def enabled(self) -> bool:
        """Whether spans are made at all."""
        return self._tracer is not None

    def rpc(
        self, full_method: str, metadata: Any
    ) -> contextlib.AbstractContextManager[Span | None]:
        """A server span for one RPC, continuing the caller's trace (W3C traceparent)."""
        if self._tracer is None:
            return _NULL
        carrier: Mapping[str, str] = {
            k: v for k, v in (metadata or ()) if isinstance(v, str) and k in _PROPAGATED
        }
        service, method = full_method.lstrip("/").rsplit("/", 1)
        return self._tracer.start_as_current_span(  # type: ignore[no-any-return]
            full_method.lstrip("/"),
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
            record_exception=False,
            set_status_on_exception=False,
        )

    def aws(self, operation: str, region: str) -> contextlib.AbstractContextManager[Span | None]:
        """A client span for one AWS call."""
        if self._tracer is None:
            return _NULL
        return self._tracer.start_as_current_span(  # type: ignore[no-any-return]
            f"ECR.{operation}",
            kind=SpanKind.CLIENT,
            attributes={
                "rpc.system": "aws-api",
                "rpc.service": "ECR",
                "rpc.method": operation,
                "cloud.region": region,
            },
            record_exception=False,
        )

    def flush(self) -> None:
        """Export the spans ended so far."""
        if self._provider is not None:
            self._provider.force_flush()

    def shutdown(self) -> None:
        """Flush and stop the exporter."""
        if self._provider is not None:
            self._provider.shutdown()


_PROPAGATED = frozenset({"traceparent", "tracestate"})


def end_rpc(span: Span | None, code: grpc.StatusCode, reason: str | None) -> None:
    """Record the real gRPC outcome on the RPC span."""
    if span is None:
        return
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if reason:
        span.set_attribute("registry_gateway.reason", reason)
    if code != grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))
