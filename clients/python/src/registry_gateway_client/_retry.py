"""When a failed call is tried again, and how long the client waits first.

Only UNAVAILABLE and RESOURCE_EXHAUSTED are retried: the gateway answers them when AWS is
throttling or down, or when the tenant is over its rate, and says how long to wait in a
RetryInfo, which is honoured. A write without an `etag` is never retried unless the caller
opts in: if the first attempt reached AWS before the answer was lost, a blind second
attempt could overwrite a colleague's change made in between. With an etag a repeat is
safe (at worst it answers ETAG_MISMATCH), and `validate_only` changes nothing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from registry_gateway_client._errors import RegistryGatewayError

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call is retried.

    `max_attempts` counts the first attempt (1 = never retry). The n-th wait is a random
    time up to `min(max_backoff, initial_backoff * multiplier**(n-1))` ("full jitter"), and
    never shorter than the RetryInfo delay the gateway sent. Every attempt and wait fits in
    the call's one deadline (`timeout`): a wait that would pass it is not taken.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    #: Retry PutRegistryPolicy / DeleteRegistryPolicy / PutReplicationConfiguration even
    #: without an etag (a repeat may then overwrite a change made in between).
    retry_writes_without_etag: bool = False

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


class Attempts:
    """The attempts of one call under one deadline: hands out each attempt's timeout and
    decides, after a failure, whether (and after how long) to try again."""

    def __init__(
        self,
        policy: RetryPolicy,
        timeout: float,
        *,
        retry_safe: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.retry_safe = retry_safe
        self._clock = clock
        self._deadline = clock() + timeout
        self.count = 0

    def start(self) -> float:
        """Begin an attempt; its timeout is whatever is left of the call's deadline."""
        self.count += 1
        return max(self._deadline - self._clock(), 0.0)

    def delay_after(self, error: RegistryGatewayError) -> float | None:
        """Seconds to wait before the next attempt, or None when `error` is final."""
        if error.code not in RETRYABLE_CODES or not self.retry_safe:
            return None
        if self.count >= self.policy.max_attempts:
            return None
        delay = self.policy.backoff(self.count, error.retry_delay)
        if self._clock() + delay >= self._deadline:
            return None
        return delay
