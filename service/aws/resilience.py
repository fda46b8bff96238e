"""Resilience in front of AWS, per (account, region): a circuit breaker and a bulkhead.

The breaker (purgatory) opens after `breaker_threshold` consecutive AWS failures; while
open, calls fail fast with UNAVAILABLE and RetryInfo, so reads fall back to stale cache
entries and writes are refused at once; after `breaker_open_seconds` a probe is let through
and its success closes it. It counts only what AWS did (`UpstreamFailure`: 5xx, throttling,
connection failures, botocore's own timeouts). Everything else is neutral: a caller's
deadline or departure, validation and authorization failures, a refused or invalid request
— one tenant's impatient or malformed calls must not open the breaker for every tenant of
the account. Neutral outcomes neither count as failures nor as successes (purgatory would
count an excluded exception as a success: reset the failures, close a half-open circuit).

The bulkhead bounds the AWS calls in flight per (account, region), and each tenant to
`max_tenant_share` of them, so one tenant cannot starve the others. A call waits for its
slots at most until a little before its deadline, then gets UNAVAILABLE; the wait happens
outside the breaker and is no failure of AWS.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import NoReturn

from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import Context, OpenedState

from service.config import AwsConfig
from service.errors import Unavailable, UpstreamFailure

BREAKER_OPEN = "opened"


async def _acquire(slots: asyncio.Semaphore, wait: float) -> None:
    """A free slot at once, else one that frees up within `wait` seconds (TimeoutError).

    Taken at once when free: `wait_for` with no time left times out even then, which would
    call a half-empty bulkhead full for every caller whose deadline is near."""
    if not slots.locked():
        await slots.acquire()  # does not wait: a slot is free and nothing runs in between
        return
    await asyncio.wait_for(slots.acquire(), timeout=wait)


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
            default_threshold=aws.breaker_threshold, default_ttl=aws.breaker_open_seconds
        )
        self._on_breaker_change = on_breaker_change
        # Circuits said to be closed once made: the state gauge has a series (0) from a
        # circuit's first call, not only from its first change (an alert on "== 0 for 10m",
        # or a dashboard, sees it).
        self._announced: set[str] = set()
        if on_breaker_change is not None:
            callback = on_breaker_change

            def listen(circuit: str, event_name: str, event: object) -> None:
                state = getattr(event, "state", None)
                if event_name == "state_changed" and state is not None:
                    callback(circuit, str(state))

            self._breakers.add_listener(listen)
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._tenant_slots: dict[tuple[str, str], asyncio.Semaphore] = {}
        self._per_tenant = max(1, math.floor(aws.max_concurrent_calls * aws.max_tenant_share))

    @asynccontextmanager
    async def guard(
        self, account: str, region: str, tenant: str | None = None
    ) -> AsyncIterator[None]:
        """Enter only through free bulkhead slots (the tenant's, when on behalf of one, then
        the account's) and a closed (or probing) breaker; only an `UpstreamFailure` inside
        counts against AWS."""
        circuit = f"{account}:{region}"
        breaker = await self._breakers.get_breaker(circuit)
        if circuit not in self._announced:
            self._announced.add(circuit)
            if self._on_breaker_change is not None:
                self._on_breaker_change(circuit, "closed")
        if self._open_for(breaker.context) > 0:
            # Fail fast without queueing for a slot behind calls that would fail too.
            self._raise_open(breaker.context, account, region)
        async with AsyncExitStack() as slots:
            if tenant is not None and self._per_tenant < self._aws.max_concurrent_calls:
                await slots.enter_async_context(self._tenant_slot(circuit, tenant))
            await slots.enter_async_context(self._slot(circuit))
            try:
                await breaker.__aenter__()
            except OpenedState:
                self._raise_open(breaker.context, account, region)
            try:
                yield
            except UpstreamFailure as exc:
                await breaker.__aexit__(type(exc), exc, exc.__traceback__)
                raise
            except BaseException:
                # Neutral: not AWS's doing. purgatory has no "neither" outcome, so its exit
                # is not called at all and its state stays as it was.
                raise
            else:
                await breaker.__aexit__(None, None, None)

    def _open_for(self, context: Context) -> float:
        """Seconds the circuit stays open (0 when closed, half-open or due for a probe)."""
        if context.state != BREAKER_OPEN or context.opened_at is None:
            return 0.0
        return max(0.0, context.opened_at + self._aws.breaker_open_seconds - time.time())

    def _raise_open(self, context: Context, account: str, region: str) -> NoReturn:
        raise Unavailable(
            f"AWS ECR in {region} for account {account} is failing; the circuit breaker "
            "is open and calls fail fast",
            reason="BREAKER_OPEN",
            metadata={"registryId": account, "region": region},
            retry_after_seconds=max(0.1, self._open_for(context)),
        ) from None

    def _wait_seconds(self) -> float:
        # Leave a margin before the deadline so the caller hears UNAVAILABLE (retry
        # elsewhere) rather than a bare DEADLINE_EXCEEDED; loads outside any call are bounded
        # by the read timeout.
        wait = min(self._time_left(), self._aws.read_timeout_seconds)
        return max(0.0, wait - self._aws.bulkhead_margin_seconds)

    @asynccontextmanager
    async def _tenant_slot(self, circuit: str, tenant: str) -> AsyncIterator[None]:
        slots = self._tenant_slots.get((circuit, tenant))
        if slots is None:
            slots = self._tenant_slots[(circuit, tenant)] = asyncio.Semaphore(self._per_tenant)
        try:
            await _acquire(slots, self._wait_seconds())
        except TimeoutError:
            raise Unavailable(
                f"tenant {tenant} has {self._per_tenant} AWS calls in flight for {circuit}, "
                "its share of them; retry shortly",
                reason="TENANT_BULKHEAD_FULL",
                metadata={"tenant": tenant},
                retry_after_seconds=0.5,
            ) from None
        try:
            yield
        finally:
            slots.release()

    @asynccontextmanager
    async def _slot(self, circuit: str) -> AsyncIterator[None]:
        slots = self._slots.setdefault(circuit, asyncio.Semaphore(self._aws.max_concurrent_calls))
        try:
            await _acquire(slots, self._wait_seconds())
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
