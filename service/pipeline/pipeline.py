"""The pipeline every transport runs its calls through, built once at startup.

One object holds what a call passes before the servicer (the gates) and what observes how
it ended (the reporters), with the deadline rules and the per-call bookkeeping both
transports share: the gRPC interceptor (service/rpc/interceptor.py) and the HTTP one
(service/http/transport.py) adapt their requests to it and keep only what their protocol
needs (reading the request, answering the status): each calls `started`, `budget`,
`admit_call` (the one admission: a gate added there is added for both), `fail_call` and
`ended`. One instance serves both, so a tenant's
rate limit and upstream budget, an address's failed logins, the metrics, the access log and
the audit trail are the same whichever transport a call came by.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import grpc

from service.auth.api_keys import AUTHORIZATION_KEY
from service.auth.failures import AuthFailures
from service.auth.identity import Identity
from service.auth.tenancy import Tenancy, TenancyHolder
from service.call import Call, begin
from service.catalog import UNCACHED_READS, WRITES
from service.config import ServerConfig
from service.echo import safe_request_id
from service.errors import REQUEST_ID_KEY, GatewayError, internal
from service.observability.audit import AuditLog, WriteRecord
from service.observability.metrics import Metrics
from service.observability.tracing import Tracing, end_rpc
from service.pipeline.gates import Admit, Authenticate, FailedAuthentication
from service.pipeline.reporters import (
    AccessLogReporter,
    AuditReporter,
    MethodPlan,
    MetricsReporter,
    Outcome,
    Reporter,
)
from service.pipeline.slots import CallSlots
from service.state.ratelimit import RateLimiter, UpstreamBudget

CACHE_CONTROL_KEY = "cache-control"
_new = object.__new__
_CANCELLED = grpc.StatusCode.CANCELLED
log = logging.getLogger("registry_gateway.calls")

# Random bytes drawn from the kernel per batch of request ids, not per id.
_ID_HEX_DIGITS = 32
_ID_BATCH = 256


class _RandomHex:
    """Request ids: 32 hex digits (128 bits, the size of uuid4().hex) from `os.urandom`, drawn
    a batch of 256 ids at a time instead of one `getrandom` system call per call, and cut
    into ids when drawn (a call then only pops one).

    Each id is as random as `secrets.token_hex(16)`'s: no counter or process prefix a caller
    could read other callers' ids or the replica's call rate from (ids are echoed to
    callers). A forked worker starts a batch of its own (`os.register_at_fork`), so no two
    processes hand out the same ids. Called on the event loop's thread only.
    """

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: list[str] = []

    def take(self) -> str:
        """The next id."""
        ids = self._ids
        if not ids:
            pool = os.urandom(_ID_HEX_DIGITS // 2 * _ID_BATCH).hex()
            ids.extend(pool[at : at + _ID_HEX_DIGITS] for at in range(0, len(pool), _ID_HEX_DIGITS))
        return ids.pop()

    def forget(self) -> None:
        """Drop the batch (in a forked child: the parent's ids are the parent's)."""
        self._ids.clear()


_NEW_IDS = _RandomHex()
os.register_at_fork(after_in_child=_NEW_IDS.forget)
# The batch itself (emptied in place by `forget`, never replaced): `started` pops from it
# without a frame of `take` while it holds ids.
_BATCH = _NEW_IDS._ids


def request_id(metadata: Iterable[tuple[str, Any]]) -> str:
    """The caller's `x-request-id` when it is safe to repeat, else a new one."""
    for key, value in metadata:
        if key == REQUEST_ID_KEY and isinstance(value, str):
            value = value.strip()
            # Anything else is replaced, not repeated: it goes into log fields and trailers.
            if safe_request_id(value):
                return value
    return _NEW_IDS.take()


