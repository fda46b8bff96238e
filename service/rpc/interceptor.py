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
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, cast

import grpc
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError

from service.call import Call, begin
from service.catalog import UNCACHED_READS, WRITES
from service.errors import (
    REQUEST_ID_KEY,
    DeadlineExceeded,
    FieldViolation,
    GatewayError,
    InvalidArgument,
    internal,
    to_status,
)
from service.pipeline.gates import FailedAuthentication
from service.pipeline.pipeline import Pipeline, no_cache
from service.rpc import wire
from service.rpc.request_limits import max_request_bytes

# Services that need no credentials: load balancers and grpcurl must reach them bare.
EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


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


# Strings: grpcio's classes are generic only in typeshed's stubs, not at run time.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


_Unary: TypeAlias = "Callable[[Any, Context], Awaitable[Any]]"


class GatewayInterceptor(grpc.aio.ServerInterceptor):
    """The pipeline around each unary call of the service, over gRPC."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
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
            min(max_request_bytes(rpc), self._pipeline.max_message_bytes),
        )
        wrapped: Handler = grpc.unary_unary_rpc_method_handler(
            self._wrap(method, cast(_Unary, handler.unary_unary), decode),
            # None: the behaviour gets the raw bytes, parsed only after authentication.
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, method: str, inner: _Unary, decode: Deserializer) -> _Unary:
        pipeline = self._pipeline
        rpc = method.rsplit("/", 1)[-1]
        is_write = rpc in WRITES
        uncached = rpc in UNCACHED_READS

        async def handle(raw: bytes, context: Context) -> Any:
            metadata = context.invocation_metadata() or ()
            outcome = pipeline.started(method, metadata)
            request_id = outcome.request_id
            tenancy = pipeline.tenancy.current
            # grpc.aio cancels the handler at a deadline the caller sent itself.
            budget, own_timer = pipeline.budget(context.time_remaining())
            try:
                try:
                    async with asyncio.timeout(budget if own_timer else None):
                        identity = outcome.identity = pipeline.authenticate(
                            tenancy, metadata, context.auth_context(), context.peer
                        )
                        fresh = not is_write and no_cache(metadata)
                        await pipeline.admit(identity.tenant.name, is_write, fresh or uncached)
                        request = decode(raw)
                        call = outcome.call = Call(
                            request_id,
                            identity,
                            rpc,
                            asyncio.get_running_loop().time() + budget,
                            tenancy,
                            outcome.record,
                            no_cache=fresh,
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
                pipeline.ended(outcome)
            assert outcome.call is not None
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id), *outcome.call.trailers))
            return response

        return handle
