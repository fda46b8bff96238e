"""The HTTP (Connect) transport of the call pipeline: what service/rpc/interceptor.py does
for gRPC, with the same gates, servicer and reporters.

connectrpc runs a *metadata interceptor* at the front of its list before it reads or parses
the request body ("allowing logic such as authentication to reject a request without
processing its body"). `ConnectPipeline.on_start` is that interceptor: request id,
deadline, then the pipeline's admission (`Pipeline.admit_call`, the same as gRPC's:
authenticate, the tenant's slot, rate limit and upstream pass); a stranger is refused
before a byte of its body is read. connectrpc then reads the body (within the largest request any
RPC takes) and decodes it with the gateway's codecs (service/http/codec.py), within the
RPC's own byte limit. `ConnectService` calls the servicer, the same object the gRPC server
serves. `on_end` sees how the call ended, whatever ended it (the servicer, the codec,
connectrpc itself, the deadline, the client leaving), hands the Outcome to each reporter
and answers the error as gRPC would answer it (service/http/errors.py).

Over gRPC, per-call facts (`x-request-id`, `x-cache`) travel in trailers; here they are
response headers. Reads answer the gateway's etag as the HTTP `ETag`, and a GET whose
`If-None-Match` matches it is answered `304 Not Modified` (service/http/listener.py writes
the 304): only after authentication, target authorization and the read itself, so a 304
tells a stranger nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from google.protobuf.message import Message
from prometheus_client import Counter

from service.call import Call
from service.catalog import RPCS
from service.errors import (
    REQUEST_ID_KEY,
    DeadlineExceeded,
    FieldViolation,
    GatewayError,
    InvalidArgument,
)
from service.gen.v1 import registry_connect
from service.http.codec import transport_limit
from service.http.errors import GRPC_CODES, to_connect_error, unreadable_request
from service.http.protocol_headers import REFUSAL
from service.observability.metrics import GO_CODE_NAMES
from service.pipeline.pipeline import Pipeline
from service.pipeline.reporters import (
    Outcome,
)
from service.pipeline.slots import CallSlots
from service.rpc.servicer import RegistryConfigServicer

ETAG_KEY = "etag"
IF_NONE_MATCH_KEY = "if-none-match"


@dataclass(slots=True)
class Exchange:
    """What the transport tells the HTTP layer about one request (service/http/listener.py)."""

    not_modified: bool = False


# Set by the listener's ASGI middleware for each request; connectrpc runs the interceptor
# and the endpoint in the task that runs the middleware, so they see the same object.
EXCHANGE: contextvars.ContextVar[Exchange] = contextvars.ContextVar("registry_gateway_exchange")


@dataclass(slots=True)
class _Pending:
    """One call between on_start and on_end."""

    outcome: Outcome
    budget: float
    own_timer: bool  # True: connectrpc enforces no deadline (or a longer one) for this call
    protocol: str  # "connect" or "grpc-web": the label of registry_gateway_http_handled_total
    client_address: str | None
    ended: bool = False
    served: bool = False  # the servicer was called: connectrpc had read the request

    def peer(self) -> str:
        """The caller's address as gRPC names a peer."""
        return grpc_peer(self.client_address)


_PENDING: contextvars.ContextVar[_Pending] = contextvars.ContextVar("registry_gateway_pending")


def grpc_peer(client_address: str | None) -> str:
    """The caller's address as gRPC names a peer (`ipv4:10.0.0.1:5555`, `ipv6:[::1]:5555`),
    so failed authentications from one address share a budget across both transports."""
    if not client_address:
        return "unknown"
    host, _, port = client_address.rpartition(":")
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def if_none_match(header: str, etag: str) -> bool:
    """Whether an `If-None-Match` header matches `etag` (RFC 9110 13.1.2, weak comparison)."""
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag == "*":
            return True
        tag = tag.removeprefix("W/")
        if len(tag) >= 2 and tag[0] == tag[-1] == '"' and tag[1:-1] == etag:
            return True
    return False


class _Unexpected(GatewayError):
    """connectrpc's own refusal (a body over the transport's limit, bad GET parameters),
    answered like the gateway's errors: its code, its message, the request id."""


