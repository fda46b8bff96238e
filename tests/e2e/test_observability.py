"""What operators see: Prometheus metrics with go-grpc-middleware's names, and log lines."""

from __future__ import annotations

import asyncio
import importlib.metadata
import io
import json
import logging
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.config import LogsConfig
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from service.observability.logs import configure_logging
from tests.conftest import GatewayFactory, wait_until
from tests.support.helpers import POLICY, config_dict, describe_status, metadata


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    def get() -> str:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
            return text

    text = await asyncio.to_thread(get)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_calls_cache_upstream_and_denials(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    raw = config_dict(aws)
    raw["metrics"] = {"listen": "127.0.0.1:0"}
    gateway = await gateway_factory(raw)
    for _ in range(3):
        await describe_status(gateway.port)
    await describe_status(gateway.port, "not-a-key")
    method = {"grpc_type": "unary", "grpc_service": "ecr.registry.v1.RegistryConfigService"}
    describe = {**method, "grpc_method": "DescribeRegistry"}

    async def all_counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        # A refused call's status reaches the caller before the gateway counts it (as the
        # handler ends): wait for the last call to be counted, bounded.
        samples = await scrape(gateway.metrics_port)
        return (
            samples
            if value(samples, "grpc_server_handling_seconds_count", **describe) >= 4
            else None
        )

    samples = await wait_until(all_counted, what="the four calls to be counted")
    assert value(samples, "grpc_server_started_total", **describe) == 4
    assert value(samples, "grpc_server_handled_total", **describe, grpc_code="OK") == 3
    assert value(samples, "grpc_server_handled_total", **describe, grpc_code="Unauthenticated") == 1
    assert value(samples, "grpc_server_handling_seconds_count", **describe) == 4
    assert value(samples, "registry_gateway_cache_requests_total", result="miss") == 1
    assert value(samples, "registry_gateway_cache_requests_total", result="hit") == 2
    assert (
        value(
            samples,
            "registry_gateway_upstream_requests_total",
            operation="describe_registry",
            aws_error_code="",
        )
        == 1
    )
    assert value(samples, "registry_gateway_authz_denied_total", reason="INVALID_CREDENTIALS") == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def names(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    return {name for name, _ in samples}


async def test_memory_backend_has_no_redis_series_and_exports_process_and_build(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    raw = config_dict(aws)
    raw["metrics"] = {"listen": "127.0.0.1:0"}
    gateway = await gateway_factory(raw)
    await describe_status(gateway.port)
    samples = await scrape(gateway.metrics_port)
    # No Redis, no series: a 0 here would page RegistryGatewayRedisDown for nothing.
    assert not any(name.startswith("registry_gateway_redis") for name in names(samples))
    assert {
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "python_info",
        "python_gc_collections_total",
    } <= names(samples)
    build = [labels for name, labels in samples if name == "registry_gateway_build_info"]
    assert len(build) == 1
    info = dict(build[0])
    assert set(info) == {"version", "commit"}
    assert info["version"] == importlib.metadata.version("registry-config-gateway")
    assert info["commit"]
    assert samples[("registry_gateway_build_info", build[0])] == 1.0


@pytest.mark.parametrize("answers", [True, False], ids=["redis-up", "redis-down"])
async def test_redis_up_is_true_from_the_first_scrape(
    gateway_factory: GatewayFactory, aws: str, redis_url: str, redis_prefix: str, answers: bool
) -> None:
    raw = config_dict(aws)
    raw["metrics"] = {"listen": "127.0.0.1:0"}
    url = redis_url if answers else f"redis://127.0.0.1:{free_port()}/0"
    raw["cache"] = {"backend": "redis", "redis_url": url, "key_prefix": redis_prefix}
    gateway = await gateway_factory(raw)
    # Before any call touched the cache: the start-up ping has already said.
    samples = await scrape(gateway.metrics_port)
    assert samples[("registry_gateway_redis_up", ())] == (1.0 if answers else 0.0)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(LogsConfig(format="json", hit_sample_rate=0.0), stream)
    yield stream
    logging.getLogger("registry_gateway").handlers.clear()
    logging.getLogger("registry_gateway").propagate = True


async def test_logs_every_miss_write_and_error_but_sample_hits(
    gateway_factory: GatewayFactory, aws: str, json_log: io.StringIO
) -> None:
    raw = config_dict(aws)
    raw["logs"] = {"hit_sample_rate": 0.0}
    gateway = await gateway_factory(raw)
    await describe_status(gateway.port)  # a miss: logged
    await describe_status(gateway.port)  # a hit: sampled out at rate 0
    await describe_status(gateway.port, "bad-key")  # an error: logged
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        await stub.PutRegistryPolicy(  # a write: logged
            pb.PutRegistryPolicyRequest(policy_text=POLICY, validate_only=True),
            metadata=metadata(),
        )

    def logged_calls() -> list[dict[str, Any]] | None:
        # The refused call's line is written as its handler ends, after the caller has its
        # status: wait for the three lines, bounded.
        lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
        calls = [line for line in lines if line.get("rpc")]
        return calls if len(calls) >= 3 else None

    calls = await wait_until(logged_calls, what="the three call log lines")
    assert [(c["rpc"], c["code"], c.get("cache")) for c in calls] == [
        ("DescribeRegistry", "OK", "miss"),
        ("DescribeRegistry", "UNAUTHENTICATED", None),
        ("PutRegistryPolicy", "OK", None),
    ]
    first = calls[0]
    assert first["tenant"] == "payments" and first["registry_id"] == "123456789012"
    assert first["region"] == "us-east-1" and first["request_id"] and first["duration_ms"] >= 0
    assert "bad-key" not in json_log.getvalue()
