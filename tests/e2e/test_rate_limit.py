"""Rate limits per tenant: a burst past the bucket is refused, then recovers; replicas share."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.app.server import Gateway
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.helpers import OTHER_KEY, config_dict, describe_status, metadata, rich_error
from tests.support.processes import gateway_process

BIN = Path(sys.executable).parent


# A token every 100 s: the bucket cannot refill while a test drains it, however slowly the
# test runs (a cold gateway process, a loaded machine); bursts of 3.
SLOW_RATE = 0.01


def limited(aws: str, **cache: Any) -> dict[str, Any]:
    raw = config_dict(aws)
    raw["rate_limit"] = {"reads_per_second": SLOW_RATE, "writes_per_second": SLOW_RATE, "burst": 3}
    if cache:
        raw["cache"] = cache
    return raw


describe = describe_status


async def test_burst_past_the_bucket_is_resource_exhausted(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    gateway = await gateway_factory(limited(aws))
    codes = [await describe(gateway.port) for _ in range(3)]
    assert codes == [grpc.StatusCode.OK] * 3
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.info.reason == "RATE_LIMITED" and err.info.metadata["tenant"] == "payments"
    assert err.retry_info is not None
    # The time to the next token: at most one token's worth (1 / rate).
    assert 0 < err.retry_info.retry_delay.ToNanoseconds() / 1e9 <= 1 / SLOW_RATE
    # Another tenant has its own bucket.
    assert await describe(gateway.port, OTHER_KEY) == grpc.StatusCode.OK


async def test_recovers_after_the_retry_delay(gateway_factory: GatewayFactory, aws: str) -> None:
    raw = config_dict(aws)
    # A token every 2 s: the second call, one round trip on an open channel after the first
    # (a cache hit), comes well within that; the test then waits out the advertised delay.
    raw["rate_limit"] = {"reads_per_second": 0.5, "writes_per_second": 0.5, "burst": 1}
    gateway = await gateway_factory(raw)
    # The cold read (AWS) on another tenant's bucket: the two below are answered from cache.
    assert await describe(gateway.port, OTHER_KEY) == grpc.StatusCode.OK
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
    retry = rich_error(caught.value).retry_info
    assert retry is not None
    # Waiting out the advertised delay is the behaviour under test (at most 2 s at 0.5/s); a
    # late timer only waits longer, which cannot make the next call fail.
    await asyncio.sleep(retry.retry_delay.ToNanoseconds() / 1e9 + 0.01)
    assert await describe(gateway.port) == grpc.StatusCode.OK


async def test_two_gateway_processes_on_one_redis_share_the_budget(
    gateway_factory: GatewayFactory,
    aws: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    raw = limited(aws, backend="redis", redis_url=redis_url, key_prefix=redis_prefix)
    here = await gateway_factory(raw)
    async with gateway_process(raw, tmp_path / "gateway.yaml") as (port,):
        # Warm up each gateway on another tenant's bucket: its Redis connection and script
        # (a cold round trip slower than the limiter's Redis timeout would fail open).
        assert await describe(here.port, OTHER_KEY) == grpc.StatusCode.OK
        assert await describe(port, OTHER_KEY) == grpc.StatusCode.OK
        # Two calls here, one there: the shared bucket of 3 is empty for both.
        assert [await describe(here.port), await describe(port), await describe(here.port)] == [
            grpc.StatusCode.OK
        ] * 3
        assert await describe(port) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await describe(here.port) == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_redis_down_fails_open(gateway_factory: GatewayFactory, aws: str) -> None:
    gateway: Gateway = await gateway_factory(
        limited(aws, backend="redis", redis_url="redis://127.0.0.1:9/0")
    )
    # Rate limiting is a protection, not a dependency: with Redis away, calls still pass.
    assert [await describe(gateway.port) for _ in range(5)] == [grpc.StatusCode.OK] * 5
