"""The background drift check through real gateways on moto: a change made around the gateway
is reported within a check period with no caller at all, once across two replicas on Redis;
nothing is reported when nothing changed; and a sick AWS (breaker open) gets no more calls."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from service.app.server import Gateway
from service.state.cache import CacheKey
from tests.conftest import GatewayFactory, wait_until
from tests.e2e.test_drift import audited_config, aws_put_replication, counted, events
from tests.support.aws_proxy import CountingProxy, Fault
from tests.support.helpers import ACCOUNT
from tests.support.moto_writes import behave_like_ecr
from tests.support.slices_support import aws_rule, seed_rules

PERIOD = 0.3
# Two (registry, region) targets: payments lists us-east-1 and eu-west-1 of one account.
TARGETS = 2


@pytest.fixture(autouse=True)
def like_ecr(monkeypatch: pytest.MonkeyPatch) -> None:
    behave_like_ecr(monkeypatch)


def checked_config(endpoint: str, tmp_path: Path, name: str = "audit.jsonl", **cache: Any) -> Any:
    raw = audited_config(endpoint, tmp_path, name, **cache)
    raw["drift"]["check_seconds"] = PERIOD
    return raw


async def test_a_change_nobody_reads_is_reported_once_across_two_replicas(
    gateway_factory: GatewayFactory, aws: str, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    seed_rules(aws_rule("payments/api"), aws_rule("billing/api"))
    cache = {"backend": "redis", "redis_url": redis_url, "key_prefix": redis_prefix}
    replicas = [
        await gateway_factory(checked_config(aws, tmp_path, f"audit-{i}.jsonl", **cache))
        for i in range(2)
    ]

    def found() -> list[dict[str, Any]]:
        return [e for i in range(2) for e in events(tmp_path / f"audit-{i}.jsonl")]

    # The first checks record the baseline: no caller has read anything.
    await wait_until(
        lambda: replicas[0].history.head(CacheKey(ACCOUNT, "us-east-1", "registry")),
        what="a baseline recorded by a check",
    )
    assert found() == []
    await aws_put_replication([aws_rule("payments/api")], aws)
    await wait_until(found, what="the drift reported by a check")
    # A few more periods: still one line, one count, across both replicas.
    await asyncio.sleep(PERIOD * 4)
    [line] = found()
    assert line["event"] == "out_of_band_change" and line["tenants"] == ["billing"]
    assert sum(counted(r, "drift", "replication") for r in replicas) == 1


@pytest.fixture
def proxy_config(proxy: CountingProxy, tmp_path: Path) -> Any:
    raw = checked_config(proxy.url, tmp_path)
    raw["aws"].update({"breaker_threshold": 3, "breaker_open_seconds": 60})
    return raw


async def test_nothing_changed_nothing_reported_and_one_read_per_key_per_period(
    gateway_factory: GatewayFactory, proxy: CountingProxy, proxy_config: Any, tmp_path: Path
) -> None:
    seed_rules(aws_rule("payments/api"))
    await gateway_factory(proxy_config)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wait_until(lambda: proxy.count("ecr:DescribeRegistry") >= 2 * TARGETS, what="checks")
    await asyncio.sleep(PERIOD * 3)
    elapsed = loop.time() - started
    assert events(tmp_path / "audit.jsonl") == []
    # At most one read of each resource per target per period (+1 for a period in progress).
    bound = TARGETS * (elapsed / (PERIOD * 0.9) + 1)
    for operation in ("ecr:DescribeRegistry", "ecr:GetRegistryPolicy"):
        assert 0 < proxy.count(operation) <= bound, (operation, proxy.count(operation), bound)


async def test_with_aws_failing_the_breaker_opens_and_the_check_stops_calling(
    gateway_factory: GatewayFactory, proxy: CountingProxy, proxy_config: Any, tmp_path: Path
) -> None:
    gateway: Gateway = await gateway_factory(proxy_config)
    proxy.fault = Fault(frozenset(), status=500, body=b"{}")

    def open_circuits() -> int:
        return sum(
            gateway.metrics.registry.get_sample_value(
                "registry_gateway_breaker_state", {"circuit": f"{ACCOUNT}:{region}"}
            )
            == 2
            for region in ("us-east-1", "eu-west-1")
        )

    await wait_until(lambda: open_circuits() == TARGETS, what="both breakers open")
    calls = sum(proxy.counts.values())
    await asyncio.sleep(PERIOD * 5)
    # Open: the checks go on (locally refused), AWS sees no more calls, nothing is reported.
    assert sum(proxy.counts.values()) == calls
    assert events(tmp_path / "audit.jsonl") == []
