"""Resilience in front of AWS, per (account, region): a circuit breaker and a bulkhead.

The breaker (purgatory) opens after `breaker_threshold` consecutive AWS failures
(unavailable, throttled, timed out); while open, calls fail fast with UNAVAILABLE and
RetryInfo, so reads fall back to stale cache entries and writes are refused at once; after
`breaker_open_seconds` a probe is let through and its success closes it. Answers that say
the request was wrong (not found, invalid, refused) are not failures of AWS.

The bulkhead bounds the AWS calls in flight per (account, region): a call waits for a slot
at most until a little before its deadline, then gets UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from service.config import AwsConfig
from service.errors import DeadlineExceeded, GatewayError, Unavailable

BREAKER_OPEN = "opened"


def _not_an_aws_failure(exc: BaseException) -> bool:
    return not isinstance(exc, Unavailable | DeadlineExceeded)


class Resilience:
    """Breaker and bulkhead around each AWS call."""

    def __init__(
        self,
        aws: AwsConfig,
        time_left: Callable[[], float],
        on_breaker_change: Callable[[str, str], None] | None = None,
    ) -> None:
        self._aws = aws
        self._time_left = time_left
        self._breakers = AsyncCircuitBreakerFactory(
            default_threshold=aws.breaker_threshold,
            default_ttl=aws.breaker_open_seconds,
            exclude=[
                # A caller leaving, or AWS answering "your request is wrong", says nothing
                # about AWS's health.
                asyncio.CancelledError,
                (GatewayError, _not_an_aws_failure),
            ],
        )
        if on_breaker_change is not None:
            callback = on_breaker_change

            def listen(circuit: str, event_name: str, event: object) -> None:
                state = getattr(event, "state", None)
                if event_name == "state_changed" and state is not None:
                    callback(circuit, str(state))

            self._breakers.add_listener(listen)
        self._slots: dict[str, asyncio.Semaphore] = {}

    @asynccontextmanager
    async def guard(self, account: str, region: str) -> AsyncIterator[None]:
        """Enter only through a closed (or probing) breaker and a free bulkhead slot."""
        circuit = f"{account}:{region}"
        breaker = await self._breakers.get_breaker(circuit)
        try:
            async with breaker, self._slot(circuit):
                yield
        except OpenedState as exc:
            retry = max(0.1, exc.opened_at + self._aws.breaker_open_seconds - time.time())
            raise Unavailable(
                f"AWS ECR in {region} for account {account} is failing; the circuit breaker "
                "is open and calls fail fast",
                reason="BREAKER_OPEN",
                metadata={"registryId": account, "region": region},
                retry_after_seconds=retry,
            ) from None

    @asynccontextmanager
    async def _slot(self, circuit: str) -> AsyncIterator[None]:
        slots = self._slots.setdefault(circuit, asyncio.Semaphore(self._aws.max_concurrent_calls))
        # Leave a margin before the deadline so the caller hears UNAVAILABLE (retry
        # elsewhere) rather than a bare DEADLINE_EXCEEDED; loads outside any call are bounded
        # by the read timeout.
        wait = min(self._time_left(), self._aws.read_timeout_seconds)
        wait -= self._aws.bulkhead_margin_seconds
        try:
            await asyncio.wait_for(slots.acquire(), timeout=max(0.0, wait))
        except TimeoutError:
            raise Unavailable(
                f"too many AWS calls in flight for {circuit}; retry shortly",
                reason="BULKHEAD_FULL",
                retry_after_seconds=0.5,
            ) from None
        try:
            yield
        finally:
            slots.release()
