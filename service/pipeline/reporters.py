"""Reporters: how a call ended, observed, each on its own (go-grpc-middleware's reporter:
the pipeline times the call, reporters only observe it through one `post_call`).

The pipeline builds one `Outcome` per call, whatever its end, and hands it to each
reporter of the call's method in turn; a reporter never changes the answer and never raises
into the call: the pipeline guards each one (service/pipeline/pipeline.py `ended`), so one
that fails is counted and logged and the others still run.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from opentelemetry.trace import Span

from service.auth.identity import Identity
from service.call import Call
from service.observability.audit import AuditLog, WriteRecord
from service.observability.metrics import MethodMetrics, Metrics

log = logging.getLogger("registry_gateway.calls")

# Compared by identity: a set lookup hashes the StatusCode with enum's __hash__, in Python.
_UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
_PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
_OK = grpc.StatusCode.OK


# Not frozen: one per call on the hot path (see service/call.py). No slots either: the
# fields with defaults are class attributes until a call sets them, so `Pipeline.started`
# builds one with `object.__new__` and stores only the fields a call always has (no
# `__init__` frame with 17 arguments, every call).
@dataclass
class Outcome:
    """How one call ended, for the reporters."""

    method: str  # /package.Service/Method
    rpc: str
    request_id: str
    identity: Identity | None  # None: authentication did not succeed
    call: Call | None  # None: the call never reached the servicer
    record: WriteRecord | None  # a write's audit fields (None for reads)
    code: grpc.StatusCode
    reason: str | None
    seconds: float
    error_type: str | None = None  # INTERNAL: the exception's type, never its text
    peer: str | None = None  # only for failed authentication: who, by address
    quiet: bool = False  # a failed authentication past its peer's budget: not logged
    # The call's span: opened by `Pipeline.started`, closed by `Pipeline.ended`, its owner.
    span: Span | None = None
    traced: contextlib.AbstractContextManager[Span | None] | None = None
    started: float = 0.0  # time.perf_counter() when the call arrived
    # A write's audit line, written by the audit's thread: the transport awaits it before
    # the answer leaves (bounded), so an answer implies its line is in the trail.
    audit_written: Callable[[], Awaitable[None]] | None = None
    # What the pipeline does for the call's method (None: an outcome built outside the
    # pipeline, in tests): the reporters and the metrics, found without a lookup per call.
    plan: MethodPlan | None = None


class Reporter(Protocol):
    """Observes how calls end."""

    # What its failures are counted and logged as (registry_gateway_reporter_failures_total).
    name: str

    def post_call(self, outcome: Outcome) -> None:
        """Record one call's outcome."""
        ...


@dataclass(frozen=True, slots=True)
class MethodPlan:
    """What the pipeline does for every call of one method, decided on its first call: its
    name, whether it writes, whether it is a read no cache answers, its metrics' label
    children, and the reporters that observe it (a reporter with nothing to do for the
    method is left out: the audit for reads). The call's span is not a reporter's: `started`
    opens it and `ended` closes it."""

    rpc: str
    is_write: bool
    uncached: bool
    metrics: MethodMetrics
    reporters: tuple[Reporter, ...]


class MetricsReporter:
    """grpc_server_handled_total / handling_seconds per method and code, and denials.

    The pipeline's plans hold each method's `MethodMetrics` in its place (the same
    counting, one frame fewer a call); this serves an outcome of any method."""

    name = "metrics"

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.for_method = metrics.for_method

    def post_call(self, outcome: Outcome) -> None:
        """Count the call by code, with its latency."""
        plan = outcome.plan
        metrics = plan.metrics if plan is not None else self.for_method(outcome.method)
        metrics.post_call(outcome)


class AccessLogReporter:
    """Every error and every write; reads served from the cache only by sample, because a
    log line per hit costs more than the hit itself."""

    name = "access_log"

    def __init__(
        self, hit_sample_rate: float = 0.01, sample: Callable[[], float] = random.random
    ) -> None:
        self._hit_sample_rate = hit_sample_rate
        self._sample = sample

    def post_call(self, outcome: Outcome) -> None:
        """Write the call's line (or not, for a hit off the sample or a quiet failure)."""
        if outcome.quiet:
            return
        call = outcome.call
        cache = call.cache_result[0] if call is not None and call.cache_result else None
        hit = outcome.code is _OK and cache == "hit"
        if hit and self._sample() >= self._hit_sample_rate:
            return
        identity = outcome.identity
        fields: dict[str, Any] = {
            "request_id": outcome.request_id,
            "tenant": identity.tenant.name if identity else None,
            "rpc": outcome.rpc,
            "code": outcome.code.name,
            "reason": outcome.reason,
            "duration_ms": round(outcome.seconds * 1000, 2),
            "cache": cache,
            "error_type": outcome.error_type,
            "peer": outcome.peer,
            **(call.where if call is not None else {}),
        }
        if outcome.code == grpc.StatusCode.INTERNAL:
            log.error("unexpected error", extra=fields)
        else:
            ok = outcome.code == grpc.StatusCode.OK
            log.info("call ok" if ok else "call failed", extra=fields)


class AuditReporter:
    """Exactly one audit line per write attempt, whatever its end (CANCELLED when the
    caller went away or its deadline passed)."""

    name = "audit"

    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit

    def post_call(self, outcome: Outcome) -> None:
        """Append the write's line; reads leave none."""
        if outcome.record is None or outcome.quiet:
            return
        identity = outcome.identity
        line = self._audit.write(
            request_id=outcome.request_id,
            tenant=identity.tenant.name if identity else None,
            identity=f"{identity.kind}:{identity.subject}" if identity else None,
            rpc=outcome.rpc,
            outcome=outcome.code.name,
            reason=outcome.reason,
            record=outcome.record,
        )
        if line:
            outcome.audit_written = functools.partial(self._audit.written, line)
