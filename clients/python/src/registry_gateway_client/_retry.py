"""When a failed call is tried again, how long the client waits first, and who hears of it.

By default only UNAVAILABLE, and RESOURCE_EXHAUSTED that carries a RetryInfo, are retried:
the gateway answers them when AWS is throttling or down, or when the tenant is over its rate
or its calls or writes in flight, and says how long to wait in a RetryInfo, which is
honoured. A RESOURCE_EXHAUSTED without RetryInfo is final: the gateway sends it when a
request passes the tenant's share of the registry's limits (REPLICATION_QUOTA_EXCEEDED),
which no repeat of the same request can change, and grpc sends it, without details, for a
message over its size limits. The rule is RetryInfo's presence rather than a list of
reasons: the server decides what is transient and says so with that detail (the same rule in
the TypeScript and Go clients), so a reason added later needs no new client. A `predicate`
may choose other errors (google-api-core's `Retry(predicate=...)` is the model), but two
rules hold whatever it says: a write without an `etag` is never retried unless the caller
opts in (if the first attempt reached AWS before the answer was lost, a blind second attempt
could overwrite a colleague's change made in between; with an etag a repeat is safe, at
worst ETAG_MISMATCH, and `validate_only` changes nothing), and WRITE_OVERWRITTEN is never
retried (another writer's state stands: the caller decides). Each retry is logged (logger
`registry_gateway_client`, INFO) and handed to the policy's `on_retry` hook: which RPC,
which attempt failed and why, how long into the call, and how long the client waits before
the next.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from registry_gateway_client._errors import RegistryGatewayError, WriteOverwritten

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
LOGGER = logging.getLogger("registry_gateway_client")


def retryable(error: RegistryGatewayError) -> bool:
    """The default predicate: UNAVAILABLE, and RESOURCE_EXHAUSTED only when the gateway sent
    a RetryInfo with it (transient: a rate limit, a slot, writes in flight). Without one it
    is final (a tenant's share, REPLICATION_QUOTA_EXCEEDED; grpc's own size limits)."""
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return error.retry_delay is not None
    return error.code in RETRYABLE_CODES


@dataclass(frozen=True)
class RetryEvent:
    """One retry about to happen: what failed, why, and how long the client waits."""

    #: The RPC, e.g. "DescribeRegistry".
    rpc: str
    #: The number of the attempt that failed (1 for the first).
    attempt: int
    #: Why: the typed error the attempt failed with (`code`, `reason`, `request_id`, ...).
    error: RegistryGatewayError
    #: Seconds the client waits before the next attempt.
    delay: float
    #: Seconds since the call began, when the attempt failed.
    elapsed: float


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call is retried.

    `max_attempts` counts the first attempt (1 = never retry). The n-th wait is a random
    time up to `min(max_backoff, initial_backoff * multiplier**(n-1))` ("full jitter"), and
    never shorter than the RetryInfo delay the gateway sent. Every attempt and wait fits in
    the call's one deadline (`timeout`): a wait that would pass it is not taken.
    `predicate(error)` says which errors are worth another attempt (default: `retryable`,
    UNAVAILABLE, and RESOURCE_EXHAUSTED with a RetryInfo); `on_retry(event)` is called
    before each wait.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    #: Retry PutRegistryPolicy / DeleteRegistryPolicy / PutReplicationConfiguration (and the
    #: slice writes) even without an etag (a repeat may then overwrite a change made in between).
    retry_writes_without_etag: bool = False
    #: Which errors are retried (the write rules above hold whatever it answers).
    predicate: Callable[[RegistryGatewayError], bool] = retryable
    #: Told of each retry before its wait (after the log line); an exception it raises ends
    #: the call with that exception.
    on_retry: Callable[[RetryEvent], None] | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")

    def backoff(
        self, attempt: int, retry_delay: float | None, rand: Callable[[], float] = random.random
    ) -> float:
        """Seconds to wait after failed attempt number `attempt` (counted from 1)."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        delay = cap * rand()
        if retry_delay is not None and retry_delay > 0:
            # Never sooner than the server asked; a little jitter on top so that many callers
            # told the same delay do not all come back in the same instant.
            delay = retry_delay * (1 + 0.1 * rand()) if delay < retry_delay else delay
        return delay


NO_RETRY = RetryPolicy(max_attempts=1)


class Deadline:
    """One deadline for a whole piece of work (a call and its retries, a helper's loop)."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.at = self.started + timeout

    def left(self) -> float:
        """Seconds left, never negative."""
        return max(self.at - self._clock(), 0.0)

    def elapsed(self) -> float:
        return self._clock() - self.started

    def allows(self, delay: float) -> bool:
        """Whether waiting `delay` seconds still leaves time for something after it."""
        return self._clock() + delay < self.at


class Attempts:
    """The attempts of one call under one deadline: hands out each attempt's timeout and
    decides, after a failure, whether (and after how long) to try again."""

    def __init__(
        self,
        policy: RetryPolicy,
        timeout: float,
        *,
        retry_safe: bool,
        rpc: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.retry_safe = retry_safe
        self.rpc = rpc
        self._deadline = Deadline(timeout, clock)
        self.count = 0

    def start(self) -> float:
        """Begin an attempt; its timeout is whatever is left of the call's deadline."""
        self.count += 1
        return self._deadline.left()

    def delay_after(self, error: RegistryGatewayError) -> float | None:
        """Seconds to wait before the next attempt, or None when `error` is final."""
        if isinstance(error, WriteOverwritten) or not self.retry_safe:
            return None
        if not self.policy.predicate(error):
            return None
        if self.count >= self.policy.max_attempts:
            return None
        delay = self.policy.backoff(self.count, error.retry_delay)
        if not self._deadline.allows(delay):
            return None
        return delay

    def retrying(self, error: RegistryGatewayError, delay: float) -> RetryEvent:
        """Say that the attempt just failed with `error` is retried after `delay` seconds:
        one log line, then the policy's hook."""
        event = RetryEvent(self.rpc, self.count, error, delay, self._deadline.elapsed())
        LOGGER.info(
            "%s attempt %d of %d failed after %.3f s: %s%s%s; retrying in %.3f s",
            event.rpc,
            event.attempt,
            self.policy.max_attempts,
            event.elapsed,
            error.code.name,
            f" reason={error.reason}" if error.reason else "",
            f" request_id={error.request_id}" if error.request_id else "",
            delay,
            extra={
                "rpc": event.rpc,
                "attempt": event.attempt,
                "code": error.code.name,
                "reason": error.reason,
                "request_id": error.request_id,
                "delay": delay,
                "elapsed": event.elapsed,
            },
        )
        if self.policy.on_retry is not None:
            self.policy.on_retry(event)
        return event
