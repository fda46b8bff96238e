"""The gates of a call, before the servicer: who is calling, and may it call now.

Plain callables built once at startup from the config; a transport calls them in order
with what it read off the request (metadata, the TLS peer's auth context, the peer's
address). Each either lets the call through or raises the GatewayError to answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from service.auth.failures import AuthFailures
from service.auth.identity import Identity
from service.auth.tenancy import Tenancy
from service.errors import GatewayError, Unauthenticated
from service.observability.metrics import Metrics
from service.state.ratelimit import RateKind, RateLimiter, UpstreamBudget

Metadata = Iterable[tuple[str, str | bytes]]


class FailedAuthentication(Exception):
    """A failed authentication: the error to answer, and whether its lines are written
    (past a peer's budget of failures they are sampled)."""

    def __init__(self, error: GatewayError, log: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.log = log


class Authenticate:
    """Who is calling: a tenant's identity, or FailedAuthentication.

    Every failure is counted; per peer address, failures past a budget are answered
    RESOURCE_EXHAUSTED and logged by sample (service/auth/failures.py). Valid credentials
    are always checked first, so they are never refused for others' failures.
    """

    def __init__(self, metrics: Metrics, failures: AuthFailures | None) -> None:
        self._metrics = metrics
        self._failures = failures

    def __call__(
        self,
        tenancy: Tenancy,
        metadata: Metadata | None,
        auth_context: Any,
        peer: Callable[[], str],
    ) -> Identity:
        """The caller's identity under the tenancy snapshot the call runs with. `peer`
        answers the caller's address; asked only when authentication fails."""
        try:
            return tenancy.authenticator.authenticate(metadata, auth_context)
        except Unauthenticated as exc:
            self._metrics.auth_failures.labels(exc.reason).inc()
            if self._failures is None:
                raise FailedAuthentication(exc, log=True) from None
            verdict = self._failures.failed(peer())
            raise FailedAuthentication(verdict.refuse or exc, verdict.log) from None


class Admit:
    """May this tenant make this call now: its rate limit (when configured), and its budget
    of calls past the cache (writes and `no-cache` reads, always on)."""

    def __init__(self, rate_limiter: RateLimiter | None, budget: UpstreamBudget | None) -> None:
        self._rate_limiter = rate_limiter
        self._budget = budget

    async def __call__(self, tenant: str, is_write: bool, no_cache: bool) -> None:
        """Return when admitted; raise ResourceExhausted when not."""
        if self._rate_limiter is not None:
            kind: RateKind = "write" if is_write else "read"
            await self._rate_limiter.acquire(tenant, kind)
        if (is_write or no_cache) and self._budget is not None:
            await self._budget.acquire(tenant)
