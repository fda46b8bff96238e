"""The gRPC transport of the call pipeline: one wrapper on the hot path.

Wrapping interceptors cost about 15% of a bare call each in Python, so there is one. It
adapts a gRPC call to the transport-neutral pipeline (service/pipeline/): request id and
deadline, then the gates (authenticate, admit), the decode check, the servicer; the error
becomes a rich status; the outcome goes to each reporter (metrics, tracing, access log,
audit). It wraps the handler (not just `intercept_service`) to see the request and the
context. It fails closed: every method not explicitly exempt (health, reflection) requires
credentials.

Bounded work before authentication: the handler takes the request as raw bytes (grpc.aio
would otherwise parse it on the event loop before any gateway code runs, for anyone), and
parses it only once the caller is authenticated and the bytes are within the RPC's limit
(service/rpc/request_limits.py). Bytes that do not parse are diagnosed within a fixed budget.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, cast

import grpc
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError

from service.auth.failures import AuthFailures
from service.auth.tenancy import TenancyHolder
from service.call import Call, begin
from service.config import WRITE_OPERATIONS, ServerConfig
from service.echo import safe_request_id
from service.errors import (
    REQUEST_ID_KEY,
    DeadlineExceeded,
    FieldViolation,
    GatewayError,
    InvalidArgument,
    internal,
    to_status,
)
from service.observability.audit import AuditLog, WriteRecord
from service.observability.metrics import Metrics
from service.observability.tracing import Tracing
from service.pipeline.gates import Admit, Authenticate, FailedAuthentication
from service.pipeline.reporters import (
    AccessLogReporter,
    AuditReporter,
    MetricsReporter,
    Outcome,
    Reporter,
    TracingReporter,
)
from service.rpc import wire
from service.rpc.request_limits import max_request_bytes
from service.state.ratelimit import RateLimiter, UpstreamBudget

# Services that need no credentials: load balancers and grpcurl must reach them bare.
EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
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


# Strings: grpcio's classes are generic only in typeshed's stubs, not at run time.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


_Unary: TypeAlias = "Callable[[Any, Context], Awaitable[Any]]"


class GatewayInterceptor(grpc.aio.ServerInterceptor):
    """The pipeline's gates and reporters around each unary call of the service."""

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
        metrics = metrics or Metrics()
        self._metrics = MetricsReporter(metrics)
        self._tracing = tracing or Tracing(None)
        self._authenticate = Authenticate(metrics, auth_failures)
        self._admit = Admit(rate_limiter, upstream_budget)
        reporters: list[Reporter] = [
            self._metrics,
            TracingReporter(),
            AccessLogReporter(hit_log_sample_rate, sample),
        ]
        if audit is not None:
            reporters.append(AuditReporter(audit))
        self._reporters = tuple(reporters)
        self._default_deadline = server.default_deadline_seconds
        self._max_deadline = server.max_deadline_seconds
        self._max_message_bytes = server.max_message_bytes
        self._tenancy = tenancy
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

    def _wrap(self, method: str, inner: _Unary, decode: Deserializer) -> _Unary:
        rpc = method.rsplit("/", 1)[-1]
        is_write = rpc in WRITE_OPERATIONS
        started_counter = self._metrics.for_method(method).started
        reporters = self._reporters

        async def handle(raw: bytes, context: Context) -> Any:
            started = time.perf_counter()
            started_counter.inc()
            metadata = context.invocation_metadata()
            traced = self._tracing.rpc(method, metadata)
            span = traced.__enter__()
            request_id = _request_id(metadata)
            tenancy = self._tenancy.current
            outcome = Outcome(
                method,
                rpc,
                request_id,
                None,
                None,
                WriteRecord() if is_write else None,
                grpc.StatusCode.CANCELLED,
                "CANCELLED",
                0.0,
                span=span,
                traced=traced,
            )
            budget, own_timer = self._budget(context)
            try:
                try:
                    async with asyncio.timeout(budget if own_timer else None):
                        identity = outcome.identity = self._authenticate(
                            tenancy, metadata, context.auth_context(), context.peer
                        )
                        no_cache = not is_write and _no_cache(metadata)
                        await self._admit(identity.tenant.name, is_write, no_cache)
                        request = decode(raw)
                        call = outcome.call = Call(
                            request_id,
                            identity,
                            rpc,
                            asyncio.get_running_loop().time() + budget,
                            tenancy,
                            outcome.record,
                            no_cache=no_cache,
                        )
                        begin(call)
                        response = await inner(request, context)
                        outcome.code, outcome.reason = grpc.StatusCode.OK, None
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"deadline of {budget:.3g}s exceeded", metadata={"rpc": rpc}
                    ) from None
            except (GatewayError, FailedAuthentication) as exc:
                if isinstance(exc, FailedAuthentication):
                    outcome.quiet = not exc.log
                    # Who failed to authenticate is known only by address.
                    outcome.peer = context.peer()
                    exc = exc.error
                outcome.code, outcome.reason = exc.code, exc.reason
                status = to_status(exc, request_id)
                call_trailers = outcome.call.trailers if outcome.call else ()
                await context.abort(
                    status.code, status.message, (*status.trailing_metadata, *call_trailers)
                )
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                outcome.code, outcome.reason = grpc.StatusCode.INTERNAL, "INTERNAL"
                # The type only: a traceback or exception text may carry secrets.
                outcome.error_type = type(exc).__name__
                status = to_status(internal(request_id), request_id)
                await context.abort(status.code, status.message, status.trailing_metadata)
            finally:
                outcome.seconds = time.perf_counter() - started
                for reporter in reporters:
                    reporter.post_call(outcome)
            assert outcome.call is not None
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id), *outcome.call.trailers))
            return response

        return handle
