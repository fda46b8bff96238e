"""The gates of a call, before the servicer: who is calling, and may it call now.

Plain callables built once at startup from the config; a transport calls them in order
with what it read off the request (metadata, the TLS peer's auth context, the peer's
address). Each either lets the call through or raises the GatewayError to answer.

The upstream budget (calls past the cache) is not spent at the gate: a write or a `no-cache`
read may still be refused by the gateway itself (authorization, validation, content rules,
a slice's ownership or share) before it reaches AWS, and such a call must not spend a
budget named for the calls that reach AWS. `Admit` hands the call an `UpstreamPass` (made
current for its task, as `service/call.py` makes the call current); the servicer spends it,
once, with `past_the_cache()` at the moment the call leaves the gateway for AWS (or for the
history store), and only then can the call be refused UPSTREAM_BUDGET_EXHAUSTED.
"""

from __future__ import annotations

import contextvars
import hashlib
from collections.abc import Callable, Iterable
from typing import Any

from service.auth.authenticator import PEER_CERT_KEY
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
        # API keys already accepted, by the sha256 of the `authorization` value that carried
        # them, for one tenancy snapshot only (`_memo_of`): see `memoized`.
        self._memo: dict[bytes, Identity] = {}
        self._memo_of: Tenancy | None = None

    def memoized(
        self,
        tenancy: Tenancy,
        authorization: str | bytes | None,
        metadata: Metadata | None,
        auth_context: Any,
        peer: Callable[[], str],
    ) -> Identity:
        """As calling this, with the call's first `authorization` value read off
        `metadata` already, and an API key accepted under `tenancy` remembered.

        An API key's identity is a pure function of the snapshot and the value presented
        (its digest against the snapshot's digests), so a key accepted once under a
        snapshot is accepted under it again: the memo skips the parse, the JWT test and
        the scan of every digest. It holds only what was accepted (a stranger's attempt
        takes the full path and its failure is counted), keyed by the sha256 of the value
        (no key is kept in clear), only values of the one canonical form
        `Bearer <key>` (so at most one entry per key of the snapshot: a tenant sending its
        key with other spacing cannot grow it), and only for the snapshot it was filled
        under: a reload (a key revoked, a tenant removed) replaces the snapshot, and the
        next call under the new one starts an empty memo. Not for JWTs (they expire) nor
        client certificates (they are the identity on an mTLS listener, checked first)."""
        if type(authorization) is not str or (auth_context and auth_context.get(PEER_CERT_KEY)):
            return self(tenancy, metadata, auth_context, peer)
        if self._memo_of is not tenancy:
            self._memo = {}
            self._memo_of = tenancy
        digest = hashlib.sha256(authorization.encode("utf-8")).digest()
        identity = self._memo.get(digest)
        if identity is None:
            identity = self(tenancy, metadata, auth_context, peer)
            if identity.kind == "api_key" and _canonical(authorization):
                self._memo[digest] = identity
        return identity

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


def _canonical(authorization: str) -> bool:
    """Whether the value is exactly `Bearer <token>`, the one spelling of each token."""
    token = authorization[7:]
    return authorization[:7] == "Bearer " and token == token.strip()


class UpstreamPass:
    """A call's right to go past the cache, spent on its tenant's budget at most once."""

    __slots__ = ("_budget", "_spent", "_tenant")

    def __init__(self, budget: UpstreamBudget, tenant: str) -> None:
        self._budget = budget
        self._tenant = tenant
        self._spent = False

    async def spend(self) -> None:
        """Take one call from the tenant's budget (the first time only), or raise
        ResourceExhausted (UPSTREAM_BUDGET_EXHAUSTED)."""
        if self._spent:
            return
        self._spent = True
        await self._budget.acquire(self._tenant)


# The pass of the call this task serves; None: a call that goes past the cache for free
# (a cached read's load belongs to no caller) or that no gate admitted (unit tests).
_PASS: contextvars.ContextVar[UpstreamPass | None] = contextvars.ContextVar(
    "registry_gateway_upstream_pass", default=None
)


async def past_the_cache() -> None:
    """The current call is about to reach AWS (or the history store): spend its pass.

    ResourceExhausted (UPSTREAM_BUDGET_EXHAUSTED) when its tenant's budget is spent; nothing
    when the call holds no pass (a cached read, or a call outside the pipeline)."""
    upstream = _PASS.get()
    if upstream is not None:
        await upstream.spend()


class Admit:
    """May this tenant make this call now: its rate limit (when configured); and a pass on
    its budget of calls past the cache (writes, `no-cache` reads and history reads, always
    on), spent only once the call goes past the cache (`past_the_cache`)."""

    def __init__(self, rate_limiter: RateLimiter | None, budget: UpstreamBudget | None) -> None:
        self._rate_limiter = rate_limiter
        self._budget = budget

    async def __call__(self, tenant: str, is_write: bool, no_cache: bool) -> None:
        """Return when admitted; raise ResourceExhausted when not. Makes the call's
        `UpstreamPass` current for this task (the transport runs the servicer in it)."""
        if self._rate_limiter is not None:
            kind: RateKind = "write" if is_write else "read"
            await self._rate_limiter.acquire(tenant, kind)
        budget = self._budget if is_write or no_cache else None
        _PASS.set(None if budget is None else UpstreamPass(budget, tenant))
