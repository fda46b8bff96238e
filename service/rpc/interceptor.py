"""The gRPC transport of the call pipeline: one wrapper on the hot path.

Wrapping interceptors cost about 15% of a bare call each in Python, so there is one. It
adapts a gRPC call to the transport-neutral pipeline (service/pipeline/), which admits it
(`Pipeline.admit_call`: authenticate, the tenant's slot, rate limit and upstream pass, the
`Call`) and turns a failure into the error to answer (`Pipeline.fail_call`); here remain
what is gRPC's: metadata, deadline and TLS peer read off the context, the message read and
decode check, the servicer (given the `Call`, not the context), the error as a rich
status, the trailers. It wraps the handler (not just `intercept_service`) to see the request
and the context. It fails closed: every method not explicitly exempt (health, reflection)
requires credentials.

Bounded work before authentication: the handler takes the request as raw bytes (grpc.aio
would otherwise parse it on the event loop before any gateway code runs, for anyone), and
parses it only once the caller is authenticated and the bytes are within the RPC's limit
(service/rpc/request_limits.py). Bytes that do not parse are diagnosed within a fixed budget.

Nothing held before authentication: each unary method is served as stream-unary, so that
its behaviour runs at the call's headers, not once grpc.aio has received the message (a
unary-unary behaviour is called only after the message has arrived, while grpc.aio's own
`maximum_concurrent_rpcs` counted the call from its headers: a stranger's streams that
never sent their message held every slot). At the headers the caller is authenticated
(`intercept_service` sees the metadata but neither the TLS peer's `auth_context()`, which
mTLS needs, nor the address, so the behaviour does it), takes a slot of its tenant and of
the server (service/pipeline/slots.py; a stranger is refused at once and holds nothing), is
admitted (its rate limit), and only then is the one message read, within
`server.message_timeout_seconds` (service/rpc/messages.py). Health and reflection need no
credentials: their calls take a slot of the caller's address instead, and their request
messages too must arrive within that limit.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeAlias, cast

import grpc
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError

from service.auth.failures import peer_key
from service.call import Call
from service.errors import (
    REQUEST_ID_KEY,
    DeadlineExceeded,
    FieldViolation,
    GatewayError,
    InvalidArgument,
    to_status,
)
from service.pipeline.pipeline import Pipeline, request_id
from service.pipeline.reporters import Outcome
from service.pipeline.slots import CallSlots
from service.rpc import wire
from service.rpc.messages import TimeToMessage
from service.rpc.request_limits import max_request_bytes

# Services that need no credentials: load balancers and grpcurl must reach them bare.
EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


Deserializer: TypeAlias = "Callable[[bytes], Any]"
Metadata: TypeAlias = "Iterable[tuple[str, Any]]"


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


# A servicer method: the request and the call admitted (service/rpc/servicer.py).
_Unary: TypeAlias = "Callable[[Any, Call], Awaitable[Any]]"
_Behaviour: TypeAlias = "Callable[[Any, Context], Awaitable[Any]]"


async def _refuse(context: Context, error: GatewayError) -> None:
    """Answer `error` on a call that does not run the pipeline (health, reflection)."""
    status = to_status(error, request_id(context.invocation_metadata() or ()))
    await context.abort(status.code, status.message, status.trailing_metadata)


async def _send(responses: Any, context: Context) -> None:
    """Send what a response-streaming behaviour produces, in either of grpc.aio's styles:
    an async generator, or a coroutine that writes with `context.write`."""
    if inspect.isasyncgen(responses):
        async for response in responses:
            await context.write(response)
    elif inspect.isawaitable(responses):
        await responses


class GatewayInterceptor(grpc.aio.ServerInterceptor):
    """The pipeline around each unary call of the service, over gRPC; the address's slots
    and the time-to-message limit around health and reflection."""

    def __init__(
        self, pipeline: Pipeline, slots: CallSlots, messages: TimeToMessage, *, tls: bool = True
    ) -> None:
        """`tls`: whether any listener of the server is TLS. Without one there is no client
        certificate to authenticate by, and the TLS peer's `auth_context()` (a dict grpc
        builds per call) is not asked for."""
        self._pipeline = pipeline
        self._slots = slots
        self._messages = messages
        self._tls = tls
        self._wrapped: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method: str = details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None:
            return None
        if method.startswith(EXEMPT_PREFIXES):
            wrapped = self._exempt(handler)
        else:
            if handler.unary_unary is None:
                # Fail closed: a streaming RPC added without thought for auth is refused outright.
                raise RuntimeError(f"{method}: only unary RPCs are wrapped")
            rpc = method.rsplit("/", 1)[-1]
            limit = min(max_request_bytes(rpc), self._pipeline.max_message_bytes)
            decode = _decoder(rpc, handler.request_deserializer, limit)
            # Stream-unary: the behaviour runs at the headers (see the module docstring).
            wrapped = grpc.stream_unary_rpc_method_handler(
                self._wrap(
                    method,
                    cast(_Unary, handler.unary_unary),
                    decode,
                    (cast(Deserializer, handler.request_deserializer), limit),
                ),
                # None: the behaviour gets the raw bytes, parsed only after authentication.
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        self._wrapped[method] = wrapped
        return wrapped

    def _exempt(self, handler: Handler) -> Handler:
        """A health or reflection method made request-streaming: it runs at the headers,
        holds one of the caller's address's slots while it lasts, and each request message
        must arrive within the time-to-message limit. grpc parses those messages as before
        (small, fixed types)."""
        slots = self._slots
        messages = self._messages
        request_streaming = handler.request_streaming
        response_streaming = handler.response_streaming
        inner = cast(
            "Callable[[Any, Context], Any]",
            handler.unary_unary
            or handler.unary_stream
            or handler.stream_unary
            or handler.stream_stream,
        )

        async def each(context: Context) -> AsyncIterator[Any]:
            while True:
                message = await messages.read(context)
                if message is grpc.aio.EOF:
                    return
                yield message

        async def behaviour(requests: object, context: Context) -> Any:
            # Grouped as the HTTP listener groups them: an IPv6 peer by its /64.
            address = peer_key(context.peer())
            try:
                slots.take_address(address)
            except GatewayError as exc:
                await _refuse(context, exc)
            try:
                request: Any = (
                    each(context) if request_streaming else await messages.read_one(context)
                )
                result = inner(request, context)
                if response_streaming:
                    await _send(result, context)
                    return None
                return (await result) if inspect.isawaitable(result) else result
            except GatewayError as exc:
                await _refuse(context, exc)
            finally:
                slots.release_address(address)

        make = (
            grpc.stream_stream_rpc_method_handler
            if response_streaming
            else grpc.stream_unary_rpc_method_handler
        )
        return make(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap(
        self,
        method: str,
        inner: _Unary,
        decode: Deserializer,
        parsing: tuple[Deserializer, int],
    ) -> _Behaviour:
        # Everything a call of this method needs that does not change per call is looked
        # up here, once: the handler runs on every call (the hot path of a cached read).
        pipeline = self._pipeline
        started, ended, budget_of = pipeline.started, pipeline.ended, pipeline.budget
        admit_call, admission, fail_call = (
            pipeline.admit_call,
            pipeline.admission,
            pipeline.fail_call,
        )
        slots = self._slots
        release_tenant = slots.release_tenant
        read_one = self._messages.read_one
        # `read_one(context, limited)` is `read(context, limited, True)`: called so on the
        # hot path, one frame fewer a call.
        read = self._messages.read
        message_seconds = self._messages.seconds
        tls = self._tls
        rpc = pipeline.plan(method).rpc
        get_loop = asyncio.get_running_loop
        ok = grpc.StatusCode.OK
        max_deadline = pipeline.max_deadline
        # `decode`'s own steps for bytes within the limit that parse (the hot path): the
        # deserializer called here, `decode` only to refuse what is too large or undecodable.
        parse, limit = parsing

        def report(outcome: Outcome) -> Callable[[], Awaitable[None]] | None:
            """The call has ended: its tenant's slot given back, its reporters run. A
            write's answer leaves once its audit line is written (bounded): what to await
            for that, None for a read (a plain function: no coroutine made per read)."""
            if outcome.call is not None:
                release_tenant(outcome.call.identity.tenant.name)
            ended(outcome)
            return outcome.audit_written

        async def admitted(
            outcome: Outcome, metadata: Metadata, context: Context, budget: float
        ) -> tuple[Call, Any]:
            """The call admitted, its one message read and decoded, the servicer's answer."""
            call = await admit_call(
                outcome,
                slots,
                metadata,
                context.auth_context() if tls else None,
                context.peer,
                get_loop().time() + budget,
            )
            # A sooner deadline bounds the wait for the message by itself.
            request = decode(await read_one(context, message_seconds < budget))
            return call, await inner(request, call)

        async def handle(requests: object, context: Context) -> Any:
            # Runs at the call's headers: the pipeline admits the call (service/pipeline/);
            # its one message is read below, once the caller is known and holds its slot.
            metadata = context.invocation_metadata() or ()
            outcome = started(method, metadata)
            # grpc.aio cancels the handler at a deadline the caller sent itself; a timer of
            # the gateway's own (~3-4 us a call) only for the default deadline or the cap.
            remaining = context.time_remaining()
            if remaining is not None and 0.0 <= remaining <= max_deadline:
                # `budget_of(remaining)`'s answer for a caller's deadline within the cap.
                budget, own_timer = remaining, False
            else:
                budget, own_timer = budget_of(remaining)
            try:
                if own_timer:
                    try:
                        async with asyncio.timeout(budget):
                            call, response = await admitted(outcome, metadata, context, budget)
                    except TimeoutError:
                        raise DeadlineExceeded(
                            f"deadline of {budget:.3g}s exceeded", metadata={"rpc": rpc}
                        ) from None
                else:
                    # The same steps as `admitted`, written out: no coroutine of its own, and
                    # no `async with` of a null context (two more coroutines a call).
                    now = get_loop().time()
                    admitted_call = admission(
                        outcome,
                        slots,
                        metadata,
                        context.auth_context() if tls else None,
                        context.peer,
                        now + budget,
                    )
                    # A call with no gate to wait for is admitted without a coroutine.
                    if type(admitted_call) is Call:
                        call = admitted_call
                        since: float | None = now  # the message's wait counts from here
                    else:
                        call = await cast(Awaitable[Call], admitted_call)
                        since = None  # from when admission's wait is over
                    data = await read(context, message_seconds < budget, True, since)
                    try:
                        request = parse(data) if len(data) <= limit else decode(data)
                    except (DecodeError, ValueError, RuntimeError):
                        request = decode(data)  # raises InvalidArgument, naming the field
                    response = await inner(request, call)
                outcome.code, outcome.reason = ok, None
            except (asyncio.CancelledError, grpc.aio.AbortError):
                # Reported as it stands (CANCELLED, or what the abort answered).
                if (written := report(outcome)) is not None:
                    await written()
                raise
            except Exception as exc:
                error = fail_call(outcome, exc, context.peer)
                status = to_status(error, outcome.request_id)
                # Per-call facts (x-cache) go with the gateway's own errors, not INTERNAL's.
                call_trailers = (
                    outcome.call.trailers if outcome.call and outcome.error_type is None else ()
                )
                # grpc.aio sends the status inside `abort`: the call is reported first.
                written = report(outcome)
                if written is not None:
                    await written()
                await context.abort(
                    status.code, status.message, (*status.trailing_metadata, *call_trailers)
                )
                raise AssertionError("grpc.aio's abort returned") from None  # pragma: no cover
            except BaseException:
                if (written := report(outcome)) is not None:
                    await written()
                raise
            # `report(outcome)`, written out for the answered call (it runs on every call).
            release_tenant(call.identity.tenant.name)
            ended(outcome)
            if (written := outcome.audit_written) is not None:
                await written()
            context.set_trailing_metadata(((REQUEST_ID_KEY, outcome.request_id), *call.trailers))
            return response

        return handle
