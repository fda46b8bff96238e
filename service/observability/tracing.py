"""OpenTelemetry spans for each RPC and each AWS call, exported only when configured.

Off (no `tracing:` section and no OTEL_* variable asking for traces) it costs nothing:
`span()` answers a shared null context and no OpenTelemetry object is made. On, spans go to
the OTLP endpoint in batches. The RPC span's status is recorded here from the real gRPC
code: OpenTelemetry's own aio server instrumentation records `abort_with_status` as OK.

Configuration (`settings`): the `OTEL_*` variables as the OpenTelemetry SDK defines them
(https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/), with
each key the YAML `tracing:` section sets winning over its variable:

- on when the YAML section is given, or OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set, or
  OTEL_TRACES_EXPORTER names `otlp`; OTEL_SDK_DISABLED=true (the SDK's switch) turns it
  off whatever else says on, OTEL_TRACES_EXPORTER=none turns the variables' "on" off;
- endpoint: `otlp_endpoint`, else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else
  OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4317; OTLP over gRPC only, so
  OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL must be `grpc` when set;
- `insecure`: the YAML key when written, else OTEL_EXPORTER_OTLP_(TRACES_)INSECURE, else
  the endpoint's scheme (http: plaintext), else the YAML default (plaintext);
- service name: `service_name` when written, else OTEL_SERVICE_NAME, else `service.name` of
  OTEL_RESOURCE_ATTRIBUTES, else "registry-gateway"; the other resource attributes too;
- sampler: `sample_ratio` when written (parent-based ratio), else OTEL_TRACES_SAMPLER and
  OTEL_TRACES_SAMPLER_ARG, else parent-based always-on;
- headers, certificates, timeout, compression: the exporter reads OTEL_EXPORTER_OTLP_* itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
from opentelemetry import propagate
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode

from service.config import ConfigError, TracingConfig
from service.observability import build

log = logging.getLogger("registry_gateway.tracing")

_NULL = contextlib.nullcontext(None)
DEFAULT_SERVICE_NAME = "registry-gateway"
DEFAULT_ENDPOINT = "http://localhost:4317"

# The span of the call this task serves, for the log lines (service/observability/logs.py).
# Set when the RPC span starts and deliberately not reset when it ends: the call's access
# line is written by a reporter after the span has ended and left the context, and must
# still carry its trace. Each call runs in a task (and context) of its own, gRPC and HTTP
# alike, so the value dies with the call; a cache load runs in an empty context.
_CALL_SPAN: contextvars.ContextVar[SpanContext | None] = contextvars.ContextVar(
    "registry_gateway_call_span", default=None
)


def call_span_context() -> SpanContext | None:
    """The span context of the call being served in this context, if it was traced."""
    return _CALL_SPAN.get()


@dataclass(frozen=True)
class TracingSettings:
    """What tracing does, resolved from the YAML section and the OTEL_* variables."""

    endpoint: str
    insecure: bool | None  # None: the exporter decides (its env variable, the scheme)
    resource_attributes: dict[str, str]
    sampler: Sampler
    source: str  # "config", "env" or "config+env": for the start-up line


def _flag(value: str | None) -> bool | None:
    if value is None or not value.strip():
        return None
    return value.strip().lower() == "true"


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def _resource_attributes(env: Mapping[str, str]) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES: `key=value,key=value`, values percent-encoded (as the SDK)."""
    attributes: dict[str, str] = {}
    for part in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = urllib.parse.unquote(value.strip())
    return attributes


def _ratio(env: Mapping[str, str]) -> float:
    text = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if not text:
        return 1.0
    try:
        ratio = float(text)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        log.warning("OTEL_TRACES_SAMPLER_ARG is not a ratio in [0, 1]; sampling everything")
        return 1.0
    return ratio


def _env_sampler(env: Mapping[str, str]) -> Sampler | None:
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if not name:
        return None
    samplers: dict[str, Any] = {
        "always_on": lambda: ALWAYS_ON,
        "always_off": lambda: ALWAYS_OFF,
        "traceidratio": lambda: TraceIdRatioBased(_ratio(env)),
        "parentbased_always_on": lambda: ParentBased(ALWAYS_ON),
        "parentbased_always_off": lambda: ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": lambda: ParentBasedTraceIdRatio(_ratio(env)),
    }
    make = samplers.get(name)
    if make is None:
        # The SDK's own behaviour for a sampler it does not know: the default, and a warning.
        log.warning(
            "OTEL_TRACES_SAMPLER names a sampler this gateway does not have; using "
            "parentbased_always_on",
            extra={"reason": "UNKNOWN_SAMPLER"},
        )
        return None
    sampler: Sampler = make()
    return sampler


