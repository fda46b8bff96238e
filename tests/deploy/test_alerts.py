"""The alert rules parse (promtool check rules) and fire as their unit tests expect."""

from __future__ import annotations

import asyncio
import math
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GatewayFactory
from tests.support.helpers import config_dict, describe_status

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = ROOT / "scripts" / "promtool.sh"
RULES = ROOT / "deploy" / "prometheus"

# promtool may first be installed (apt-get), each run bounded at 300 s: past pytest's global
# 120 s, which is for ordinary tests.
pytestmark = pytest.mark.timeout(600)


def promtool(*args: str, cwd: Path = RULES) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PROMTOOL), *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_rules_check() -> None:
    result = promtool("check", "rules", "alerts.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "10 rules found" in result.stdout


def test_rules_fire_as_tested() -> None:
    result = promtool("test", "rules", "alerts_test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_rule_is_caught(tmp_path: Path) -> None:
    broken = tmp_path / "alerts.yaml"
    broken.write_text((RULES / "alerts.yaml").read_text().replace("> 0.01", "> > 0.01", 1))
    assert promtool("check", "rules", str(broken), cwd=tmp_path).returncode != 0


def test_every_metric_in_the_rules_is_exported() -> None:
    from service.observability.metrics import Metrics

    metrics = Metrics(redis=True)
    metrics.redis_available(True)  # registered once Redis has answered (or not)
    exported = {m.name for m in metrics.registry.collect()}
    text = (RULES / "alerts.yaml").read_text()
    for name in (
        "grpc_server_handled",
        "grpc_server_handling_seconds",
        "registry_gateway_upstream_requests",
        "registry_gateway_breaker_state",
        "registry_gateway_redis_up",
        "registry_gateway_authz_denied",
        "registry_gateway_drift",
        "registry_gateway_overwritten_writes",
        "registry_gateway_replication_destination_accepting",
        "registry_gateway_slice_over_share",
    ):
        assert name in text and name in exported


def _selector(name: str, labels: dict[str, str]) -> str:
    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    inside = ",".join(f"{k}={quoted(v)}" for k, v in sorted(labels.items()))
    return f"{name}{{{inside}}}" if inside else name


async def test_a_memory_backed_gateway_as_scraped_fires_no_alert(
    gateway_factory: GatewayFactory, aws: str, tmp_path: Path
) -> None:
    """What a real, healthy gateway with the memory backend exports, held for half an hour,
    fires nothing: in particular not RegistryGatewayRedisDown (it has no Redis)."""
    raw = config_dict(aws)
    raw["metrics"] = {"listen": "127.0.0.1:0"}
    gateway = await gateway_factory(raw)
    for _ in range(3):
        await describe_status(gateway.port)

    def get() -> str:
        url = f"http://127.0.0.1:{gateway.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
            return text

    text = await asyncio.to_thread(get)
    series = [
        # The scraped value, unchanged for 30 minutes (fixed-point: promtool's series
        # notation has no exponents).
        {"series": _selector(sample.name, sample.labels), "values": f"{sample.value:f}+0x30"}
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if math.isfinite(sample.value)
    ]
    assert not any(s["series"].startswith("registry_gateway_redis_up") for s in series)
    alerts = [
        rule["alert"]
        for group in yaml.safe_load((RULES / "alerts.yaml").read_text())["groups"]
        for rule in group["rules"]
    ]
    tests = {
        "rule_files": [str(RULES / "alerts.yaml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": f"{minutes}m", "alertname": alert, "exp_alerts": []}
                    for alert in alerts
                    for minutes in (5, 15, 30)
                ],
            }
        ],
    }
    (tmp_path / "scraped_test.yaml").write_text(yaml.safe_dump(tests))
    result = await asyncio.to_thread(promtool, "test", "rules", "scraped_test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