class ConnectPipeline:
    """The pipeline around each Connect call (a connectrpc MetadataInterceptor: `on_start`
    before the body is read, `on_end` before the answer): the same `Pipeline` object the
    gRPC interceptor runs, adapted to Connect's request context."""

    def __init__(self, pipeline: Pipeline, slots: CallSlots) -> None:
        self._pipeline = pipeline
        # The same counters as the gRPC interceptor's: a tenant's calls in flight are
        # counted across both transports, so one tenant's HTTP requests whose bodies never
        # finish hold its own slots, never every tenant's (service/pipeline/slots.py).
        self._slots = slots
        self._read_limit = transport_limit(pipeline.max_message_bytes)
        # HTTP calls count in the same grpc_server_* series as gRPC's (dashboards and alerts
        # see every call); this series, on the same registry, tells them apart by protocol.
        self._by_protocol = Counter(
            "registry_gateway_http_handled",
            "RPCs completed on the HTTP listener, by protocol (connect, grpc-web); each is "
            "also counted in grpc_server_handled_total.",
            ["protocol", "grpc_service", "grpc_method", "grpc_code"],
            registry=pipeline.metrics.registry,
        )
        self._by_protocol_children: dict[tuple[str, str, grpc.StatusCode], Any] = {}

    async def on_start(self, ctx: RequestContext[Any, Any]) -> _Pending:
        """Request id, deadline, tracing and the pipeline's admission; a refusal is answered
        from here."""
        pipeline = self._pipeline
        method = f"/{ctx.method.service_name}/{ctx.method.name}"
        metadata = list(ctx.request_headers.allitems())
        outcome = pipeline.started(method, metadata)
        ctx.response_headers[REQUEST_ID_KEY] = outcome.request_id
        # connectrpc enforces `connect-timeout-ms` when the caller sent one.
        remaining = None if ctx.timeout_ms is None else ctx.timeout_ms / 1000
        budget, own_timer = pipeline.budget(remaining)
        content_type = ctx.request_headers.get("content-type", "")
        protocol = "grpc-web" if content_type.startswith("application/grpc-web") else "connect"
        pending = _Pending(outcome, budget, own_timer, protocol, ctx.client_address)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        try:
            async with asyncio.timeout_at(deadline if own_timer else None):
                # The tenant's slot is held from here, released in on_end; the servicer and
                # the codec run later in this same task, so they see the call.
                await pipeline.admit_call(
                    outcome,
                    self._slots,
                    metadata,
                    None,  # no TLS client certificates over HTTP: mTLS stays on gRPC
                    pending.peer,
                    deadline,
                    # A protocol header connectrpc would have refused unseen, taken out in
                    # front of it (service/http/protocol_headers.py): refused here, traced.
                    REFUSAL.get(),
                )
        except TimeoutError:
            raise self._end(pending, ctx, self._deadline_exceeded(pending)) from None
        except Exception as exc:
            raise self._end(pending, ctx, exc) from None
        except BaseException:
            # Cancelled (the caller left, or connectrpc's deadline): still one outcome.
            if loop.time() >= deadline:
                outcome.code, outcome.reason = (
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "DEADLINE_EXCEEDED",
                )
            self._report(pending)
            raise
        _PENDING.set(pending)
        return pending

    async def on_end(
        self, pending: _Pending, ctx: RequestContext[Any, Any], error: Exception | None
    ) -> None:
        """Report how the call ended; answer an error as gRPC would (it replaces `error`)."""
        if pending.ended:
            return
        call = pending.outcome.call
        if call is not None:
            for key, value in call.trailers:
                ctx.response_headers.add(key, value)
        if error is None:
            pending.outcome.code, pending.outcome.reason = grpc.StatusCode.OK, None
            self._report(pending)
            await self._audited(pending)
            return
        answer = self._end(pending, ctx, error)
        await self._audited(pending)
        raise answer

    @staticmethod
    async def _audited(pending: _Pending) -> None:
        """A write's answer leaves once its audit line is written (bounded), as over gRPC."""
        if pending.outcome.audit_written is not None:
            await pending.outcome.audit_written()

    def _deadline_exceeded(self, pending: _Pending) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"deadline of {pending.budget:.3g}s exceeded",
            metadata={"rpc": pending.outcome.rpc},
        )

    def _end(
        self, pending: _Pending, ctx: RequestContext[Any, Any], error: BaseException
    ) -> ConnectError:
        """Report a failed call; the ConnectError to answer (with the request id only, for
        anything unexpected: never an exception's text)."""
        outcome = pending.outcome
        request_id = outcome.request_id
        if isinstance(error, ConnectError) and isinstance(error.__cause__, GatewayError):
            # The codec's refusal, wrapped by connectrpc as `unmarshal message: ...`.
            error = error.__cause__
        if isinstance(error, ConnectError):
            gateway: GatewayError
            code = GRPC_CODES.get(error.code, grpc.StatusCode.UNKNOWN)
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                gateway = self._deadline_exceeded(pending)
            elif not pending.served and (unread := unreadable_request(error)) is not None:
                # A request connectrpc could not read is the caller's error, whatever code
                # connectrpc gave it (service/http/errors.py).
                gateway = unread
            elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                # connectrpc stopped reading a body past the transport's limit: the same
                # answer as a request past its RPC's own limit, not a quota to retry after.
                limit = self._read_limit
                gateway = InvalidArgument(
                    f"the request is larger than {limit} bytes, more than any valid request "
                    "of any RPC, so it was not read",
                    reason="REQUEST_TOO_LARGE",
                    metadata={"rpc": outcome.rpc, "limitBytes": str(limit)},
                    field_violations=[FieldViolation("", f"request of more than {limit} bytes")],
                )
            else:
                # connectrpc writes these messages itself (no caller text, no secret).
                gateway = _Unexpected(error.message, reason=code.name)
                gateway.code = code
            error = gateway
        answer = self._pipeline.fail_call(outcome, error, pending.peer)
        self._report(pending)
        return to_connect_error(answer, request_id)

    def _report(self, pending: _Pending) -> None:
        pending.ended = True
        outcome = pending.outcome
        if outcome.call is not None:  # admitted: it holds its tenant's slot
            self._slots.release_tenant(outcome.call.tenant.name)
        self._pipeline.ended(outcome)
        key = (pending.protocol, outcome.method, outcome.code)
        child = self._by_protocol_children.get(key)
        if child is None:
            service, method = outcome.method.lstrip("/").rsplit("/", 1)
            child = self._by_protocol_children[key] = self._by_protocol.labels(
                pending.protocol, service, method, GO_CODE_NAMES[outcome.code]
            )
        child.inc()


