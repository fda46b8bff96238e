"""The breaker and bulkheads of one (account, region), as real objects (purgatory inside):
what counts against AWS, and what one tenant may hold."""

from __future__ import annotations

import asyncio

import pytest

from service.aws.resilience import Resilience
from service.config import AwsConfig
from service.errors import DeadlineExceeded, InvalidArgument, Unavailable, UpstreamFailure


def resilience(time_left: float = 10.0, **aws: float) -> Resilience:
    config = AwsConfig.model_validate({"breaker_threshold": 2, **aws})
    return Resilience(config, lambda: time_left)


async def fail(r: Resilience, error: BaseException, tenant: str | None = "payments") -> None:
    with pytest.raises(type(error)):
        async with r.guard("123456789012", "us-east-1", tenant):
            raise error


async def reason_of_next_call(r: Resilience) -> str | None:
    try:
        async with r.guard("123456789012", "us-east-1", "billing"):
            return None
    except Unavailable as exc:
        return exc.reason


@pytest.mark.parametrize(
    "neutral",
    [
        DeadlineExceeded("the caller's deadline"),
        asyncio.CancelledError(),
        InvalidArgument("a bad request"),
        Unavailable("a full bulkhead", reason="BULKHEAD_FULL"),
    ],
    ids=["deadline", "cancelled", "invalid", "bulkhead"],
)
async def test_what_aws_did_not_do_never_opens_the_breaker(neutral: BaseException) -> None:
    r = resilience()
    for _ in range(10):
        await fail(r, neutral)
    assert await reason_of_next_call(r) is None


async def test_aws_failures_open_it_and_neutral_outcomes_do_not_reset_them() -> None:
    r = resilience()
    await fail(r, UpstreamFailure("503"))
    # Neutral outcomes in between are no success: the count of AWS failures stands.
    await fail(r, DeadlineExceeded("impatient caller"))
    await fail(r, UpstreamFailure("503"))
    assert await reason_of_next_call(r) == "BREAKER_OPEN"


async def test_a_tenant_holds_at_most_its_share_of_the_slots() -> None:
    r = resilience(time_left=0.2, max_concurrent_calls=4, max_tenant_share=0.5)
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with r.guard("123456789012", "us-east-1", "payments"):
            held.set()
            await release.wait()

    holders = [asyncio.ensure_future(hold()) for _ in range(2)]
    await held.wait()
    await asyncio.sleep(0)  # the second holder enters too
    with pytest.raises(Unavailable) as caught:
        async with r.guard("123456789012", "us-east-1", "payments"):
            pass
    assert caught.value.reason == "TENANT_BULKHEAD_FULL"
    # Another tenant, and a shared cache load (on behalf of no tenant), still get slots.
    async with r.guard("123456789012", "us-east-1", "billing"):
        pass
    async with r.guard("123456789012", "us-east-1", None):
        pass
    release.set()
    await asyncio.gather(*holders)


async def test_a_free_slot_is_taken_even_with_no_time_left_to_wait() -> None:
    # With less time left than the margin, waiting is pointless, but a free slot is free.
    r = resilience(time_left=0.01, bulkhead_margin_seconds=0.05)
    async with r.guard("123456789012", "us-east-1", "payments"):
        pass
