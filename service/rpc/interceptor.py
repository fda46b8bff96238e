"""The one wrapper on the hot path: request id, deadline, authentication, error mapping, log.

Wrapping interceptors cost about 15% of a bare call each in Python, so the per-call
concerns live in this one. It wraps the handler (not just `intercept_service`) to see the
request and the context. It fails closed: every method not explicitly exempt (health,
reflection) requires credentials.

Bounded work before authentication: the handler takes the request as raw bytes (grpc.aio
would otherwise parse it on the event loop before any gateway code runs, for anyone), and
parses it only once the caller is authenticated and the bytes are within the RPC's limit
(service/rpc/request_limits.py). Bytes that do not parse are diagnosed within a fixed budget.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, cast

import grpc
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError

from service.auth.failures import AuthFailures
from service.auth.identity import Identity
from service.auth.tenancy import Tenancy, TenancyHolder
from service.call import Call, begin
from service.config import WRITE_OPERATIONS, ServerConfig
from service.echo import safe_request_id
from service.errors import (
    REQUEST_ID_KEY,
    DeadlineExceeded,
    FieldViolation,
    GatewayError,
    InvalidArgument,
    Unauthenticated,
    internal,
    to_status,
)
from service.observability.audit import AuditLog, WriteRecord
from service.observability.metrics import Metrics
from service.observability.tracing import Tracing, end_rpc
from service.rpc import wire
from service.rpc.request_limits import max_request_bytes
from service.state.ratelimit import RateKind, RateLimiter, UpstreamBudget

log = logging.getLogger("registry_gateway.calls")

# Services that need no credentials: load balancers and grpcurl must reach them bare.
EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
_DENIED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
CACHE_CONTROL_KEY = "cache-control"


Deserializer: TypeAlias = "Callable[[bytes], Any]"


def _decoder(rpc: str, deserializer: Deserializer | None, limit: int) -> Deserializer:
    """Parses an authenticated caller's raw request bytes, within the RPC's byte limit."""
    if deserializer is None:
        raise RuntimeError(f"{rpc}: no request deserializer")
    # Generated code passes `Message.FromString`, bound to the message class.
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)

    def decode(data: bytes) -> Any:
        if len(data) > limit:
            raise InvalidArgument(
                f"the request is {len(data)} bytes; the largest valid {rpc} request is "
                f"{limit} bytes (ECR's own limits), so it was not read",
                reason="REQUEST_TOO_LARGE",
                metadata={"rpc": rpc, "limitBytes": str(limit)},
                field_violations=[
                    FieldViolation("", f"request of {len(data)} bytes; at most {limit}")
                ],
            )
        try:
            return deserializer(data)
        except (DecodeError, ValueError, RuntimeError):
            # grpcio would answer UNKNOWN for this; it is the caller's bytes that are wrong
            # (random, truncated, invalid UTF-8 in a string).
            violation = (
                wire.locate(descriptor, data)
                if isinstance(descriptor, Descriptor)
                else FieldViolation("", "undecodable protobuf bytes")
            )
            at = violation.field
            raise InvalidArgument(
                f"the request bytes are not a valid {rpc} request"
                f"{f' at {at}' if at else ''}: {violation.description}",
                reason="UNDECODABLE_REQUEST",
                field_violations=[violation],
            ) from None

    return decode


def _no_cache(metadata: Any) -> bool:
    for key, value in metadata or ():
        if key == CACHE_CONTROL_KEY and isinstance(value, str):
            return "no-cache" in value.lower()
    return False


def _request_id(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            value = value.strip()
            # Anything else is replaced, not repeated: it goes into log fields and trailers.
            if safe_request_id(value):
                return value
    # The same 32 hex digits as uuid4().hex, without building a UUID object (~2 us a call).
    return secrets.token_hex(16)


class _FailedAuthentication(Exception):
    """A failed authentication, with the error to answer and whether to log (by sample)."""

    def __init__(self, error: GatewayError, log: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.log = log


# Strings: grpcio's classes are generic only in typeshed's stubs, not at run time.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


_Unary: TypeAlias = "Callable[[Any, Context], Awaitable[Any]]"


class GatewayInterceptor(grpc.aio.ServerInterceptor):
    """Request id, deadline, authentication, rate limit, error-to-status and audit, per call."""

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
        self._metrics = metrics or Metrics()
        self._tracing = tracing or Tracing(None)
        self._hit_log_sample_rate = hit_log_sample_rate
        self._sample = sample
        self._default_deadline = server.default_deadline_seconds
        self._max_deadline = server.max_deadline_seconds
        self._max_message_bytes = server.max_message_bytes
        self._tenancy = tenancy
        self._rate_limiter = rate_limiter
        self._upstream_budget = upstream_budget
        self._auth_failures = auth_failures
        self._audit = audit
        self._wrapped: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method: str = details.method
        if method.startswith(EXEMPT_PREFIXES):
            return await continuation(details)
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None:
            return None
        if handler.unary_unary is None:
            # Fail closed: a streaming RPC added without thought for auth is refused outright.
            raise RuntimeError(f"{method}: only unary RPCs are wrapped")
        rpc = method.rsplit("/", 1)[-1]
        decode = _decoder(
            rpc,
            handler.request_deserializer,
            min(max_request_bytes(rpc), self._max_message_bytes),
        )
        wrapped: Handler = grpc.unary_unary_rpc_method_handler(
            self._wrap(method, cast(_Unary, handler.unary_unary), decode),
            # None: the behaviour gets the raw bytes, parsed only after authentication.
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = wrapped
        return wrapped

    def _budget(self, context: Context) -> tuple[float, bool]:
        """Seconds the call may take, and whether the gateway must enforce them itself.

        grpc.aio already cancels the handler at a deadline the caller sent; an own timer
        (~20 us a call) is armed only for the default deadline or the cap."""
        remaining = context.time_remaining()
        if remaining is None:
            return self._default_deadline, True
        if remaining > self._max_deadline:
            return self._max_deadline, True
        return remaining, False

    def _authenticate(self, tenancy: Tenancy, metadata: Any, context: Context) -> Identity:
        try:
            return tenancy.authenticator.authenticate(metadata, context.auth_context())
        except Unauthenticated as exc:
            self._metrics.auth_failures.labels(exc.reason).inc()
            if self._auth_failures is None:
                raise
            verdict = self._auth_failures.failed(context.peer())
            raise _FailedAuthentication(verdict.refuse or exc, verdict.log) from None

    def _wrap(self, method: str, inner: _Unary, decode: Deserializer) -> _Unary:
        rpc = method.rsplit("/", 1)[-1]
        is_write = rpc in WRITE_OPERATIONS
        kind: RateKind = "write" if is_write else "read"
        measured = self._metrics.for_method(method)

        async def handle(raw: bytes, context: Context) -> Any:
            started = time.perf_counter()
            measured.started.inc()
            metadata = context.invocation_metadata()
            traced = self._tracing.rpc(method, metadata)
            span = traced.__enter__()
            error_type: str | None = None
            request_id = _request_id(metadata)
            tenancy = self._tenancy.current
            identity: Identity | None = None
            call: Call | None = None
            record = WriteRecord() if is_write else None
            code: grpc.StatusCode = grpc.StatusCode.CANCELLED
            reason: str | None = "CANCELLED"
            loop = asyncio.get_running_loop()
            budget, own_timer = self._budget(context)
            # Past a peer's budget of failed authentications, their lines are sampled.
            quiet = False
            try:
                try:
                    async with asyncio.timeout(budget if own_timer else None):
                        identity = self._authenticate(tenancy, metadata, context)
                        if self._rate_limiter is not None:
                            await self._rate_limiter.acquire(identity.tenant.name, kind)
                        no_cache = not is_write and _no_cache(metadata)
                        if (is_write or no_cache) and self._upstream_budget is not None:
                            await self._upstream_budget.acquire(identity.tenant.name)
                        request = decode(raw)
                        call = Call(
                            request_id,
                            identity,
                            rpc,
                            loop.time() + budget,
                            tenancy,
                            record,
                            no_cache=no_cache,
                        )
                        begin(call)
                        response = await inner(request, context)
                        code, reason = grpc.StatusCode.OK, None
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"deadline of {budget:.3g}s exceeded", metadata={"rpc": rpc}
                    ) from None
            except (GatewayError, _FailedAuthentication) as exc:
                if isinstance(exc, _FailedAuthentication):
                    quiet = not exc.log
                    exc = exc.error
                code, reason = exc.code, exc.reason
                status = to_status(exc, request_id)
                trailers = (*status.trailing_metadata, *(call.trailers if call else ()))
                await context.abort(status.code, status.message, trailers)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                code, reason = grpc.StatusCode.INTERNAL, "INTERNAL"
                # The type only: a traceback or exception text may carry secrets.
                error_type = type(exc).__name__
                status = to_status(internal(request_id), request_id)
                await context.abort(status.code, status.message, status.trailing_metadata)
            finally:
                seconds = time.perf_counter() - started
                measured.handled(code, seconds)
                if code in _DENIED:
                    self._metrics.denied.labels(reason or code.name).inc()
                # Exactly one line per write attempt, whatever its end (CANCELLED when the
                # caller went away or grpc.aio cancelled it at the deadline).
                if record is not None and self._audit is not None and not quiet:
                    self._audit_write(request_id, identity, rpc, code, reason, record)
                if not quiet:
                    # Who failed to authenticate is known only by address.
                    peer = context.peer() if identity is None else None
                    self._log(
                        request_id, identity, rpc, code, reason, seconds, call, error_type, peer
                    )
                end_rpc(span, code, reason)
                traced.__exit__(None, None, None)
            assert call is not None
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id), *call.trailers))
            return response

        return handle

    def _log(
        self,
        request_id: str,
        identity: Identity | None,
        rpc: str,
        code: grpc.StatusCode,
        reason: str | None,
        seconds: float,
        call: Call | None,
        error_type: str | None,
        peer: str | None = None,
    ) -> None:
        """Every error and every write; reads served from the cache only by sample, because
        a log line per hit costs more than the hit itself."""
        cache = call.cache_result[0] if call is not None and call.cache_result else None
        hit = code == grpc.StatusCode.OK and cache == "hit"
        if hit and self._sample() >= self._hit_log_sample_rate:
            return
        fields: dict[str, Any] = {
            "request_id": request_id,
            "tenant": identity.tenant.name if identity else None,
            "rpc": rpc,
            "code": code.name,
            "reason": reason,
            "duration_ms": round(seconds * 1000, 2),
            "cache": cache,
            "error_type": error_type,
            "peer": peer,
            **(call.where if call is not None else {}),
        }
        if code == grpc.StatusCode.INTERNAL:
            log.error("unexpected error", extra=fields)
        else:
            log.info("call ok" if code == grpc.StatusCode.OK else "call failed", extra=fields)

    def _audit_write(
        self,
        request_id: str,
        identity: Identity | None,
        rpc: str,
        code: grpc.StatusCode,
        reason: str | None,
        record: WriteRecord,
    ) -> None:
        assert self._audit is not None
        self._audit.write(
            request_id=request_id,
            tenant=identity.tenant.name if identity else None,
            identity=f"{identity.kind}:{identity.subject}" if identity else None,
            rpc=rpc,
            outcome=code.name,
            reason=reason,
            record=record,
        )
