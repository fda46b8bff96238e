"""Tracing's settings: the OTEL_* variables as the OpenTelemetry SDK defines them, each
overridden by the key the YAML `tracing:` section writes."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)

from service.config import ConfigError, TracingConfig
from service.observability import build
from service.observability.tracing import Tracing, TracingSettings, settings

ENDPOINT = "http://collector:4317"


def described(sampler: Sampler) -> str:
    """The sampler's description: samplers do not compare equal, their descriptions do."""
    description: str = sampler.get_description()
    return description


def yaml_section(**written: Any) -> TracingConfig:
    """A `tracing:` section as YAML would give it: only the keys written count as set."""
    return TracingConfig.model_validate({"otlp_endpoint": "http://yaml:4317", **written})


def resolved(config: TracingConfig | None, **env: str) -> TracingSettings:
    found = settings(config, env)
    assert found is not None
    return found


def test_off_without_section_or_variables() -> None:
    assert settings(None, {}) is None
    # Variables that do not ask for export leave it off.
    assert settings(None, {"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}) is None
    assert not Tracing(None).enabled
    # A default Tracing(None) reads no environment at all: only the Gateway hands one over.
    assert not Tracing(None, environ=None).enabled


def test_the_variables_alone_turn_it_on() -> None:
    on = resolved(None, OTEL_EXPORTER_OTLP_ENDPOINT=ENDPOINT)
    assert on.endpoint == ENDPOINT and on.source == "env"
    assert on.resource_attributes["service.name"] == "registry-gateway"
    assert on.resource_attributes["service.version"] == build.version()
    assert described(on.sampler) == described(ParentBased(ALWAYS_ON))
    # The traces-only variable wins over the general one, as the SDK says.
    traces = resolved(
        None,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://general:4317",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=ENDPOINT,
    )
    assert traces.endpoint == ENDPOINT
    # OTEL_TRACES_EXPORTER=otlp alone: the SDK's default endpoint.
    assert resolved(None, OTEL_TRACES_EXPORTER="otlp").endpoint == "http://localhost:4317"


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_TRACES_EXPORTER": "none"},
    ],
    ids=["sdk-disabled", "exporter-none"],
)
def test_the_variables_turn_it_off(env: dict[str, str]) -> None:
    assert settings(None, env) is None


def test_sdk_disabled_wins_even_over_the_section() -> None:
    assert settings(yaml_section(), {"OTEL_SDK_DISABLED": "TRUE"}) is None
    # ... but OTEL_TRACES_EXPORTER=none does not undo a section that asks for traces.
    assert settings(yaml_section(), {"OTEL_TRACES_EXPORTER": "none"}) is not None


@pytest.mark.parametrize(
    ("env", "description"),
    [
        ({"OTEL_TRACES_SAMPLER": "always_off"}, described(ALWAYS_OFF)),
        ({"OTEL_TRACES_SAMPLER": "always_on"}, described(ALWAYS_ON)),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"},
            described(TraceIdRatioBased(0.25)),
        ),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
            described(ParentBasedTraceIdRatio(0.1)),
        ),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_always_off"},
            described(ParentBased(ALWAYS_OFF)),
        ),
        # Unknown sampler or bad ratio: the SDK's defaults.
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, described(ParentBased(ALWAYS_ON))),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "lots"},
            described(TraceIdRatioBased(1.0)),
        ),
    ],
)
def test_sampler_from_the_variables(env: dict[str, str], description: str) -> None:
    found = resolved(None, OTEL_EXPORTER_OTLP_ENDPOINT=ENDPOINT, **env)
    assert described(found.sampler) == description


def test_service_name_and_resource_attributes() -> None:
    found = resolved(
        None,
        OTEL_EXPORTER_OTLP_ENDPOINT=ENDPOINT,
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=prod,service.name=from-attrs,k8s.pod.name=gw%2D0",
    )
    assert found.resource_attributes["service.name"] == "from-attrs"
    assert found.resource_attributes["deployment.environment"] == "prod"
    assert found.resource_attributes["k8s.pod.name"] == "gw-0"
    # OTEL_SERVICE_NAME wins over the attribute, as in the SDK.
    found = resolved(
        None,
        OTEL_EXPORTER_OTLP_ENDPOINT=ENDPOINT,
        OTEL_RESOURCE_ATTRIBUTES="service.name=from-attrs",
        OTEL_SERVICE_NAME="from-env",
    )
    assert found.resource_attributes["service.name"] == "from-env"


def test_each_key_the_section_writes_wins_and_the_variables_fill_the_rest() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT,
        "OTEL_SERVICE_NAME": "from-env",
        "OTEL_TRACES_SAMPLER": "always_off",
        "OTEL_EXPORTER_OTLP_INSECURE": "false",
    }
    # The section writes only the endpoint: the rest comes from the variables.
    found = resolved(yaml_section(), **env)
    assert found.endpoint == "http://yaml:4317" and found.source == "config+env"
    assert found.resource_attributes["service.name"] == "from-env"
    assert described(found.sampler) == described(ALWAYS_OFF)
    assert found.insecure is False
    # Written keys win.
    found = resolved(yaml_section(service_name="from-yaml", sample_ratio=0.5, insecure=True), **env)
    assert found.resource_attributes["service.name"] == "from-yaml"
    assert described(found.sampler) == described(ParentBasedTraceIdRatio(0.5))
    assert found.insecure is True
    # No variables: the section's defaults, as before.
    found = resolved(yaml_section())
    assert found.source == "config" and found.insecure is True
    assert found.resource_attributes["service.name"] == "registry-gateway"


def test_a_protocol_other_than_grpc_is_refused_when_the_variables_configure_it() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    with pytest.raises(ConfigError, match="OTLP over gRPC only"):
        settings(None, env)
    assert settings(None, {**env, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) is not None
    # With the section the endpoint is the section's (gRPC): the variable is only warned of.
    assert settings(yaml_section(), env) is not None
