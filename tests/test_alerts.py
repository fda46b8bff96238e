"""The alert rules parse (promtool check rules) and fire as their unit tests expect."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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
    assert "6 rules found" in result.stdout


def test_rules_fire_as_tested() -> None:
    result = promtool("test", "rules", "alerts_test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_rule_is_caught(tmp_path: Path) -> None:
    broken = tmp_path / "alerts.yaml"
    broken.write_text((RULES / "alerts.yaml").read_text().replace("> 0.01", "> > 0.01", 1))
    assert promtool("check", "rules", str(broken), cwd=tmp_path).returncode != 0


def test_every_metric_in_the_rules_is_exported() -> None:
    from service.observability.metrics import Metrics

    exported = {m.name for m in Metrics().registry.collect()}
    text = (RULES / "alerts.yaml").read_text()
    for name in (
        "grpc_server_handled",
        "grpc_server_handling_seconds",
        "registry_gateway_upstream_requests",
        "registry_gateway_breaker_state",
        "registry_gateway_redis_up",
        "registry_gateway_authz_denied",
    ):
        assert name in text and name in exported