def python_name(rpc: str) -> str:
    """The name connectrpc's generated code gives an RPC's method (`DescribeRegistry` ->
    `describe_registry`)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", rpc).lower()


_ServicerMethod: TypeAlias = "Callable[[Any, Call], Awaitable[Any]]"
_ConnectMethod: TypeAlias = "Callable[[Any, RequestContext[Any, Any]], Awaitable[Any]]"


class ConnectService(registry_connect.RegistryConfigService):
    """The RPCs for connectrpc, one for each RPC of the contract's descriptor
    (service/catalog.py): each calls the servicer's method of that RPC, the object the gRPC
    server serves. The methods are set on the instance, over the generated Protocol's
    defaults (which answer UNIMPLEMENTED), so an RPC added to the contract is served here
    without a line written for it."""

    def __init__(self, servicer: RegistryConfigServicer) -> None:
        for rpc in RPCS:
            name = python_name(rpc)
            if not hasattr(registry_connect.RegistryConfigService, name):
                # Fail at start-up: connectrpc would look the method up by another name.
                raise RuntimeError(f"{rpc}: no method {name} in the generated Connect service")
            setattr(self, name, self._delegate(rpc))
        self._servicer = servicer

    def _delegate(self, rpc: str) -> _ConnectMethod:
        async def serve(request: Any, ctx: RequestContext[Any, Any], /) -> Any:
            # The servicer's method looked up per call, as a method call would.
            method: _ServicerMethod = getattr(self._servicer, rpc)
            return await self._serve(method, request, ctx)

        return serve

    async def _serve(self, method: Any, request: Message, ctx: RequestContext[Any, Any]) -> Any:
        pending = _PENDING.get()
        pending.served = True
        call = pending.outcome.call
        assert call is not None  # admitted in on_start
        deadline = call.deadline if pending.own_timer else None
        try:
            async with asyncio.timeout_at(deadline):
                response = await method(request, call)
        except TimeoutError:
            raise DeadlineExceeded(
                f"deadline of {pending.budget:.3g}s exceeded",
                metadata={"rpc": pending.outcome.rpc},
            ) from None
        if ctx.method.idempotency_level.name == "NO_SIDE_EFFECTS":
            etag = getattr(response, "etag", "")
            if etag:
                ctx.response_headers[ETAG_KEY] = f'"{etag}"'
                wanted = ctx.request_headers.get(IF_NONE_MATCH_KEY)
                if ctx.http_method == "GET" and wanted and if_none_match(wanted, etag):
                    exchange = EXCHANGE.get(None)
                    if exchange is not None:
                        exchange.not_modified = True
        return response
