"""The background drift check on the in-memory ECR: what it reads, how often, and that a
sick AWS or a lost claim makes it read nothing."""

from __future__ import annotations

import redis.asyncio as redis

from service.app.drift_check import DriftCheck
from service.aws.memory import Call
from service.errors import Unavailable
from service.state.claims import MemoryClaims, RedisClaims
from tests.registry.conftest import build, target


def _reads(domain_calls: list[Call]) -> list[str]:
    return [c.operation for c in domain_calls]


async def test_each_target_is_read_fresh_once_per_period() -> None:
    domain = build()
    # A cached value does not spare the check its AWS read: it looks for changes in AWS.
    await domain.ops.describe_registry(target())
    domain.ecr.calls.clear()
    claims = MemoryClaims()
    check = DriftCheck(domain.ops, lambda: [target()], claims, 60, clock=lambda: 1_000.0)
    assert await check.check_once() == 1
    assert sorted(_reads(domain.ecr.calls)) == ["describe_registry", "get_registry_policy"]
    assert all(c.shared for c in domain.ecr.calls)  # no tenant's share of the AWS slots
    # Within the period, a second round (or a second check on the same claims) reads nothing.
    domain.ecr.calls.clear()
    assert await check.check_once() == 0
    assert domain.ecr.calls == []


async def test_two_replicas_on_redis_read_each_target_once_per_period(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    one, two = build(), build()
    checks = [
        DriftCheck(
            d.ops,
            lambda: [target(region="us-east-1"), target(region="eu-west-1")],
            RedisClaims(redis_client, redis_prefix),
            60,
            clock=lambda: 1_000.0,
        )
        for d in (one, two)
    ]
    read = [await c.check_once() for c in checks]
    assert sum(read) == 2  # two targets, each read by exactly one replica
    assert len(one.ecr.calls) + len(two.ecr.calls) == 4


async def test_aws_unavailable_is_quiet_and_the_check_goes_on() -> None:
    domain = build()
    domain.ecr.fail_next["describe_registry"] = Unavailable("AWS is away")
    check = DriftCheck(domain.ops, lambda: [target()], MemoryClaims(), 60)
    # No exception escapes: the failed read is logged, and the policy is still read.
    assert await check.check_once() == 1
    assert "get_registry_policy" in _reads(domain.ecr.calls)


async def test_the_next_period_reads_again() -> None:
    domain = build()
    now = [960.0]  # the start of period 16 (of 60 s)
    check = DriftCheck(
        domain.ops, lambda: [target()], MemoryClaims(lambda: now[0]), 60, clock=lambda: now[0]
    )
    assert await check.check_once() == 1
    now[0] += 30  # the same period: nothing
    assert await check.check_once() == 0
    now[0] += 31  # next period
    assert await check.check_once() == 1
