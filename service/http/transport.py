"""The HTTP (Connect) transport of the call pipeline: what service/rpc/interceptor.py does
for gRPC, with the same gates, servicer and reporters.

connectrpc runs a *metadata interceptor* at the front of its list before it reads or parses
the request body ("allowing logic such as authentication to reject a request without
processing its body"). `ConnectPipeline.on_start` is that interceptor: request id,
deadline, tracing, then the gates (authenticate, admit); a stranger is refused before a
byte of its body is read. connectrpc then reads the body (within the largest request any
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
from dataclasses import dataclass
from typing import Any

import grpc
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from google.protobuf.message import Message
from prometheus_client import Counter

from service.call import Call, begin, current_call
from service.catalog import UNCACHED_READS
from service.config import WRITE_OPERATIONS
from service.errors import (
    REQUEST_ID_KEY,
    DeadlineExceeded,
    FieldViolation,
    GatewayError,
    InvalidArgument,
    internal,
)
from service.gen.v1 import registry_connect
from service.gen.v1 import registry_pb2 as pb
from service.http.codec import transport_limit
from service.http.errors import GRPC_CODES, to_connect_error, unreadable_request
from service.http.protocol_headers import REFUSAL
from service.observability.metrics import GO_CODE_NAMES
from service.pipeline.gates import FailedAuthentication
from service.pipeline.pipeline import Pipeline, no_cache
from service.pipeline.reporters import (
    Outcome,
)
from service.pipeline.slots import CallSlots
from service.rpc.servicer import RegistryConfigServicer

ETAG_KEY = "etag"
IF_NONE_MATCH_KEY = "if-none-match"
# The servicer's methods take grpc.aio's context for their signature only; they read the
# call from service/call.py. None here: a servicer that touched it would fail loudly.
_NO_GRPC_CONTEXT: Any = None


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
    ended: bool = False
    served: bool = False  # the servicer was called: connectrpc had read the request
    tenant_slot: str | None = None  # the tenant whose call slot this call holds


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
        """Request id, deadline, tracing and the gates; a refusal is answered from here."""
        pipeline = self._pipeline
        rpc = ctx.method.name
        method = f"/{ctx.method.service_name}/{rpc}"
        is_write = rpc in WRITE_OPERATIONS
        metadata = list(ctx.request_headers.allitems())
        outcome = pipeline.started(method, metadata)
        request_id = outcome.request_id
        ctx.response_headers[REQUEST_ID_KEY] = request_id
        tenancy = pipeline.tenancy.current
        # connectrpc enforces `connect-timeout-ms` when the caller sent one.
        remaining = None if ctx.timeout_ms is None else ctx.timeout_ms / 1000
        budget, own_timer = pipeline.budget(remaining)
        content_type = ctx.request_headers.get("content-type", "")
        protocol = "grpc-web" if content_type.startswith("application/grpc-web") else "connect"
        pending = _Pending(outcome, budget, own_timer, protocol)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        try:
            async with asyncio.timeout_at(deadline if own_timer else None):
                identity = outcome.identity = pipeline.authenticate(
                    tenancy,
                    metadata,
                    None,  # no TLS client certificates over HTTP: mTLS stays on gRPC
                    lambda: grpc_peer(ctx.client_address),
                )
                # A protocol header connectrpc would have refused unseen, taken out in
                # front of it (service/http/protocol_headers.py): refused here, traced.
                refused = REFUSAL.get()
                if refused is not None:
                    raise refused
                fresh = not is_write and no_cache(metadata)
                await pipeline.admit(identity.tenant.name, is_write, fresh or rpc in UNCACHED_READS)
                # Last: nothing below awaits, so a slot taken is always released in on_end.
                self._slots.take_tenant(identity.tenant.name)
                pending.tenant_slot = identity.tenant.name
        except TimeoutError:
            raise self._end(pending, ctx, self._deadline_exceeded(pending)) from None
        except (GatewayError, FailedAuthentication) as exc:
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
        call = outcome.call = Call(
            request_id,
            identity,
            rpc,
            deadline,
            tenancy,
            outcome.record,
            no_cache=fresh,
        )
        # The servicer and the codec run later in this same task, so they see the call.
        begin(call)
        _PENDING.set(pending)
        return pending

    async def on_end(
        self, pending: _Pending, ctx: RequestContext[Any, Any], error: Exception | None
    ) -> None:
        """Report how the call ended; answer an error as gRPC would (it replaces `error`)."""
        if pending.tenant_slot is not None:
            self._slots.release_tenant(pending.tenant_slot)
            pending.tenant_slot = None
        if pending.ended:
            return
        call = pending.outcome.call
        if call is not None:
            for key, value in call.trailers:
                ctx.response_headers.add(key, value)
        if error is None:
            pending.outcome.code, pending.outcome.reason = grpc.StatusCode.OK, None
            self._report(pending)
            return
        raise self._end(pending, ctx, error)

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
        if isinstance(error, FailedAuthentication):
            outcome.quiet = not error.log
            # Who failed to authenticate is known only by address.
            outcome.peer = grpc_peer(ctx.client_address)
            error = error.error
        gateway: GatewayError
        if isinstance(error, GatewayError):
            gateway = error
        elif isinstance(error, ConnectError):
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
        else:
            outcome.error_type = type(error).__name__
            gateway = internal(request_id)
        outcome.code, outcome.reason = gateway.code, gateway.reason
        self._report(pending)
        return to_connect_error(gateway, request_id)

    def _report(self, pending: _Pending) -> None:
        pending.ended = True
        outcome = pending.outcome
        self._pipeline.ended(outcome)
        key = (pending.protocol, outcome.method, outcome.code)
        child = self._by_protocol_children.get(key)
        if child is None:
            service, method = outcome.method.lstrip("/").rsplit("/", 1)
            child = self._by_protocol_children[key] = self._by_protocol.labels(
                pending.protocol, service, method, GO_CODE_NAMES[outcome.code]
            )
        child.inc()


class ConnectService(registry_connect.RegistryConfigService):
    """The RPCs for connectrpc: each calls the servicer the gRPC server serves."""

    def __init__(self, servicer: RegistryConfigServicer) -> None:
        self._servicer = servicer

    async def _serve(self, method: Any, request: Message, ctx: RequestContext[Any, Any]) -> Any:
        pending = _PENDING.get()
        pending.served = True
        deadline = current_call().deadline if pending.own_timer else None
        try:
            async with asyncio.timeout_at(deadline):
                response = await method(request, _NO_GRPC_CONTEXT)
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

    async def describe_registry(
        self,
        request: pb.DescribeRegistryRequest,
        ctx: RequestContext[pb.DescribeRegistryRequest, pb.DescribeRegistryResponse],
        /,
    ) -> pb.DescribeRegistryResponse:
        response: pb.DescribeRegistryResponse = await self._serve(
            self._servicer.DescribeRegistry, request, ctx
        )
        return response

    async def get_registry_policy(
        self,
        request: pb.GetRegistryPolicyRequest,
        ctx: RequestContext[pb.GetRegistryPolicyRequest, pb.GetRegistryPolicyResponse],
        /,
    ) -> pb.GetRegistryPolicyResponse:
        response: pb.GetRegistryPolicyResponse = await self._serve(
            self._servicer.GetRegistryPolicy, request, ctx
        )
        return response

    async def put_registry_policy(
        self,
        request: pb.PutRegistryPolicyRequest,
        ctx: RequestContext[pb.PutRegistryPolicyRequest, pb.PutRegistryPolicyResponse],
        /,
    ) -> pb.PutRegistryPolicyResponse:
        response: pb.PutRegistryPolicyResponse = await self._serve(
            self._servicer.PutRegistryPolicy, request, ctx
        )
        return response

    async def delete_registry_policy(
        self,
        request: pb.DeleteRegistryPolicyRequest,
        ctx: RequestContext[pb.DeleteRegistryPolicyRequest, pb.DeleteRegistryPolicyResponse],
        /,
    ) -> pb.DeleteRegistryPolicyResponse:
        response: pb.DeleteRegistryPolicyResponse = await self._serve(
            self._servicer.DeleteRegistryPolicy, request, ctx
        )
        return response

    async def put_replication_configuration(
        self,
        request: pb.PutReplicationConfigurationRequest,
        ctx: RequestContext[
            pb.PutReplicationConfigurationRequest, pb.PutReplicationConfigurationResponse
        ],
        /,
    ) -> pb.PutReplicationConfigurationResponse:
        response: pb.PutReplicationConfigurationResponse = await self._serve(
            self._servicer.PutReplicationConfiguration, request, ctx
        )
        return response

    async def get_replication_rules(
        self,
        request: pb.GetReplicationRulesRequest,
        ctx: RequestContext[pb.GetReplicationRulesRequest, pb.GetReplicationRulesResponse],
        /,
    ) -> pb.GetReplicationRulesResponse:
        response: pb.GetReplicationRulesResponse = await self._serve(
            self._servicer.GetReplicationRules, request, ctx
        )
        return response

    async def put_replication_rules(
        self,
        request: pb.PutReplicationRulesRequest,
        ctx: RequestContext[pb.PutReplicationRulesRequest, pb.PutReplicationRulesResponse],
        /,
    ) -> pb.PutReplicationRulesResponse:
        response: pb.PutReplicationRulesResponse = await self._serve(
            self._servicer.PutReplicationRules, request, ctx
        )
        return response

    async def get_policy_statements(
        self,
        request: pb.GetPolicyStatementsRequest,
        ctx: RequestContext[pb.GetPolicyStatementsRequest, pb.GetPolicyStatementsResponse],
        /,
    ) -> pb.GetPolicyStatementsResponse:
        response: pb.GetPolicyStatementsResponse = await self._serve(
            self._servicer.GetPolicyStatements, request, ctx
        )
        return response

    async def put_policy_statements(
        self,
        request: pb.PutPolicyStatementsRequest,
        ctx: RequestContext[pb.PutPolicyStatementsRequest, pb.PutPolicyStatementsResponse],
        /,
    ) -> pb.PutPolicyStatementsResponse:
        response: pb.PutPolicyStatementsResponse = await self._serve(
            self._servicer.PutPolicyStatements, request, ctx
        )
        return response

    async def get_configuration_history(
        self,
        request: pb.GetConfigurationHistoryRequest,
        ctx: RequestContext[pb.GetConfigurationHistoryRequest, pb.GetConfigurationHistoryResponse],
        /,
    ) -> pb.GetConfigurationHistoryResponse:
        response: pb.GetConfigurationHistoryResponse = await self._serve(
            self._servicer.GetConfigurationHistory, request, ctx
        )
        return response