def _admitted(
    outcome: Outcome, identity: Identity, rpc: str, tenancy: Tenancy, deadline: float, fresh: bool
) -> Call:
    """The admitted call's `Call`, recorded in its outcome and made current for this task."""
    call = outcome.call = Call(
        outcome.request_id, identity, rpc, deadline, tenancy, outcome.record, fresh
    )
    begin(call)
    return call


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
        # Whether every call must pass `admit`; without a rate limit only the calls past the
        # cache (writes, no-cache and uncached reads) have anything to be admitted to.
        self.rate_limited = rate_limiter is not None
        self._method_metrics = MetricsReporter(self.metrics)
        # In the order they run: metrics first (the count stands whatever the others do).
        reporters: list[Reporter] = [self._method_metrics]
        self._tracing = self.tracing.enabled  # decided at start-up (service/app/server.py)
        reporters.append(AccessLogReporter(hit_log_sample_rate, sample))
        self._reads_reporters = tuple(reporters)
        if audit is not None:
            reporters.append(AuditReporter(audit))
        self._writes_reporters = tuple(reporters)
        self._plans: dict[str, MethodPlan] = {}
        # Reporters that raised, by name: each kind is logged once, every failure counted.
        self._failed_reporters: set[str] = set()
        self.default_deadline = server.default_deadline_seconds
        self.max_deadline = server.max_deadline_seconds
        self.max_message_bytes = server.max_message_bytes
        # Calls started and not yet reported: the shutdown closes the reporters' sinks (the
        # audit file) only once none is left (`idle`), or its wait for them is over.
        self._open = 0
        self._idle: asyncio.Event | None = None

    def plan(self, method: str) -> MethodPlan:
        """The method's plan (`/package.Service/Method`), made on its first call."""
        plan = self._plans.get(method)
        if plan is None:
            rpc = method.rsplit("/", 1)[-1]
            is_write = rpc in WRITES
            metrics = self._method_metrics.for_method(method)
            others = self._writes_reporters if is_write else self._reads_reporters
            plan = self._plans[method] = MethodPlan(
                rpc,
                is_write,
                rpc in UNCACHED_READS,
                metrics,
                # The method's metrics report the call themselves (the MetricsReporter's
                # counting, without its frame), first as the MetricsReporter was.
                (metrics, *others[1:]),
            )
        return plan

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
        """A call has arrived: count it, open its span (closed by `ended`, the span's one
        other owner), name it; its outcome so far is CANCELLED (what it stays if the call
        ends before anything else is known)."""
        plan = self._plans.get(method) or self.plan(method)
        plan.metrics.started += 1  # `start()`, written out
        traced = span = None
        if self._tracing:
            traced = self.tracing.rpc(method, metadata)
            span = traced.__enter__()
        self._open += 1  # until `ended`
        # `request_id(metadata)`, written out (it runs on every call).
        for key, value in metadata:
            if key == REQUEST_ID_KEY and isinstance(value, str):
                value = value.strip()
                if safe_request_id(value):
                    new_id = value
                    break
        else:
            new_id = _BATCH.pop() if _BATCH else _NEW_IDS.take()
        # `Outcome(method, plan.rpc, new_id, None, None, record, _CANCELLED, "CANCELLED",
        # 0.0, span=span, traced=traced, started=..., plan=plan)`, written out: every field
        # without a default stored here, the others left to their class defaults unless set
        # (tests/pipeline/test_hot_path_shapes.py holds this to the dataclass's fields).
        outcome = _new(Outcome)
        outcome.method = method
        outcome.rpc = plan.rpc
        outcome.request_id = new_id
        outcome.identity = None
        outcome.call = None
        outcome.record = WriteRecord() if plan.is_write else None
        outcome.code = _CANCELLED
        outcome.reason = "CANCELLED"
        outcome.seconds = 0.0
        if traced is not None:
            outcome.span = span
            outcome.traced = traced
        outcome.plan = plan
        outcome.started = time.perf_counter()
        return outcome

    async def admit_call(
        self,
        outcome: Outcome,
        slots: CallSlots,
        metadata: Iterable[tuple[str, Any]],
        auth_context: Any,
        peer: Callable[[], str],
        deadline: float,
        refused: GatewayError | None = None,
    ) -> Call:
        """Admit a call that has `started`, at its headers (before its request is read): its
        caller authenticated under the current tenancy (`auth_context`: the TLS peer's, None
        without one; `peer`: the address, asked only if authentication fails), then
        `refused` raised (what the transport found wrong that only a known caller hears),
        one of its tenant's `slots` taken, its rate limit and upstream pass (`no-cache`
        read off `metadata`); then its `Call` (`deadline`: loop time), made current for
        this task, where the transport then runs the servicer.

        Raises a GatewayError or FailedAuthentication (`fail_call` makes either the answer);
        a refused call holds no slot. An admitted one holds its tenant's slot until the
        transport gives it back (`slots.release_tenant(call.tenant.name)`) as the call ends.
        """
        admitted = self.admission(outcome, slots, metadata, auth_context, peer, deadline, refused)
        return admitted if type(admitted) is Call else await cast(Awaitable[Call], admitted)

    def admission(
        self,
        outcome: Outcome,
        slots: CallSlots,
        metadata: Iterable[tuple[str, Any]],
        auth_context: Any,
        peer: Callable[[], str],
        deadline: float,
        refused: GatewayError | None = None,
    ) -> Call | Awaitable[Call]:
        """`admit_call` without a coroutine of its own when the call has no gate to wait
        for (a cached read without a rate limit: the hot path): the `Call`, admitted; else
        what to await for it. Raises as `admit_call` does."""
        plan = outcome.plan or self.plan(outcome.method)  # made by `started`
        tenancy = self.tenancy.current
        # One pass over the metadata for what admission reads of it.
        authorization: str | bytes | None = None
        cache_control: str | None = None
        for key, value in metadata:
            if key == AUTHORIZATION_KEY:
                if authorization is None:
                    authorization = value
            elif key == CACHE_CONTROL_KEY and cache_control is None and isinstance(value, str):
                cache_control = value
        identity = outcome.identity = self.authenticate.memoized(
            tenancy, authorization, metadata, auth_context, peer
        )
        if refused is not None:
            raise refused
        tenant = identity.tenant.name
        is_write = plan.is_write
        fresh = not is_write and cache_control is not None and "no-cache" in cache_control.lower()
        past_cache = fresh or plan.uncached
        slots.take_tenant(tenant)
        if self.rate_limited or is_write or past_cache:
            return self._gated(
                outcome,
                slots,
                tenant,
                is_write,
                past_cache,
                (identity, plan.rpc, tenancy),
                deadline,
                fresh,
            )
        # A cached read without a rate limit has nothing to pass: it holds no upstream
        # pass, as its task's fresh context says. (`_admitted`, written out: the hot path;
        # `Call(outcome.request_id, identity, plan.rpc, deadline, tenancy, outcome.record,
        # fresh)` too, without its `__init__` frame: tests/pipeline/test_hot_path_shapes.py
        # holds these stores to what `Call.__init__` sets.)
        call = outcome.call = _new(Call)
        call.request_id = outcome.request_id
        call.identity = identity
        call.rpc = plan.rpc
        call.deadline = deadline
        call.tenancy = tenancy
        call.write = outcome.record
        call.no_cache = fresh
        call.trailers = []
        call.where = {}
        call.cache_result = []
        begin(call)
        return call

    async def _gated(
        self,
        outcome: Outcome,
        slots: CallSlots,
        tenant: str,
        is_write: bool,
        past_cache: bool,
        who: tuple[Identity, str, Tenancy],
        deadline: float,
        fresh: bool,
    ) -> Call:
        """The call past its rate limit and upstream pass (`admit`), then admitted; its
        tenant's slot given back if it is refused there."""
        try:
            await self.admit(tenant, is_write, past_cache)
        except BaseException:
            slots.release_tenant(tenant)
            raise
        identity, rpc, tenancy = who
        return _admitted(outcome, identity, rpc, tenancy, deadline, fresh)

    def fail_call(
        self, outcome: Outcome, error: BaseException, peer: Callable[[], str]
    ) -> GatewayError:
        """The error to answer for a call that failed with `error`, recorded in `outcome`:
        a GatewayError as it is; a failed authentication's error (its line sampled as its
        peer's budget says, the peer named: who failed is known only by address); anything
        else INTERNAL with the request id only (its type recorded, never its text: a
        traceback or an exception's text may carry secrets)."""
        if isinstance(error, FailedAuthentication):
            outcome.quiet = not error.log
            outcome.peer = peer()
            error = error.error
        if not isinstance(error, GatewayError):
            outcome.error_type = type(error).__name__
            error = internal(outcome.request_id)
        outcome.code, outcome.reason = error.code, error.reason
        return error

    def ended(self, outcome: Outcome) -> None:
        """The call has ended as `outcome` says: every reporter of its method observes it.

        A reporter never fails the call (its answer is decided, perhaps already sent): one
        that raises is counted (registry_gateway_reporter_failures_total{reporter}) and
        logged once per kind, by the exception's type only (its text may carry what the
        call carried), and the reporters after it still run."""
        outcome.seconds = time.perf_counter() - outcome.started
        plan = outcome.plan or self.plan(outcome.method)
        try:
            if outcome.traced is not None:
                self._end_span(outcome)
            for reporter in plan.reporters:
                try:
                    reporter.post_call(outcome)
                except Exception as exc:  # a reporter never fails the call: see above
                    self._reporter_failed(reporter.name, exc)
        finally:
            self._open -= 1
            if not self._open and self._idle is not None:
                self._idle.set()

    def _end_span(self, outcome: Outcome) -> None:
        """Close the span `started` opened, with the call's real code (OpenTelemetry's aio
        instrumentation would record an abort as OK); before the reporters, so the access
        log and the audit see the call's span ended. Guarded as a reporter is."""
        traced = outcome.traced
        assert traced is not None
        try:
            end_rpc(outcome.span, outcome.code, outcome.reason)
            traced.__exit__(None, None, None)
        except Exception as exc:  # the span never fails the call either
            self._reporter_failed("tracing", exc)

    def _reporter_failed(self, name: str, exc: Exception) -> None:
        self.metrics.reporter_failures.labels(name).inc()
        if name not in self._failed_reporters:
            self._failed_reporters.add(name)
            log.error(
                "the %s reporter failed (%s); the call's answer stands. Its later failures "
                "are counted in registry_gateway_reporter_failures_total, not logged",
                name,
                type(exc).__name__,
            )

    @property
    def open_calls(self) -> int:
        """Calls started and not reported yet."""
        return self._open

    async def idle(self) -> None:
        """Until every call started has been reported (its audit line written); the caller
        bounds the wait (the shutdown)."""
        while self._open:
            if self._idle is None:
                self._idle = asyncio.Event()
            self._idle.clear()
            await self._idle.wait()
