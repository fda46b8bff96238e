"""The pipeline every transport runs its calls through, built once at startup.

One object holds what a call passes before the servicer (the gates) and what observes how
it ended (the reporters), with the deadline rules and the per-call bookkeeping both
transports share: the gRPC interceptor (service/rpc/interceptor.py) and the HTTP one
(service/http/transport.py) adapt their requests to it and keep only what their protocol
needs (reading the request, answering the status). One instance serves both, so a tenant's
rate limit and upstream budget, an address's failed logins, the metrics, the access log and
the audit trail are the same whichever transport a call came by.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from service.auth.failures import AuthFailures
from service.auth.tenancy import TenancyHolder
from service.catalog import WRITES
from service.config import ServerConfig
from service.echo import safe_request_id
from service.errors import REQUEST_ID_KEY
from service.observability.audit import AuditLog, WriteRecord
from service.observability.metrics import Metrics
from service.observability.tracing import Tracing
from service.pipeline.gates import Admit, Authenticate
from service.pipeline.reporters import (
    AccessLogReporter,
    AuditReporter,
    MetricsReporter,
    Outcome,
    Reporter,
    TracingReporter,
)
from service.state.ratelimit import RateLimiter, UpstreamBudget

CACHE_CONTROL_KEY = "cache-control"


def request_id(metadata: Iterable[tuple[str, Any]]) -> str:
    """The caller's `x-request-id` when it is safe to repeat, else a new one."""
    for key, value in metadata:
        if key == REQUEST_ID_KEY and isinstance(value, str):
            value = value.strip()
            # Anything else is replaced, not repeated: it goes into log fields and trailers.
            if safe_request_id(value):
                return value
    # The same 32 hex digits as uuid4().hex, without building a UUID object (~2 us a call).
    return secrets.token_hex(16)


def no_cache(metadata: Iterable[tuple[str, Any]]) -> bool:
    """Whether the caller asked for a fresh read (`cache-control: no-cache`)."""
    for key, value in metadata:
        if key == CACHE_CONTROL_KEY and isinstance(value, str):
            return "no-cache" in value.lower()
    return False


class Pipeline:
    """Gates, reporters and deadline rules of every call, whatever its transport."""

    def __init__(
        self,
        server: ServerConfig,
        tenancy: TenancyHolder,
        *,
        rate_limiter: RateLimiter | None = None,
        upstream_budget: UpstreamBudget | None = None,
        auth_failures: AuthFailures | None = None,
        audit: AuditLog | None = None,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        hit_log_sample_rate: float = 0.01,
        sample: Callable[[], float] = random.random,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.tracing = tracing or Tracing(None)
        self.tenancy = tenancy
        self.authenticate = Authenticate(self.metrics, auth_failures)
        self.admit = Admit(rate_limiter, upstream_budget)
        self._method_metrics = MetricsReporter(self.metrics)
        reporters: list[Reporter] = [
            self._method_metrics,
            TracingReporter(),
            AccessLogReporter(hit_log_sample_rate, sample),
        ]
        if audit is not None:
            reporters.append(AuditReporter(audit))
        self._reporters = tuple(reporters)
        self.default_deadline = server.default_deadline_seconds
        self.max_deadline = server.max_deadline_seconds
        self.max_message_bytes = server.max_message_bytes

    def budget(self, remaining: float | None) -> tuple[float, bool]:
        """Seconds a call may take given the caller's deadline (`remaining`, None: none
        sent), and whether the gateway must enforce them itself: the transports enforce a
        caller's own deadline; an own timer (~20 us a call) only for the default or the cap."""
        if remaining is None:
            return self.default_deadline, True
        if remaining > self.max_deadline:
            return self.max_deadline, True
        return max(remaining, 0.0), False

    def started(self, method: str, metadata: Iterable[tuple[str, Any]]) -> Outcome:
        """A call has arrived: count it, open its span, name it; its outcome so far is
        CANCELLED (what it stays if the call ends before anything else is known)."""
        self._method_metrics.for_method(method).started.inc()
        traced = self.tracing.rpc(method, metadata)
        span = traced.__enter__()
        rpc = method.rsplit("/", 1)[-1]
        return Outcome(
            method,
            rpc,
            request_id(metadata),
            None,
            None,
            WriteRecord() if rpc in WRITES else None,
            grpc.StatusCode.CANCELLED,
            "CANCELLED",
            0.0,
            span=span,
            traced=traced,
            started=time.perf_counter(),
        )

    def ended(self, outcome: Outcome) -> None:
        """The call has ended as `outcome` says: every reporter observes it."""
        outcome.seconds = time.perf_counter() - outcome.started
        for reporter in self._reporters:
            reporter.post_call(outcome)