def settings(config: TracingConfig | None, environ: Mapping[str, str]) -> TracingSettings | None:
    """How to trace, or None for off: the YAML section's written keys, else OTEL_* (above)."""
    env = environ
    written = config.model_fields_set if config is not None else set()
    exporters = {
        name.strip().lower()
        for name in env.get("OTEL_TRACES_EXPORTER", "").split(",")
        if name.strip()
    }
    endpoint_env = _first(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    if _flag(env.get("OTEL_SDK_DISABLED")):
        if config is not None:
            log.warning("OTEL_SDK_DISABLED=true: tracing is off despite the `tracing:` section")
        return None
    by_env = exporters != {"none"} and (endpoint_env is not None or "otlp" in exporters)
    if exporters - {"otlp", "none"}:
        log.warning(
            "OTEL_TRACES_EXPORTER names exporters this gateway does not have; it exports "
            "OTLP over gRPC only",
            extra={"reason": "UNKNOWN_EXPORTER"},
        )
    if config is None and not by_env:
        return None
    protocol = _first(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol is not None and protocol.lower() != "grpc":
        if config is None:
            why = (
                "this gateway exports OTLP over gRPC only; set it to grpc (or unset it) and "
                "point the endpoint at a gRPC receiver (usually port 4317)"
            )
            name = "OTEL_EXPORTER_OTLP_PROTOCOL"
            raise ConfigError(f"config error: {name}: {why}", ((name, why),))
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL is ignored: the `tracing:` section is OTLP/gRPC")

    endpoint = config.otlp_endpoint if config is not None else endpoint_env or DEFAULT_ENDPOINT
    insecure: bool | None = None
    insecure_env = _flag(
        _first(env, "OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE")
    )
    if config is not None and ("insecure" in written or insecure_env is None):
        # Written in YAML, or nothing else says: the section's value (its default, plaintext
        # to a collector beside the pod). An https:// endpoint is TLS either way.
        insecure = config.insecure
    elif insecure_env is not None:
        insecure = insecure_env

    attributes = _resource_attributes(env)
    env_name = env.get("OTEL_SERVICE_NAME", "").strip()
    if config is not None and "service_name" in written:
        attributes["service.name"] = config.service_name
    elif env_name:
        attributes["service.name"] = env_name
    elif "service.name" not in attributes:
        attributes["service.name"] = (
            config.service_name if config is not None else DEFAULT_SERVICE_NAME
        )
    attributes.setdefault("service.version", build.version())

    sampler: Sampler | None = None
    if config is not None and "sample_ratio" in written:
        sampler = ParentBasedTraceIdRatio(config.sample_ratio)
    else:
        sampler = _env_sampler(env)
    if sampler is None:
        ratio = config.sample_ratio if config is not None else 1.0
        sampler = ParentBasedTraceIdRatio(ratio) if ratio < 1.0 else ParentBased(ALWAYS_ON)

    uses_env = by_env or any(name.startswith("OTEL_") for name in env)
    source = "config" if config is not None else "env"
    if config is not None and uses_env:
        source = "config+env"
    return TracingSettings(endpoint, insecure, attributes, sampler, source)


def _without_userinfo(endpoint: str) -> str:
    parts = urllib.parse.urlsplit(endpoint)
    if "@" not in parts.netloc:
        return endpoint
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


class _CallSpan(contextlib.AbstractContextManager["Span | None"]):
    """The RPC span's context manager, which also names the span for the call's log lines."""

    def __init__(self, inner: contextlib.AbstractContextManager[Span]) -> None:
        self._inner = inner

    def __enter__(self) -> Span:
        span = self._inner.__enter__()
        _CALL_SPAN.set(span.get_span_context())
        return span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        return self._inner.__exit__(exc_type, exc, traceback)


class Tracing:
    """The gateway's tracer, or nothing when tracing is off."""

    def __init__(
        self,
        config: TracingConfig | None,
        exporter: SpanExporter | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._provider: TracerProvider | None = None
        self._tracer: Any = None
        # The environment whose OTEL_* variables count: the Gateway hands its own (the
        # process's, in production); without one (a default `Tracing(None)`), none do.
        self.settings = settings(config, {} if environ is None else environ)
        if self.settings is None:
            return
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(
                endpoint=self.settings.endpoint, insecure=self.settings.insecure
            )
        self._provider = TracerProvider(
            resource=Resource.create(self.settings.resource_attributes),
            sampler=self.settings.sampler,
        )
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("registry-gateway")
        log.info(
            "tracing on: OTLP/gRPC to %s as %s, sampler %s (from %s)",
            _without_userinfo(self.settings.endpoint),
            self.settings.resource_attributes["service.name"],
            self.settings.sampler.get_description(),
            self.settings.source,
        )

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
        return _CallSpan(
            self._tracer.start_as_current_span(
                full_method.lstrip("/"),
                context=propagate.extract(carrier),
                kind=SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
                record_exception=False,
                set_status_on_exception=False,
            )
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
