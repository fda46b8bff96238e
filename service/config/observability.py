"""The `audit:`, `metrics:`, `logs:` and `tracing:` sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from service.config.base import Strict, parse_listen


class AuditConfig(Strict):
    """Where the audit trail of writes goes: "-" for stdout, else a file appended to."""

    path: str = "-"


class MetricsConfig(Strict):
    """Prometheus text at http://<listen>/metrics."""

    listen: str

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_listen(value)
        return value


class LogsConfig(Strict):
    """How the gateway logs: JSON lines, or text for a person at a terminal."""

    format: Literal["auto", "json", "text"] = "auto"  # auto: text on a terminal, else JSON
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Successful reads served from the cache are logged by sample: a line per hit costs
    # more than the hit. Writes and errors are always logged.
    hit_sample_rate: float = Field(0.01, ge=0, le=1)


class TracingConfig(Strict):
    """OpenTelemetry spans, exported over OTLP/gRPC; off unless this section is given."""

    otlp_endpoint: str = Field(min_length=1)  # e.g. http://otel-collector:4317
    insecure: bool = True  # plaintext to a collector beside the pod
    service_name: str = "registry-gateway"
    sample_ratio: float = Field(1.0, ge=0, le=1)
